"""Semantic-segmentation scores: a confusion matrix over pixels, and IoU from it.

Label maps are integer arrays of any shape (one image HxW, or a batch NxHxW) holding
class ids ``0 .. num_classes-1``, or ``ignore`` for pixels that count on neither side
(the engine writes 255 for uncertain pixels in its semantic masks, 65535 over 254 classes).
"""

from __future__ import annotations

import numpy as np

__all__ = ["confusion", "iou_table", "pixel_accuracy"]


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int | None = 255) -> np.ndarray:
    """``conf[t, p]`` = number of pixels of true class ``t`` predicted as ``p`` (int64, num_classes²).

    A pixel is left out when ``target`` or ``pred`` is ``ignore``: an uncertain ground
    truth says nothing, and an abstention is neither right nor wrong (a caller that wants
    abstentions to count as misses maps them to a class first). Any other value outside
    ``0 .. num_classes-1`` is an error, never silently dropped.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"confusion: pred and target shapes differ: {pred.shape} vs {target.shape}")
    pred, target = pred.astype(np.int64).ravel(), target.astype(np.int64).ravel()
    if ignore is not None:
        keep = (pred != ignore) & (target != ignore)
        pred, target = pred[keep], target[keep]
    for name, labels in (("pred", pred), ("target", target)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"confusion: {name} holds labels outside 0..{num_classes - 1} "
                             f"(min {labels.min()}, max {labels.max()}) other than ignore={ignore}")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_table(conf: np.ndarray) -> tuple[float, list[float]]:
    """(mean IoU, per-class IoU) from a confusion matrix.

    IoU_k = TP / (TP + FP + FN). A class absent from both target and prediction has no
    IoU (NaN in the list) and is left out of the mean; with no class at all the mean is NaN.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = np.where(union > 0, tp / union, np.nan)
    present = ~np.isnan(per_class)
    miou = float(per_class[present].mean()) if present.any() else float("nan")
    return miou, [float(v) for v in per_class]


def pixel_accuracy(conf: np.ndarray) -> float:
    """Share of the counted pixels whose class is right."""
    conf = np.asarray(conf)
    total = conf.sum()
    return float(np.trace(conf) / total) if total else float("nan")
