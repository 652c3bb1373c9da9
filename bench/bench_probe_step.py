"""s/step of ``dde probe``'s detection training step, earlier vs current, interleaved on the same
batches in one process (issue 21; BENCHMARKS.md, "Downstream"):

- ``256 wide, 2 threads``: the earlier probe, ``mobilenet_backbone`` FPN and FCOS head 256 channels
  wide, with torch threads = the machine's cores (2 here), as it ran before;
- ``256 wide, 1 thread``: the same model on one thread;
- ``128 wide, 1 thread``: ``engine.lab.train.probe.build_fcos`` as it ships.

Usage: ``python bench/bench_probe_step.py COCO_DIR [--rounds 8]`` on a ``dde world export --split
train`` folder of 64-px scenes. Prints each arm's median seconds per step of batch 32 (forward,
loss, backward, clipping, AdamW) and its ratio to the shipped one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from engine.lab.train.probe import RETURNED_STAGES, STRIDES, _detection_loss, build_fcos, load_detection

CLASSES = ["circle", "square", "triangle", "star", "ring", "cross"]


def build_fcos_256(num_classes: int, size: int):
    """The earlier probe's detector: torchvision's mobilenet_backbone (FPN 256) under FCOS."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True,
                                  norm_layer=nn.BatchNorm2d, trainable_layers=6, returned_layers=RETURNED_STAGES)
    anchors = AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))
    return FCOS(backbone, num_classes + 1, min_size=size, max_size=size, anchor_generator=anchors, score_thresh=0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("coco")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    images, targets = load_detection(os.path.join(args.coco, "images", "train"),
                                     os.path.join(args.coco, "annotations", "instances_train.json"), CLASSES)
    arms = {}
    for name, build, threads in (("256 wide, 2 threads", build_fcos_256, 2), ("256 wide, 1 thread", build_fcos_256, 1),
                                 ("128 wide, 1 thread", build_fcos, 1)):
        torch.manual_seed(0)
        model = build(len(CLASSES), 64).train()
        arms[name] = (model, torch.optim.AdamW(model.parameters(), 1e-3), threads)

    def step(name: str, k: int) -> float:
        model, optimizer, threads = arms[name]
        torch.set_num_threads(threads)
        batch = slice(32 * k, 32 * k + 32)
        started = time.perf_counter()
        loss = _detection_loss(model, images[batch], targets[batch], "cpu")["total"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        return time.perf_counter() - started

    report(time_interleaved(step, list(arms), args.rounds), "128 wide, 1 thread")


def time_interleaved(step, names: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds of ``step(name, k)`` per arm: one warm-up each on batch 0, then rounds 1..``rounds``
    with the arms alternating, so load from other jobs falls on all of them alike."""
    for name in names:
        step(name, 0)
    times = {name: [] for name in names}
    for k in range(1, rounds + 1):
        for name in names:
            times[name].append(step(name, k))
    return times


def report(times: dict[str, list[float]], reference: str) -> None:
    """Each arm's median s/step and its ratio to the ``reference`` arm's."""
    base = statistics.median(times[reference])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:20s} median {median:.3f} s/step  x{median / base:.2f} {reference}  "
              f"{[round(v, 2) for v in values]}")

if __name__ == "__main__":
    main()
