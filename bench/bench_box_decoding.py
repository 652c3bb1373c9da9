"""Inference-side settings of the shipped box heads, measured on the same generated images
(embedded:shapes, 25 DPM-Solver++ steps, CFG 7.5): the adapter's decoding (each query's best
class, or DINO's top 100 (query, class) pairs) and the output threshold of both heads (0.3,
DiffusionEngine's delta, against 0.4, InstaGen's beta).

Truth as in `dde bench labels`: txt2img images are labelled by the segmentation oracle (its
masks' components), img2img images at strength 0.2-0.35 keep their references' exact boxes.
Reported per source: COCOeval AP/AP50 at COCO's score floor 0.05 (ranking quality) and, at each
threshold, what a dataset would hold: boxes per image, precision and recall at IoU 0.5 (greedy,
per class, by score) and F1, and the images with no box (DiffusionEngine's code skips them:
``empty_images: skip``) with the true objects they hold.

    python bench/bench_box_decoding.py --images 48
"""

from __future__ import annotations

import argparse
import math
import sys

from _common import REPO, save_result

sys.path.insert(0, REPO)

THRESHOLDS = (0.3, 0.4)


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w, h = max(0.0, min(ax + aw, bx + bw) - max(ax, bx)), max(0.0, min(ay + ah, by + bh) - max(ay, by))
    union = aw * ah + bw * bh - w * h
    return w * h / union if union > 0 else 0.0


def precision_recall(truth, found) -> dict:
    """Greedy matching at IoU 0.5, per image and class, detections by decreasing score."""
    hits = 0
    for want, got in zip(truth, found):
        free = [(i.category, i.bbox()) for i in want]
        for det in sorted(got, key=lambda i: -i.score):
            best = max(((k, _iou(det.bbox(), box)) for k, (c, box) in enumerate(free) if c == det.category),
                       key=lambda kv: kv[1], default=(None, 0.0))
            if best[1] >= 0.5:
                free.pop(best[0])
                hits += 1
    detections, truths = sum(map(len, found)), sum(map(len, truth))
    precision = hits / detections if detections else 0.0
    recall = hits / truths if truths else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"boxes_per_image": round(detections / max(1, len(found)), 3), "precision": round(precision, 4),
            "recall": round(recall, 4), "F1": round(f1, 4)}


def empty_images(truth, found) -> dict:
    """What ``empty_images: skip`` would drop: the share of images with no box, and how many true
    objects those images hold (each a box the dataset would teach as background if kept)."""
    empty = [k for k, got in enumerate(found) if not got]
    with_objects = [k for k in empty if truth[k]]
    return {"empty_share": round(len(empty) / max(1, len(found)), 4),
            "empty_with_objects_share": round(len(with_objects) / max(1, len(empty)), 4) if empty else None,
            "true_objects_per_empty_image": round(sum(len(truth[k]) for k in empty) / len(empty), 3) if empty else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    args = parser.parse_args()

    import numpy as np

    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.heads.adapter import AdapterHead
    from engine.heads.grounding import GroundingHead
    from engine.lab.evals.labels import generate_kept, img2img_requests, truth_instances, txt2img_requests
    from engine.lab.metrics.boxes import box_ap
    from engine.lab.train.segmenter import load_segmenter, segment
    from engine.records import Instance
    from engine.spec import ClassSpec
    from engine.world import CLASSES

    classes = [ClassSpec(name=c) for c in CLASSES]
    backend = DiffusionBackend(params=DiffusionParams(model="embedded:shapes", steps=25, guidance_scale=7.5,
                                                      batch_size=16, strength=(0.2, 0.35)), classes=[])
    variants = {}
    for decoding in ("best_class", "topk"):
        for threshold in (0.05, *THRESHOLDS):
            variants[f"adapter/{decoding}/{threshold}"] = AdapterHead(
                params=AdapterHead.Params(threshold=threshold, decoding=decoding), classes=classes)
    for threshold in (0.05, *THRESHOLDS):
        variants[f"grounding/best_class/{threshold}"] = GroundingHead(
            params=GroundingHead.Params(threshold=threshold), classes=classes)
    for head in variants.values():
        head.attach(backend)
    oracle = load_segmenter()
    min_area = math.ceil(0.005 * backend.size * backend.size)
    result = {"command": f"python bench/bench_box_decoding.py --images {args.images}", "images": args.images,
              "model": "embedded:shapes", "steps": 25}
    for source in ("txt2img", "img2img"):
        if source == "txt2img":
            requests = txt2img_requests(args.images, 0)
            kept, generated = generate_kept(backend, requests, 16)
            truth = [truth_instances(t, min_area) for t in segment(oracle, np.stack([g.image for g in generated]))]
        else:
            requests, scenes = img2img_requests(args.images, 0)
            kept, generated = generate_kept(backend, requests, 16)
            truth = [[Instance(i.category, i.mask) for i in scenes[k].instances] for k in kept]
        requests = [requests[k] for k in kept]
        rows = {}
        for name, head in variants.items():
            found = [labels.instances for labels in head.label(requests, generated)]
            row = {k: v for k, v in box_ap(truth, found, backend.size).items() if k in ("AP", "AP50")}
            if not name.endswith("/0.05"):
                row.update(precision_recall(truth, found), **empty_images(truth, found))
            rows[name] = row
        result[source] = {"truth_boxes_per_image": round(sum(map(len, truth)) / len(truth), 3), "variants": rows}
    save_result(f"{REPO}/bench/results/box_decoding.json", result)


if __name__ == "__main__":
    main()
