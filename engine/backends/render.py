"""``render``: the shapes world drawn procedurally, with exact ground truth.

Each request's classes are drawn (at least once each), plus random extra objects from
the job's classes. A reference, when the prompt source has one, has already been loaded
by the worker (so missing or corrupt references are rejected like for any backend);
the renderer draws a fresh scene with the reference's classes.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..records import Generated, ImageRequest, Instance, Labels, category_ids
from ..spec import JobSpec
from .base import GROUND_TRUTH, Backend, StrictParams

__all__ = ["RenderBackend"]


class RenderParams(StrictParams):
    size: int = Field(default=64, ge=16, le=1024, description="Image side in pixels.")
    min_objects: int = Field(default=1, ge=0)
    max_objects: int = Field(default=4, ge=1)
    min_scale: float = Field(default=0.18, gt=0, le=1)
    max_scale: float = Field(default=0.42, gt=0, le=1)
    min_visible: float = Field(default=0.4, ge=0, le=1)


def _world_name(words: list[str]) -> str | None:
    from ..world import CLASSES

    return next((w.lower() for w in words if w.lower() in CLASSES), None)


class RenderBackend(Backend):
    Params = RenderParams
    offers = frozenset({GROUND_TRUTH})
    uses_torch = False  # numpy only: its actors start without importing torch

    def __init__(self, *, params: RenderParams, classes):
        super().__init__(params=params, classes=classes)
        from ..world import CLASSES, WorldConfig

        self.config = WorldConfig(size=params.size, min_objects=params.min_objects, max_objects=params.max_objects,
                                  min_scale=params.min_scale, max_scale=params.max_scale,
                                  min_visible=params.min_visible)
        self.to_world = {c.name: _world_name(c.words) for c in classes}
        self.from_world = {w: c for c, w in self.to_world.items()}
        # world category id -> job category id, 0 stays background
        self.semantic_lut = np.zeros(len(CLASSES) + 1, dtype=np.uint8)
        world_ids = category_ids(CLASSES)
        for c, job_id in zip(classes, category_ids(c.name for c in classes).values()):
            self.semantic_lut[world_ids[self.to_world[c.name]]] = job_id

    @property
    def model_name(self) -> str:
        return f"render:shapes-world@{self.params.size}px"

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        from ..world import CLASSES

        params = spec.generator.config
        problems = [f"classes.{i}.name: expected a shapes-world class {list(CLASSES)} as name or synonym "
                    f"for the 'render' backend, got {c.name!r}"
                    for i, c in enumerate(spec.class_specs) if _world_name(c.words) is None]
        if params.min_objects > params.max_objects:
            problems.append(f"generator.params.min_objects: expected <= max_objects ({params.max_objects}), "
                            f"got {params.min_objects}")
        if params.min_scale > params.max_scale:
            problems.append(f"generator.params.min_scale: expected <= max_scale ({params.max_scale}), "
                            f"got {params.min_scale}")
        return problems

    @classmethod
    def max_instances_per_image(cls, params: RenderParams) -> int | None:
        return params.max_objects

    def generate(self, requests: list[ImageRequest]) -> list[Generated]:
        return [self._render(r) for r in requests]

    def _render(self, request: ImageRequest) -> Generated:
        from ..world import render_scene

        scene = render_scene(request.seed, [self.to_world[c] for c in request.classes], self.config,
                             extra_classes=list(self.from_world))
        instances = [Instance(self.from_world[inst.category], inst.mask) for inst in scene.instances]
        truth = Labels(instances, semantic=self.semantic_lut[scene.semantic])
        return Generated(image=scene.image, ground_truth=truth)
