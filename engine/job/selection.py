"""High-quality Image Selection (Diffusion Synthesis, Sec. 3.3 and Fig. 4): a filter stage after
generation and labelling, before commit. An image is kept only if it passes every configured filter:

- ``clip`` (Eq. 2): cosine similarity of the CLIP image embeddings of the reference and the
  generated image, above ``epsilon`` (the paper's best is 0.8). ``embedded:clip`` is the shipped
  small shapes CLIP (zero-shot 0.91 on the model's world; its card is engine/models/clip/README.md);
  any ``CLIPModel`` folder or hub id works too. Without ``selection.clip`` the segmenter filter
  alone selects.
- ``segmenter`` (foundation-model matching): a segmenter's mask of the generated image against
  the image's labels (under the ``condition`` head: the condition mask), mIoU above ``min_miou``
  over background and the classes present in either. ``embedded:segmenter`` is the shipped
  shapes-world segmenter (job classes that name world classes); any transformers
  semantic-segmentation folder works with ``classes`` mapping job classes to its labels.

A rejected image is recorded like any reject, with its reason and scores; the lower bounds count
kept images only (rejects are never written). The card and report show kept and rejected
instances per class.
"""

from __future__ import annotations

import os

import numpy as np

from ..models.clip_embeddings import EMBEDDED_CLIP, is_clip

__all__ = ["Selection", "check_selection", "per_class_table"]

EMBEDDED_SEGMENTER = "embedded:segmenter"
REASONS = {"clip": "selection: CLIP image similarity to the reference below epsilon",
           "segmenter": "selection: segmenter mIoU against the labels below min_miou"}


def check_selection(spec) -> list[str]:
    """Problems found at job start (before anything is written): models that are not there, classes the
    segmenter cannot name, CLIP without references."""
    selection, problems = spec.selection, []
    if selection is None:
        return problems
    if selection.clip is not None:
        if spec.prompts.source != "references":
            problems.append(f"selection.clip: expected prompts.source 'references' (it compares each image with its "
                            f"reference), got {spec.prompts.source!r}; remove selection.clip")
        if not is_clip(selection.clip.model):
            problems.append(f"selection.clip.model: expected {EMBEDDED_CLIP!r} (the shipped shapes CLIP), a CLIPModel "
                            f"folder (config.json, safetensors) or a hub id, got {selection.clip.model!r}; give one, or "
                            f"remove selection.clip and select with the segmenter alone")
    if selection.segmenter is not None:
        problems += _segmenter_problems(selection.segmenter, spec.class_specs)
    return problems


def _is_folder_or_hub_id(model: str, marker: str) -> bool:
    from ..models import is_hub_id

    return os.path.exists(os.path.join(model, marker)) or is_hub_id(model)


def _segmenter_problems(params: SegmenterFilter, classes) -> list[str]:
    from ..world import CLASSES

    if params.model == EMBEDDED_SEGMENTER:
        unknown = [c.name for c in classes if not any(w.lower() in CLASSES for w in c.words)]
        return [f"selection.segmenter.model: expected job classes the shipped segmenter knows {list(CLASSES)} (by "
                f"name or synonym), got {unknown}; use a transformers segmenter with selection.segmenter.classes"
                ] if unknown else []
    if not _is_folder_or_hub_id(params.model, "config.json"):
        return [f"selection.segmenter.model: expected 'embedded:segmenter', a transformers semantic-segmentation "
                f"folder or a hub id, got {params.model!r}"]
    missing = [c.name for c in classes if c.name not in params.classes]
    return [f"selection.segmenter.classes: expected the model's label for every job class, got none for {missing}; "
            f"add e.g. classes: {{{missing[0]}: <label name or id>}}"] if missing else []


