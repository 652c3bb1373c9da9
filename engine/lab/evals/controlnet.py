"""Condition-image agreement of a ControlNet on the shapes world (Diffusion Synthesis, Sec. 3.3).

Rendered val scenes give exact layouts; each layout conditions one generated image (txt2img,
the scene's caption as prompt); the segmentation oracle (``engine/models/segmenter``) labels
the generated image, and the agreement is the mIoU (background and the six classes) between
that label map and the condition. High means the image shows the layout it was asked for,
which is what makes the ``condition`` head's labels right.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ...backends.conditions import Condition
from ...output.layout import derive_seed
from ...records import ImageRequest
from ...world import CLASSES
from .results import save_result

__all__ = ["scene_condition", "scene_requests", "agreement", "controlnet_agreement", "measure",
           "controlnet_labels_benchmark", "VAL_SEED", "strongest_baseline"]

VAL_SEED = 424_242  # val scenes: a stream no trainer draws from
NUM_LABELS = len(CLASSES) + 1
SWEEP = (0.3, 0.5, 0.6, 0.7, 0.8)  # min_miou bounds whose kept share and agreement the benchmark reports


def scene_condition(scene) -> Condition:
    """A rendered scene's layout as a Condition (its instances' visible masks, world class names)."""
    instances = np.zeros(scene.semantic.shape, np.int32)
    for k, inst in enumerate(scene.instances, start=1):
        instances[inst.mask] = k
    return Condition(instances, [inst.category for inst in scene.instances])


def scene_requests(count: int, seed: int = VAL_SEED) -> list[ImageRequest]:
    """``count`` val scenes of the embedded model's world as requests with their reference and condition."""
    from ...models.embedded import model_world
    from ...world import render_scene

    requests = []
    for k in range(count):
        scene = render_scene(derive_seed(seed, k), None, model_world())
        requests.append(ImageRequest(k, derive_seed(seed + 1, k), scene.caption,
                                     classes=[i.category for i in scene.instances], reference_id=str(k),
                                     reference=scene.image, condition=scene_condition(scene)))
    return requests


def agreement(oracle, images: np.ndarray, conditions: list[Condition]) -> tuple[list[float], float]:
    """(per-image mIoU, pooled mIoU) of the oracle's labels of ``images`` (uint8 N,H,W,3) against the
    conditions' semantic maps (world class ids: 0 background, 1 + CLASSES index)."""
    from ...models.segmentation import segment
    from ..metrics.segmentation import confusion, iou_table

    predicted = segment(oracle, images)
    truths = [c.labels(list(CLASSES)).semantic for c in conditions]
    per_image = [iou_table(confusion(p, t, NUM_LABELS))[0] for p, t in zip(predicted, truths)]
    pooled = iou_table(confusion(predicted, np.stack(truths), NUM_LABELS))[0]
    return per_image, pooled


def controlnet_agreement(backend, count: int = 64, seed: int = VAL_SEED) -> dict:
    """Agreement of a ``ControlNetBackend`` (class_index palette, world classes) on ``count`` val scenes."""
    from ...models.segmentation import load_segmenter

    requests = scene_requests(count, seed)
    started = time.perf_counter()
    generated = []
    for start in range(0, count, backend.batch_size):
        generated += backend.generate(requests[start:start + backend.batch_size])
    seconds = time.perf_counter() - started
    kept = [k for k, g in enumerate(generated) if g.image is not None]
    per_image, pooled = agreement(load_segmenter(), np.stack([generated[k].image for k in kept]),
                                  [requests[k].condition for k in kept])
    return {"images": len(kept), "mIoU": round(pooled, 4), "mean_image_mIoU": round(float(np.mean(per_image)), 4),
            "seconds": round(seconds, 1)}


