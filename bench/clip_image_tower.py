"""Which image tower learns the shapes world's classes fastest? Each arm trains a CLIP ViT image
tower (``CLIPVisionModelWithProjection``, as in ``dde train clip``) on the CLIP trainer's batches for
the same wall-clock, then reports its class accuracy on rendered single-object val scenes (a linear
head on the unit image embedding, argmax over the 6 classes) and the multi-label loss on held-out
multi-object scenes. Run one thread per process on shared cores:

    OMP_NUM_THREADS=1 python bench/clip_image_tower.py --arm baseline --seconds 180
    OMP_NUM_THREADS=1 python bench/clip_image_tower.py --overfit   # one fixed batch, 200 steps

Arms (``ARMS``) vary the learning rate, the augmentation, the share of single-object scenes, and add
knowledge distillation from the frozen shipped oracle CNN (its logits as soft multi-hot targets,
``kd_weight``, and/or its pooled 128-d features regressed from the image embedding, ``feature_weight``).
"""

import argparse
import os
import time
from dataclasses import dataclass, replace

import numpy as np

BASE = dict(lr=1e-3, warmup=50, patch=8, width=128, layers=4, heads=4, augment=True, single_share=0.0,
            kd_weight=0.0, feature_weight=0.0, dense_weight=0.0, class_weight=1.0, max_scale=0.55, min_scale=0.18)
ARMS = {
    "baseline": {},
    "lr3e-3": dict(lr=3e-3, warmup=100),
    "lr3e-4": dict(lr=3e-4),
    "no-augment": dict(augment=False),
    "single-half": dict(single_share=0.5),
    "kd-logits": dict(kd_weight=1.0),
    "kd-features": dict(feature_weight=1.0),
    "kd-both": dict(kd_weight=1.0, feature_weight=1.0),
    "kd-both-single-half": dict(kd_weight=1.0, feature_weight=1.0, single_share=0.5),
    "dense": dict(kd_weight=1.0, dense_weight=1.0),
    "dense-single-half": dict(kd_weight=1.0, dense_weight=1.0, single_share=0.5),
    "single-all": dict(single_share=1.0),
    "dense-single-half-lr3e-3": dict(kd_weight=1.0, dense_weight=1.0, single_share=0.5, lr=3e-3, warmup=100),
    "w96-h6-l3": dict(width=96, heads=6, layers=3),
    "p4-l2": dict(patch=4, layers=2),
    "large-objects": dict(min_scale=0.3),
}


