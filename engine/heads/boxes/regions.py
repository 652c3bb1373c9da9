"""Region classification by a CLIP, ensembled with a detector's own class scores: ViLD (Gu et al.,
"Open-vocabulary Object Detection via Vision and Language Knowledge Distillation", ICLR 2022),
its ViLD-image teacher (CLIP on cropped regions) used directly and its ensemble (Sec. 3.4):

    seen class c:    s = p_head(c) ** w * p_clip(c) ** (1 - w)
    unseen class c:  s = o ** (1 - w) * p_clip(c) ** w,          w = 2/3 (ViLD's lambda)

``p_clip`` is the softmax over the vocabulary of CLIP's scaled cosine similarity between the
region's image embedding and "a photograph of a <name>"; ``o`` is the detector's objectness, its
best score over every class it scores. ViLD keeps the unseen class's own text score where this
uses ``o``: a detector trained on seen names only scores unseen names near zero (on
embedded:shapes v2 the grounding head trained without this gave 0.012 boxes per novel image),
but its boxes, scored as the seen class they resemble, still find unseen objects.

Regions are cropped in place (``heads.clip_regions.region_crops``).
"""

from __future__ import annotations

import numpy as np

from ..clip_regions import VILD_WEIGHT, clip_probabilities, region_crops

__all__ = ["OBJECTNESS_FLOOR", "REGION_NMS_IOU", "clip_ensemble", "clip_rescored"]

OBJECTNESS_FLOOR = 0.01  # regions below it are not cropped (scored 0): about 5 per image on the shipped head
# Class-wise NMS after the ensemble, ViLD's (and Mask R-CNN's) 0.5 rather than the detector's 0.7: the
# ensemble lifts the low-scored near-duplicate queries that one-to-one matching had silenced. On the
# shipped head (160 img2img images, a throwaway script): precision at score 0.3 0.36 -> 0.46, novel AP50
# 0.61 -> 0.66.
REGION_NMS_IOU = 0.5


def clip_ensemble(probs, boxes_xyxy, images: list[np.ndarray], clip, class_text, seen: list[bool],
                  weight: float = VILD_WEIGHT, floor: float = OBJECTNESS_FLOOR, crop=None):
    """ViLD's ensemble of the detector's and the CLIP's class probabilities (module docstring).

    ``probs``: (B, Q, C) float sigmoid scores of B images' Q regions over C classes;
    ``boxes_xyxy``: (B, Q, 4) float pixels; ``images``: B (H, W, 3) uint8; ``clip``: ``load_clip``'s
    pair; ``class_text``: (C, D) its L2-normalised text embeddings of the C names; ``seen``: per
    class, whether the detector was trained on it; ``crop(image, boxes_xyxy) -> crops``: default
    ``region_crops`` (``bench/bench_grounding_regions.py`` compares others). Returns (B, Q, C)
    float scores in [0, 1]; regions whose objectness is under ``floor`` score 0.
    """
    import torch

    seen = torch.tensor(seen, dtype=torch.bool, device=probs.device)
    objectness = probs.max(-1).values
    scores = torch.zeros_like(probs)
    kept = objectness >= floor  # (B, Q)
    if not kept.any():
        return scores
    boxes = boxes_xyxy.detach().cpu().numpy()
    mask = kept.cpu().numpy()
    crops = np.concatenate([(crop or region_crops)(image, boxes[b][mask[b]]) for b, image in enumerate(images)
                            if mask[b].any()])  # one CLIP pass for the batch's regions, image order then query
    p_clip = clip_probabilities(clip, crops, class_text).to(probs.device)
    p_head, o = probs[kept], objectness[kept][:, None]
    scores[kept] = torch.where(seen, p_head ** weight * p_clip ** (1 - weight), o ** (1 - weight) * p_clip ** weight)
    return scores


def clip_rescored(out: dict, images: list[np.ndarray], clip, class_text, seen: list[bool], image_size: int,
                  weight: float = VILD_WEIGHT, crop=None) -> dict:
    """The detector's output (``{"logits": (B, Q, C), "boxes": (B, Q, 4) normalised cx, cy, w, h}``)
    with its logits replaced by those of ``clip_ensemble``'s scores, for ``detector.detections``."""
    import torch
    from torchvision.ops import box_convert

    boxes = box_convert(out["boxes"].float() * image_size, "cxcywh", "xyxy").clamp(0, image_size)
    scores = clip_ensemble(out["logits"].float().sigmoid(), boxes, images, clip, class_text, seen, weight, crop=crop)
    return {**out, "logits": torch.logit(scores.clamp(1e-6, 1 - 1e-6))}
