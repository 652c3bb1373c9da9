"""CLIP scores for the shapes world, for the small shapes CLIP or any real CLIP.

``load_clip`` takes a folder or hub id (``CLIPModel.from_pretrained``); the helpers take
uint8 images and return float32 numpy arrays, so callers need no torch.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...job.phrases import objects_phrase
from ...models.clip_embeddings import image_embeddings as _image_embeddings
from ...models.clip_embeddings import load_clip
from ...models.clip_embeddings import text_embeddings as _text_embeddings
from ...output.layout import derive_seed
from ...world import CLASSES, WorldConfig, render_scene

__all__ = ["load_clip", "image_text_scores", "image_similarity", "zero_shot_accuracy"]

VAL_SEED = 246_813_579  # a seed stream training never draws


def image_text_scores(clip, images: np.ndarray, texts: list[str]) -> np.ndarray:
    """Cosine similarity of each image with each text: (N, T) float32 in [-1, 1].

    ``clip``: ``load_clip``'s pair; ``images``: (N, H, W, 3) uint8 RGB, any size the processor takes.
    """
    return (_image_embeddings(clip, images) @ _text_embeddings(clip, texts).T).numpy()


def image_similarity(clip, images_a: np.ndarray, images_b: np.ndarray) -> np.ndarray:
    """Cosine similarity of the image embeddings: (N, M) float32 in [-1, 1]; images (N|M, H, W, 3) uint8."""
    return (_image_embeddings(clip, images_a) @ _image_embeddings(clip, images_b).T).numpy()


def zero_shot_accuracy(model: str, images_per_class: int = 100, world: WorldConfig | None = None,
                       batch_size: int = 100) -> dict:
    """Share of rendered single-object val scenes whose best-scoring prompt among
    "a photograph of a <class>" (the 6 classes) names the drawn class.

    ``model``: a CLIP folder or hub id. ``world``: the scenes' world (default: the default world),
    drawn with exactly one object. Returns {"mean": float, "per_class": {class: float in [0, 1]},
    "images_per_class": int}.
    """
    clip = load_clip(model)
    single = replace(world or WorldConfig(), min_objects=1, max_objects=1)
    prompts = [f"a photograph of {objects_phrase([c])}" for c in CLASSES]
    texts = _text_embeddings(clip, prompts)
    correct = {}
    for index, name in enumerate(CLASSES):
        seeds = [derive_seed(VAL_SEED, index * 10**6 + k) for k in range(images_per_class)]
        predicted = np.concatenate([
            (_image_embeddings(clip, np.stack([render_scene(s, [name], single).image for s in seeds[i:i + batch_size]]))
             @ texts.T).argmax(1).numpy() for i in range(0, len(seeds), batch_size)])
        correct[name] = round(float((predicted == index).mean()), 4)
    return {"mean": round(float(np.mean(list(correct.values()))), 4), "per_class": correct,
            "images_per_class": images_per_class}
