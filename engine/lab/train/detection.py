"""What training the two box heads shares: COCO folders, cached UNet features, the training
schedule (AdamW, step decay, resumable safetensors checkpoints, COCOeval every K steps, a learning
curve as CSV and PNG) and the Ray Train ``TorchTrainer`` that runs it (1 CPU worker on a laptop,
N GPU workers on a cluster; each worker trains on its own shard of the data).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time

import numpy as np

from ...errors import UserError
from ...records import Instance
from . import flushed_print

__all__ = ["check_model", "coco_split", "has_split", "coco_annotations", "read_categories", "load_coco", "FeatureExtractor", "cached", "fingerprint", "Schedule", "train_schedule", "evaluate_boxes",
           "write_curve", "launch", "run_on_ray", "worker_share", "targets_batch", "WorkerContext"]


# ---- inputs
def check_model(model: str) -> None:
    """A local or embedded ``--model`` must exist before Ray starts (a hub id is checked when loaded)."""
    from ...models import local_model_problem

    problem = local_model_problem(model)
    if problem:
        raise UserError(problem.replace("generator.params.model", "--model", 1))


# ---- data
def _split_paths(folder: str, split: str) -> tuple[str, str] | None:
    exported = os.path.join(folder, "annotations", f"instances_{split}.json"), os.path.join(folder, "images", split)
    if os.path.exists(exported[0]):
        return exported
    output = os.path.join(folder, "coco", "instances.json"), os.path.join(folder, "coco", "images")
    if split == "train" and os.path.exists(output[0]):
        return output
    return None


def has_split(folder: str, split: str) -> bool:
    """Whether ``coco_split(folder, split)`` finds the split."""
    return _split_paths(folder, split) is not None


def coco_split(folder: str, split: str, field: str = "--data") -> tuple[str, str]:
    """(instances file, image folder) of a split, or one clear error naming ``field``: a COCO folder
    as `dde world export` writes it (annotations/instances_SPLIT.json, images/SPLIT/), or, as the
    train split, a finished dde output (coco/instances.json, coco/images/: the engine's own data)."""
    paths = _split_paths(folder, split)
    if paths:
        return paths
    raise UserError(f"{field}: expected a COCO folder with annotations/instances_{split}.json and images/{split}/ "
                    f"(as `dde world export --out DIR --split {split}` writes)"
                    + (" or a finished dde output (coco/instances.json)" if split == "train" else "")
                    + f", got {folder!r}")


def coco_annotations(folder: str, split: str, field: str = "--data") -> str:
    """The split's instances file (``coco_split``)."""
    return coco_split(folder, split, field)[0]


def read_categories(path: str, field: str) -> tuple[dict[int, str], int, int]:
    """A COCO instances file's {category id: name}, its image count and largest image side (px)."""
    try:
        with open(path) as f:
            data = json.load(f)
        names = {c["id"]: c["name"] for c in data["categories"]}
        side = max([max(i["width"], i["height"]) for i in data["images"]], default=0)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{field}: expected a readable COCO instances file, got {path!r} ({e})") from e
    return names, len(data["images"]), side


def load_coco(folder: str, split: str) -> tuple[np.ndarray, list[list[Instance]], list[str]]:
    """uint8 images (N,H,W,3), each image's box instances and the category names of a COCO
    folder (``coco_split``)."""
    import contextlib
    import io
    from pathlib import Path

    from pycocotools.coco import COCO

    from ...images import decode_rgb

    annotations, image_folder = coco_split(folder, split)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(annotations)
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    ids = sorted(coco.getImgIds())
    root = Path(image_folder)  # images decoded as references are: orientation, bit depth, transparency
    images = np.stack([decode_rgb((root / coco.imgs[i]["file_name"]).read_bytes()) for i in ids])
    instances = [[Instance(names[a["category_id"]], box=tuple(a["bbox"]))
                  for a in coco.loadAnns(coco.getAnnIds(imgIds=[i], iscrowd=False))] for i in ids]
    return images, instances, [names[k] for k in sorted(names)]


def targets_batch(instances: list[list[Instance]], classes: list[str], size: int,
                  scored: list[list[str]] | None = None) -> list[dict]:
    """Detector targets: class indices and normalised (cx, cy, w, h) boxes; with ``scored`` (per
    image, the class names it is scored against), a bool ``scored`` mask over ``classes`` as well
    (``matching.set_losses``)."""
    import torch

    index = {c: k for k, c in enumerate(classes)}
    out = []
    for k, insts in enumerate(instances):
        kept = [i for i in insts if i.category in index]
        boxes = torch.tensor([[x + w / 2, y + h / 2, w, h] for x, y, w, h in (i.bbox() for i in kept)],
                             dtype=torch.float32).reshape(-1, 4) / size
        out.append({"labels": torch.tensor([index[i.category] for i in kept], dtype=torch.long), "boxes": boxes})
        if scored is not None:
            out[-1]["scored"] = torch.tensor([c in scored[k] for c in classes], dtype=torch.bool)
    return out


class FeatureExtractor:
    """Eq. 4 features (``engine.heads.boxes.features.simulated_last_step``) of uint8 images, in fp16 chunks."""

    def __init__(self, model: str, device: str = "cpu"):
        from ...heads.boxes.features import PyramidCapture
        from ...models import load_pipeline

        self.pipe = load_pipeline(model, device=device)
        self.capture = PyramidCapture(self.pipe.unet, self.pipe.vae_scale_factor)
        self.image_size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def __call__(self, images: np.ndarray, seed: int, chunk: int = 64) -> dict[int, object]:
        import torch

        from ...heads.boxes.features import simulated_last_step

        generator = torch.Generator(self.pipe.device).manual_seed(seed)
        parts: dict[int, list] = {}
        for start in range(0, len(images), chunk):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk])).permute(0, 3, 1, 2)
            for stride, level in simulated_last_step(self.pipe, self.capture, x, generator).items():
                parts.setdefault(stride, []).append(level.half().cpu())
        return {stride: torch.cat(levels) for stride, levels in parts.items()}


