"""``dde bench labels``: how good are attention labels, against ground truth?

Two ground-truth sources, on images the model generates with attention captured:

(a) ``txt2img``: prompts naming one or two classes; the truth is the segmentation oracle's
    mask of each generated image (its own rendered-val mIoU says how far to trust it).
(b) ``img2img``: rendered references at low strength (0.2-0.35), where the layout is kept,
    so the reference's exact masks apply; the oracle's agreement with them checks that claim.

Measured on the same images: mIoU (background and the six classes) of cross-attention alone
and refined by self-attention for tau 1-5, with and without the uncertainty band (uncertain
pixels ignored; their share reported), alpha/beta bands and per-class IoU at the head's tau
(its default for the model unless ``--head-params`` sets one), and the box AP and
AP50 (pycocotools COCOeval) of ``bca``, of the ``attention`` head's connected components and,
for embedded:shapes, of the shipped trained box heads (``adapter`` with both feature sources,
``grounding`` before and after self-training, with base and novel classes apart).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ...job.phrases import objects_phrase
from ...output.layout import derive_seed
from ...records import ImageRequest, Instance, category_ids
from ...world import CLASSES
from ..metrics.boxes import box_ap
from .results import save_result

__all__ = ["labels_benchmark", "markdown_tables", "result_name", "txt2img_requests", "img2img_requests",
           "generate_kept", "truth_instances", "score_heads"]

TAUS = (0, 1, 2, 3, 4, 5)
BANDS = ((0.4, 0.5), (0.5, 0.6), (0.4, 0.6))
NUM_CLASSES = len(CLASSES) + 1  # background and the world's classes; ids as Scene.semantic
CATEGORY_ID = category_ids(CLASSES)


def txt2img_requests(count: int, seed: int) -> list[ImageRequest]:
    """``count`` txt2img requests naming one class, then two, in turn (classes drawn with ``seed``)."""
    rng = np.random.default_rng(seed)
    requests = []
    for k in range(count):
        classes = list(rng.choice(CLASSES, size=1 + k % 2, replace=False))
        requests.append(ImageRequest(k, derive_seed(seed, k), f"a photograph of {objects_phrase(classes)}",
                                     classes=classes))
    return requests


def result_name(world: str, seed: int = 0) -> str:
    """The result files' stem: ``labels`` for the model's world, ``labels-default-world`` else, and
    ``-seedN`` for a seed other than 0, so runs of several seeds can share one ``--out``."""
    return "labels" + ("" if world == "model" else f"-{world}-world") + (f"-seed{seed}" if seed else "")


def img2img_requests(count: int, seed: int, world: str = "model", size: int = 64) -> tuple[list[ImageRequest], list]:
    """``count`` img2img requests on rendered scenes of ``world`` ("model" or "default", ``size`` px),
    each captioned and classed as its scene, and the scenes (their masks are the truth)."""
    from ...models.embedded import named_world
    from ...world import render_scene

    config = named_world(world, size)
    scenes = [render_scene(derive_seed(seed, 10**6 + k), None, config) for k in range(count)]
    requests = [ImageRequest(10**6 + k, derive_seed(seed, 2 * 10**6 + k), scene.caption,
                             classes=[i.category for i in scene.instances], reference_id=str(k),
                             reference=scene.image) for k, scene in enumerate(scenes)]
    return requests, scenes


def truth_instances(semantic: np.ndarray, min_area: int) -> list[Instance]:
    """Instances of an oracle mask: each class's connected components."""
    from ...heads.attention import components

    return [Instance(c, region) for c in CLASSES
            for region, _ in components(semantic == CATEGORY_ID[c], semantic, min_area)]


class _Scores:
    """Confusion matrices for every labelling variant, accumulated image by image."""

    def __init__(self):
        self.conf: dict[str, np.ndarray] = {}
        self.uncertain: dict[str, list[float]] = {}
        self.foreground: dict[str, np.ndarray] = {}  # class-agnostic: object against background

    def add(self, name: str, mask: np.ndarray, truth: np.ndarray) -> None:
        from ..metrics.segmentation import confusion

        self.conf[name] = self.conf.get(name, 0) + confusion(mask, truth, NUM_CLASSES)
        self.uncertain.setdefault(name, []).append(float((mask == 255).mean()))
        foreground = np.where(mask == 255, 255, mask > 0).astype(np.uint8)
        self.foreground[name] = self.foreground.get(name, 0) + confusion(foreground, (truth > 0).astype(np.uint8), 2)

    def table(self) -> dict:
        from ..metrics.segmentation import iou_table

        out = {}
        for name, conf in self.conf.items():
            miou, per_class = iou_table(conf)
            out[name] = {"mIoU": round(miou, 4), "uncertain_share": round(float(np.mean(self.uncertain[name])), 4),
                         "foreground_IoU": round(iou_table(self.foreground[name])[1][1], 4),
                         "per_class_IoU": dict(zip(["background", *CLASSES],
                                                   [None if np.isnan(v) else round(v, 4) for v in per_class]))}
        return out


