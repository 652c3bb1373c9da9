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

Classes the head never saw a box of need more than its own scores: on embedded:shapes v2 a head
trained as InstaGen's boxed none of them (novel AP50 0.000). ``region_clip`` adds ViLD's region
classification by a CLIP and ViLD's ensemble (``boxes/regions.py``); the shipped head was
self-trained with the same CLIP in its teacher, and uses it by default, whatever its ``stage``.
Measured in BENCHMARKS.md "Open-vocabulary grounding".
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from ..models.shipped import GROUNDING_DIR
from ..records import normalise_name
from ..spec import JobSpec
from .boxes.regions import REGION_NMS_IOU
from .clip_regions import CLIP_TEMPLATE, VILD_WEIGHT
from .trained import TrainedBoxHead, TrainedHeadParams

__all__ = ["GroundingHead"]


class GroundingParams(TrainedHeadParams):
    stage: Literal["self_trained", "base"] = Field(
        default="self_trained", description="The head after self-training on novel classes, or after base "
                                            "classes only (for comparison).")
    region_clip: str = Field(
        default="auto", description="ViLD's region classification (engine/heads/boxes/regions.py): a CLIP scores "
                                    "each box's crop against the class names, ensembled with the head's scores. "
                                    "'auto': the CLIP the head's self-training used (its card's recipe), else the "
                                    "shapes CLIP for the shipped head and none for other weights, whatever the "
                                    "stage; 'none'; 'embedded:clip'; or any CLIPModel folder or hub id.")
    clip_weight: float = Field(default=VILD_WEIGHT, gt=0, le=1,
                               description="ViLD's lambda: the CLIP's share for classes the head never saw, "
                                           "1 - lambda for those it was trained on.")
    clip_template: str = Field(default=CLIP_TEMPLATE,
                               description="Each class name's text for the CLIP; '{}' is the name.")


class GroundingHead(TrainedBoxHead):
    Params = GroundingParams
    name, stem, shipped = "grounding", "grounding", GROUNDING_DIR

    @classmethod
    def load_stem(cls, params) -> str:
        return "grounding-base" if params.stage == "base" else cls.stem

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        from ..models.clip_embeddings import is_clip
        from .clip_regions import check_region_clip

        params, problems = spec.label_head.config, super().check_spec(spec)
        if problems:
            return problems
        problems += [p for p in [check_region_clip("label_head.params.region_clip", params.region_clip)] if p]
        if params.region_clip == "auto":
            with open(cls.card_path(params)) as f:
                trained_with = json.load(f).get("recipe", {}).get("region_clip")
            if trained_with not in (None, "none") and not is_clip(trained_with):
                problems.append(f"label_head.params.region_clip: 'auto' takes the CLIP the head was trained with, "
                                f"{trained_with!r} (its card), and none is there; give region_clip a CLIPModel "
                                f"folder or hub id, or 'none'")
        if params.clip_template.count("{}") != 1:
            problems.append(f"label_head.params.clip_template: expected exactly one '{{}}' where the class name goes, "
                            f"got {params.clip_template!r}; e.g. 'a photograph of a {{}}'")
        return problems

    def region_clip(self) -> str | None:
        """The CLIP that classifies regions, or None: ``region_clip`` resolved against the head's card."""
        from ..models.clip_embeddings import EMBEDDED_CLIP

        if self.params.region_clip == "auto":  # as it was trained (its card), else the shapes CLIP for the shipped head
            trained_with = self.card.get("recipe", {}).get("region_clip")
            if trained_with:
                return None if trained_with == "none" else trained_with
            return EMBEDDED_CLIP if self.params.weights is None else None
        return None if self.params.region_clip == "none" else self.params.region_clip

    def prepare(self, pipe) -> None:
        from .boxes.text import class_text

        self.names = [c.name for c in self.classes]
        vocabulary, self.clip, region_clip = list(self.names), None, self.region_clip()
        if region_clip:
            from ..models.clip_embeddings import load_clip
            from .clip_regions import clip_class_text

            trained = self.card.get("classes_seen", {})
            seen = {normalise_name(c) for c in trained.get("base", [])}  # the classes it saw boxes of
            # every class it was trained on competes in the CLIP's softmax, even where the job does not ask for it
            # (a job naming only "star" must not box rings as stars); such columns have no job name (None)
            asked = {normalise_name(c) for c in self.names}
            vocabulary += [c for c in trained.get("base", []) + trained.get("novel", []) if normalise_name(c) not in asked]
            self.names += [None] * (len(vocabulary) - len(self.names))
            self.clip = load_clip(region_clip)
            self.clip[0].to(pipe.device)
            self.clip_text = clip_class_text(self.clip, vocabulary, self.params.clip_template)
            self.seen = [normalise_name(c) in seen for c in vocabulary]
            self.nms_iou = REGION_NMS_IOU
        self.text = class_text(pipe, vocabulary, self.card.get("class_template", "{}"))  # as it was trained

    def vocabulary(self):
        return self.names, self.text

    def rescore(self, out: dict, images: list) -> dict:
        if self.clip is None:
            return out
        from .boxes.regions import clip_rescored

        return clip_rescored(out, images, self.clip, self.clip_text, self.seen, self.image_size,
                             self.params.clip_weight)
