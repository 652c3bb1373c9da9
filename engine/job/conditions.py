"""Condition maps from reference datasets (Diffusion Synthesis, Sec. 3.1: masks given, or made).

Each reference's COCO ``segmentation`` (polygons, RLE or uncompressed RLE, decoded with
pycocotools) becomes a ``backends.conditions.Condition`` in the worker, for a backend that offers
condition masks (``controlnet``). References whose annotations of the job's classes have boxes but
no segmentation, and references without any annotation, get masks from the Mask Generator
(``job/masks.py``) when ``generator.params.condition.mask_generator`` is set; without it they are
refused when the job starts (exit 2, before anything is written).
"""

from __future__ import annotations

import json

import numpy as np

from ..backends.conditions import Condition
from ..errors import UserError
from .classnames import ClassMatcher
from .references import id_key

__all__ = ["ReferenceMasks", "check_reference_masks", "classes_of_unannotated", "load_coco", "conditioned_on_masks"]

FIELD = "generator.params.condition"


def _decode(segmentation, height: int, width: int) -> np.ndarray | None:
    """A COCO segmentation (polygons, RLE, uncompressed RLE) as a bool HxW mask; None if it has none."""
    from pycocotools import mask as mask_utils

    if not segmentation:
        return None
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects([p for p in segmentation if len(p) >= 6], height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool) if rles else None
    if isinstance(segmentation.get("counts"), list):
        segmentation = mask_utils.frPyObjects(segmentation, *segmentation["size"])
    return mask_utils.decode(segmentation).astype(bool)


def _paint(masks: list[tuple[str, np.ndarray]], shape) -> Condition:
    """Instances painted largest first, so a small object on a large one stays visible."""
    instances = np.zeros(shape, np.int32)
    order = sorted(range(len(masks)), key=lambda k: -int(masks[k][1].sum()))
    for k in order:
        instances[masks[k][1]] = k + 1
    return Condition(instances, [c for c, _ in masks])


class ReferenceMasks:
    """The condition of each reference of a COCO file: built in the worker, from the same file the
    prompt pool was planned from. ``annotations``: per image id, (job class, segmentation or None,
    COCO bbox or None) of each annotation of a job class; ``unannotated``: ids of images without
    any annotation. ``generator`` (a ``masks.MaskGenerator``) makes the masks they lack."""

    def __init__(self, coco: dict, classes, generator=None):
        matcher = ClassMatcher(classes)
        class_of = {id_key(c["id"], "categories"): matcher.category(c["name"]) for c in coco["categories"]}
        self.sizes = {id_key(i.get("id"), "images"): (i.get("height"), i.get("width")) for i in coco["images"]}
        self.annotations: dict[str, list[tuple[str, object, list | None]]] = {}
        annotated = set()
        for ann in coco["annotations"]:
            image = id_key(ann.get("image_id"), "annotations")
            annotated.add(image)
            name = class_of.get(id_key(ann.get("category_id"), "annotations"))
            if name is not None:
                self.annotations.setdefault(image, []).append((name, ann.get("segmentation") or None,
                                                               _box(ann.get("bbox"))))
        self.unannotated = [image for image in self.sizes if image not in annotated]
        self.generator = generator
        self._cache: dict[str, Condition] = {}

    @classmethod
    def for_job(cls, spec, backend=None) -> "ReferenceMasks":
        """The job's references (``prompts.annotations``) with its Mask Generator (on ``backend``, the job's)."""
        from .masks import MaskGenerator

        params = conditioned_on_masks(spec).mask_generator
        generator = None if params is None else MaskGenerator(params, spec.class_specs, backend)
        return cls(load_coco(spec), spec.class_specs, generator)

    def missing(self) -> list[str]:
        """Ids of images with an annotation of a job class that has no mask."""
        return [image for image, anns in self.annotations.items() if any(s is None for _, s, _ in anns)]

    def boxless(self) -> list[str]:
        """Ids of images with an annotation of a job class that has neither a mask nor a box."""
        return [image for image, anns in self.annotations.items() if any(s is None and b is None for _, s, b in anns)]

    def condition(self, reference_id: str, reference: np.ndarray) -> Condition:
        """The condition at the reference image's size (masks of another size are resized, nearest);
        masks the annotations lack come from the Mask Generator (the same for every use of a reference)."""
        if reference_id not in self._cache:
            if len(self._cache) >= 256:
                self._cache.pop(next(iter(self._cache)))
            self._cache[reference_id] = self._condition(reference_id, reference)
        return self._cache[reference_id]

    def _condition(self, reference_id: str, reference: np.ndarray) -> Condition:
        anns = self.annotations.get(reference_id, [])
        height, width = reference.shape[:2]
        masks = [(name, _fit(_decode(s, height, width), height, width)) for name, s, _ in anns if s is not None]
        boxes = [(name, box) for name, s, box in anns if s is None]
        if (boxes or reference_id in self.unannotated) and self.generator is None:
            raise ValueError("reference without masks and no mask generator")  # refused at job start
        if boxes:  # the annotation's own boxes, in the reference's pixels
            coco_height, coco_width = self.sizes.get(reference_id, (None, None))
            sy, sx = height / (coco_height or height), width / (coco_width or width)
            masks += self.generator.masks(reference, [(name, (x * sx, y * sy, (x + w) * sx, (y + h) * sy))
                                                      for name, (x, y, w, h) in boxes])
        elif reference_id in self.unannotated:
            if self.generator.params.detector is not None:
                masks = self.generator.masks(reference, self.generator.detect(reference))
            else:  # embedded segmenter without boxes (a SamModel without a detector is refused at job start)
                masks = self.generator.regions(reference)
        return _paint(masks, (height, width))