def cached(path: str, compute) -> dict[int, object]:
    """``compute()``'s pyramid, stored once at ``path`` (safetensors, written atomically)."""
    from safetensors.torch import load_file, save_file

    if os.path.exists(path):
        return {int(k[1:]): v for k, v in load_file(path).items()}
    pyramid = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({f"s{k}": v.contiguous() for k, v in pyramid.items()}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return pyramid


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def worker_share(count: int, rank: int, world: int) -> np.ndarray:
    """The indices one Ray Train worker trains on."""
    return np.arange(rank, count, world)


# ---- evaluation
def evaluate_boxes(model, pyramid: dict, truth: list[list[Instance]], classes: list[str], image_size: int,
                   text=None, groups: dict[str, list[str]] | None = None, chunk: int = 256, rescore=None,
                   nms_iou: float | None = None) -> dict:
    """COCOeval box AP/AP50 of the detector on cached features, over all classes and over each of
    ``groups`` (e.g. base and novel); detections at score 0.05 or more, as COCO practice keeps.
    ``rescore(out, rows)``, if given, rescores the output of the images ``rows`` (a slice) first;
    ``nms_iou``: the decoding's class-wise NMS (default ``detector.NMS_IOU``)."""
    import torch

    from ...heads.boxes.detector import NMS_IOU, detections
    from ..metrics.boxes import box_ap

    found = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(truth), chunk):
            part = {s: v[start:start + chunk].float() for s, v in pyramid.items()}
            out = model(part, text)
            if rescore is not None:
                out = rescore(out, slice(start, start + chunk))
            for image in detections(out, 0.05, image_size, NMS_IOU if nms_iou is None else nms_iou):
                found.append([Instance(classes[c], score=s, box=tuple(b)) for c, s, b in image])
    model.train(was_training)
    scores = box_ap(truth, found, image_size, classes, groups)
    return {k: v for k, v in scores.items() if k.endswith(("AP", "AP50"))}


# ---- the schedule
class Schedule:
    """AdamW with one step decay (x0.1 at ``decay_at`` of the steps, as DiffusionEngine's 80k/90k),
    after an optional linear warm-up over ``warmup`` steps (from-scratch detectors need one)."""

    def __init__(self, steps: int, lr: float, decay_at: float = 0.8, eval_every: int = 250,
                 weight_decay: float = 1e-4, clip: float = 0.1, warmup: int = 0):
        self.steps, self.lr, self.decay_at, self.warmup = steps, lr, decay_at, warmup
        self.eval_every, self.weight_decay, self.clip = eval_every, weight_decay, clip

    def lr_at(self, step: int) -> float:
        ramp = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        return self.lr * ramp * (0.1 if step >= self.decay_at * self.steps else 1.0)

    def to_json(self) -> dict:
        return dict(vars(self))


