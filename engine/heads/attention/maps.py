"""From captured attention to labels: Dataset Diffusion's Eq. 3-5 and DiffusionEngine's BCA.

All functions take the per-image maps ``AttentionStore.end()`` returns and work on CPU.
Class maps are indexed by the image's class list (0..M-1); callers map them to categories.
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_maps", "semantic_mask", "components", "region_classes", "bca_instances"]


def _square(flat, side: int):
    """(side*side, M) -> (M, side, side)."""
    return flat.T.reshape(-1, side, side)


def _resize(maps, side: int):
    import torch.nn.functional as F

    if maps.shape[-1] == side:
        return maps
    return F.interpolate(maps[None], (side, side), mode="bicubic", align_corners=False)[0]


def class_maps(captured: dict, size: int, tau: int = 4) -> np.ndarray:
    """(M, size, size) maps in [0, 1]: class cross-attention, refined by self-attention raised to
    ``tau`` when ``tau`` > 0 (Eq. 3), min-max normalised per class, upsampled to the image.

    Cross-attention captured at several resolutions is averaged after bicubic upsampling to
    the self-attention resolution (or to the largest cross resolution when not refining).
    """
    import torch

    cross = captured["cross"]
    refine = tau > 0 and "self" in captured
    side = int(round(captured["self"].shape[0] ** 0.5)) if refine else max(cross)
    maps = torch.stack([_resize(_square(m, r), side) for r, m in cross.items()]).mean(0)
    if refine:
        affinity = torch.linalg.matrix_power(captured["self"].double(), tau)
        maps = _square((affinity @ maps.reshape(len(maps), -1).T.double()).float(), side)
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = (maps.amax(dim=(1, 2), keepdim=True) - low).clamp(min=1e-12)
    maps = (maps - low) / span
    return _resize(maps, size).clamp(0, 1).numpy()


def semantic_mask(maps: np.ndarray, category_ids: list[int], alpha: float = 0.5, beta: float = 0.6,
                  dtype: np.dtype = np.dtype(np.uint8)) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4-5: (mask of ``dtype``, objectness V). At or below alpha: background (0); between
    alpha and beta: uncertain (the dtype's largest value, ``records.uncertain_value``); at or
    above beta: the category id of the arg-max class. ``dtype``: ``records.semantic_dtype``."""
    from ...records import uncertain_value

    objectness = maps.max(axis=0)
    lut = np.asarray(category_ids, dtype=dtype)
    mask = np.where(objectness >= beta, lut[maps.argmax(axis=0)], 0).astype(dtype)
    mask[(objectness > alpha) & (objectness < beta)] = uncertain_value(dtype)
    return mask, objectness


def components(binary: np.ndarray, values: np.ndarray, min_area: int) -> list[tuple[np.ndarray, float]]:
    """Connected components (8-connected) of ``binary`` with at least ``min_area`` pixels,
    each with its mean of ``values`` as score."""
    from skimage.measure import label

    labelled, count = label(binary, connectivity=2, return_num=True)
    found = []
    for k in range(1, count + 1):
        region = labelled == k
        if region.sum() >= min_area:
            found.append((region, float(values[region].mean())))
    return found


def region_classes(image: np.ndarray, maps: np.ndarray, regions: list[np.ndarray], clip, class_text,
                   clip_weight: float) -> np.ndarray:
    """(N,) int: each region's class among the image's M classes, re-chosen by a CLIP: the arg-max
    over m of p_att(m) ** (1 - w) * p_clip(m) ** w, with p_att(m) the mean of class map m over the
    region, p_clip the CLIP's softmax over the M names for the region's masked crop
    (``clip_regions.masked_crops``) and w = ``clip_weight`` (ViLD's geometric ensemble).

    ``image``: (H, W, 3) uint8; ``maps``: (M, H, W) in [0, 1] (``class_maps``); ``regions``: N
    (H, W) bool masks; ``class_text``: (M, D) the CLIP's embeddings of the M names. Where the model
    drew a different one of the prompt's classes than the attention gives, or two of them swapped,
    the CLIP sees what was drawn (not in Dataset Diffusion; BENCHMARKS.md, session 14)."""
    from ..clip_regions import clip_probabilities, masked_crops

    crops = masked_crops(image, regions, dilation=max(1, round(image.shape[0] / 32)))
    p_clip = clip_probabilities(clip, crops, class_text).cpu().numpy()
    p_att = np.array([[m[region].mean() for m in maps] for region in regions])
    return (p_att ** (1 - clip_weight) * p_clip ** clip_weight).argmax(axis=1)


def bca_instances(maps: np.ndarray, min_area: int) -> list[tuple[int, np.ndarray, float]]:
    """DiffusionEngine's baseline: each class's cross-attention map binarised at its Otsu
    threshold, one instance per connected component: (class index, mask, score)."""
    from skimage.filters import threshold_otsu

    found = []
    for m, heat in enumerate(maps):
        if float(heat.max() - heat.min()) < 1e-6:  # a flat map has no foreground to split off
            continue
        found += [(m, region, score) for region, score in components(heat > threshold_otsu(heat), heat, min_area)]
    return found