def _box(bbox) -> list[float] | None:
    """A COCO bbox [x, y, w, h] with positive sides, else None."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    return [x, y, w, h] if w > 0 and h > 0 else None


def _fit(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    from .masks import resize_array

    return resize_array(mask.astype(np.uint8), height, width, Image.NEAREST).astype(bool)


def conditioned_on_masks(spec):
    """The ``condition`` params (``backends.conditions.ConditionParams``) of a job whose backend
    generates from reference masks, else None."""
    from ..backends.base import CONDITION_MASKS

    if CONDITION_MASKS not in spec.generator.component.offers:
        return None
    return spec.generator.config.condition


def check_reference_masks(spec, coco: dict) -> None:
    """At job start, before anything is written: refuse references without masks (boxes only, or no
    annotation at all) when no Mask Generator is set, and a Mask Generator that cannot serve them."""
    from .masks import mask_generator_problems

    condition = conditioned_on_masks(spec)
    if condition is None:
        return
    references = ReferenceMasks(coco, spec.class_specs)
    missing, unannotated = references.missing(), references.unannotated
    params = condition.mask_generator
    if params is None:
        if missing or unannotated:
            what = "; ".join(part for part in (
                f"{len(missing)} image(s) with annotations without a segmentation (e.g. image id {missing[0]})"
                if missing else "",
                f"{len(unannotated)} image(s) without any annotation (e.g. image id {unannotated[0]})"
                if unannotated else "") if part)
            raise UserError(f"prompts.annotations: expected a segmentation (polygon or RLE) on every annotation of the "
                            f"job's classes and at least one annotation per image (the {spec.generator.name!r} backend "
                            f"is conditioned on the masks), got {what}; add masks, drop those images, or set "
                            f"{FIELD}.mask_generator to make them (e.g. mask_generator: {{segmenter: "
                            f"embedded:segmenter}} on the shapes world, or {{detector: <zero-shot detector>, "
                            f"segmenter: <SamModel>}})")
        return
    problems = mask_generator_problems(spec, params)
    boxless = references.boxless()
    if boxless:
        problems.append(f"prompts.annotations: expected a segmentation or a bbox with positive sides on every "
                        f"annotation of the job's classes (the Mask Generator prompts its segmenter with the box), "
                        f"got {len(boxless)} image(s) with annotations with neither (e.g. image id {boxless[0]}); "
                        f"add boxes or masks")
    if unannotated and params.detector is None and params.segmenter != "embedded:segmenter":
        problems.append(f"{FIELD}.mask_generator.detector: expected a detector for the {len(unannotated)} image(s) without any "
                        f"annotation (e.g. image id {unannotated[0]}): the segmenter {params.segmenter!r} is prompted "
                        f"with boxes, got none; set detector to a zero-shot detection model, or give those images "
                        f"annotations")
    if problems:
        raise UserError("; ".join(problems))


def classes_of_unannotated(spec, coco: dict, references: list) -> list:
    """At job start, in the driver: each reference without any annotation gets the job classes the Mask
    Generator finds in it (the detector's boxes, or the shipped segmenter's regions), so the planner can
    pick it for the classes it shows and its prompts can name them (``references.Reference``s, in order;
    the worker makes the same masks again for its condition). Others are returned as they are."""
    from dataclasses import replace

    import fsspec

    from ..images import decode_rgb
    from ..output.storage import input_options
    from .masks import HEAD_DETECTORS, MaskGenerator

    condition = conditioned_on_masks(spec)
    if condition is None or condition.mask_generator is None:
        return references
    masks = ReferenceMasks(coco, spec.class_specs)
    unannotated = set(masks.unannotated)
    if not any(r.id in unannotated for r in references):
        return references
    params, backend = condition.mask_generator, None
    if params.detector in HEAD_DETECTORS:  # the shipped heads read the job's own (embedded) pipeline
        from ..registry import build_backend

        backend = build_backend(spec)
    masks.generator = MaskGenerator(params, spec.class_specs, backend)
    order = [c.name for c in spec.class_specs]
    out = []
    for ref in references:
        if ref.id in unannotated:
            with fsspec.open(ref.uri, "rb", **input_options(ref.uri, spec)) as f:
                found = masks.condition(ref.id, decode_rgb(f.read(), spec.prompts.max_image_pixels))
            shown = [name for k, name in enumerate(found.categories) if (found.instances == k + 1).any()]
            ref = replace(ref, classes=tuple(sorted(shown, key=order.index)))
        out.append(ref)
    return out


def load_coco(spec) -> dict:
    """The parsed COCO file of ``prompts.annotations`` (already checked by the prompt pool)."""
    import fsspec

    from ..output.storage import input_options

    with fsspec.open(spec.prompts.annotations, "rb", **input_options(spec.prompts.annotations, spec)) as f:
        return json.loads(f.read().decode("utf-8-sig"))
