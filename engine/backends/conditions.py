"""Condition maps for mask-conditioned generation (Diffusion Synthesis, Sec. 3.1-3.2; ControlNet).

A reference's masks become a ``Condition``: an instance-id map (int32 HxW, 0 = no object,
k = the k-th instance) and the job class of each instance. The same map gives the colour image
a segmentation ControlNet reads (through a palette) and the labels the ``condition`` head writes,
so the labels are the condition by construction.

Palettes:

- ``class_index`` (ours, the embedded ControlNet's): palette class k has the PASCAL VOC
  colour-map colour of k (bit-interleaved, distinct for 0..255; 0 = background = black). Job
  classes that name a shapes-world class map to 1 + its index in ``world.CLASSES`` by default.
- ``ade20k``: the 150-class ADE20K palette of the public SD 1.5 segmentation ControlNets
  (``control_v11p_sd15_seg``), from ``engine/data/ade20k_palette.json``; unlabelled pixels are
  black. Some ADE20K classes share a colour (road and skyscraper): a job whose classes map to one
  colour is refused, since the ControlNet could not tell them apart.

The conditions themselves are read from the references' masks in the worker
(``job/conditions.py``).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from ..records import Instance, Labels, normalise_name
from .base import StrictParams

__all__ = ["ConditionParams", "MaskGeneratorParams", "Condition", "palette_colours", "palette_indices", "condition_image", "PALETTE_FILE"]

PALETTE_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "ade20k_palette.json")
FIELD = "generator.params.condition"


class MaskGeneratorParams(StrictParams):
    """Masks for references that have none (Diffusion Synthesis, Sec. 3.1, Mask Generator: an
    open-vocabulary detector's boxes prompt a promptable segmenter). Boxes: a reference's own
    annotation boxes where it has annotations; the detector's (prompted with the job's class
    names) where it has none. Masks: the segmenter's, prompted with those boxes."""

    detector: str | None = Field(
        default=None, description="Boxes for references without any annotation: a transformers zero-shot object "
                                  "detection folder or hub id (OwlViT, Owlv2, Grounding DINO; "
                                  "AutoModelForZeroShotObjectDetection + AutoProcessor), 'embedded:adapter' or "
                                  "'embedded:grounding' (dde's box heads on the reference's Eq. 4 features; "
                                  "model embedded:shapes). None: the reference's own annotation boxes only.")
    segmenter: str = Field(
        default="embedded:segmenter", description="Masks from boxes: a transformers SamModel folder or hub id "
                                                  "(SamModel + SamProcessor, prompted with the boxes), or "
                                                  "'embedded:segmenter' (the shipped shapes-world segmenter: the "
                                                  "box's class inside the box; without boxes, each connected region).")
    threshold: float = Field(default=0.3, ge=0, le=1, description="The detector's score threshold.")


class ConditionParams(StrictParams):
    palette: Literal["class_index", "ade20k"] = Field(
        default="class_index", description="How the condition map is coloured: class_index (the embedded "
                                           "ControlNet's) or ade20k (the public SD 1.5 segmentation ControlNets').")
    classes: dict[str, int | str] = Field(
        default_factory=dict, description="Job class -> palette class (an index, or an ADE20K class name). "
                                          "class_index default: 1 + the shapes-world class index.")
    mask_generator: MaskGeneratorParams | None = Field(
        default=None, description="Diffusion Synthesis's Mask Generator, for references whose annotations have boxes "
                                  "but no segmentation, or no annotations at all; none: such references are refused "
                                  "when the job starts.")


@functools.lru_cache(maxsize=1)
def _ade20k() -> tuple[list[str], np.ndarray]:
    with open(PALETTE_FILE) as f:
        table = json.load(f)
    # palette class 0 is unlabelled (black); ADE20K class i is palette class i + 1
    names = ["background"] + [c["name"] for c in table["classes"]]
    colours = np.array([table["background"]] + [c["rgb"] for c in table["classes"]], np.uint8)
    return names, colours


def _voc_colour(index: int) -> list[int]:
    """PASCAL VOC's colour map: the bits of ``index`` spread over the high bits of R, G and B."""
    rgb = [0, 0, 0]
    for shift in range(8):
        for channel in range(3):
            rgb[channel] |= ((index >> channel) & 1) << (7 - shift)
        index >>= 3
    return rgb


def palette_colours(palette: str) -> np.ndarray:
    """uint8 (N, 3): the RGB colour of each palette class (0 = background)."""
    if palette == "ade20k":
        return _ade20k()[1]
    return np.array([_voc_colour(k) for k in range(256)], np.uint8)


