"""Box AP: COCOeval over lists of ``records.Instance`` per image."""

from __future__ import annotations

import contextlib
import io

from ...records import Instance, category_ids
from ...world import CLASSES

__all__ = ["box_ap"]


def box_ap(truth: list[list[Instance]], found: list[list[Instance]], size: int,
           classes: list[str] | tuple[str, ...] = CLASSES, groups: dict[str, list[str]] | None = None) -> dict:
    """COCO box AP and AP50 of ``found`` against ``truth`` (lists per image), over all classes
    and, as ``NAME_AP``/``NAME_AP50``, over each of ``groups`` (subsets of ``classes``, e.g. the
    novel ones), from one COCOeval: a group's AP is the mean of its classes' precision, as
    COCOeval gives when restricted to them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    category_id = category_ids(classes)
    images = [{"id": k, "width": size, "height": size} for k in range(len(truth))]
    annotations = [{"image_id": k, "category_id": category_id[i.category], "bbox": i.bbox(),
                    "area": i.area(), "iscrowd": 0} for k, insts in enumerate(truth) for i in insts]
    for n, annotation in enumerate(annotations):
        annotation["id"] = n + 1
    detections = [{"image_id": k, "category_id": category_id[i.category], "bbox": i.bbox(), "score": i.score}
                  for k, insts in enumerate(found) for i in insts]
    if not annotations or not detections:
        return {**{f"{prefix}{k}": 0.0 for prefix in ["", *(f"{g}_" for g in groups or {})] for k in ("AP", "AP50")},
                "detections": len(detections), "truths": len(annotations)}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": k, "name": c} for c, k in category_id.items()]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates every stage
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    result = {"AP": round(float(max(evaluator.stats[0], 0)), 4), "AP50": round(float(max(evaluator.stats[1], 0)), 4),
              "detections": len(detections), "truths": len(annotations)}
    # precision: (IoU thresholds, recall points, classes in id order, area ranges, max detections); all areas, 100
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    for name, members in (groups or {}).items():
        mine = precision[:, :, [category_id[c] - 1 for c in members]]
        for key, part in (("AP", mine), ("AP50", mine[0])):
            known = part[part > -1]
            result[f"{name}_{key}"] = round(float(known.mean()) if known.size else 0.0, 4)
    return result
