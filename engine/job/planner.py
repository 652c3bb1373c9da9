"""Per-class lower-bound planning in waves (DiffusionEngine's annotation lower bound).

Each wave is planned from the counts committed by all earlier waves and nothing else,
so a resumed job plans exactly the waves an uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..output.layout import derive_seed, unit_id
from ..records import Unit, UnitImage
from ..spec import JobSpec
from .prompts import PromptItem

__all__ = ["Planner", "stuck_classes", "job_stuck_classes", "class_state", "stop_reason", "STUCK_PATIENCE"]

STUCK_PATIENCE = 2  # waves without growth before a class is reported stuck


def stuck_classes(history: list[dict[str, int]], bounds: dict[str, int]) -> list[str]:
    """Classes below their bound whose count did not grow over the last STUCK_PATIENCE waves.

    ``history[0]`` is the all-zero state before wave 0; ``history[w + 1]`` follows wave w.
    """
    if len(history) <= STUCK_PATIENCE:
        return []
    now, before = history[-1], history[-1 - STUCK_PATIENCE]
    return [c for c, b in bounds.items() if now.get(c, 0) < b and now.get(c, 0) <= before.get(c, 0)]


def job_stuck_classes(spec: JobSpec, history: list[dict[str, int]]) -> list[str]:
    """``stuck_classes`` of the job; none when its head makes no labels (``none``): nothing is
    counted, so a class is "not labelled" and the job runs to its image or wave budget."""
    return stuck_classes(history, spec.bounds()) if spec.label_head.component.makes_labels else []


def class_state(spec: JobSpec, count: int, bound: int, stuck: bool) -> str:
    """What status, the card and the report say of a class."""
    if not spec.label_head.component.makes_labels:
        return "not labelled"
    return "met" if count >= bound else ("stuck" if stuck else "below")


def stop_reason(spec: JobSpec, wave: int, counts: dict[str, int], stuck: list[str], images_planned: int) -> str | None:
    bounds = spec.bounds()
    unmet = [c for c, b in bounds.items() if counts.get(c, 0) < b]
    if not unmet:
        return "bounds_met"
    if images_planned >= spec.budget.max_images:
        return "max_images"
    if wave >= spec.budget.max_waves:
        return "max_waves"
    if set(unmet) <= set(stuck):
        return "stuck"
    return None


@dataclass
class Planner:
    spec: JobSpec
    pool: list[PromptItem]

    def __post_init__(self):
        self._item_classes = [set(item.classes) for item in self.pool]

    def plan_wave(self, wave: int, counts: dict[str, int], stuck: list[str], images_planned: int,
                  first_unit: int, uses: np.ndarray, images_done: int, instances_done: int) -> list[dict]:
        """The plan of wave ``wave`` as stored (``_plans/``): one JSON-able dict a unit, with its id,
        index, wave and images as ``[image_id, pool item, seed]``. ``unit`` makes each a ``Unit``."""
        n = self._wave_images(counts, stuck, images_planned, images_done, instances_done)
        weights = self._weights(counts, stuck, uses)
        rng = np.random.default_rng([self.spec.seed, wave])
        chosen = _weighted_sample(rng, weights, n)
        np.add.at(uses, chosen, 1)
        size = self.spec.unit_size
        units = []
        for k in range(math.ceil(n / size)):
            index = first_unit + k
            items = chosen[k * size:(k + 1) * size]
            images = [[index * size + i, int(item), derive_seed(self.spec.seed, index * size + i)]
                      for i, item in enumerate(items)]
            units.append({"unit_id": unit_id(index), "index": index, "wave": wave, "images": images})
        return units

    def unit(self, planned: dict, digests: dict[str, str], lease: str | None = None,
             driver_started_at: float | None = None) -> Unit:
        """The ``Unit`` a worker makes from the stored plan of one unit. ``digests``: sha256 of the
        references as committed units read them, so a changed one is caught; ``lease`` and
        ``driver_started_at``: this run of the driver."""
        images = []
        for image_id, item, seed in planned["images"]:
            p = self.pool[item]
            images.append(UnitImage(image_id, seed, p.prompt, p.negative_prompt, tuple(p.classes), p.reference_id,
                                    p.reference_uri, digests.get(p.reference_uri)))
        return Unit(planned["unit_id"], planned["index"], planned["wave"], tuple(images), lease, driver_started_at)

    def _wave_images(self, counts, stuck, images_planned, images_done, instances_done) -> int:
        budget_left = self.spec.budget.max_images - images_planned
        n = min(self.spec.wave_size, budget_left)
        if images_done and instances_done:
            # Do not overshoot: plan about what the remaining deficit needs, with a margin.
            deficit = sum(max(0, b - counts.get(c, 0)) for c, b in self.spec.bounds().items() if c not in stuck)
            per_image = instances_done / images_done
            n = min(n, max(self.spec.unit_size, math.ceil(1.25 * deficit / per_image)))
        return max(0, n)

    def _weights(self, counts, stuck, uses) -> np.ndarray:
        need = {c: (b - counts.get(c, 0)) / max(b, 1) for c, b in self.spec.bounds().items()
                if counts.get(c, 0) < b and c not in stuck}
        weights = np.array([sum(need.get(c, 0.0) for c in classes) for classes in self._item_classes])
        if not weights.any():
            weights = np.ones(len(self.pool))
        return weights / (1.0 + uses)  # spread over references/prompts before reusing one


def _weighted_sample(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """n item indices: without replacement while positive-weight items last (Gumbel top-k), then again."""
    positive = np.flatnonzero(weights > 0)
    chosen: list[np.ndarray] = []
    left = n
    while left > 0:
        k = min(left, len(positive))
        keys = np.log(weights[positive]) + rng.gumbel(size=len(positive))
        top = positive[np.argpartition(-keys, k - 1)[:k]] if k < len(positive) else positive
        chosen.append(rng.permutation(top))
        left -= k
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