def _palette_index(palette: str, value: int | str) -> int | None:
    """A palette class given as an index or (ade20k) an ADE20K class name; None if it is neither."""
    size = len(palette_colours(palette))
    if isinstance(value, int):
        return value if 0 < value < size else None
    if palette != "ade20k":
        return int(value) if value.isdigit() and 0 < int(value) < size else None
    names = [normalise_name(n) for n in _ade20k()[0]]
    return names.index(normalise_name(value)) if normalise_name(value) in names[1:] else None


def _default_index(palette: str, job_class) -> int | None:
    from ..world import CLASSES

    if palette != "class_index":
        return None
    world = next((w.lower() for w in job_class.words if w.lower() in CLASSES), None)
    return None if world is None else 1 + CLASSES.index(world)


def palette_indices(params: ConditionParams, classes) -> tuple[dict[str, int], list[str]]:
    """(job class -> palette class, problems): a class missing from ``classes`` (with no default) or
    mapped to no palette class, a mapping key that is no job class, and two classes sharing a colour."""
    problems, indices = [], {}
    by_word = {normalise_name(w): c.name for c in classes for w in c.words}
    for key in params.classes:
        if normalise_name(key) not in by_word:
            problems.append(f"{FIELD}.classes.{key}: expected a job class (a name or synonym), got {key!r}; the "
                            f"job's classes are {[c.name for c in classes]}")
    given = {by_word[normalise_name(k)]: v for k, v in params.classes.items() if normalise_name(k) in by_word}
    for c in classes:
        value = given.get(c.name)
        index = _default_index(params.palette, c) if value is None else _palette_index(params.palette, value)
        if index is not None:
            indices[c.name] = index
        elif value is None:
            problems.append(f"{FIELD}.classes: expected a palette class for job class {c.name!r} (palette "
                            f"{params.palette!r}), got none; add e.g. classes: {{{c.name}: "
                            f"{'plate' if params.palette == 'ade20k' else 1}}}")
        else:
            problems.append(f"{FIELD}.classes.{c.name}: expected a {params.palette} palette class (an index from 1"
                            f"{' or an ADE20K class name' if params.palette == 'ade20k' else ''}), got {value!r}")
    return indices, problems + _collisions(params.palette, indices)


def _collisions(palette: str, indices: dict[str, int]) -> list[str]:
    colours = palette_colours(palette)
    by_colour: dict[tuple, list[str]] = {}
    for name, index in indices.items():
        by_colour.setdefault(tuple(int(v) for v in colours[index]), []).append(name)
    names = _ade20k()[0] if palette == "ade20k" else None
    problems = []
    for rgb, shared in by_colour.items():
        if len(shared) > 1:
            which = [f"{n} -> {names[indices[n]] if names else indices[n]}" for n in shared]
            problems.append(f"{FIELD}.classes: expected one colour per job class, got {len(shared)} classes sharing "
                            f"RGB {list(rgb)} in the {palette} palette ({', '.join(which)}); the ControlNet "
                            f"cannot tell them apart: map them to palette classes with distinct colours")
    return problems


@dataclass
class Condition:
    """A reference's layout: ``instances`` int32 HxW (0 none, k = ``categories[k - 1]``)."""

    instances: np.ndarray
    categories: list[str]

    def fitted(self, size: int, mode: str) -> "Condition":
        """The same crop and resize as the reference image (``reference_resize``), nearest neighbour."""
        from PIL import Image

        from ..images import fit_square

        image = fit_square(Image.fromarray(self.instances.astype(np.int32), mode="I"), size, mode, Image.NEAREST)
        return Condition(np.asarray(image, np.int32), self.categories)

    def labels(self, class_names: list[str]) -> Labels:
        """The condition as labels: visible instance masks, and the semantic map (job category ids)."""
        from ..records import semantic_dtype

        ids = np.array([0] + [1 + class_names.index(c) for c in self.categories])
        semantic = ids[self.instances].astype(semantic_dtype(len(class_names)))
        instances = [Instance(c, self.instances == k + 1) for k, c in enumerate(self.categories)]
        return Labels([i for i in instances if i.mask.any()], semantic=semantic)


def condition_image(condition: Condition, indices: dict[str, int], colours: np.ndarray) -> np.ndarray:
    """uint8 HxWx3: the condition map coloured by the palette (what a segmentation ControlNet reads)."""
    lut = np.array([colours[0]] + [colours[indices[c]] for c in condition.categories], np.uint8)
    return lut[condition.instances]
