"""CLIP image embeddings for any ``CLIPModel`` (a folder or hub id; safetensors, no remote code):
used by High-quality Image Selection (``job/selection.py``, Diffusion Synthesis Eq. 2) and by the
lab's CLIP scores (``lab/metrics/clip.py``)."""

from __future__ import annotations

import numpy as np

__all__ = ["EMBEDDED_CLIP", "clip_folder", "is_clip", "load_clip", "image_embeddings", "text_embeddings"]

EMBEDDED_CLIP = "embedded:clip"  # the shipped small shapes CLIP (engine/models/clip, issue 13)


def clip_folder(model: str) -> str:
    """The folder or hub id that ``model`` names: ``embedded:clip`` is the shipped shapes CLIP."""
    from .shipped import CLIP_DIR

    return CLIP_DIR if model == EMBEDDED_CLIP else model


def is_clip(model: str) -> bool:
    """Whether ``model`` can name a CLIP: ``embedded:clip``, a folder holding config.json, or a hub id."""
    import os

    from .loading import is_hub_id

    folder = clip_folder(model)
    return os.path.exists(os.path.join(folder, "config.json")) or is_hub_id(folder)


def load_clip(model: str):
    """(CLIPModel in eval mode, float32, CLIPProcessor) from ``embedded:clip``, a folder or a hub id; no remote
    code. float32 whatever the stored dtype: the processor's pixels are float32."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = clip_folder(model)
    return (CLIPModel.from_pretrained(model, use_safetensors=True, dtype=torch.float32).eval(),
            CLIPProcessor.from_pretrained(model))


def image_embeddings(clip, images: np.ndarray | list[np.ndarray]):
    """L2-normalised image embeddings (torch float32, N x projection_dim) of uint8 RGB images of any size
    (N,H,W,3, or a list of HxWx3), through ``load_clip``'s pair."""
    import torch

    model, processor = clip
    pixels = processor(images=list(images), return_tensors="pt").pixel_values.to(model.device)
    with torch.no_grad():
        return torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)


def text_embeddings(clip, texts: list[str]):
    """L2-normalised text embeddings (torch float32, N x projection_dim) of ``texts`` through ``load_clip``'s pair."""
    import torch

    model, processor = clip
    tokens = processor(text=texts, padding=True, truncation=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
