"""``dde train grounding``: InstaGen's open-vocabulary grounding head (section 3.3).

1. Triplets of base classes: the ``diffusion`` backend generates img2img images (strength
   0.2-0.5) from rendered references of the shapes world that hold base classes only, prompted
   with their captions. The teacher boxes them: ``world`` (the references' exact boxes, which
   low-strength img2img keeps), or a trained ``adapter`` head, whose boxes scoring ``alpha`` or
   more are kept.
   The grounding head trains on these (class scores: query features dot class-name embeddings).
2. Self-training on novel classes: references holding novel classes only; a mean teacher (EMA
   of the student, momentum 0.999, no dropout) boxes the named classes, and boxes scoring
   ``beta`` or more train the student (with dropout), while base supervision continues. By
   default (``region_clip``) the teacher's boxes are named as ViLD does: a CLIP scores each
   box's crop against every class name, ensembled with the teacher's scores
   (``heads.boxes.regions``), then class-wise NMS at ``REGION_NMS_IOU``. That is this module's
   largest departure from InstaGen, whose teacher is the head alone (``region_clip="none"``): on
   embedded:shapes v2 that teacher found 0.012 novel boxes per image, this one 2.4.

The curve is scored on img2img images of all the classes at strength 0.2-0.35, where the
references' exact boxes are the truth (the layout is kept): the head alone, and with the region
classifier (``clip_`` keys), as jobs label by default. Features and images are generated once
and cached (``OUT/cache``). Writes ``grounding-base`` (after stage 1:
the head without self-training) and ``grounding`` (after stage 2) with cards and curves.

Where the defaults (the shipped head's) depart from InstaGen, each with the option that gives
InstaGen's setting, each measured alone at reduced scale (two seeds; BENCHMARKS.md "Paper
fidelity", the head's README): class names embedded without context (``class_template`` "a
photograph of a {}": novel AP50 -0.026); each loss scores all base or all novel classes
(``score_classes`` "named", the prompt's 1-2: novel +0.034, base -0.043, all classes lower);
the teacher is copied after ``base_steps`` = 2/3 of the run (equal ``base_steps`` and
``novel_steps``: the midpoint; within noise); stage 2 runs at ``novel_lr_scale`` 0.1 of the
rate with a fresh optimizer (1: the same rate; within noise); focal weight ``class_weight`` 2
(InstaGen's config: 1, which collapsed novel AP50 in self-training).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ...records import Instance

__all__ = ["GroundingRecipe", "SCORE_CLASSES", "train_grounding", "reference_requests", "generate_triplets"]


# "all": each loss scores every class of its stage (base or novel), so every other class is a negative;
# "named": InstaGen's, each image only against the classes its prompt names
SCORE_CLASSES = ("all", "named")


class GroundingRecipe:
    def __init__(self, *, base: list[str], novel: list[str], images: int = 1200, base_steps: int = 2000,
                 novel_steps: int = 1000, batch: int = 32, lr: float = 1e-3, alpha: float = 0.8, beta: float = 0.4,
                 momentum: float = 0.999, sampling_steps: int = 20, eval_every: int = 250, val_images: int = 500,
                 seed: int = 0, queries: int | None = None, layers: int | None = None, width: int | None = None,
                 class_weight: float = 2.0, class_template: str = "{}", novel_lr_scale: float = 0.1,
                 score_classes: str = "all", region_clip: str = "embedded:clip"):
        self.base, self.novel, self.images = list(base), list(novel), images
        self.base_steps, self.novel_steps, self.batch, self.lr = base_steps, novel_steps, batch, lr
        self.alpha, self.beta, self.momentum, self.sampling_steps = alpha, beta, momentum, sampling_steps
        self.eval_every, self.val_images, self.seed = eval_every, val_images, seed
        self.queries, self.layers, self.width = queries, layers, width  # None: sized for the data (detector.capacity)
        # the shipped head's settings; InstaGen's: focal weight 1, "a photograph of a {}", stage 2 at the same lr
        self.class_weight, self.class_template, self.novel_lr_scale = class_weight, class_template, novel_lr_scale
        self.score_classes = score_classes  # "all" of the stage's classes, or "named": the image's (InstaGen)
        self.region_clip = region_clip  # the teacher's region classifier (ViLD), or "none" (InstaGen)

    def to_json(self) -> dict:
        return dict(vars(self))


def train_grounding(model: str, out: str, recipe: GroundingRecipe, teacher: str = "world", workers: int = 1,
                    gpus: bool = False, device: str | None = None, cache: str | None = None) -> dict:
    """Train on Ray Train (``device`` set: directly on that device, for benchmark sweeps). ``cache``
    (default OUT/cache) holds the generated features, which runs that differ only in training
    settings can share. Returns the final card."""
    from ...errors import UserError
    from ...heads.boxes.detector import check_capacity
    from ...models.clip_embeddings import is_clip
    from ...world import CLASSES
    from .detection import check_model, launch

    problem = check_capacity(recipe.queries, recipe.layers, recipe.width)
    if problem:
        raise UserError(problem)
    if recipe.score_classes not in SCORE_CLASSES:
        raise UserError(f"--score-classes: expected one of {list(SCORE_CLASSES)}, got {recipe.score_classes!r}")
    if os.path.isdir(recipe.region_clip):  # the card keeps it: jobs resolve it from another working directory
        recipe.region_clip = os.path.abspath(recipe.region_clip)
    if recipe.region_clip != "none" and not is_clip(recipe.region_clip):
        raise UserError(f"--region-clip: expected 'none', 'embedded:clip', a CLIPModel folder (config.json, "
                        f"safetensors) or a hub id, got {recipe.region_clip!r}")
    if recipe.class_template.count("{}") != 1:
        raise UserError(f"--class-template: expected exactly one '{{}}' where the class name goes, got "
                        f"{recipe.class_template!r}; e.g. 'a photograph of a {{}}'")

    overlap = set(recipe.base) & set(recipe.novel)
    if overlap or not recipe.base or not recipe.novel:
        raise UserError(f"--base/--novel: expected two non-empty, disjoint class lists, got base {recipe.base} and "
                        f"novel {recipe.novel}")
    unknown = [c for c in recipe.base + recipe.novel if c not in CLASSES]
    if unknown:  # the training images are drawn from the shapes world
        raise UserError(f"--base/--novel: expected shapes-world classes {list(CLASSES)}, got {unknown}")
    check_model(model)
    if teacher != "world":
        _check_teacher(teacher, recipe.base)
    config = {"model": model, "out": os.path.abspath(out), "recipe": recipe.to_json(),
              "teacher": teacher if teacher == "world" else os.path.abspath(teacher),
              "cache": os.path.abspath(cache or os.path.join(out, "cache"))}
    return launch(_grounding_loop, config, "grounding", workers, gpus, device)


def _check_teacher(folder: str, base: list[str]) -> None:
    from ...errors import UserError

    card = os.path.join(folder, "adapter.json")
    if not os.path.exists(card):
        raise UserError(f"--teacher: expected 'world' or a trained adapter folder (adapter.json and its "
                        f".safetensors, from `dde train adapter`), got {folder!r}")
    with open(card) as f:
        known = json.load(f)["classes"]
    missing = [c for c in base if c not in known]
    if missing:
        raise UserError(f"--teacher: expected an adapter trained on every base class, got one without {missing}")


def reference_requests(classes: list[str], count: int, seed: int, offset: int):
    """img2img requests from rendered references of the model's world holding only ``classes``
    (one or two of them named as required), captioned with every object, and the scenes."""
    from ...models.embedded import model_world
    from ...output.layout import derive_seed
    from ...records import ImageRequest
    from ...world import render_scene

    rng = np.random.default_rng(seed)
    requests, scenes = [], []
    for k in range(count):
        named = [str(c) for c in rng.choice(classes, size=min(1 + k % 2, len(classes)), replace=False)]
        scene = render_scene(derive_seed(seed, offset + k), named, model_world(), extra_classes=classes)
        requests.append(ImageRequest(offset + k, derive_seed(seed, 10**8 + offset + k), scene.caption,
                                     classes=list(dict.fromkeys(i.category for i in scene.instances)),
                                     reference_id=str(offset + k), reference=scene.image))
        scenes.append(scene)
    return requests, scenes


def generate_triplets(config: dict, recipe: GroundingRecipe, classes: list[str], rank: int, device: str, offset: int,
              count: int, strength: tuple[float, float]):
    """Eq. 4 features of img2img images from references (what the heads read by default), each
    image's teacher boxes of its classes, the references' exact boxes (the truth at low
    strength) and the images, (N, H, W, 3) uint8 (the region classifier crops them). The teacher
    is ``world`` (those exact boxes) or a trained adapter's folder."""
    import torch

    from ...backends.diffusion import DiffusionBackend, DiffusionParams
    from ...heads.adapter import AdapterHead
    from ...heads.boxes.features import PyramidCapture, simulated_features
    from ...spec import ClassSpec

    backend = DiffusionBackend(params=DiffusionParams(model=config["model"], steps=recipe.sampling_steps,
                                                      batch_size=recipe.batch, device=device, strength=strength),
                               classes=[])
    teacher = None
    if config["teacher"] != "world":
        teacher = AdapterHead(params=AdapterHead.Params(weights=config["teacher"], threshold=recipe.alpha),
                              classes=[ClassSpec(name=c) for c in classes])
        teacher.attach(backend)
    capture = PyramidCapture(backend.pipe.unet, backend.pipe.vae_scale_factor)
    requests, scenes = reference_requests(classes, count, recipe.seed * 7919 + rank, offset)
    levels: dict[int, list] = {}
    boxes, named, truth, images = [], [], [], []
    for start in range(0, len(requests), recipe.batch):
        chunk = requests[start:start + recipe.batch]
        generated = backend.generate(chunk)
        kept = [k for k, g in enumerate(generated) if g.image is not None]
        pyramid = simulated_features(backend.pipe, capture, [generated[k] for k in kept], chunk[0].seed)
        for stride, level in pyramid.items():
            levels.setdefault(stride, []).append(level.half().cpu())
        labels = teacher.label(chunk, generated) if teacher else None  # reads the features just made
        for k in kept:
            request, scene = chunk[k], scenes[start + k]
            scale = backend.size / scene.image.shape[0]  # references are resized to the model's size
            exact = [[i.category, *(v * scale for v in i.bbox)] for i in scene.instances]
            found = ([[i.category, *i.bbox()] for i in labels[k].instances] if teacher else exact)
            boxes.append([row for row in found if row[0] in request.classes])
            named.append(request.classes)
            truth.append(exact)
            images.append(generated[k].image)
    return {s: torch.cat(v) for s, v in levels.items()}, boxes, named, truth, np.stack(images)


