"""``ground_truth``: the labels a backend knows exactly (the render backend draws them)."""

from __future__ import annotations

from ..records import Generated, ImageRequest, Labels
from ..spec import JobSpec
from .base import Head

__all__ = ["GroundTruthHead"]


class GroundTruthHead(Head):
    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        if spec.generator.name != "render":
            return [f"label_head.name: expected a head that labels {spec.generator.name!r} images, got "
                    f"'ground_truth' (only the 'render' backend supplies ground truth)"]
        return []

    def label(self, requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]:
        return [g.ground_truth if g.ground_truth is not None else Labels([]) for g in generated]
