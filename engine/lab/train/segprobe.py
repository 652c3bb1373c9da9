"""The segmentation task of ``dde probe`` (``--task segmentation``): LR-ASPP on semantic masks, mIoU.

Label maps (int64) hold 0 for background, ``k`` for the k-th class shared by the dde output and
the val set, and ``IGNORE`` (-1, outside every class index, so a vocabulary of any size, LVIS's
1,203 included, keeps its class 255) for pixels that count on neither side:

- the dde output's own semantic masks (``coco/semantic/<id>.png``: 0 background, 255 or 65535
  uncertain, else the category id) are read as the head wrote them, uncertain pixels ignored, as
  Dataset Diffusion trains its segmenter;
- a COCO set (``--val``, ``--real``) is rasterised from its polygons or RLE in annotation order
  (pycocotools ``annToMask``); crowd regions and classes the probe does not score are ignored.

The model is torchvision's LR-ASPP on a MobileNetV3 trunk (Small by default) with no pretrained weights
(Howard et al. 2019), fed scenes upsampled to at least ``MIN_SIDE`` px (its head sees stride 16),
trained with cross-entropy that skips ``IGNORE``, and scored as per-class IoU and mIoU over the
background and the shared classes (``lab.metrics.segmentation``), ``IGNORE`` pixels left out.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np

from ...output.layout import image_name
from ...records import category_ids
from ..metrics.segmentation import confusion, iou_table

__all__ = ["IGNORE", "MIN_SIDE", "TRUNKS", "load_semantic", "build_lraspp", "segmentation_loss", "segmentation_scores"]

IGNORE = -1  # not 255: with 255+ shared classes that is a class
MIN_SIDE = 128
# LR-ASPP trunks; the small one is the default: 800 steps of batch 32 (128 px) take 0.39x the large
# one's time at <mIoU in BENCHMARKS.md, "Downstream">
TRUNKS = {"mobilenet_v3_small": "MobileNetV3-Small", "mobilenet_v3_large": "MobileNetV3-Large"}


def _label_map(coco, image_id: int, index: dict[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A COCO image's instances rasterised: 0 background, shared class index, IGNORE elsewhere."""
    labels = np.zeros(shape, dtype=np.int64)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
        if "segmentation" not in ann:
            continue
        mask = coco.annToMask(ann).astype(bool)
        labels[mask] = IGNORE if ann.get("iscrowd") else index.get(ann["category_id"], IGNORE)
    return labels


def _semantic_file(path: str, index: dict[int, int]) -> np.ndarray:
    """A dde semantic mask as a label map (uncertain and unshared classes IGNORE)."""
    from PIL import Image

    mask = np.array(Image.open(path))
    lut = np.full(int(mask.max()) + 1, IGNORE, dtype=np.int64)
    lut[0] = 0
    for category_id, k in index.items():
        if category_id < lut.size:
            lut[category_id] = k
    return lut[mask]


def load_semantic(images: str, annotations: str, classes: list[str], size: int,
                  semantic: str | None = None) -> tuple[list, list]:
    """uint8 images (3, size, size) and int64 label maps (size, size) of a COCO folder; labels from
    ``semantic`` (a dde output's coco/semantic folder) when given, else from the annotations.
    Images are resized bilinearly and label maps by nearest neighbour to ``size`` px."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates loading
        coco = COCO(annotations)
    ids = category_ids(classes)
    index = {cid: ids[c["name"]] for cid, c in coco.cats.items() if c["name"] in classes}
    pictures, targets = [], []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        rgb = np.asarray(Image.open(os.path.join(images, info["file_name"])).convert("RGB"))
        labels = (_semantic_file(os.path.join(semantic, image_name(image_id)), index) if semantic
                  else _label_map(coco, image_id, index, rgb.shape[:2]))
        picture = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
        target = torch.from_numpy(labels.astype(np.int64))[None, None].float()
        pictures.append(F.interpolate(picture, size=(size, size), mode="bilinear", antialias=True)[0]
                        .round().clamp(0, 255).to(torch.uint8))
        targets.append(F.interpolate(target, size=(size, size), mode="nearest")[0, 0].long())
    return pictures, targets


def build_lraspp(num_classes: int, trunk: str = "mobilenet_v3_small"):
    """torchvision's LR-ASPP head (Howard et al. 2019, Sec. 6.4) on a dilated torchvision ``trunk``
    (one of ``TRUNKS``), no pretrained weights; ``num_classes`` excludes background. The head reads
    the trunk's last stride-8 stage ("low") and its output ("high"), as torchvision's
    ``lraspp_mobilenet_v3_large`` does for the large trunk. Raises ValueError for another trunk."""
    import torchvision.models
    from torchvision.models.feature_extraction import create_feature_extractor
    from torchvision.models.segmentation import LRASPP

    if trunk not in TRUNKS:
        raise ValueError(f"trunk: expected one of {list(TRUNKS)}, got {trunk!r}")
    features = getattr(torchvision.models, trunk)(weights=None, dilated=True).features
    stages = [0] + [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)] + [len(features) - 1]
    low, high = stages[-4], stages[-1]
    body = create_feature_extractor(features, {str(low): "low", str(high): "high"})
    return LRASPP(body, features[low].out_channels, features[high].out_channels, num_classes + 1)


def _logits(model, batch):
    """(N, C, H, W) class scores for uint8 images (N, 3, H, W), at their own size."""
    import torch.nn.functional as F

    x = batch.float() / 255
    side = x.shape[-1]
    if side < MIN_SIDE:
        x = F.interpolate(x, size=(MIN_SIDE, MIN_SIDE), mode="bilinear")
    out = model(x)["out"]
    return F.interpolate(out, size=batch.shape[-2:], mode="bilinear") if side < MIN_SIDE else out


def segmentation_loss(model, images: list, targets: list, device: str) -> dict:
    """Cross-entropy over the pixels that are not IGNORE."""
    import torch
    import torch.nn.functional as F

    logits = _logits(model, torch.stack(images).to(device))
    return {"total": F.cross_entropy(logits, torch.stack(targets).to(device), ignore_index=IGNORE)}


def segmentation_scores(model, val: tuple[list, list], classes: list[str], device: str, chunk: int = 64) -> dict:
    """mIoU over background and the shared classes, and ``<class>_IoU`` each (NaN: absent from both)."""
    import torch

    images, targets = val
    conf = np.zeros((len(classes) + 1,) * 2, dtype=np.int64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            pred = _logits(model, torch.stack(images[start:start + chunk]).to(device)).argmax(1).cpu().numpy()
            conf += confusion(pred, torch.stack(targets[start:start + chunk]).numpy(), len(classes) + 1, IGNORE)
    model.train(was_training)
    miou, per_class = iou_table(conf)
    return {"mIoU": miou, "background_IoU": per_class[0], **{f"{c}_IoU": v for c, v in zip(classes, per_class[1:])}}