def train_schedule(model, modules: dict, loss_at, schedule: Schedule, folder: str, evaluate, *, leader: bool,
                   after_step=None, report=None, echo=None) -> list[dict]:
    """Run ``loss_at(step) -> {"total": loss, ...}`` from the last checkpoint in ``folder`` to the
    end of the schedule; every ``eval_every`` steps the leader evaluates (``evaluate() -> dict``),
    appends a curve row and checkpoints ``modules`` and the optimizer. Returns the curve."""
    import torch

    from .checkpoint import load_checkpoint, save_checkpoint

    echo = echo or flushed_print
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    meta = load_checkpoint(folder, modules, optimizer)
    start, curve = (meta["step"], meta["curve"]) if meta else (0, [])
    sums: dict[str, float] = {}
    seen = 0
    started = time.time() - (curve[-1]["minutes"] * 60 if curve else 0)
    for step in range(start, schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        parts = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.clip)
        optimizer.step()
        if after_step is not None:
            after_step(step)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())  # the log keeps no graph
        seen += 1
        done = step + 1
        if done % schedule.eval_every and done != schedule.steps:
            continue
        row = {"step": done, "minutes": round((time.time() - started) / 60, 2),
               **{f"loss_{k}": round(v / seen, 4) for k, v in sums.items()}}
        sums, seen = {}, 0
        if leader:
            row.update(evaluate())
            curve.append(row)
            save_checkpoint(folder, modules, optimizer, {"step": done, "curve": curve})
            echo(json.dumps(row))
        if report is not None:
            report(row, folder if leader else None)
    return curve


def write_curve(curve: list[dict], path_stem: str, title: str, metric: str = "AP50") -> None:
    """``path_stem``.csv and ``path_stem``.png (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for row in curve for k in row))
    with open(path_stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(curve)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for key in [k for k in keys if k == metric or k.endswith("_" + metric)]:
        ax.plot([r["step"] for r in curve], [r.get(key) for r in curve], marker="o", ms=3, label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("val " + metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_stem + ".png")
    plt.close(fig)


# ---- Ray Train
def launch(loop, config: dict, name: str, workers: int = 1, gpus: bool = False, device: str | None = None) -> dict:
    """``loop(config)`` on Ray Train (or, with ``device``, directly on that device, for benchmark
    sweeps), then the card ``OUT/NAME.json`` it wrote."""
    out = config["out"]
    os.makedirs(out, exist_ok=True)
    if device:
        loop({**config, "device": device, "threads": len(os.sched_getaffinity(0))})  # the cores it may use
    else:
        run_on_ray(loop, config, name, out, workers, gpus)
    with open(os.path.join(out, f"{name}.json")) as f:
        return json.load(f)


def run_on_ray(loop, config: dict, name: str, out: str, workers: int = 1, gpus: bool = False) -> None:
    """``loop(config)`` on ``workers`` Ray Train workers (``TorchTrainer``; DDP when more than one).
    A laptop gets one CPU worker with the machine's cores; Ray checkpoints land under ``out``/ray."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from ...job.cluster import ensure_ray

    ensure_ray(None)
    cpus = max(1, int(ray.available_resources().get("CPU", 1)) // workers)
    trainer = TorchTrainer(
        loop, train_loop_config={**config, "threads": cpus},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus,
                                               resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(name=name, storage_path=os.path.abspath(os.path.join(out, "ray")),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
    trainer.fit()


class WorkerContext:
    """Where one training worker runs: its rank, the world size, its torch device; ``prepare``
    (DDP under Ray Train) and ``report`` (metrics and the leader's checkpoint to Ray Train).
    ``config["device"]`` set means a direct call on that device, without Ray (benchmark sweeps)."""

    def __init__(self, config: dict):
        self.direct = bool(config.get("device"))
        if self.direct:
            self.rank, self.world, self.device = 0, 1, config["device"]
            return
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = str(ray.train.torch.get_device())

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def prepare(self, model):
        if self.direct:
            return model.to(self.device)
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, row: dict, checkpoint_folder: str | None) -> None:
        if self.direct:
            return
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_folder) if checkpoint_folder else None
        ray.train.report({k: v for k, v in row.items() if isinstance(v, (int, float))}, checkpoint=checkpoint)
