"""Condition maps from reference datasets (Diffusion Synthesis, Sec. 3.1: masks given, or made).

Each reference's COCO ``segmentation`` (polygons, RLE or uncompressed RLE, decoded with
pycocotools) becomes a ``backends.conditions.Condition`` in the worker, for a backend that offers
condition masks (``controlnet``). References whose annotations of the job's classes have no masks
are refused when the job starts (exit 2, before anything is written) unless a mask source is
configured: ``mask_source: segmenter`` has the shipped shapes-world segmenter label the reference
(one instance per connected region). The paper's detector + SAM Mask Generator is not built.
"""

from __future__ import annotations

import json

import numpy as np

from ..backends.conditions import Condition
from ..errors import UserError
from .classnames import ClassMatcher
from .references import id_key

__all__ = ["ReferenceMasks", "check_reference_masks", "load_coco", "conditioned_on_masks"]

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
    prompt pool was planned from. ``annotations`` are the COCO dict's annotations of the job's classes."""

    def __init__(self, coco: dict, classes, mask_source: str = "annotations"):
        matcher = ClassMatcher(classes)
        class_of = {id_key(c["id"], "categories"): matcher.category(c["name"]) for c in coco["categories"]}
        self.annotations: dict[str, list[tuple[str, object]]] = {}
        for ann in coco["annotations"]:
            name = class_of.get(id_key(ann.get("category_id"), "annotations"))
            if name is not None:
                image = id_key(ann.get("image_id"), "annotations")
                self.annotations.setdefault(image, []).append((name, ann.get("segmentation")))
        self.mask_source = mask_source
        self.classes = classes
        self._segmenter = None

    @classmethod
    def for_job(cls, spec) -> "ReferenceMasks":
        """The job's references (``prompts.annotations``) with its mask source."""
        return cls(load_coco(spec), spec.class_specs, conditioned_on_masks(spec))

    def missing(self) -> list[str]:
        """Ids of images with an annotation of a job class that has no mask."""
        return [image for image, anns in self.annotations.items() if any(not s for _, s in anns)]

    def condition(self, reference_id: str, reference: np.ndarray) -> Condition:
        """The condition at the reference image's size (masks of another size are resized, nearest)."""
        anns = self.annotations.get(reference_id, [])
        height, width = reference.shape[:2]
        if any(not s for _, s in anns):
            return self._segmented(reference)
        masks = [(name, _fit(_decode(s, height, width), height, width)) for name, s in anns]
        return _paint(masks, (height, width))

    def _segmented(self, reference: np.ndarray) -> Condition:
        """The shipped shapes-world segmenter's labels of the reference: one instance per connected region."""
        from scipy import ndimage

        from ..models.segmentation import load_segmenter, segment
        from ..world import CLASSES

        if self.mask_source != "segmenter":
            raise ValueError("reference without masks and no mask source")  # refused at job start
        if self._segmenter is None:
            self._segmenter = load_segmenter()
        semantic = segment(self._segmenter, _fit_image(reference, 64)[None])[0]
        semantic = np.asarray(_resize_nearest(semantic, *reference.shape[:2]))
        to_job = {w.lower(): c.name for c in self.classes for w in c.words}
        masks = []
        for k, world in enumerate(CLASSES, start=1):
            if world in to_job:
                regions, count = ndimage.label(semantic == k)
                masks += [(to_job[world], regions == r) for r in range(1, count + 1)]
        return _paint(masks, semantic.shape)


def _resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if array.shape[:2] == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), Image.NEAREST))


def _fit(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    return _resize_nearest(mask.astype(np.uint8), height, width).astype(bool)


def _fit_image(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def conditioned_on_masks(spec) -> str | None:
    """The mask source of a job whose backend generates from reference masks (its ``condition``
    params), else None."""
    from ..backends.base import CONDITION_MASKS

    if CONDITION_MASKS not in spec.generator.component.offers:
        return None
    return spec.generator.config.condition.mask_source


def check_reference_masks(spec, coco: dict) -> None:
    """At job start: refuse references with annotations without masks when no mask source is set."""
    if conditioned_on_masks(spec) != "annotations":
        return
    missing = ReferenceMasks(coco, spec.class_specs).missing()
    if missing:
        raise UserError(f"prompts.annotations: expected a segmentation (polygon or RLE) on every annotation of the "
                        f"job's classes (the {spec.generator.name!r} backend is conditioned on them), got "
                        f"{len(missing)} image(s) with annotations without one (e.g. image id {missing[0]}); add "
                        f"masks, or set {FIELD}.mask_source: segmenter (shapes world) to label such references")


def load_coco(spec) -> dict:
    """The parsed COCO file of ``prompts.annotations`` (already checked by the prompt pool)."""
    import fsspec

    from ..output.storage import input_options

    with fsspec.open(spec.prompts.annotations, "rb", **input_options(spec.prompts.annotations, spec)) as f:
        return json.loads(f.read().decode("utf-8-sig"))