def tower(cfg):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        image_size=64, patch_size=cfg["patch"], hidden_size=cfg["width"], intermediate_size=4 * cfg["width"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"], projection_dim=128))


def batch(cfg, step, size=64, seed=1):
    """Pixels (size, 3, 64, 64) in [-1, 1] and multi-hot classes (size, 6) of step ``step``; a share
    ``single_share`` of the scenes hold one object."""
    import torch

    from engine.lab.train.data import render_batch
    from engine.lab.train.diffusion import _step_generator
    from engine.lab.train.oracle import _augment, to_input
    from engine.world import CLASSES, WorldConfig

    single = int(round(cfg["single_share"] * size))
    parts = []
    if single:
        parts.append(render_batch(seed * 7919 + 5, step * size, single, WorldConfig(
            size=64, min_objects=1, max_objects=1, min_scale=cfg["min_scale"], max_scale=cfg["max_scale"])))
    if size - single:
        parts.append(render_batch(seed * 7919 + 3, step * size, size - single, WorldConfig(
            size=64, max_objects=3, min_scale=cfg["min_scale"], max_scale=cfg["max_scale"])))
    images = np.concatenate([p[0] for p in parts])
    info = [i for p in parts for i in p[1]]
    present = torch.tensor([[float(c in classes) for c in CLASSES] for _, classes in info])
    x = to_input(images)
    return (_augment(x, _step_generator(seed, step)) if cfg["augment"] else x), present


def val_sets():
    """Single-object scenes of the model's world (50 per class) and 256 multi-object scenes."""
    import torch

    from engine.lab.metrics.clip import VAL_SEED
    from engine.lab.train.oracle import to_input
    from engine.models.embedded import model_world
    from engine.output.layout import derive_seed
    from engine.world import CLASSES, render_scene

    single = model_world(min_objects=1, max_objects=1)
    images, labels = [], []
    for k, name in enumerate(CLASSES):
        images += [render_scene(derive_seed(VAL_SEED, k * 10**6 + i), [name], single).image for i in range(50)]
        labels += [k] * 50
    multi = replace(model_world(), max_objects=3)
    scenes = [render_scene(derive_seed(VAL_SEED + 1, i), None, multi) for i in range(256)]
    present = torch.tensor([[float(any(s.category == c for s in sc.instances)) for c in CLASSES] for sc in scenes])
    return (to_input(np.stack(images)), torch.tensor(labels)), (to_input(np.stack([s.image for s in scenes])), present)


def run(name, cfg, seconds, overfit=False, steps=None, seed=0):
    import torch
    import torch.nn.functional as F

    from engine.lab.train.oracle import load_oracle

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(seed)
    model = tower(cfg)
    head, feat_head = torch.nn.Linear(128, 6), torch.nn.Linear(128, 128)
    dense_head = torch.nn.Linear(cfg["width"], 128)
    oracle = load_oracle().eval()
    params = list(model.parameters()) + list(head.parameters()) + list(feat_head.parameters()) + list(dense_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.05)
    fixed = batch(cfg, 0) if overfit else None
    started, step = time.time(), 0
    while (time.time() - started < seconds) if steps is None else step < steps:
        pixels, present = fixed or batch(cfg, step, seed=seed + 1)
        for group in optimizer.param_groups:
            group["lr"] = cfg["lr"] * min(1.0, (step + 1) / cfg["warmup"])
        out = model(pixels)
        embeds = out.image_embeds
        unit = F.normalize(embeds, dim=-1) * 128 ** 0.5
        logits = head(unit)
        loss = cfg["class_weight"] * F.binary_cross_entropy_with_logits(logits, present)
        if cfg["kd_weight"] or cfg["feature_weight"] or cfg["dense_weight"]:
            with torch.no_grad():
                spatial = oracle[0][:-2](pixels)  # (B, 128, 4, 4) before the oracle's pooling
                target_features = spatial.mean((2, 3))
                target = torch.sigmoid(oracle[1](target_features))
            if cfg["kd_weight"]:
                loss = loss + cfg["kd_weight"] * F.binary_cross_entropy_with_logits(logits, target)
            if cfg["feature_weight"]:
                loss = loss + cfg["feature_weight"] * F.mse_loss(feat_head(unit), target_features)
            if cfg["dense_weight"]:  # every patch token regresses the oracle's feature map at its place
                side = 64 // cfg["patch"]
                tokens = out.last_hidden_state[:, 1:].transpose(1, 2).reshape(len(pixels), -1, side, side)
                tokens = F.adaptive_avg_pool2d(tokens, spatial.shape[-1]).flatten(2).transpose(1, 2)
                loss = loss + cfg["dense_weight"] * F.mse_loss(dense_head(tokens), spatial.flatten(2).transpose(1, 2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"{name} step {step} loss {loss.item():.3f} ({time.time() - started:.0f} s)", flush=True)
    model.eval()
    (sx, sy), (mx, my) = val_sets()
    with torch.no_grad():
        single_logits = head(F.normalize(model(sx).image_embeds, dim=-1) * 128 ** 0.5)
        multi_logits = head(F.normalize(model(mx).image_embeds, dim=-1) * 128 ** 0.5)
    accuracy = (single_logits.argmax(1) == sy).float().mean().item()
    multi = F.binary_cross_entropy_with_logits(multi_logits, my).item()
    print(f"RESULT {name}: steps {step}, {time.time() - started:.0f} s, single-object accuracy {accuracy:.3f}, "
          f"multi-object BCE {multi:.3f}", flush=True)
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", default="baseline", choices=list(ARMS))
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overfit", action="store_true", help="one fixed batch of 64, 200 steps")
    args = parser.parse_args()
    cfg = {**BASE, **ARMS[args.arm]}
    if args.overfit:
        run(f"{args.arm} overfit", cfg, 0, overfit=True, steps=args.steps or 200, seed=args.seed)
    else:
        run(args.arm, cfg, args.seconds, steps=args.steps, seed=args.seed)
