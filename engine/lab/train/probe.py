"""``dde probe``: is a dde output good training data? Train a standard detector on it and measure.

The dde output is read as a user reads it: ``coco/instances.json`` with ``coco/images/`` through
torchvision's ``CocoDetection`` wrapped for transforms v2. Optionally real COCO data is mixed in,
each sample synthetic with probability alpha (``engine.lab.train.mixing.AlphaSampler``). The model is
torchvision's FCOS on a MobileNetV3-Large FPN backbone, no pretrained weights, sized for the
images; it trains on Ray Train (``detection.launch``) with the shared schedule and resumable
safetensors checkpoints, and is scored with COCOeval box AP/AP50 on the user's val set.
With ``task="segmentation"`` the model is LR-ASPP on the output's semantic masks, scored as mIoU
(``segprobe``). Writes ``probe.json``, ``curve.csv``/``curve.png`` and ``checkpoint-*/`` into the
output folder.
"""

from __future__ import annotations

import json
import os

from ...errors import UserError
from ...records import category_ids
from .segprobe import TRUNKS

__all__ = ["ProbeRecipe", "probe", "load_detection", "build_fcos"]

# MobileNetV3-Large stages at strides 8, 16 and 32 feed the FPN (its max-pool adds 64): the
# default (two stride-32 maps) would see a 64-px scene as 2x2 cells
RETURNED_STAGES = [2, 3, 4]
STRIDES = (8, 16, 32, 64)
# FPN and FCOS-head width: torchvision's mobilenet_backbone fixes 256, where the head's eight 3x3
# convs on the stride-8 level were most of a step on 64-px scenes; 128 made a CPU step 2.4x faster
# at the same AP (BENCHMARKS.md, "Downstream")
FPN_CHANNELS = 128
# AdamW peak lr of both tasks. FCOS from scratch, 800 steps of batch 32 on 2,000 rendered scenes, seed 0:
# AP 0.335 at 1e-3, 0.549 at 3e-3, 0.623 at 1e-2; LR-ASPP (MobileNetV3-Small) on their masks:
# mIoU 0.468 at 1e-3, 0.699 at 3e-3, 0.775 at 1e-2 (BENCHMARKS.md, "Downstream")
DEFAULT_LR = 1e-2
MODEL = f"torchvision FCOS, MobileNetV3-Large + FPN of {FPN_CHANNELS} channels, no pretrained weights"


