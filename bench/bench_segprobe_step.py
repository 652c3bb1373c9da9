"""s/step of ``dde probe --task segmentation``'s training step, per segmenter arm, interleaved on the
same batches in one process on one torch thread (issue 21; BENCHMARKS.md, "Downstream"):

- ``Large, 128 px``: LR-ASPP on MobileNetV3-Large, 64-px scenes upsampled to 128 (the earlier probe);
- ``Small, 128 px``: LR-ASPP on MobileNetV3-Small (``build_lraspp``'s default), upsampled to 128;
- ``Small, 64 px``: the same at the scenes' own 64 px.

Usage: ``python bench/bench_segprobe_step.py COCO_DIR [--rounds 8]`` on a ``dde world export --split
train`` folder. Prints each arm's median seconds per step of batch 32 (forward, cross-entropy,
backward, AdamW) and its ratio to the first arm.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from bench_probe_step import report, time_interleaved
from engine.lab.train.segprobe import IGNORE, build_lraspp, load_semantic

CLASSES = ["circle", "square", "triangle", "star", "ring", "cross"]
ARMS = {"Large, 128 px": ("mobilenet_v3_large", 128), "Small, 128 px": ("mobilenet_v3_small", 128),
        "Small, 64 px": ("mobilenet_v3_small", 64)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("coco")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, targets = load_semantic(os.path.join(args.coco, "images", "train"),
                                    os.path.join(args.coco, "annotations", "instances_train.json"), CLASSES, 64)
    arms = {}
    for name, (trunk, side) in ARMS.items():
        torch.manual_seed(0)
        model = build_lraspp(len(CLASSES), trunk).train()
        arms[name] = (model, torch.optim.AdamW(model.parameters(), 1e-3), side)

    def step(name: str, k: int) -> float:
        model, optimizer, side = arms[name]
        batch = slice(32 * k, 32 * k + 32)
        started = time.perf_counter()
        x = torch.stack(images[batch]).float() / 255
        logits = model(F.interpolate(x, size=(side, side), mode="bilinear"))["out"]
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear")
        loss = F.cross_entropy(logits, torch.stack(targets[batch]), ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    report(time_interleaved(step, list(arms), args.rounds), next(iter(ARMS)))

if __name__ == "__main__":
    main()