def score_heads(generated, truths: list[np.ndarray], instances: list[list[Instance]], min_area: int,
                requests: list[ImageRequest], box_heads: dict, head) -> dict:
    """Every head's labels on ``generated`` against the truth: the attention head's semantic masks
    (mIoU per tau and threshold band at ``head``'s tau, ``truths``: (H, W) int class-id masks; and
    as ``head`` labels, "head": with its region CLIP where it has one; "head_tau0" the same without
    self-attention) and box AP of each of
    ``box_heads`` (bca among them, on its own capture) and of ``head``'s instances
    ("attention_components") against ``instances`` (per image)."""
    from ...heads.attention import class_maps, semantic_mask

    scores = _Scores()
    attention = []
    for gen, truth in zip(generated, truths):
        captured = gen.extras["attention"]
        ids = [CATEGORY_ID[c] for c in captured["classes"]]
        maps = {t: class_maps(captured, truth.shape[0], t) for t in sorted({*TAUS, head.tau})}
        for t in TAUS:
            scores.add(f"tau{t}", semantic_mask(maps[t], ids, 0.6, 0.6)[0], truth)
            scores.add(f"tau{t}_band", semantic_mask(maps[t], ids, 0.5, 0.6)[0], truth)
        for alpha, beta in BANDS:
            scores.add(f"band{alpha}-{beta}", semantic_mask(maps[head.tau], ids, alpha, beta)[0], truth)
        labels = head.label_one(gen)
        scores.add("head", labels.semantic, truth)
        scores.add("head_tau0", head.label_one(gen, tau=0).semantic, truth)
        attention.append(labels.instances)
    size = truths[0].shape[0]
    boxes = {}
    for name, box_head in box_heads.items():
        found = [labels.instances for labels in box_head.label(requests, generated)]
        seen = getattr(box_head, "card", {}).get("classes_seen")  # grounding: base and novel apart
        boxes[name] = box_ap(instances, found, size, groups=seen and {
            "novel": seen["novel"], "base": [c for c in CLASSES if c not in seen["novel"]]})
    boxes["attention_components"] = box_ap(instances, attention, size)
    return {"images": len(truths), "segmentation": scores.table(), "boxes": boxes}


def _box_heads(backend) -> dict:
    """The shipped trained box heads, at COCO's score floor (0.05), attached to ``backend`` (those
    whose weights are missing are left out); the grounding head with its default region
    classification by the shapes CLIP, and once without it (``_head_only``)."""
    from ...heads.adapter import AdapterHead
    from ...heads.grounding import GroundingHead
    from ...spec import ClassSpec

    classes = [ClassSpec(name=c) for c in CLASSES]
    heads = {"adapter": AdapterHead(params=AdapterHead.Params(threshold=0.05), classes=classes),
             "adapter_last_step": AdapterHead(params=AdapterHead.Params(threshold=0.05, features="last_step"),
                                              classes=classes),
             "grounding_base_only": GroundingHead(params=GroundingHead.Params(threshold=0.05, stage="base"),
                                                  classes=classes),
             "grounding_self_trained": GroundingHead(params=GroundingHead.Params(threshold=0.05), classes=classes),
             "grounding_self_trained_head_only": GroundingHead(
                 params=GroundingHead.Params(threshold=0.05, region_clip="none"), classes=classes)}
    heads = {name: head for name, head in heads.items()
             if os.path.exists(head.card_path(head.params))}
    for head in heads.values():
        head.attach(backend)
    return heads


def _bca_head(backend):
    """DiffusionEngine's BCA baseline with its own capture (every block), as a job with ``label_head: bca``
    labels, beside the attention head's."""
    from ...heads.bca import BinarisedCrossAttentionHead
    from ...spec import ClassSpec

    head = BinarisedCrossAttentionHead(params=BinarisedCrossAttentionHead.Params(),
                                       classes=[ClassSpec(name=c) for c in CLASSES])
    head.attach(backend)
    return head


def _card_val(head) -> dict:
    """The head's card val as the head labels here: a grounding head that classifies regions with
    a CLIP is scored by the card's ``clip_*`` metrics, not its head-alone ones."""
    val = head.card["val"]
    with_clip = {k.removeprefix("clip_"): v for k, v in val.items() if k.startswith("clip_")}
    return with_clip if getattr(head, "clip", None) is not None and with_clip else val


