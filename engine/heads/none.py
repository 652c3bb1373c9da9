"""``none``: images only, with empty annotations (for models that no label head covers yet)."""

from __future__ import annotations

from ..records import Generated, ImageRequest, Labels
from .base import Head

__all__ = ["NoLabelsHead"]


class NoLabelsHead(Head):
    makes_labels = False
    def label(self, requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]:
        return [Labels([]) for _ in generated]
