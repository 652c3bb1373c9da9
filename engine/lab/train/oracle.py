"""The fidelity oracle: a small multi-label classifier, "which classes are present", trained on
rendered shapes-world scenes. Blur, noise and colour jitter during training make it hold
up on generated images, which are softer than rendered ones. Its pooled features serve
for a Fréchet distance between generated and rendered images.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ...models.embedded import model_world
from ...models.shipped import ORACLE_DIR
from ...models.segmentation import to_input
from ...models.trained import load_trained, save_trained
from ...output.layout import derive_seed
from ...world import CLASSES, WorldConfig, render_scene
from . import flushed_print

__all__ = ["build_classifier", "train_oracle", "load_oracle", "ORACLE_DIR", "rendered_set"]

def build_classifier():
    import torch.nn as nn

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    # The first layer already strides: objects span 19-35 px, so 32x32 keeps their shape, at a third of the cost.
    features = nn.Sequential(*block(3, 32, 2), *block(32, 48, 2), *block(48, 64, 2), *block(64, 128, 2),
                             *block(128, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.Sequential(features, nn.Linear(128, len(CLASSES)))


def rendered_set(seed: int, count: int, config: WorldConfig | None = None):
    """uint8 images and multi-hot labels of ``count`` rendered scenes (of the model's world by default)."""
    config = config or model_world()
    scenes = [render_scene(derive_seed(seed, i), None, config) for i in range(count)]
    labels = np.zeros((count, len(CLASSES)), np.float32)
    for k, scene in enumerate(scenes):
        for inst in scene.instances:
            labels[k, CLASSES.index(inst.category)] = 1
    return np.stack([s.image for s in scenes]), labels


def _augment(x, generator):
    """Softness and noise like a small diffusion model's output."""
    import torch
    import torch.nn.functional as F

    blur = torch.tensor([1.0, 2.0, 1.0]) / 4
    kernel = (blur[:, None] * blur[None, :]).expand(3, 1, 3, 3)
    soft = torch.rand(len(x), 1, 1, 1, generator=generator) < 0.5
    x = torch.where(soft, F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3), x)
    x = x * (1 + 0.1 * torch.randn(len(x), 3, 1, 1, generator=generator))
    return x + 0.05 * torch.randn(x.shape, generator=generator)


def fit(model, loss_at, steps: int, lr: float, name: str, echo=None) -> None:
    """AdamW and a one-cycle schedule peaking at ``lr``; ``loss_at(step)`` draws step ``step``'s batch
    and returns its loss."""
    import torch

    echo = echo or flushed_print
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    started = time.time()
    for step in range(steps):
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            echo(f"{name} step {step + 1} loss {loss.item():.4f} ({(time.time() - started) / 60:.1f} min)")


def train_oracle(out: str = ORACLE_DIR, steps: int = 1500, batch: int = 128, seed: int = 0, echo=None) -> dict:
    import torch

    torch.manual_seed(seed)
    model = build_classifier()
    generator = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started = time.time()

    def loss_at(step):
        images, labels = rendered_set(seed * 7919 + 11 + step, batch)
        return loss_fn(model(_augment(to_input(images), generator)), torch.from_numpy(labels))

    fit(model, loss_at, steps, 2e-3, "oracle", echo)
    metrics = evaluate_oracle(model.eval())
    card = {"classes": list(CLASSES), "steps": steps, "batch": batch, "seed": seed,
            "train_minutes": round((time.time() - started) / 60, 1), "rendered_val": metrics}
    save_trained(model, out, "classifier", card)
    return card


def evaluate_oracle(model, count: int = 2000) -> dict:
    """Accuracy on rendered val (a seed stream the training never sees)."""
    import torch

    images, labels = rendered_set(987_654_321, count)
    with torch.no_grad():
        predicted = torch.sigmoid(model(to_input(images))).numpy() > 0.5
    return {"images": count, "per_label_accuracy": round(float((predicted == labels).mean()), 4),
            "exact_match": round(float((predicted == labels).all(axis=1).mean()), 4)}


def load_oracle(folder: str = ORACLE_DIR):
    return load_trained(build_classifier(), folder, "classifier", "oracle")