def _cached_generation(config, recipe, classes, rank, device, name, offset, count):
    """``generate_triplets``'s output, cached; ``val`` images keep the layout (strength 0.2-0.35), so
    their references' boxes are the truth."""
    from .detection import cached, fingerprint

    strength = (0.2, 0.35) if name == "val" else (0.2, 0.5)
    teacher = (config["teacher"], recipe.alpha) if name == "base" else None  # other sets use no teacher boxes
    key = fingerprint(config["model"], teacher, classes, count, strength, recipe.sampling_steps, recipe.seed,
                      "boxes as [class, x, y, w, h]", "images kept")
    path = f"{config['cache']}/{name}-{key}-{rank}"

    def compute():
        pyramid, boxes, named, truth, images = generate_triplets(config, recipe, classes, rank, device, offset, count,
                                                                 strength)
        np.save(path + "-images.npy", images)
        with open(path + ".json", "w") as f:
            json.dump({"boxes": boxes, "named": named, "truth": truth}, f)
        return pyramid

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pyramid = cached(path + ".safetensors", compute)  # written last: the json and images are there when it is
    with open(path + ".json") as f:
        side = json.load(f)
    return pyramid, side["boxes"], side["named"], side["truth"], np.load(path + "-images.npy", mmap_mode="r")


