"""``grounding``: InstaGen's open-vocabulary grounding head. Class scores are dot products
between query features and the class names' embeddings from the generation model's own text
encoder, so a job may ask for classes the head never saw in training. Trained by
`dde train grounding --base ... --novel ...` (base supervision, then mean-teacher self-training
on novel classes); ships trained for embedded:shapes.

Names are embedded in the template the head was trained with (its card's ``class_template``;
``{}`` for the shipped head, InstaGen's is "a photograph of a {}"). The default threshold 0.3 is
kept over InstaGen's 0.4: on the shipped head, 0.4 keeps precision and loses recall (img2img F1
0.291 against 0.347, BENCHMARKS.md "Paper fidelity"). Where else it departs from InstaGen, and
what is measured: ``engine/models/grounding/README.md``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..models.shipped import GROUNDING_DIR
from .trained import TrainedBoxHead, TrainedHeadParams

__all__ = ["GroundingHead"]


class GroundingParams(TrainedHeadParams):
    stage: Literal["self_trained", "base"] = Field(
        default="self_trained", description="The head after self-training on novel classes, or after base "
                                            "classes only (for comparison).")


class GroundingHead(TrainedBoxHead):
    Params = GroundingParams
    name, stem, shipped = "grounding", "grounding", GROUNDING_DIR

    @classmethod
    def load_stem(cls, params) -> str:
        return "grounding-base" if params.stage == "base" else cls.stem

    def prepare(self, pipe) -> None:
        from .boxes.text import class_text

        self.names = [c.name for c in self.classes]
        self.text = class_text(pipe, self.names, self.card.get("class_template", "{}"))  # as it was trained

    def vocabulary(self):
        return self.names, self.text