def generate_kept(backend, requests: list[ImageRequest], batch: int):
    """Generates ``requests`` in batches of ``batch``: the indices of the requests that gave an
    image, and those generations."""
    kept, generated = [], []
    for start in range(0, len(requests), batch):
        chunk = requests[start:start + batch]
        for k, gen in enumerate(backend.generate(chunk)):
            if gen.image is not None:
                kept.append(start + k)
                generated.append(gen)
    return kept, generated


def _head_params(given: dict | None):
    from pydantic import ValidationError

    from ...errors import UserError
    from ...heads.attention.head import AttentionParams
    from ...spec import describe_error

    try:
        return AttentionParams.model_validate(given or {})
    except ValidationError as e:
        raise UserError("; ".join(f"--head-params {describe_error(err)}" for err in e.errors())) from e


def labels_benchmark(model: str = "embedded:shapes", images: int = 96, steps: int = 25, guidance_scale: float = 7.5,
                     batch_size: int = 16, seed: int = 0, head_params: dict | None = None,
                     out_dir: str = "bench/results", world: str = "model") -> dict:
    """Writes ``labels.{json,md}`` (``labels-default-world`` when the img2img references come from
    the default world, ``-seedN`` after either for a seed other than 0: ``result_name``); ``world``
    names a ``models.embedded.NAMED_WORLDS`` entry."""
    from ...backends.diffusion import DiffusionBackend, DiffusionParams
    from ...heads.attention.head import AttentionHead, region_clip
    from ...models.shipped import SEGMENTER_DIR
    from ...spec import ClassSpec
    from ..train.segmenter import load_segmenter, segment

    labeller_params = _head_params(head_params)
    oracle = load_segmenter()
    with open(os.path.join(SEGMENTER_DIR, "segmenter.json")) as f:
        oracle_card = json.load(f)
    backend = DiffusionBackend(params=DiffusionParams(model=model, steps=steps, guidance_scale=guidance_scale,
                                                      batch_size=batch_size, strength=(0.2, 0.35)), classes=[])
    head = AttentionHead(params=labeller_params, classes=[ClassSpec(name=c) for c in CLASSES])
    head.attach(backend)
    trained = _box_heads(backend) if model == "embedded:shapes" else {}
    box_heads = {"bca": _bca_head(backend), **trained}
    min_area = head.min_pixels(backend.size, backend.size)
    config = head.store.config
    result: dict = {
        "model": model, "steps": steps, "guidance_scale": guidance_scale, "seed": seed, "reference_world": world,
        "tau": head.tau, "region_clip": region_clip(labeller_params, model),
        "capture": {"cross_resolutions": list(config.cross_resolutions), "self_resolution": config.self_resolution,
                    "timesteps": list(config.timesteps), "blocks": list(config.blocks),
                    "cross_keys": config.cross_keys},
        "oracle_rendered_val": oracle_card.get("rendered_val"),
        "trained_heads_val": {name: _card_val(h) for name, h in trained.items()}}
    started = time.time()

    requests = txt2img_requests(images, seed)
    kept, generated = generate_kept(backend, requests, batch_size)
    truths = list(segment(oracle, np.stack([g.image for g in generated])))
    result["txt2img"] = score_heads(generated, truths, [truth_instances(t, min_area) for t in truths], min_area,
                                  [requests[k] for k in kept], box_heads, head)

    requests, scenes = img2img_requests(images, seed, world, backend.size)
    kept, generated = generate_kept(backend, requests, batch_size)
    truths = [scenes[k].semantic for k in kept]
    result["img2img"] = score_heads(generated, truths, [[Instance(i.category, i.mask) for i in scenes[k].instances]
                                                      for k in kept], min_area, [requests[k] for k in kept], box_heads,
                                  head)
    result["img2img"]["strength"] = [0.2, 0.35]
    result["img2img"]["oracle_vs_reference_truth"] = _oracle_agreement(oracle, generated, truths)
    result["seconds"] = round(time.time() - started, 1)

    save_result(out_dir, result_name(world, seed), result, markdown_tables(result))
    return result


def _oracle_agreement(oracle, generated, truths) -> dict:
    """The oracle's mIoU on the img2img images against the references' masks: high means the
    layout was kept, so the references' truth applies."""
    from ..metrics.segmentation import confusion, iou_table
    from ..train.segmenter import segment

    predicted = segment(oracle, np.stack([g.image for g in generated]))
    miou, _ = iou_table(confusion(predicted, np.stack(truths), NUM_CLASSES))
    return {"mIoU": round(miou, 4)}