class _RegionClassifier:
    """The ViLD region classifier (``heads.boxes.regions``) over the stage's classes, ``everything``
    = base + novel in that order: ``(out, images) -> out`` rescored."""

    def __init__(self, recipe: GroundingRecipe, everything: list[str], size: int, device: str):
        from ...heads.clip_regions import clip_class_text
        from ...models.clip_embeddings import load_clip

        self.clip = load_clip(recipe.region_clip)
        self.clip[0].to(device)
        self.text = clip_class_text(self.clip, everything)
        self.seen, self.size = [c in recipe.base for c in everything], size

    def __call__(self, out: dict, images: np.ndarray) -> dict:
        from ...heads.boxes.regions import clip_rescored

        return clip_rescored(out, list(images), self.clip, self.text, self.seen, self.size)


def _instances(rows: list[list[list]]) -> list[list[Instance]]:
    """Cached ``[class, x, y, w, h]`` rows per image as box instances."""
    return [[Instance(c, box=tuple(box)) for c, *box in image] for image in rows]


def _grounding_loop(config: dict) -> None:
    import copy

    import torch

    from ...heads.boxes.detector import NMS_IOU, DetectorConfig, LossWeights, build_detector, capacity, \
        detection_loss, detections
    from ...heads.boxes.regions import REGION_NMS_IOU
    from ...heads.boxes.text import class_text
    from ...models import load_pipeline
    from ...models.trained import save_trained
    from .detection import Schedule, WorkerContext, evaluate_boxes, targets_batch, train_schedule, write_curve

    worker = WorkerContext(config)
    torch.set_num_threads(config["threads"])
    recipe, out, device = GroundingRecipe(**config["recipe"]), config["out"], worker.device
    base_set = _cached_generation(config, recipe, recipe.base, worker.rank, device, "base", 0, recipe.images)
    novel_set = _cached_generation(config, recipe, recipe.novel, worker.rank, device, "novel", 10**7, recipe.images)
    everything = recipe.base + recipe.novel
    val = None
    if worker.leader:
        features, _, _, truth, images = _cached_generation(config, recipe, everything, 0, device, "val", 2 * 10**7,
                                                           recipe.val_images)
        val = ({s: v.to(device) for s, v in features.items()}, _instances(truth), images)
    pipe = load_pipeline(config["model"], device=device)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    base_text, novel_text, all_text = (class_text(pipe, names, recipe.class_template).to(device)
                                       for names in (recipe.base, recipe.novel, everything))
    del pipe
    regions = _RegionClassifier(recipe, everything, size, device) if recipe.region_clip != "none" else None

    named = recipe.score_classes == "named"
    base_targets = targets_batch(_instances(base_set[1]), recipe.base, size, base_set[2] if named else None)

    def evaluate() -> dict:
        if val is None:
            return {}
        groups = {"base": recipe.base, "novel": recipe.novel}
        scores = evaluate_boxes(detector, val[0], val[1], everything, size, text=all_text, groups=groups)
        if regions:  # as a job labels by default: with the region classifier (``clip_`` keys)
            scores.update({f"clip_{k}": v for k, v in evaluate_boxes(
                detector, val[0], val[1], everything, size, text=all_text, groups=groups,
                rescore=lambda out, rows: regions(out, val[2][rows]), nms_iou=REGION_NMS_IOU).items()})
        return scores

    detector_config = DetectorConfig(levels={s: v.shape[1] for s, v in base_set[0].items()}, image_size=size,
                                     text_width=base_text.shape[1],
                                     **capacity(max(map(len, base_set[1]), default=0), len(everything),
                                                recipe.queries, recipe.layers, recipe.width))
    torch.manual_seed(recipe.seed)
    detector = build_detector(detector_config)
    model = worker.prepare(detector)
    per_worker = max(1, recipe.batch // worker.world)
    weights = LossWeights(class_loss=recipe.class_weight)

    def draw(dataset, step: int, salt: int):
        features = dataset[0]
        count = len(next(iter(features.values())))
        drawn = torch.randint(count, (per_worker,), generator=torch.Generator().manual_seed(
            recipe.seed * 10**7 + salt + step * worker.world + worker.rank)).tolist()
        return {s: v[drawn].to(device).float() for s, v in features.items()}, drawn

    def base_loss(step: int) -> dict:
        pyramid, drawn = draw(base_set, step, 0)
        return detection_loss(model(pyramid, base_text), [base_targets[i] for i in drawn], weights)

    card = {"model": config["model"], "teacher": config["teacher"], "recipe": recipe.to_json(),
            "base_images": len(base_set[1]), "novel_images": len(novel_set[1]), "workers": worker.world,
            "detector": detector_config.to_json(), "classes_seen": {"base": recipe.base, "novel": recipe.novel},
            "class_template": recipe.class_template,
            "teacher_boxes_per_base_image": round(float(np.mean([len(b) for b in base_set[1]])), 3),
            "region_nms_iou": REGION_NMS_IOU if regions else None}

    def finish(stem: str, schedule: Schedule, curve: list[dict], title: str, extra: dict | None = None) -> None:
        if not worker.leader:
            return
        write_curve(curve, f"{out}/{stem}-curve", title)
        save_trained(detector, out, stem, {**card, **(extra or {}), "head": "grounding", "schedule": schedule.to_json(),
                                           "train_minutes": curve[-1]["minutes"],
                                           "val": {k: v for k, v in curve[-1].items() if "AP" in k}})

    stage1 = Schedule(recipe.base_steps, recipe.lr, eval_every=recipe.eval_every)
    curve = train_schedule(model, {"detector": detector}, base_loss, stage1,
                           f"{out}/checkpoint-base", evaluate, leader=worker.leader, report=worker.report)
    finish("grounding-base", stage1, curve, "grounding, base classes only: val box AP50")

    teacher = copy.deepcopy(detector).eval()  # weights handed from the student to the teacher (InstaGen)
    teacher.requires_grad_(False)
    pseudo_counts: list[int] = []

    def self_training_loss(step: int) -> dict:
        parts = base_loss(step + recipe.base_steps)
        pyramid, drawn = draw(novel_set, step, 10**6)
        with torch.no_grad():
            if regions:  # every class's scores give the objectness; the CLIP names the novel ones
                out = regions(teacher(pyramid, all_text), novel_set[4][drawn])
                out = {**out, "logits": out["logits"][..., len(recipe.base):]}
            else:
                out = teacher(pyramid, novel_text)
            found = detections(out, recipe.beta, size, REGION_NMS_IOU if regions else NMS_IOU)
        pseudo = [[Instance(recipe.novel[c], box=tuple(box)) for c, _, box in image  # of the classes named
                   if recipe.novel[c] in novel_set[2][i]] for image, i in zip(found, drawn)]
        targets = targets_batch(pseudo, recipe.novel, size, [novel_set[2][i] for i in drawn] if named else None)
        pseudo_counts.append(sum(len(t["labels"]) for t in targets))
        novel = detection_loss(model(pyramid, novel_text), targets, weights)
        return {**{f"base_{k}": v for k, v in parts.items() if k != "total"},
                **{f"novel_{k}": v for k, v in novel.items() if k != "total"}, "total": parts["total"] + novel["total"]}

    def ema(step: int) -> None:
        with torch.no_grad():
            for mine, theirs in zip(teacher.parameters(), detector.parameters()):
                mine.mul_(recipe.momentum).add_(theirs.detach(), alpha=1 - recipe.momentum)

    stage2 = Schedule(recipe.novel_steps, recipe.lr * recipe.novel_lr_scale, eval_every=recipe.eval_every)
    curve = train_schedule(model, {"detector": detector, "teacher": teacher}, self_training_loss, stage2,
                           f"{out}/checkpoint-novel", evaluate, leader=worker.leader, after_step=ema,
                           report=worker.report)
    finish("grounding", stage2, curve, "grounding, self-training on novel classes: val box AP50",
           {"pseudo_boxes_per_novel_image": round(float(np.mean(pseudo_counts or [0])) / per_worker, 3)})
