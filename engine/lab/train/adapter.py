"""``dde train adapter``: DiffusionEngine's Detection-Adapter on a COCO folder (section 3.2).

Each real image's features come from Eq. 4, computed once and cached (``OUT/cache``); the
detector (``engine.heads.boxes.detector``, optionally with the PROPS heatmap head) trains on them with
Hungarian-matched set losses, evaluated with COCOeval on the val split every K steps.
Writes ``OUT/adapter.safetensors`` with its card ``OUT/adapter.json`` and the learning curve
``OUT/curve.csv``/``.png``; rerunning the command resumes from ``OUT/checkpoint``.
"""

from __future__ import annotations

import json
import os

__all__ = ["AdapterRecipe", "train_adapter"]



class AdapterRecipe:
    """Training settings. ``queries``, ``layers``, ``width``: the detector's capacity; None sizes it
    for the data (``heads.boxes.detector.capacity``). The defaults are the shipped adapter's; where
    they differ from the papers (``LossWeights`` says why and what is measured):

    - ``class_weight`` 2 (DINO's focal loss weight is 1);
    - ``heatmap_weight`` 10 (PROPS' code: 1.5), ``heatmap_sigma`` "centernet" (PROPS: "radius",
      sigma = r), ``heatmap_level`` "finest" (PROPS' code: "coarsest").
    """

    def __init__(self, *, steps: int = 3000, batch: int = 32, lr: float = 1e-3, heatmap: bool = True,
                 heatmap_weight: float = 10.0, eval_every: int = 250, val_images: int = 500, seed: int = 0,
                 queries: int | None = None, layers: int | None = None, width: int | None = None,
                 class_weight: float = 2.0, heatmap_sigma: str = "centernet", heatmap_level: str = "finest"):
        self.steps, self.batch, self.lr, self.seed = steps, batch, lr, seed
        self.heatmap, self.heatmap_weight = heatmap, heatmap_weight
        self.eval_every, self.val_images = eval_every, val_images
        self.queries, self.layers, self.width = queries, layers, width
        self.class_weight, self.heatmap_sigma, self.heatmap_level = class_weight, heatmap_sigma, heatmap_level

    def to_json(self) -> dict:
        return dict(vars(self))


def train_adapter(data: str | list[str], model: str, out: str, recipe: AdapterRecipe, workers: int = 1,
                  gpus: bool = False, device: str | None = None) -> dict:
    """Train on Ray Train (see ``run_on_ray``; ``device`` set: directly on that device, for
    benchmark sweeps); returns the model card. ``data``: one COCO folder or several (e.g. two
    rendered worlds), whose train splits are pooled and whose val splits are pooled; they must
    name the same categories in the same order and hold images of one size.

    Raises ``UserError`` (before Ray starts) for a missing split, folders that disagree, a
    detector size out of range or a missing local ``model``."""
    from ...errors import UserError
    from ...heads.boxes.detector import check_capacity
    from .detection import check_model, launch

    problem = check_capacity(recipe.queries, recipe.layers, recipe.width)
    if problem:
        raise UserError(problem)
    folders = [os.path.abspath(folder) for folder in ([data] if isinstance(data, str) else data)]
    _check_folders(folders)
    check_model(model)
    config = {"data": folders, "model": model, "out": os.path.abspath(out), "recipe": recipe.to_json()}
    return launch(_adapter_loop, config, "adapter", workers, gpus, device)


def _check_folders(folders: list[str]) -> None:
    """Every folder a COCO train split, all with the first one's categories and image side."""
    from ...errors import UserError
    from .detection import coco_annotations, read_categories

    if not folders:
        raise UserError("--data: expected one or more COCO folders, got none")
    first, _, side = read_categories(coco_annotations(folders[0], "train"), "--data")
    for folder in folders[1:]:
        theirs, _, their_side = read_categories(coco_annotations(folder, "train"), "--data")
        if (list(theirs.items()), their_side) != (list(first.items()), side):
            raise UserError(f"--data: expected folders with the same categories and image size as {folders[0]!r} "
                            f"({', '.join(first.values())}; {side} px), got {folder!r} with "
                            f"{', '.join(theirs.values())}; {their_side} px; export them with the same classes and --size")


