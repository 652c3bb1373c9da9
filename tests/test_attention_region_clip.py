"""The attention head's region CLIP (engine/heads/attention/maps.region_classes): where the model
drew another of the prompt's classes than its attention says, or swapped two, each instance's class
follows what was drawn; the crop shows the instance without its neighbour; a CLIP that cannot load
is refused before the job starts."""

from dataclasses import replace

import numpy as np
import pytest

from engine.spec import parse_spec

PAIRS = [("circle", "square"), ("triangle", "star"), ("ring", "cross"), ("square", "star"), ("cross", "circle"),
         ("star", "ring"), ("triangle", "circle"), ("square", "cross")]


def _two_object_scenes():
    """Model-world scenes holding exactly the two classes of each pair, with their masks."""
    from engine.models.embedded import model_world
    from engine.world import render_scene

    world = replace(model_world(), min_objects=2, max_objects=2)
    return [(pair, render_scene(seed, list(pair), world)) for seed, pair in enumerate(PAIRS)]


def _captured(masks: list[np.ndarray], side: int = 16) -> dict:
    """Cross-attention as ``AttentionStore.end`` gives it ((side*side, M) at one side, no
    self-attention): each class's map the (downsampled) mask given for it."""
    import torch

    size = masks[0].shape[0]
    cells = [m.reshape(side, size // side, side, size // side).mean(axis=(1, 3)) for m in masks]
    return {"cross": {side: torch.tensor(np.stack(cells, -1).reshape(side * side, -1), dtype=torch.float32)}}


def _swapped(mask_a: np.ndarray, mask_b: np.ndarray) -> list[np.ndarray]:
    """Class maps for a and b that put 70% of each class's attention on the other's object."""
    return [0.7 * mask_b + 0.3 * mask_a, 0.7 * mask_a + 0.3 * mask_b]


def test_a_masked_crop_shows_the_instance_without_the_neighbour_in_its_box():
    from engine.heads.clip_regions import masked_crops

    image = np.full((32, 32, 3), 40, np.uint8)
    image[8:20, 8:16] = 200   # the instance
    image[8:20, 16:24] = 120  # its neighbour, inside the instance's widened box
    region = np.zeros((32, 32), bool)
    region[8:20, 8:16] = True
    crop = masked_crops(image, [region], dilation=1)[0]
    assert crop.shape == image.shape and crop.dtype == np.uint8
    assert (crop[8:20, 8:16] == 200).all()        # in place
    assert (crop[8:20, 17:24] == 40).all()        # the neighbour beyond the dilation: border colour
    assert (crop[8:20, 16] == 120).all()          # one dilated pixel of it stays (the instance's edge)


def test_the_shapes_clip_gives_each_instance_the_class_drawn_where_attention_swapped_them():
    from engine.heads.attention import class_maps, region_classes
    from engine.heads.clip_regions import clip_class_text
    from engine.models.clip_embeddings import load_clip

    clip = load_clip("embedded:clip")
    right = 0
    for (a, b), scene in _two_object_scenes():
        masks = {i.category: i.mask for i in scene.instances}
        # attention swapped: the map of a lies mostly on b's object and the other way round
        maps = class_maps(_captured(_swapped(masks[a], masks[b])), scene.image.shape[0], 0)
        picks = region_classes(scene.image, maps, [masks[a], masks[b]], clip, clip_class_text(clip, [a, b]), 2 / 3)
        right += int(list(picks) == [0, 1])
    # the attention alone names none of them as drawn; the shapes CLIP hesitates on two (6 of 8 when written)
    assert right >= 6, f"{right} of {len(PAIRS)} pairs named as drawn"


def test_the_head_relabels_instances_and_mask_together():
    """``AttentionHead.label_one`` with a region CLIP, on captured maps that swap the two classes:
    each instance and its pixels of the semantic mask take the class drawn."""
    from engine.heads.attention.head import AttentionHead
    from engine.heads.clip_regions import clip_class_text
    from engine.models.clip_embeddings import load_clip
    from engine.records import Generated, category_ids
    from engine.spec import ClassSpec
    from engine.world import CLASSES

    head = AttentionHead(params=AttentionHead.Params(tau=0, region_clip="embedded:clip"),
                         classes=[ClassSpec(name=c) for c in CLASSES])
    head.tau, head.category_id, head.clip = 0, category_ids(CLASSES), load_clip("embedded:clip")
    head.clip_text = dict(zip(CLASSES, clip_class_text(head.clip, list(CLASSES))))
    (a, b), scene = _two_object_scenes()[0]
    masks = {i.category: i.mask for i in scene.instances}
    captured = {**_captured(_swapped(masks[a], masks[b])), "classes": [a, b]}
    labels = head.label_one(Generated(scene.image, extras={"attention": captured}))
    for instance in labels.instances:
        drawn = max(masks, key=lambda c: (masks[c] & instance.mask).sum())
        assert instance.category == drawn
        assert (labels.semantic[instance.mask] == head.category_id[drawn]).all()
    assert {i.category for i in labels.instances} == {a, b}


def test_an_object_the_attention_split_between_two_classes_is_one_instance_once_the_clip_names_it():
    """The attention gives an object's core to the prompt's other class (as it does where both classes'
    maps fire on one drawn shape); where the CLIP names the core as drawn, the instances are the
    components of the relabelled mask: one instance, the whole object, not the object and its core."""
    from scipy.ndimage import binary_erosion

    from engine.heads.attention.head import AttentionHead
    from engine.heads.clip_regions import clip_class_text
    from engine.models.clip_embeddings import load_clip
    from engine.records import Generated, category_ids
    from engine.spec import ClassSpec
    from engine.world import CLASSES

    head = AttentionHead(params=AttentionHead.Params(tau=0, region_clip="embedded:clip"),
                         classes=[ClassSpec(name=c) for c in CLASSES])
    head.tau, head.category_id, head.clip = 0, category_ids(CLASSES), load_clip("embedded:clip")
    head.clip_text = dict(zip(CLASSES, clip_class_text(head.clip, list(CLASSES))))
    whole = 0
    for (a, b), scene in _two_object_scenes():
        masks = {i.category: i.mask for i in scene.instances}
        core = binary_erosion(masks[a], iterations=3)
        if not core.any():  # a thin shape (a ring) has no core to split off
            continue
        # full-resolution maps: a's map weaker on the core, b's map on the core and on b's object
        maps = [masks[a] - 0.45 * core, (core | masks[b]).astype(float)]
        captured = {**_captured(maps, side=scene.image.shape[0]), "classes": [a, b]}
        found = [i for i in head.label_one(Generated(scene.image, extras={"attention": captured})).instances
                 if (i.mask & masks[a]).any()]
        whole += int(len(found) == 1 and found[0].category == a and (found[0].mask == masks[a]).all())
        for one in found:  # never an object's part beside another part of the same class
            others = [o.mask for o in found if o is not one and o.category == one.category]
            assert not any((binary_dilation_8(one.mask) & other).any() for other in others), (a, b)
    # the CLIP names the core as drawn in 5 of the 7 objects that have one (when written)
    assert whole >= 4, f"{whole} objects labelled whole"


def binary_dilation_8(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=np.ones((3, 3), bool))


@pytest.mark.parametrize("given, model, expected", [
    ("auto", "embedded:shapes", "embedded:clip"),  # the model's own CLIP
    ("auto", "runwayml/stable-diffusion-v1-5", None),  # no CLIP is shipped for it: the attention's classes
    ("none", "embedded:shapes", None),
    ("some/clip-folder", "embedded:shapes", "some/clip-folder"),
])
def test_auto_is_the_shapes_clip_on_the_shapes_model_only(given, model, expected):
    from engine.heads.attention.head import AttentionHead, region_clip

    assert region_clip(AttentionHead.Params(region_clip=given), model) == expected


def test_an_attention_region_clip_that_cannot_load_is_refused_before_the_job_starts(spec_data):
    from engine.errors import SpecError

    spec_data["generator"] = {"name": "diffusion", "params": {"model": "embedded:shapes"}}
    spec_data["label_head"] = {"name": "attention", "params": {"region_clip": "/no/such/clip"}}
    with pytest.raises(SpecError) as info:
        parse_spec(spec_data)
    problems = " ".join(info.value.problems)
    assert "label_head.params.region_clip: expected" in problems and "/no/such/clip" in problems