class Selection:
    """Loaded in the worker: ``judge`` says which generated images to keep."""

    def __init__(self, spec: SelectionSpec, classes):
        self.spec, self.names = spec, [c.name for c in classes]
        self.clip = None
        if spec.clip is not None:
            from ..models.clip_embeddings import load_clip

            self.clip = load_clip(spec.clip.model)
        self.segmenter = None if spec.segmenter is None else _Segmenter(spec.segmenter, classes)

    def judge(self, requests, generated, labels) -> list[dict | None]:
        """Per image: None to keep it, else {"reason", "scores"}; images already rejected are kept as they are."""
        verdicts: list[dict | None] = [None] * len(requests)
        live = [k for k, g in enumerate(generated) if g.image is not None]
        if not live:
            return verdicts
        scores: dict[int, dict] = {k: {} for k in live}
        if self.clip is not None:
            self._clip_scores(live, requests, generated, scores)
        if self.segmenter is not None:
            predicted = self.segmenter.labels(np.stack([generated[k].image for k in live]))
            for k, mask in zip(live, predicted):
                scores[k]["segmenter_miou"] = round(_miou(mask, labels[k], self.names), 4)
        checks = [(name, key, getattr(part, field)) for name, key, field, part in (
            ("clip", "clip_cosine", "epsilon", self.spec.clip),
            ("segmenter", "segmenter_miou", "min_miou", self.spec.segmenter)) if part is not None]
        for k in live:
            failed = [name for name, key, bound in checks if key in scores[k] and not scores[k][key] > bound]
            if failed:
                verdicts[k] = {"reason": REASONS[failed[0]], "scores": scores[k]}
        return verdicts

    def _clip_scores(self, live, requests, generated, scores) -> None:
        from ..models.clip_embeddings import image_embeddings

        have = [k for k in live if requests[k].reference is not None]
        if not have:
            return
        refs = image_embeddings(self.clip, [requests[k].reference for k in have])
        gens = image_embeddings(self.clip, [generated[k].image for k in have])
        for k, cosine in zip(have, (refs * gens).sum(-1).tolist()):
            scores[k]["clip_cosine"] = round(cosine, 4)


def _miou(predicted: np.ndarray, labels, names: list[str]) -> float:
    """mIoU of a job-id map against the labels' semantic map (or, without one, their instance masks),
    over background and the classes present in either; uncertain pixels are left out."""
    from ..records import semantic_dtype, uncertain_value

    truth = labels.semantic
    if truth is None:
        truth = np.zeros(predicted.shape, semantic_dtype(len(names)))
        for inst in labels.instances:
            if inst.mask is not None:
                truth[inst.mask] = 1 + names.index(inst.category)
    keep = truth != uncertain_value(truth.dtype)
    p, t = predicted[keep].astype(np.int64), truth[keep].astype(np.int64)
    return float(np.mean([((p == k) & (t == k)).sum() / ((p == k) | (t == k)).sum() for k in np.union1d(p, t)]))


class _Segmenter:
    """Job-id label maps (uint8/uint16 N,H,W; 0 background) of uint8 images (N,H,W,3)."""

    def __init__(self, params: SegmenterFilter, classes):
        from ..world import CLASSES

        names = [c.name for c in classes]
        self.embedded = params.model == EMBEDDED_SEGMENTER
        if self.embedded:
            from ..models.segmentation import load_segmenter

            self.model = load_segmenter()
            world_to_job = {w.lower(): 1 + names.index(c.name) for c in classes for w in c.words}
            self.lut = np.array([0] + [world_to_job.get(w, 0) for w in CLASSES], np.int64)
        else:
            from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

            self.model = AutoModelForSemanticSegmentation.from_pretrained(params.model, use_safetensors=True).eval()
            self.processor = AutoImageProcessor.from_pretrained(params.model)
            by_name = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
            self.lut = np.zeros(len(self.model.config.id2label), np.int64)
            for name, label in params.classes.items():
                index = label if isinstance(label, int) else by_name[str(label).lower()]
                self.lut[index] = 1 + names.index(name)

    def labels(self, images: np.ndarray) -> np.ndarray:
        if self.embedded:
            from ..models.segmentation import segment

            return self.lut[segment(self.model, images)]
        import torch

        with torch.no_grad():
            logits = self.model(**self.processor(images=list(images), return_tensors="pt")).logits
            logits = torch.nn.functional.interpolate(logits, size=images.shape[1:3], mode="bilinear")
        return self.lut[logits.argmax(1).numpy()]


def per_class_table(units: list[dict], class_names: list[str]) -> list[tuple[str, int, int]]:
    """(class, kept instances, instances in images the selection rejected) per class, from unit markers."""
    kept = {name: sum(u["counts"].get(name, 0) for u in units) for name in class_names}
    rejected = dict.fromkeys(class_names, 0)
    for u in units:
        for r in u["rejects"]:
            if r["reason"].startswith("selection:"):
                for name in r.get("classes", []):
                    rejected[name] = rejected.get(name, 0) + 1
    return [(name, kept[name], rejected[name]) for name in class_names]