class ProbeRecipe:
    """``task``: ``detection`` (FCOS, COCOeval box AP) or ``segmentation`` (LR-ASPP on semantic
    masks, mIoU; ``segprobe``). ``synthetic_images``: train on the output's first N images (by
    image id) only, to compare sources or mixes at equal counts; None: all of them. ``threads``:
    torch's intra-op threads per worker (at most the worker's CPUs); 1 by default, since threads
    of one op wait on each other and, on cores another job also uses, 2 made a step ~18x slower.
    ``segmenter``: the LR-ASPP trunk of the segmentation task (``segprobe.TRUNKS``)."""

    def __init__(self, *, steps: int = 800, batch: int = 32, lr: float | None = None, alpha: float = 1.0,
                 eval_every: int | None = None, seed: int = 0, task: str = "detection",
                 synthetic_images: int | None = None, threads: int = 1, segmenter: str = "mobilenet_v3_small"):
        self.steps, self.batch, self.alpha, self.seed, self.task = steps, batch, alpha, seed, task
        if segmenter not in TRUNKS:
            raise UserError(f"--segmenter: expected one of {', '.join(TRUNKS)}, got {segmenter!r}")
        self.segmenter = segmenter
        self.lr = DEFAULT_LR if lr is None else lr
        self.synthetic_images, self.threads = synthetic_images, threads
        self.eval_every = eval_every or max(1, steps // 8)

    def to_json(self) -> dict:
        return dict(vars(self))


# ---- inputs, checked before anything is written
def _dde_output(out: str) -> str:
    from ...output.layout import COCO_FILE, JOB_FILE

    missing = [name for name in (JOB_FILE, COCO_FILE) if not os.path.isfile(os.path.join(out, name))]
    if missing:
        raise UserError(f"OUT: expected a finished dde output (with {JOB_FILE} and {COCO_FILE}; "
                        f"`dde finalize` finishes one), got {out!r} without {', '.join(missing)}")
    return os.path.join(out, COCO_FILE)


def _check(out: str, val: str, real: str | None, folder: str, alpha: float) -> dict:
    """Every input read and checked: the classes shared by the dde output and val, val's image side."""
    from .detection import coco_annotations, read_categories

    synthetic, synthetic_images, _ = read_categories(_dde_output(out), "OUT")
    val_names, val_images, side = read_categories(coco_annotations(val, "val", "--val"), "--val")
    classes = [n for n in val_names.values() if n in set(synthetic.values())]
    if not classes:
        theirs = ", ".join(sorted(val_names.values())) or "no categories"
        raise UserError(f"--val: expected classes shared with the dde output ({', '.join(sorted(synthetic.values()))}"
                        f"), got {theirs}; match the class names")
    real_images = read_categories(coco_annotations(real, "train", "--real"), "--real")[1] if real else 0
    for field, count, used, fix in (("OUT", synthetic_images, alpha > 0, "make images first, or probe real data alone "
                                     "with --real DIR --alpha 0"), ("--val", val_images, True, "export val images"),
                                    ("--real", real_images, bool(real) and alpha < 1, "add images or use --alpha 1")):
        if used and count == 0:  # an empty set the probe would train or score on
            raise UserError(f"{field}: expected a dataset with images, got an empty one; {fix}")
    for field, theirs in (("--val", val), ("--real", real)):
        if theirs and os.path.commonpath([os.path.abspath(folder), os.path.abspath(theirs)]) == os.path.abspath(theirs):
            raise UserError(f"--out: expected a folder outside {field} (the probe never writes into your data), "
                            f"got {folder!r}; pick another --out")
    return {"classes": classes, "ignored": [n for n in val_names.values() if n not in classes], "size": side}


def _masks(out: str, val: str, real: str | None) -> str:
    """For --task segmentation: the output's semantic-mask folder; the output and the COCO sets must have masks."""
    from .detection import coco_annotations

    semantic = os.path.abspath(os.path.join(out, "coco", "semantic"))
    if not os.path.isdir(semantic) or not os.listdir(semantic):
        raise UserError(f"OUT: expected semantic masks (coco/semantic/) for --task segmentation, got {out!r} "
                        f"without them (its label head makes boxes only); probe it with --task detection")
    for field, root, split in (("--val", val, "val"), ("--real", real, "train")):
        if root is None:
            continue
        with open(coco_annotations(root, split, field)) as f:
            annotations = json.load(f)["annotations"]
        if not any(a.get("segmentation") for a in annotations):
            raise UserError(f"{field}: expected instance masks (COCO polygons or RLE) for --task segmentation, got "
                            f"{len(annotations)} annotation(s) without any; use a set with masks, or --task detection")
    return semantic


# ---- data and model (inside the workers)
def load_detection(images: str, annotations: str, classes: list[str]) -> tuple[list, list[dict]]:
    """A COCO folder through ``CocoDetection`` + transforms v2: uint8 images (3,H,W) and targets
    {"boxes": float32 (N,4) XYXY px, "labels": int64 (N,) 1-based in ``classes``}; boxes of
    other classes and boxes under a pixel wide are dropped."""
    import contextlib
    import io

    import torch
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
    from torchvision.transforms import v2

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates loading
        dataset = CocoDetection(images, annotations, transforms=v2.Compose([v2.ToImage(),
                                                                            v2.ToDtype(torch.uint8, scale=True)]))
    ids = category_ids(classes)
    index = {cid: ids[c["name"]] for cid, c in dataset.coco.cats.items() if c["name"] in classes}
    wrapped = wrap_dataset_for_transforms_v2(dataset, target_keys=("boxes", "labels"))
    pictures, targets = [], []
    for image, target in wrapped:
        boxes = target.get("boxes", torch.zeros(0, 4)).as_subclass(torch.Tensor).float()
        labels = target.get("labels", torch.zeros(0, dtype=torch.long)).tolist()
        keep = [k for k, label in enumerate(labels) if label in index and min(boxes[k, 2:] - boxes[k, :2]) >= 1]
        pictures.append(image.as_subclass(torch.Tensor))
        targets.append({"boxes": boxes[keep].reshape(-1, 4),
                        "labels": torch.tensor([index[labels[k]] for k in keep], dtype=torch.long)})
    return pictures, targets


def _stage_starts(features) -> list[int]:
    """Indices of a torchvision MobileNet ``features``' stages, found as ``mobilenet_backbone`` finds
    them: the first block, each block that halves the resolution (torchvision marks it ``_is_cn``)
    and the last block."""
    return [0] + [k for k, block in enumerate(features) if getattr(block, "_is_cn", False)] + [len(features) - 1]


def build_fcos(num_classes: int, size: int, channels: int = FPN_CHANNELS):
    """torchvision FCOS (its ``FCOSHead``, 4 convs a branch) on a MobileNetV3-Large trunk with
    torchvision's ``FeaturePyramidNetwork`` (``BackboneWithFPN``) of ``channels`` channels, no
    pretrained weights, BatchNorm trained (as torchvision does without weights). It is what
    ``mobilenet_backbone(..., fpn=True, trainable_layers=6, returned_layers=RETURNED_STAGES)`` builds,
    but with ``channels`` FPN and head channels instead of its fixed 256. Images stay at ``size`` px
    (``min_size = max_size = size``), one point per cell of each level; ``num_classes`` excludes
    the background."""
    from torch import nn
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    features = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d).features
    starts = _stage_starts(features)
    backbone = BackboneWithFPN(features, {str(starts[k]): str(v) for v, k in enumerate(RETURNED_STAGES)},
                               [features[starts[k]].out_channels for k in RETURNED_STAGES], channels,
                               extra_blocks=LastLevelMaxPool())
    anchors = AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))
    return FCOS(backbone, num_classes + 1, min_size=size, max_size=size, anchor_generator=anchors,
                head=FCOSHead(channels, 1, num_classes + 1), score_thresh=0.05)  # COCO practice: down to 0.05


