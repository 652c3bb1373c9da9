"""Tests for the shapes world: determinism, exact labels, occlusion and COCO export."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from engine.world import CLASSES, Instance, WorldConfig, export_coco, render_scene
from engine.world.render import BACKGROUNDS, _caption

CROWDED = WorldConfig(max_objects=6)


def scene_fingerprint(scene):
    return (scene.image.tobytes(), scene.semantic.tobytes(), scene.caption, scene.background,
            [(i.category, i.mask.tobytes(), i.bbox, i.area, i.color, i.rgb) for i in scene.instances])


def reference_bbox(mask):
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))


def assert_exact_labels(scene, size):
    assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
    assert scene.semantic.shape == (size, size) and scene.semantic.dtype == np.uint8
    coverage = np.zeros((size, size), np.int32)
    expected_semantic = np.zeros((size, size), np.uint8)
    for instance in scene.instances:
        assert instance.category in CLASSES
        assert instance.mask.dtype == bool and instance.mask.shape == (size, size)
        assert instance.mask.any()
        assert instance.area == int(instance.mask.sum())
        assert instance.bbox == reference_bbox(instance.mask)
        # Every visible pixel carries the object's (jittered, fixed) colour exactly.
        assert (scene.image[instance.mask] == np.array(instance.rgb, np.uint8)).all()
        coverage += instance.mask
        expected_semantic[instance.mask] = 1 + CLASSES.index(instance.category)
    assert coverage.max(initial=0) <= 1, "instance masks overlap"
    np.testing.assert_array_equal(scene.semantic, expected_semantic)


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_scene():
    config = WorldConfig(size=96, max_objects=6)
    for seed in (0, 7, 123456789, 2**63 + 5):
        first = render_scene(seed, ["ring", "star"], config)
        second = render_scene(seed, ["ring", "star"], config)
        assert scene_fingerprint(first) == scene_fingerprint(second)


def test_different_seeds_give_different_scenes():
    images = {render_scene(seed).image.tobytes() for seed in range(20)}
    assert len(images) == 20


def test_render_does_not_touch_global_rng():
    np.random.seed(1)
    expected = np.random.random()
    np.random.seed(1)
    render_scene(3)
    assert np.random.random() == expected


# --------------------------------------------------------------------------- classes


def test_required_classes_appear_with_multiplicity():
    for seed in range(30):
        scene = render_scene(seed, ["ring", "star", "ring"], CROWDED)
        counts = collections.Counter(i.category for i in scene.instances)
        assert counts["ring"] >= 2 and counts["star"] >= 1


def test_required_classes_survive_a_crowded_scene():
    required = list(CLASSES) * 3
    for seed in range(10):
        scene = render_scene(seed, required, WorldConfig(size=64, max_objects=18))
        counts = collections.Counter(i.category for i in scene.instances)
        assert all(counts[name] >= 3 for name in CLASSES), counts


def test_single_class_name_string_is_one_class():
    scene = render_scene(4, "cross", WorldConfig(min_objects=0, max_objects=0))
    assert [i.category for i in scene.instances] == ["cross"]


def test_object_count_is_max_of_required_and_drawn():
    config = WorldConfig(min_objects=3, max_objects=3, min_visible=0.0, min_scale=0.1, max_scale=0.1)
    assert len(render_scene(0, ["circle"], config).instances) == 3
    assert len(render_scene(0, ["circle"] * 5, config).instances) == 5


def test_unknown_class_lists_valid_names():
    with pytest.raises(ValueError) as error:
        render_scene(0, ["circle", "hexagon"])
    message = str(error.value)
    assert "hexagon" in message
    assert all(name in message for name in CLASSES)


def test_all_classes_and_backgrounds_occur():
    scenes = [render_scene(seed) for seed in range(300)]
    assert {i.category for s in scenes for i in s.instances} == set(CLASSES)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert len({i.color for s in scenes for i in s.instances}) >= 8


def test_background_subset_is_respected():
    config = WorldConfig(backgrounds=("stripes",))
    assert all(render_scene(seed, config=config).background == "stripes" for seed in range(20))
    assert all("striped background" in render_scene(seed, config=config).caption for seed in range(20))


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("size", [16, 64, 128, 512])
def test_masks_are_exact(size):
    config = WorldConfig(size=size, min_objects=0, max_objects=6)
    for seed in range(60 if size <= 128 else 6):
        assert_exact_labels(render_scene(seed, config=config), size)


def test_masks_are_exact_without_visibility_floor():
    # With min_visible=0 objects can be hidden completely; those must not be emitted.
    config = WorldConfig(max_objects=10, min_visible=0.0, min_scale=0.4, max_scale=0.6)
    for seed in range(40):
        assert_exact_labels(render_scene(seed, config=config), 64)


def test_ring_hole_is_not_part_of_the_mask():
    config = WorldConfig(size=128, min_objects=0, max_objects=0, min_scale=0.3, max_scale=0.4)
    for seed in range(10):
        (ring,) = render_scene(seed, ["ring"], config).instances
        x, y, w, h = (int(v) for v in ring.bbox)
        center = ring.mask[y + h // 2, x + w // 2]
        hole = ring.full_area / (w * h)  # an annulus covers well under pi/4 of its box
        assert not center and hole < 0.6


def test_single_shapes_cover_a_plausible_share_of_their_box():
    # Catches outlines that degenerate (e.g. a star drawn as a sliver or a polygon
    # whose vertices are out of order) without pinning exact pixel counts.
    expected = {"circle": (0.7, 0.9), "square": (0.45, 0.95), "triangle": (0.35, 0.65),
                "star": (0.3, 0.6), "ring": (0.35, 0.6), "cross": (0.3, 0.75)}
    config = WorldConfig(size=256, min_objects=0, max_objects=0, min_scale=0.3, max_scale=0.3)
    for category, (low, high) in expected.items():
        for seed in range(5):
            (instance,) = render_scene(seed, [category], config).instances
            _, _, w, h = instance.bbox
            assert low <= instance.full_area / (w * h) <= high, (category, seed)


def test_polygons_are_randomly_rotated():
    # At a fixed size the box fill ratio and aspect of an unclipped shape only vary
    # with rotation (about 0.02 from rounding alone); discs must not vary at all.
    size = 256
    config = WorldConfig(size=size, min_objects=0, max_objects=0, min_scale=0.3, max_scale=0.3)
    for category in CLASSES:
        fills, aspects = [], []
        for seed in range(40):
            (instance,) = render_scene(seed, [category], config).instances
            x, y, w, h = instance.bbox
            if x > 0 and y > 0 and x + w < size and y + h < size:
                fills.append(instance.full_area / (w * h))
                aspects.append(w / h)
        assert len(fills) >= 10
        spread = max(np.ptp(fills), np.ptp(aspects))
        if category in ("circle", "ring"):
            assert spread < 0.03, category
        else:
            assert spread > 0.06, category


# --------------------------------------------------------------------------- occlusion


def test_occlusion_happens_and_min_visible_holds():
    occluded = 0
    for seed in range(200):
        for instance in render_scene(seed, config=CROWDED).instances:
            assert instance.full_area is not None
            assert instance.area / instance.full_area >= CROWDED.min_visible
            occluded += instance.area < instance.full_area
    assert occluded >= 50


def test_stricter_min_visible_holds():
    config = WorldConfig(max_objects=6, min_visible=0.8)
    for seed in range(100):
        for instance in render_scene(seed, config=config).instances:
            assert instance.area / instance.full_area >= 0.8


# --------------------------------------------------------------------------- captions


def make_instance(color, category):
    return Instance(category, np.ones((1, 1), bool), (0.0, 0.0, 1.0, 1.0), 1, color, (0, 0, 0))


def test_caption_groups_and_uses_articles():
    instances = [make_instance("red", "circle"), make_instance("blue", "star"),
                 make_instance("orange", "square"), make_instance("blue", "star"),
                 make_instance("green", "cross"), make_instance("green", "cross")]
    assert _caption(instances, "a striped background") == (
        "a red circle, two blue stars, an orange square and two green crosses on a striped background")
    assert _caption(instances[:1], "a plain gray background") == "a red circle on a plain gray background"
    assert _caption([], "a checkered background") == "a checkered background"


def test_caption_mentions_every_instance():
    for seed in range(50):
        scene = render_scene(seed, config=CROWDED)
        assert scene.caption.endswith("background")
        for instance in scene.instances:
            assert f"{instance.color} {instance.category}" in scene.caption


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("field, kwargs", [
    ("size", {"size": 8}),
    ("size", {"size": 64.0}),
    ("min_objects", {"min_objects": -1}),
    ("max_objects", {"min_objects": 5, "max_objects": 4}),
    ("min_scale", {"min_scale": 0.0}),
    ("min_scale", {"min_scale": 1.5}),
    ("max_scale", {"min_scale": 0.5, "max_scale": 0.3}),
    ("max_scale", {"max_scale": 1.2}),
    ("backgrounds", {"backgrounds": ("plaid",)}),
    ("backgrounds", {"backgrounds": ()}),
    ("min_visible", {"min_visible": 1.5}),
])
def test_config_rejects_nonsense(field, kwargs):
    with pytest.raises(ValueError, match=rf"^{field}: expected .*, got "):
        WorldConfig(**kwargs)


def test_config_accepts_list_of_backgrounds_and_stays_hashable():
    config = WorldConfig(backgrounds=["solid", "noise"])
    assert config.backgrounds == ("solid", "noise")
    assert hash(config) == hash(WorldConfig(backgrounds=("solid", "noise")))


# --------------------------------------------------------------------------- COCO export


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_coco_roundtrip(tmp_path):
    config = WorldConfig(max_objects=5)
    path = export_coco(tmp_path / "a", images=20, split="val", seed=3, config=config)
    assert path == tmp_path / "a" / "annotations" / "instances_val.json"

    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert sorted(coco.getImgIds()) == list(range(1, 21))
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        scene = render_scene(info["seed"], config=config)
        image_path = tmp_path / "a" / "images" / "val" / info["file_name"]
        np.testing.assert_array_equal(np.asarray(Image.open(image_path)), scene.image)
        semantic_png = Image.open(tmp_path / "a" / "semantic" / "val" / info["file_name"])
        assert semantic_png.mode == "P"
        semantic = np.asarray(semantic_png)
        np.testing.assert_array_equal(semantic, scene.semantic)

        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(annotations) == len(scene.instances)
        rebuilt = np.zeros_like(semantic)
        for annotation, instance in zip(annotations, scene.instances):
            decoded = coco.annToMask(annotation).astype(bool)
            np.testing.assert_array_equal(decoded, instance.mask)
            assert (semantic[decoded] == annotation["category_id"]).all()
            rebuilt[decoded] = annotation["category_id"]
            rle = annotation["segmentation"]
            assert list(mask_utils.toBbox(rle)) == annotation["bbox"]
            assert int(mask_utils.area(rle)) == annotation["area"] == instance.area
            assert annotation["iscrowd"] == 0
        np.testing.assert_array_equal(rebuilt, semantic)

    captions = COCO(str(tmp_path / "a" / "annotations" / "captions_val.json"))
    assert len(captions.getAnnIds()) == 20
    for image_id in captions.getImgIds():
        (annotation,) = captions.loadAnns(captions.getAnnIds(imgIds=image_id))
        seed = captions.loadImgs(image_id)[0]["seed"]
        assert annotation["caption"] == render_scene(seed, config=config).caption

    export_coco(tmp_path / "b", images=20, split="val", seed=3, config=config)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


def test_export_splits_and_seeds_differ(tmp_path):
    export_coco(tmp_path, images=5, split="train", seed=0)
    export_coco(tmp_path, images=5, split="val", seed=0)
    export_coco(tmp_path / "other", images=5, split="train", seed=1)
    train = (tmp_path / "images" / "train" / "000000000001.png").read_bytes()
    val = (tmp_path / "images" / "val" / "000000000001.png").read_bytes()
    other = (tmp_path / "other" / "images" / "train" / "000000000001.png").read_bytes()
    assert len({train, val, other}) == 3
    data = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert "date_created" not in data["info"]


def test_export_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="images"):
        export_coco(tmp_path, images=-1)
    with pytest.raises(ValueError, match="split"):
        export_coco(tmp_path, images=1, split="../x")


def test_extra_objects_come_from_extra_classes():
    for seed in range(50):
        scene = render_scene(seed, ["star"], WorldConfig(max_objects=5), extra_classes=["ring", "star"])
        assert {inst.category for inst in scene.instances} <= {"ring", "star"}
