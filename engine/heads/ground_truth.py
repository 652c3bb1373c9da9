"""``ground_truth``: the labels a backend knows exactly (the render backend draws them)."""

from __future__ import annotations

from ..backends.base import GROUND_TRUTH
from ..records import Generated, ImageRequest, Labels
from .base import Head

__all__ = ["GroundTruthHead"]


class GroundTruthHead(Head):
    requires = frozenset({GROUND_TRUTH})

    def label(self, requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]:
        return [g.ground_truth if g.ground_truth is not None else Labels([]) for g in generated]