def measure(out: str, images: int = 64, steps: int = 25, batch_size: int = 16) -> dict:
    """Agreement (``evals.controlnet``) of ``out/controlnet``, of an untrained ControlNet
    (``from_unet``: zero convolutions, i.e. the plain model) and, for a warm-started run, of the
    ControlNet it started from (``init_from`` in ``out/recipe.json``), on the same val scenes and seeds."""
    from ...backends.controlnet import ControlNetBackend, ControlNetParams
    from ...spec import ClassSpec
    from ..train.controlnet import components

    untrained = os.path.join(out, "untrained")
    if not os.path.exists(os.path.join(untrained, "config.json")):
        components()[1].save_pretrained(untrained, safe_serialization=True)
    classes = [ClassSpec(name=c) for c in CLASSES]
    result = {}
    init_from = json.load(open(os.path.join(out, "recipe.json"))).get("init_from")
    folders = [("untrained (from_unet)", untrained)] + ([(f"start ({init_from})", init_from)] if init_from else [])
    for name, folder in folders + [("trained", os.path.join(out, "controlnet"))]:
        backend = ControlNetBackend(params=ControlNetParams(controlnet=folder, steps=steps, batch_size=batch_size),
                                    classes=classes)
        result[name] = controlnet_agreement(backend, images)
    return result


def _timed_generate(backend, requests: list[ImageRequest]) -> tuple[list, float]:
    started = time.perf_counter()
    generated = []
    for start in range(0, len(requests), backend.batch_size):
        generated += backend.generate(requests[start:start + backend.batch_size])
    return generated, time.perf_counter() - started


def _classes_found(images: np.ndarray, conditions: list[Condition]) -> float:
    """Share of images in which the fidelity oracle finds every class of the condition (an independent
    check: it is not the segmenter that selects)."""
    from ..train.oracle import load_oracle
    from .fidelity import oracle_outputs

    probs, _ = oracle_outputs(load_oracle(), images)
    return float(np.mean([all(probs[k, CLASSES.index(c)] > 0.5 for c in set(cond.categories))
                          for k, cond in enumerate(conditions)]))