def _split(folders: list[str], val_images: int):
    """Train and val pooled over the folders: each folder's val split if it has one (its first
    ``val_images``), else the last ``val_images`` of its train split (at most a fifth)."""
    import numpy as np

    from .detection import has_split, load_coco

    train_parts, train_boxes, val_parts, val_boxes = [], [], [], []
    for folder in folders:
        images, instances, classes = load_coco(folder, "train")
        if has_split(folder, "val"):
            held, held_instances, _ = load_coco(folder, "val")
            held, held_instances = held[:val_images], held_instances[:val_images]
        else:
            cut = len(images) - min(val_images, len(images) // 5)
            images, instances, held, held_instances = images[:cut], instances[:cut], images[cut:], instances[cut:]
        train_parts.append(images)
        train_boxes += instances
        val_parts.append(held)
        val_boxes += held_instances
    return (np.concatenate(train_parts), train_boxes), (np.concatenate(val_parts), val_boxes), classes


def _adapter_loop(config: dict) -> None:
    import torch

    from ...heads.boxes.detector import DetectorConfig, LossWeights, build_detector, capacity, detection_loss
    from ...models.trained import save_trained
    from .detection import (
        FeatureExtractor,
        Schedule,
        WorkerContext,
        cached,
        evaluate_boxes,
        fingerprint,
        targets_batch,
        train_schedule,
        worker_share,
        write_curve,
    )

    worker = WorkerContext(config)
    rank, world, device = worker.rank, worker.world, worker.device
    torch.set_num_threads(config["threads"])
    recipe, out = AdapterRecipe(**config["recipe"]), config["out"]
    (train_images, train_instances), (val_images, val_instances), classes = _split(config["data"], recipe.val_images)
    mine = worker_share(len(train_images), rank, world)
    extractor = FeatureExtractor(config["model"], device)
    key = fingerprint(config["data"], config["model"], len(train_images), world, recipe.seed)  # Eq. 4 noise: seeded
    train = cached(f"{out}/cache/train-{key}-{rank}.safetensors",
                   lambda: extractor(train_images[mine], seed=recipe.seed * 1000 + rank))
    val = None
    if worker.leader:  # the only one that evaluates
        val = cached(f"{out}/cache/val-{key}.safetensors", lambda: extractor(val_images, seed=recipe.seed + 999))
        val = {s: v.to(device) for s, v in val.items()}
    size = extractor.image_size
    targets = targets_batch([train_instances[i] for i in mine], classes, size)
    detector_config = DetectorConfig(levels={s: v.shape[1] for s, v in train.items()}, image_size=size,
                                     num_classes=len(classes), heatmap=recipe.heatmap,
                                     heatmap_level=recipe.heatmap_level,
                                     **capacity(max(map(len, train_instances), default=0), len(classes),
                                                recipe.queries, recipe.layers, recipe.width))
    torch.manual_seed(recipe.seed)
    detector = build_detector(detector_config)
    model = worker.prepare(detector)
    weights = LossWeights(class_loss=recipe.class_weight, heatmap=recipe.heatmap_weight,
                          sigma_rule=recipe.heatmap_sigma)
    per_worker = max(1, recipe.batch // world)

    def loss_at(step: int) -> dict:
        drawn = torch.randint(len(mine), (per_worker,), generator=torch.Generator().manual_seed(
            recipe.seed * 10**7 + step * world + rank))
        pyramid = {s: v[drawn].to(device).float() for s, v in train.items()}
        return detection_loss(model(pyramid), [targets[i] for i in drawn.tolist()], weights)

    def evaluate() -> dict:
        return evaluate_boxes(detector, val, val_instances, classes, size)

    schedule = Schedule(recipe.steps, recipe.lr, eval_every=recipe.eval_every)
    curve = train_schedule(model, {"detector": detector}, loss_at, schedule, f"{out}/checkpoint", evaluate,
                           leader=worker.leader, report=worker.report)
    if not worker.leader:
        return
    write_curve(curve, f"{out}/curve", f"adapter{' + heatmap head' if recipe.heatmap else ''}: val box AP50")
    card = {"head": "adapter", "classes": classes, "model": config["model"], "data": config["data"],
            "train_images": len(train_images), "val_images": len(val_images), "workers": world,
            "detector": detector_config.to_json(), "recipe": recipe.to_json(), "schedule": schedule.to_json(),
            "train_minutes": curve[-1]["minutes"], "val": {k: v for k, v in curve[-1].items() if "AP" in k}}
    save_trained(detector, out, "adapter", card)
