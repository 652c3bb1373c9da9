"""``condition``: the labels are the condition mask itself (Diffusion Synthesis: the layout is given,
so the labels are known by construction): the semantic map, one instance mask per visible
reference instance and its box, in the job's classes, at the generated image's size. It needs a
backend that offers ``condition_masks`` (``controlnet``)."""

from __future__ import annotations

from ..backends.base import CONDITION_MASKS
from ..records import Generated, ImageRequest, Labels
from .base import Head

__all__ = ["ConditionHead"]


class ConditionHead(Head):
    requires = frozenset({CONDITION_MASKS})

    def label(self, requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]:
        return [g.extras.get("condition_masks", Labels([])) for g in generated]