def controlnet_labels_benchmark(model: str = "embedded:shapes", controlnet: str = "embedded:shapes", images: int = 96,
                                steps: int = 25, guidance_scale: float = 7.5, batch_size: int = 16,
                                min_miou: float = 0.5, out_dir: str = "bench/results") -> dict:
    """``dde bench labels --source controlnet``: condition-image agreement with and without the segmenter
    selection, what selection rejects per class, and costs (ControlNet vs plain sampling of the same prompts
    and seeds, selection vs generation), all in one run. Writes labels-controlnet.json and .md."""
    import os

    from ...backends.controlnet import ControlNetBackend, ControlNetParams
    from ...backends.diffusion import DiffusionBackend, DiffusionParams
    from ...job.selection import Selection
    from ...models.segmentation import load_segmenter
    from ...spec import ClassSpec, SelectionSpec

    classes = [ClassSpec(name=c) for c in CLASSES]
    common = dict(model=model, steps=steps, guidance_scale=guidance_scale, batch_size=batch_size)
    requests = scene_requests(images)
    plain, plain_seconds = _timed_generate(DiffusionBackend(params=DiffusionParams(**common), classes=[]),
                                           [ImageRequest(r.image_id, r.seed, r.prompt) for r in requests])
    backend = ControlNetBackend(params=ControlNetParams(controlnet=controlnet, **common), classes=classes)
    generated, seconds = _timed_generate(backend, requests)
    labels = [r.condition.labels(list(CLASSES)) for r in requests]
    started = time.perf_counter()
    verdicts = Selection(SelectionSpec(segmenter={"min_miou": min_miou}), classes).judge(requests, generated, labels)
    selection_seconds = time.perf_counter() - started
    oracle, conditions = load_segmenter(), [r.condition for r in requests]
    stack = np.stack([g.image for g in generated])
    kept = [k for k, v in enumerate(verdicts) if v is None]
    per_image, pooled = agreement(oracle, stack, conditions)
    _, pooled_kept = agreement(oracle, stack[kept], [conditions[k] for k in kept]) if kept else (None, float("nan"))
    sweep = {}  # what other bounds would keep: the oracle is the selecting segmenter, so per-image mIoU decides
    for bound in SWEEP:
        chosen = [k for k, v in enumerate(per_image) if v > bound]
        sweep[str(bound)] = {"kept": len(chosen), "mIoU": round(agreement(oracle, stack[chosen], [
            conditions[k] for k in chosen])[1], 4) if chosen else None}
    _, pooled_plain = agreement(oracle, np.stack([g.image for g in plain]), conditions)
    result = {
        "model": model, "controlnet": controlnet, "images": images, "steps": steps, "guidance_scale": guidance_scale,
        "min_miou": min_miou, "plain_sampling_mIoU": round(pooled_plain, 4),
        "no_selection_mIoU": round(pooled, 4), "selection_mIoU": round(pooled_kept, 4),
        "selection_gain": round(pooled_kept - pooled, 4), "kept": len(kept), "sweep": sweep,
        "classes_found_all": round(_classes_found(stack, conditions), 4),
        "classes_found_kept": round(_classes_found(stack[kept], [conditions[k] for k in kept]), 4) if kept else None,
        "rejected_per_class": {c: sum(conditions[k].categories.count(c) for k, v in enumerate(verdicts) if v)
                               for c in CLASSES},
        "kept_per_class": {c: sum(conditions[k].categories.count(c) for k in kept) for c in CLASSES},
        "seconds": {"plain": round(plain_seconds, 1), "controlnet": round(seconds, 1),
                    "selection": round(selection_seconds, 2)},
        "cost_ratio_controlnet_vs_plain": round(seconds / plain_seconds, 3),
        "selection_overhead": round(selection_seconds / seconds, 4),
    }
    save_result(out_dir, "labels-controlnet", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    """The benchmark as tables: agreement with and without selection, per-class kept/rejected, costs."""
    sweep = "; ".join(f"min_miou {b}: {v['kept']} kept, mIoU {v['mIoU']}" for b, v in result["sweep"].items())
    per_class = "\n".join(f"| {c} | {result['kept_per_class'][c]} | {result['rejected_per_class'][c]} |"
                          for c in CLASSES)
    return f"""# Condition-image agreement: {result['model']} + ControlNet {result['controlnet']}

{result['images']} val scenes of the model's world as conditions (class_index palette, the scene's caption as
prompt), {result['steps']} steps, guidance {result['guidance_scale']}; agreement = segmentation-oracle mIoU
(background and six classes, pooled) between the condition and the generated image. Selection: the
shipped segmenter's mIoU against the condition > {result['min_miou']}. The selecting segmenter is the
measuring oracle, so the gain is partly by construction; the fidelity oracle's "every condition class
found" rate is an independent check.

| source | images | agreement mIoU | every class found (fidelity oracle) |
|---|---|---|---|
| plain sampling, same prompts and seeds (no condition) | {result['images']} | {result['plain_sampling_mIoU']} | - |
| ControlNet, no selection | {result['images']} | {result['no_selection_mIoU']} | {result['classes_found_all']} |
| ControlNet, selection | {result['kept']} | {result['selection_mIoU']} | {result['classes_found_kept']} |

Selection gain: {result['selection_gain']:+.4f} mIoU. Cost: ControlNet {result['seconds']['controlnet']} s vs plain
{result['seconds']['plain']} s ({result['cost_ratio_controlnet_vs_plain']}x); selection {result['seconds']['selection']} s
({100 * result['selection_overhead']:.1f}% of generation).

| class | kept instances | rejected instances |
|---|---|---|
{per_class}

Other bounds (same images): {sweep}
"""


def strongest_baseline(agreement: dict) -> str:
    """The name of the best-agreeing row of ``measure``'s result other than "trained": the untrained
    ControlNet or, for a warm-started run, the one it started from. A re-fit is installed only if it
    beats this (measured: a re-fit on UNet step 70,482 fell from 0.749 to 0.703 mIoU)."""
    return max((name for name in agreement if name != "trained"), key=lambda name: agreement[name]["mIoU"])