def markdown_tables(result: dict) -> str:
    """Tables shaped like Dataset Diffusion's Tables 3 and 5, the box table and per-class IoU."""
    sources = ("txt2img", "img2img")
    tau = result.get("tau", 4)  # results written before the head's tau became model-dependent used 4

    def miou(source, name):
        return f"{100 * result[source]['segmentation'][name]['mIoU']:.1f}"

    lines = [f"# Label quality: {result['model']}, {result[sources[0]]['images']} txt2img and "
             f"{result[sources[1]]['images']} img2img images", "",
             f"Capture: {json.dumps(result['capture'])}. Truth: (a) txt2img = segmentation oracle "
             f"(rendered-val {json.dumps(result['oracle_rendered_val'])}); (b) img2img at strength 0.2-0.35 from "
             f"{result.get('reference_world', 'model')}-world references = the reference's masks (oracle agreement with them: mIoU "
             f"{100 * result['img2img']['oracle_vs_reference_truth']['mIoU']:.1f}). mIoU over background and the six "
             f"classes, in %.", "",
             "## Table 3 shape: what each step adds", "",
             f"| cross-attention | self-attention (tau {tau}) | uncertainty (0.5-0.6) | mIoU txt2img | mIoU img2img | "
             "uncertain pixels img2img |", "|---|---|---|---|---|---|"]
    for name, row in (("tau0", "✓ | | "), (f"tau{tau}", "✓ | ✓ | "), (f"tau{tau}_band", "✓ | ✓ | ✓")):
        share = result["img2img"]["segmentation"][name]["uncertain_share"]
        lines.append(f"| {row} | {miou('txt2img', name)} | {miou('img2img', name)} | {100 * share:.1f}% |")
    if result.get("region_clip"):  # the head as jobs label: its instances' classes re-chosen by a CLIP (session 14)
        for name, row in (("head_tau0", "✓ | | "), ("head", "✓ | ✓ | ")):
            if name in result["img2img"]["segmentation"]:  # head_tau0 since session 17
                share = result["img2img"]["segmentation"][name]["uncertain_share"]
                lines.append(f"| {row}✓, and classes re-chosen by {result['region_clip']} | {miou('txt2img', name)} | "
                             f"{miou('img2img', name)} | {100 * share:.1f}% |")
    lines += ["", "## Table 5a shape: tau (alpha 0.5, beta 0.6, uncertain pixels ignored)", "",
              "| tau | " + " | ".join(str(t) for t in TAUS) + " |", "|---" * (len(TAUS) + 1) + "|"]
    for source in sources:
        lines.append(f"| {source} | " + " | ".join(miou(source, f"tau{t}_band") for t in TAUS) + " |")
    lines += ["", f"## Table 5b shape: alpha-beta (tau {tau})", "",
              "| alpha-beta | " + " | ".join(f"{a}-{b}" for a, b in BANDS) + " |", "|---" * (len(BANDS) + 1) + "|"]
    for source in sources:
        lines.append(f"| {source} | " + " | ".join(miou(source, f"band{a}-{b}") for a, b in BANDS) + " |")
    lines += ["", "## Boxes (COCOeval bbox)", "",
              "Last column, from each trained head's card: the adapter's rendered val (exact boxes, Eq. 4 "
              "features); the grounding head's val (img2img at strength 0.2-0.35 from references of all six "
              "classes, the references' exact boxes; scored with the region CLIP where the row labels with it).", "",
              "| head | AP txt2img | AP50 txt2img | AP img2img | AP50 img2img | AP50 card val |",
              "|---|---|---|---|---|---|"]
    for head in result["txt2img"]["boxes"]:
        cells = [f"{100 * result[s]['boxes'][head][k]:.1f}" for s in sources for k in ("AP", "AP50")]
        val = result.get("trained_heads_val", {}).get(head)
        rendered = "-" if val is None else f"{100 * val['AP50']:.1f}"
        lines.append(f"| {head} | " + " | ".join(cells) + f" | {rendered} |")
    grounding = [h for h in result["txt2img"]["boxes"] if h.startswith("grounding")]
    if grounding:
        lines += ["", "### Grounding: base and novel classes (AP50)", "",
                  "| head | base txt2img | novel txt2img | base img2img | novel img2img |", "|---|---|---|---|---|"]
        for head in grounding:
            cells = [f"{100 * result[s]['boxes'][head][k]:.1f}" for s in sources for k in ("base_AP50", "novel_AP50")]
            lines.append(f"| {head} | " + " | ".join(cells) + " |")
    lines += ["", f"## Per-class IoU (tau {tau}, uncertain pixels ignored)", "",
              "| source | background | " + " | ".join(CLASSES) + " |", "|---" * (len(CLASSES) + 2) + "|"]
    for source in sources:
        per_class = result[source]["segmentation"][f"tau{tau}_band"]["per_class_IoU"]
        lines.append(f"| {source} | " + " | ".join("-" if v is None else f"{100 * v:.1f}"
                                                   for v in per_class.values()) + " |")
    return "\n".join(lines) + "\n"