def _detection_loss(model, images: list, targets: list, device: str) -> dict:
    losses = model([im.to(device).float() / 255 for im in images], [{k: v.to(device) for k, v in t.items()}
                                                                   for t in targets])
    return {"total": sum(losses.values()), **losses}


class _Task:
    """What a probe task trains and scores: ``load(images, annotations, classes, size, semantic)``,
    ``build(num_classes, size)``, ``loss(model, images, targets, device)``, ``scores(model, val,
    classes, size, device)``, the headline ``metrics`` (the first drawn on the curve) and the model's name."""

    def __init__(self, load, build, loss, scores, metrics: tuple[str, ...], model: str):
        self.load, self.build, self.loss, self.scores, self.metrics, self.model = load, build, loss, scores, metrics, model


def _task(name: str, segmenter: str = "mobilenet_v3_small") -> _Task:
    if name == "detection":
        return _Task(lambda images, annotations, classes, size, semantic=None: load_detection(images, annotations, classes),
                     build_fcos, _detection_loss, _scores, ("AP", "AP50"), MODEL)
    from .segprobe import TRUNKS, build_lraspp, load_semantic, segmentation_loss, segmentation_scores

    return _Task(load_semantic, lambda num_classes, size: build_lraspp(num_classes, segmenter), segmentation_loss,
                 lambda model, val, classes, size, device: segmentation_scores(model, val, classes, device),
                 ("mIoU",), f"torchvision LR-ASPP, {TRUNKS[segmenter]}, no pretrained weights")


def _detect(model, images: list, classes: list[str], device: str, chunk: int = 64) -> list[list]:
    """Instances the model finds (boxes x, y, w, h px) in uint8 images."""
    import torch

    from ...records import Instance

    found = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            batch = [(im.to(device).float() / 255) for im in images[start:start + chunk]]
            for out in model(batch):
                found.append([Instance(classes[int(c) - 1], score=float(s), box=(x1, y1, x2 - x1, y2 - y1))
                              for (x1, y1, x2, y2), s, c in zip(out["boxes"].tolist(), out["scores"], out["labels"])])
    model.train(was_training)
    return found


def _truth(targets: list[dict], classes: list[str]) -> list[list]:
    from ...records import Instance

    return [[Instance(classes[int(c) - 1], box=(x1, y1, x2 - x1, y2 - y1))
             for (x1, y1, x2, y2), c in zip(t["boxes"].tolist(), t["labels"].tolist())] for t in targets]


def _scores(model, val, classes: list[str], size: int, device: str) -> dict:
    """COCOeval AP/AP50 over the shared classes and per class (``CLASS_AP``, ``CLASS_AP50``)."""
    from ..metrics.boxes import box_ap

    images, targets = val
    scores = box_ap(_truth(targets, classes), _detect(model, images, classes, device), size, classes,
                    groups={c: [c] for c in classes})
    return {k: v for k, v in scores.items() if k.endswith(("AP", "AP50"))}


def _training_set(config: dict, recipe: ProbeRecipe, task: _Task):
    """Synthetic then real images and targets (as the task loads them), their counts, and the
    alpha sampler that draws from them."""
    from .mixing import AlphaSampler

    synthetic = task.load(*config["synthetic"], config["classes"], config["size"], config["semantic"])
    synthetic = tuple(part[:recipe.synthetic_images] for part in synthetic)  # load_* keep image-id order
    real = task.load(*config["real"], config["classes"], config["size"]) if config["real"] else ([], [])
    counts = {"synthetic": len(synthetic[0]), "real": len(real[0])}
    sampler = AlphaSampler(counts["synthetic"], counts["real"], recipe.alpha, recipe.seed)
    return synthetic[0] + real[0], synthetic[1] + real[1], counts, sampler


