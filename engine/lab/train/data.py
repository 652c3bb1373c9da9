"""Training data from the shapes world: images and prompts in every style the engine uses."""

from __future__ import annotations

import numpy as np

from ...job.phrases import class_append_prompt, generic_prompt, objects_phrase
from ...output.layout import derive_seed
from ...world import WorldConfig, render_scene

__all__ = ["render_batch", "prompt_variant", "scene_classes"]


def scene_classes(scene) -> list[str]:
    """Classes in the scene, first-seen (paint) order, without repeats."""
    return list(dict.fromkeys(inst.category for inst in scene.instances))


def prompt_variant(caption: str, classes: list[str], rng: np.random.Generator, drop: float) -> str:
    """One of the prompt styles the engine generates with, so the model understands them all."""
    if rng.random() < drop or not classes:
        return "" if rng.random() < drop or not classes else caption
    order = list(rng.permutation(classes))
    style = rng.choice(4, p=[0.4, 0.3, 0.15, 0.15])
    if style == 0:
        return caption
    if style == 1:
        return f"a photograph of {objects_phrase(order)}"
    if style == 2:
        return generic_prompt("photograph", order)
    return class_append_prompt(caption, order)


def render_batch(seed: int, start: int, count: int, config: WorldConfig):
    """Scenes start..start+count-1 of a training stream: uint8 images and (caption, classes)."""
    scenes = [render_scene(derive_seed(seed, i), None, config) for i in range(start, start + count)]
    images = np.stack([s.image for s in scenes])
    return images, [(s.caption, scene_classes(s)) for s in scenes]
