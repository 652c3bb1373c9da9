"""A CLIP looking at regions of a generated image: crops that keep the object in place and at
scale, and the CLIP's class probabilities for them. Used by the grounding head (ViLD's region
classification, ``boxes/regions.py``) and by the attention head (each instance's class re-chosen
among those its prompt names, ``attention/maps.region_classes``).

Regions are cropped in place: the box, widened by ``CROP_PADDING`` about its centre, keeps its
pixels where it is in the image and everything else takes the image border's median colour, so
the CLIP sees the object at the scale it was trained on. On the shipped shapes CLIP this beats
crop-and-resize (``bench/bench_grounding_regions.py``; BENCHMARKS.md "Open-vocabulary grounding").
Only the shapes CLIP has been measured: a CLIP trained on object-centred photographs may prefer
crop-and-resize, untested here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLIP_TEMPLATE", "CROP_PADDING", "VILD_WEIGHT", "check_region_clip", "clip_class_text", "region_crops", "masked_crops",
           "clip_probabilities"]

CROP_PADDING = 1.2  # measured best of 1.0, 1.2, 1.4, 1.7 (BENCHMARKS.md)
CLIP_TEMPLATE = "a photograph of a {}"  # the shapes CLIP's zero-shot prompt (its card)
VILD_WEIGHT = 2 / 3  # ViLD's lambda: the CLIP's share of the geometric ensemble for what the labeller cannot name


def check_region_clip(field: str, value: str) -> str | None:
    """One message when ``value`` is neither 'auto', 'none' nor something that can name a CLIP."""
    from ..models.clip_embeddings import is_clip

    if value in ("auto", "none") or is_clip(value):
        return None
    return (f"{field}: expected 'auto', 'none', 'embedded:clip', a CLIPModel folder (config.json, safetensors) "
            f"or a hub id, got {value!r}")


def clip_class_text(clip, names: list[str], template: str = CLIP_TEMPLATE):
    """(C, D) float L2-normalised CLIP text embeddings of ``names`` in ``template`` ('{}': the name,
    underscores read as spaces); ``clip``: ``models.clip_embeddings.load_clip``'s pair."""
    from ..models.clip_embeddings import text_embeddings

    return text_embeddings(clip, [template.replace("{}", name.replace("_", " ")) for name in names])


def region_crops(image: np.ndarray, boxes_xyxy: np.ndarray, padding: float = CROP_PADDING) -> np.ndarray:
    """(N, H, W, 3) uint8: ``image`` (H, W, 3 uint8) with only box n's pixels kept, the box widened
    by ``padding`` about its centre and clipped to the image; ``boxes_xyxy`` (N, 4) in pixels."""
    height, width = image.shape[:2]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    fill = np.median(border, axis=0).astype(np.uint8)
    crops = np.empty((len(boxes_xyxy), *image.shape), dtype=np.uint8)
    for n, (x0, y0, x1, y1) in enumerate(np.asarray(boxes_xyxy, dtype=np.float64)):
        cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, padding * (x1 - x0) / 2, padding * (y1 - y0) / 2
        left, top = max(int(round(cx - half_w)), 0), max(int(round(cy - half_h)), 0)
        right = min(max(int(round(cx + half_w)), left + 1), width)
        bottom = min(max(int(round(cy + half_h)), top + 1), height)
        crops[n] = fill
        crops[n, top:bottom, left:right] = image[top:bottom, left:right]
    return crops


def masked_crops(image: np.ndarray, regions: list[np.ndarray], dilation: int, padding: float = CROP_PADDING) -> np.ndarray:
    """(N, H, W, 3) uint8: ``region_crops`` of each region's box, with the pixels outside the
    region (dilated by ``dilation`` pixels, so its edge stays) taking the border's median colour
    too: the CLIP sees this object and not the neighbour that shares its box. ``regions``: N
    (H, W) bool masks, none empty."""
    from scipy.ndimage import binary_dilation

    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    fill = np.median(border, axis=0).astype(np.uint8)
    crops = np.empty((len(regions), *image.shape), dtype=np.uint8)
    for n, region in enumerate(regions):
        ys, xs = np.nonzero(region)
        kept = binary_dilation(region, iterations=dilation) if dilation else region
        alone = np.where(kept[..., None], image, fill)
        crops[n] = region_crops(alone, np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]), padding)[0]
    return crops


def clip_probabilities(clip, crops: np.ndarray, class_text):
    """(N, C) float32 torch softmax over C classes of the CLIP's scaled cosine similarity between
    each of N crops ((N, H, W, 3) uint8) and ``class_text`` ((C, D), ``clip_class_text``)."""
    from ..models.clip_embeddings import image_embeddings

    scale = clip[0].logit_scale.exp().item()
    return (scale * image_embeddings(clip, crops) @ class_text.T.to(clip[0].device)).softmax(-1)