def _result(curve: list[dict], config: dict, recipe: ProbeRecipe, task: _Task, counts: dict, workers: int,
            seconds: float) -> dict:
    """probe.json: the last evaluation (AP/AP50 or mIoU over the shared classes, and per class) and the run's facts."""
    import torch

    last, classes = curve[-1], config["classes"]
    per_class = ("IoU",) if recipe.task == "segmentation" else task.metrics
    return {**{m: last[m] for m in task.metrics}, "task": recipe.task,
            "per_class": {c: {m: last[f"{c}_{m}"] for m in per_class} for c in classes},
            "steps": recipe.steps, "batch": recipe.batch, "lr": recipe.lr, "alpha": recipe.alpha, "seed": recipe.seed,
            "images": counts, "classes": classes, "val_classes_ignored": config["ignored"],
            "image_size": config["size"], "model": task.model, "threads": torch.get_num_threads(),
            "workers": workers, "train_seconds": round(last["minutes"] * 60, 1), "seconds": round(seconds, 1),
            **config["inputs"], "curve": f"{config['out']}/curve.png"}


def _probe_loop(config: dict) -> None:
    import time

    import torch

    from .detection import Schedule, WorkerContext, train_schedule, write_curve

    started = time.time()
    worker = WorkerContext(config)
    recipe, classes, device = ProbeRecipe(**config["recipe"]), config["classes"], worker.device
    torch.set_num_threads(max(1, min(recipe.threads, config["threads"])))
    task = _task(recipe.task, recipe.segmenter)
    images, targets, counts, sampler = _training_set(config, recipe, task)
    val = task.load(*config["val"], classes, config["size"]) if worker.leader else None  # the leader alone evaluates
    torch.manual_seed(recipe.seed)
    detector = task.build(len(classes), config["size"])
    model = worker.prepare(detector)
    per_worker = max(1, recipe.batch // worker.world)

    def loss_at(step: int) -> dict:
        picks = sampler.draw(step * worker.world + worker.rank, per_worker).tolist()
        return task.loss(model, [images[i] for i in picks], [targets[i] for i in picks], device)

    # from scratch, full lr at once can kill FCOS's box-regression ReLU for good (GIoU loss stuck at 1):
    # warm up; gradients clipped at 10, spikes only (the adapter's 0.1 would throttle it)
    schedule = Schedule(recipe.steps, recipe.lr, eval_every=recipe.eval_every, clip=10.0,
                        warmup=min(100, recipe.steps // 4))
    curve = train_schedule(model, {"detector": detector}, loss_at, schedule, config["checkpoint"],
                           lambda: task.scores(detector, val, classes, config["size"], device),
                           leader=worker.leader, report=worker.report)
    if not worker.leader:
        return
    write_curve(curve, f"{config['out']}/curve", f"probe: {task.model.split(',')[0]} on {', '.join(classes)}, "
                f"alpha {recipe.alpha}", metric=task.metrics[0])
    result = _result(curve, config, recipe, task, {**counts, "val": len(val[0])}, worker.world, time.time() - started)
    with open(f"{config['out']}/probe.json", "w") as f:
        json.dump(result, f, indent=1)


def probe(out: str, val: str, recipe: ProbeRecipe, real: str | None = None, folder: str | None = None,
          workers: int = 1, gpus: bool = False, device: str | None = None) -> dict:
    """Train and score the probe (``device`` set: directly on it, without Ray); returns probe.json's
    content. Every input is checked, and refused with one line, before anything is written."""
    from .detection import coco_split, fingerprint, launch

    if real is None and recipe.alpha != 1:
        raise UserError(f"--alpha: expected it only with --real (synthetic-only probes use alpha 1), "
                        f"got {recipe.alpha}")
    folder = os.path.abspath(folder or os.path.join(out, "probe"))
    checked = _check(out, val, real, folder, recipe.alpha)
    semantic = _masks(out, val, real) if recipe.task == "segmentation" else None

    def coco(root: str, split: str) -> list[str]:
        annotations, images = coco_split(root, split)
        return [os.path.abspath(images), os.path.abspath(annotations)]

    config = {"out": folder, "classes": checked["classes"], "ignored": checked["ignored"], "size": checked["size"],
              "recipe": recipe.to_json(), "val": coco(val, "val"),
              "inputs": {"dde_output": os.path.abspath(out), "val_set": os.path.abspath(val),
                         "real_set": real and os.path.abspath(real)},
              "real": coco(real, "train") if real else None,
              "synthetic": [os.path.abspath(os.path.join(out, "coco", "images")), os.path.abspath(_dde_output(out))],
              "semantic": semantic}
    # a changed input, mix or detector trains afresh; more --steps (or other --threads) continue the same run
    key = fingerprint(config["synthetic"], config["real"], config["val"], recipe.alpha, recipe.batch, recipe.lr,
                      recipe.seed, workers, _task(recipe.task, recipe.segmenter).model,
                      *([recipe.synthetic_images] if recipe.synthetic_images else []))
    config["checkpoint"] = os.path.join(folder, f"checkpoint-{key}")
    return launch(_probe_loop, config, "probe", workers, gpus, device)
