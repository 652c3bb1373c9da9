"""ViLD's region classification for the grounding head (engine/heads/boxes/regions.py): crops keep
the object in place and at scale; the shipped shapes CLIP names unseen shapes that the detector
only boxes; a job refuses a region CLIP it cannot load, before anything is written."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.spec import parse_spec

BORDER = (10, 20, 30)


def test_a_crop_keeps_the_widened_box_in_place_and_fills_the_rest_with_the_border_colour():
    from engine.heads.clip_regions import region_crops

    image = np.zeros((16, 16, 3), np.uint8)
    image[:] = BORDER
    image[4:12, 4:12] = 200
    crops = region_crops(image, np.array([[6.0, 6.0, 10.0, 10.0], [0.0, 0.0, 16.0, 16.0]]), padding=1.5)
    assert crops.shape == (2, 16, 16, 3) and crops.dtype == np.uint8
    assert (crops[0, 5:11, 5:11] == 200).all()  # the box 6-10, widened 1.5x about its centre: 5-11
    assert (crops[0, 4] == BORDER).all() and (crops[0, :, 11] == BORDER).all()  # object pixels outside it: gone
    assert np.array_equal(crops[1], image)


def test_the_shapes_clip_names_unseen_shapes_that_the_detector_only_boxes():
    from engine.heads.boxes.regions import clip_ensemble
    from engine.heads.clip_regions import clip_class_text
    from engine.models.clip_embeddings import load_clip
    from engine.models.embedded import model_world
    from engine.world import render_scene

    names, seen = ["circle", "square", "triangle", "cross", "star", "ring"], [True] * 4 + [False] * 2
    world = replace(model_world(), min_objects=1, max_objects=1)
    scenes = [render_scene(seed, [name], world) for seed, name in enumerate(["star", "ring"] * 6)]
    # region 0: the object, boxed as a weak "circle" (as a head trained on the seen classes boxes a star);
    # region 1: a corner the detector scores under the objectness floor
    probs = torch.full((len(scenes), 2, len(names)), 1e-3)
    probs[:, 0, 0] = 0.2
    boxes = torch.tensor([[[x, y, x + w, y + h], [0.0, 0.0, 8.0, 8.0]]
                          for x, y, w, h in (s.instances[0].bbox for s in scenes)])
    clip = load_clip("embedded:clip")
    scores = clip_ensemble(probs, boxes, [s.image for s in scenes], clip, clip_class_text(clip, names), seen)
    named = [names[k] for k in scores[:, 0].argmax(-1).tolist()]
    assert sum(n == s.instances[0].category for n, s in zip(named, scenes)) >= 10, named
    assert (scores[:, 1] == 0).all() and ((scores >= 0) & (scores <= 1)).all()


def test_a_region_clip_that_cannot_load_is_refused_before_the_job_starts(spec_data):
    from engine.errors import SpecError

    spec_data.update(classes=["circle", "star"])
    spec_data["generator"] = {"name": "diffusion", "params": {"model": "embedded:shapes"}}
    spec_data["label_head"] = {"name": "grounding", "params": {"region_clip": "/no/such/clip",
                                                               "clip_template": "a photograph"}}
    with pytest.raises(SpecError) as info:
        parse_spec(spec_data)
    problems = " ".join(info.value.problems)
    assert "label_head.params.region_clip: expected" in problems and "/no/such/clip" in problems
    assert "label_head.params.clip_template: expected exactly one '{}'" in problems


@pytest.mark.parametrize("card_clip, weights, expected", [
    ("embedded:clip", "somewhere", "embedded:clip"),  # as the card says it was trained
    ("none", None, None),
    (None, "somewhere", None),  # an older card, another head: the head alone
    (None, None, "embedded:clip"),  # an older card of the shipped head: the shapes CLIP
])
def test_auto_takes_the_clip_the_head_was_trained_with(card_clip, weights, expected):
    from engine.heads.grounding import GroundingHead
    from engine.spec import ClassSpec

    head = GroundingHead(params=GroundingHead.Params(weights=weights), classes=[ClassSpec(name="star")])
    head.card = {"recipe": {"region_clip": card_clip}} if card_clip else {"recipe": {}}
    assert head.region_clip() == expected
    head.params = GroundingHead.Params(weights=weights, region_clip="none")
    assert head.region_clip() is None


def test_every_class_the_head_was_trained_on_competes_for_the_clip_unnamed(tiny_model):
    """A job naming only some classes: the others the head knows join the CLIP's softmax without a
    job name (a ring must not become a "star"); spelling (case, underscores) does not make a class."""
    from engine.heads.grounding import GroundingHead
    from engine.models import load_pipeline
    from engine.spec import ClassSpec

    head = GroundingHead(params=GroundingHead.Params(region_clip="embedded:clip"),
                         classes=[ClassSpec(name="Star"), ClassSpec(name="hexagon")])
    head.card = {"classes_seen": {"base": ["circle", "star"], "novel": ["ring"]}}
    head.prepare(load_pipeline(tiny_model))
    names, text = head.vocabulary()
    assert names == ["Star", "hexagon", None, None] and head.seen == [True, False, True, False]
    assert len(text) == len(head.clip_text) == 4 and head.nms_iou == 0.5
