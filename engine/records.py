"""Plain records that flow between the planner, the workers, backends, heads and the sink.

A unit travels in one form: the planner builds a ``Unit`` (``Planner.unit``) from a wave's plan,
the driver hands it to the executor unchanged, and the worker and the sink read it. Inside the
worker each ``UnitImage`` becomes an ``ImageRequest`` for the backend, which returns a
``Generated``; the head returns ``Labels``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re

import numpy as np

__all__ = ["Unit", "UnitImage", "ImageRequest", "Generated", "Instance", "Labels", "semantic_dtype", "uncertain_value",
           "category_ids", "MAX_CATEGORIES", "normalise_name", "plural_forms"]

MAX_CATEGORIES = 65534  # a uint16 semantic mask holds 0 (background), 1..65534 and 65535 (uncertain)


def category_ids(names) -> dict[str, int]:
    """The category id of each class name: its index in the list + 1, as in COCO files and
    semantic masks, where 0 is the background. The one place this rule is written."""
    return {name: k + 1 for k, name in enumerate(names)}


_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise_name(name: str) -> str:
    """A class or category name as every matcher compares it: case ignored, runs of ``_``, ``-``
    and spaces one space (``Traffic_Light`` is ``traffic light``). The one place this rule is
    written; ``job.classnames`` adds plural forms on top."""
    return _SEPARATORS.sub(" ", name.strip().lower())


def plural_forms(word: str) -> set[str]:
    """The plurals a prompt or category may name ``word`` by (``s``, ``es``, ``y`` -> ``ies``)."""
    forms = {word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    return forms


def semantic_dtype(categories: int) -> np.dtype:
    """uint8 semantic masks (palette PNGs, as before) up to 254 categories, else uint16 (16-bit
    grey PNGs): LVIS-scale vocabularies (1,203 classes) fit, and id 255 is never 'uncertain'."""
    return np.dtype(np.uint8 if categories <= 254 else np.uint16)


def uncertain_value(dtype: np.dtype) -> int:
    """The 'uncertain' label of a semantic mask: its dtype's largest value (255 or 65535)."""
    return int(np.iinfo(dtype).max)


@dataclass(frozen=True)
class UnitImage:
    """One image of a unit, as the driver sends it: what the worker needs to make it."""

    image_id: int
    seed: int
    prompt: str
    negative_prompt: str = ""
    classes: tuple[str, ...] = ()  # job classes the prompt/reference names, with repeats
    reference_id: str | None = None
    reference_uri: str | None = None  # the img2img reference the worker reads
    reference_sha256: str | None = None  # as committed units of this job read it: another file is refused

    def request(self) -> "ImageRequest":
        return ImageRequest(self.image_id, self.seed, self.prompt, self.negative_prompt, list(self.classes),
                            self.reference_id)


@dataclass(frozen=True)
class Unit:
    """One unit of work, one commit: built by the planner, read by the worker and its sink."""

    unit_id: str
    index: int
    wave: int
    images: tuple[UnitImage, ...]
    lease: str | None = None  # the id of the driver's lease: its attempts are named after it
    driver_started_at: float | None = None  # when this run of the driver began (for throughput)


@dataclass
class ImageRequest:
    """One image to make: everything needed to reproduce it."""

    image_id: int
    seed: int
    prompt: str
    negative_prompt: str = ""
    classes: list[str] = field(default_factory=list)  # classes the prompt/reference names
    reference_id: str | None = None
    reference: np.ndarray | None = None  # uint8 HxWx3, loaded by the worker
    condition: Any = None  # conditions.Condition: the reference's layout, for mask-conditioned backends


@dataclass
class Instance:
    """An object: a mask (its box follows from it), or a box alone (the box heads), in pixels."""

    category: str
    mask: np.ndarray | None = None  # bool HxW
    score: float = 1.0
    box: tuple[float, float, float, float] | None = None  # x, y, w, h; None: the mask's box

    def bbox(self) -> list[float]:
        if self.box is not None:
            return [float(v) for v in self.box]
        ys, xs = np.nonzero(self.mask)
        return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]

    def area(self) -> float:
        return float(self.mask.sum()) if self.mask is not None else float(self.box[2] * self.box[3])

    def is_empty(self) -> bool:
        return not self.mask.any() if self.mask is not None else self.box[2] <= 0 or self.box[3] <= 0


@dataclass
class Labels:
    instances: list[Instance]
    semantic: np.ndarray | None = None  # HxW, semantic_dtype: 0 background, uncertain_value uncertain, else category id


@dataclass
class Generated:
    """A backend's output for one request. ``reject`` set means: no image, with this reason."""

    image: np.ndarray | None  # uint8 HxWx3
    strength: float | None = None
    ground_truth: Labels | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. attention maps or features for heads
    reject: str | None = None
