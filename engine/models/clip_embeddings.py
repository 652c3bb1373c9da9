"""CLIP image embeddings for any ``CLIPModel`` (a folder or hub id; safetensors, no remote code):
used by High-quality Image Selection (``job/selection.py``, Diffusion Synthesis Eq. 2) and by the
lab's CLIP scores (``lab/metrics/clip.py``)."""

from __future__ import annotations

import numpy as np

__all__ = ["load_clip", "image_embeddings"]


def load_clip(model: str):
    """(CLIPModel in eval mode, CLIPProcessor) from a folder or hub id; no remote code."""
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(model, use_safetensors=True).eval(), CLIPProcessor.from_pretrained(model)


def image_embeddings(clip, images: np.ndarray | list[np.ndarray]):
    """L2-normalised image embeddings (torch float32, N x projection_dim) of uint8 RGB images of any size
    (N,H,W,3, or a list of HxWx3), through ``load_clip``'s pair."""
    import torch

    model, processor = clip
    pixels = processor(images=list(images), return_tensors="pt").pixel_values
    with torch.no_grad():
        return torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
