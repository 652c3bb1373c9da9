"""What the docs and the outputs say matches what dde does (issue 17): the dataset card names
what the output holds; example comments name the defaults the code has."""

import copy
import os
import re

from engine.job.finalize import _card
from engine.registry import HEADS
from engine.spec import Component, parse_spec

from .conftest import BASE_SPEC, REPO

_STATS = {"images": 4, "instances": 6, "rejects": 0, "stop_reason": "bounds_met", "stuck": [], "notes": [],
          "classes": {"circle": {"instances": 6, "images": 4, "lower_bound": 2, "state": "met"}}}
_LAYOUTS = {"parquet": [{"file": "parquet/unit-000000.parquet"}], "coco": [{"file": "coco/instances.json"}]}


def _spec(head: str):
    data = copy.deepcopy(BASE_SPEC)
    data.update(output="memory://card", classes=["circle"])
    return parse_spec(data).model_copy(update={"label_head": Component(name=head)})  # the card reads only its name


def test_the_card_of_a_box_only_dataset_promises_no_masks():
    card = _card(_spec("adapter"), _STATS, masks=False, layouts=_LAYOUTS)
    assert card.count("A detection dataset") == 1 and "segmentation" not in card and "coco/semantic" not in card
    card = _card(_spec("ground_truth"), _STATS, masks=True, layouts=_LAYOUTS)
    assert "A detection and segmentation dataset" in card and "`coco/semantic/`" in card
    unlabelled = _card(_spec("none"), dict(_STATS, instances=0), masks=False, layouts=_LAYOUTS)
    assert "An unlabelled dataset" in unlabelled and "coco/semantic" not in unlabelled


def test_the_boxes_example_names_the_default_features():
    default = HEADS.get("adapter").Params.model_fields["features"].default
    with open(os.path.join(REPO, "jobs", "examples", "shapes-boxes.yaml")) as f:
        comment = " ".join(line.lstrip("# ").strip() for line in f if line.startswith("#"))
    assert re.search(rf"features: {default}, the default", comment), comment
