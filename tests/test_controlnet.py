"""Mask-conditioned generation (issue 14): condition maps, palettes, the controlnet backend and the
condition head, on tiny random components built from config (CPU, seconds) and real pycocotools."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from engine.backends.conditions import Condition, ConditionParams, palette_colours, palette_indices
from engine.job.conditions import ReferenceMasks
from engine.errors import SpecError, UserError
from engine.job.prompts import build_pool
from engine.records import ImageRequest
from engine.spec import ClassSpec, parse_spec

WORLD = ["circle", "square", "triangle", "star", "ring", "cross"]


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_model, tmp_path_factory):
    """A random ControlNet made from the tiny model's UNet (conditioning downsamples by 4, like its VAE)."""
    from .helpers import random_controlnet

    return random_controlnet(tiny_model, str(tmp_path_factory.mktemp("controlnet") / "controlnet"))


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """A shapes-world COCO export (RLE masks) of 6 images."""
    from engine.world import export_coco

    root = tmp_path_factory.mktemp("refs")
    export_coco(root, 6, "train", seed=3)
    return str(root)


def controlnet_spec(spec_data, references, tiny_model, controlnet, **params):
    spec_data["classes"] = WORLD
    spec_data["generator"] = {"name": "controlnet", "params": {"model": tiny_model, "controlnet": controlnet,
                                                               "steps": 2, "batch_size": 4, **params}}
    spec_data["label_head"] = {"name": "condition"}
    spec_data["prompts"] = {"source": "references",
                            "annotations": f"{references}/annotations/instances_train.json",
                            "images": f"{references}/images/train"}
    return spec_data


# ---- palettes
def test_class_index_palette_is_distinct_and_defaults_to_world_indices():
    colours = palette_colours("class_index")
    assert colours.shape == (256, 3) and len({tuple(c) for c in colours}) == 256
    assert tuple(colours[0]) == (0, 0, 0) and tuple(colours[1]) == (128, 0, 0)  # PASCAL VOC's colour map
    indices, problems = palette_indices(ConditionParams(), [ClassSpec(name=c) for c in ("star", "circle")])
    assert problems == [] and indices == {"star": 4, "circle": 1}


def test_ade20k_palette_maps_names_and_reports_collisions():
    colours = palette_colours("ade20k")
    assert colours.shape == (151, 3) and tuple(colours[0]) == (0, 0, 0)
    classes = [ClassSpec(name="street"), ClassSpec(name="tower block"), ClassSpec(name="plate")]
    params = ConditionParams(palette="ade20k", classes={"street": "road", "tower block": "skyscraper", "plate": 143})
    indices, problems = palette_indices(params, classes)
    assert indices == {"street": 7, "tower block": 49, "plate": 143}
    assert len(problems) == 1 and "RGB [140, 140, 140]" in problems[0] and "street -> road" in problems[0]
    _, problems = palette_indices(ConditionParams(palette="ade20k", classes={"street": "road", "lorry": "truck"}),
                                  classes)
    assert any("classes.lorry: expected a job class" in p for p in problems)
    assert any("expected a palette class for job class 'tower block'" in p for p in problems)
    _, problems = palette_indices(ConditionParams(classes={"widget": 999}), [ClassSpec(name="widget")])
    assert problems and "classes.widget: expected a class_index palette class" in problems[0]


# ---- masks from COCO
def test_polygon_rle_and_uncompressed_rle_decode_to_the_same_masks():
    from pycocotools import mask as mask_utils

    square = np.zeros((20, 30), bool)
    square[4:12, 6:18] = True
    rle = mask_utils.encode(np.asfortranarray(square.astype(np.uint8)))
    counts = _runs(square)
    coco = {"categories": [{"id": 1, "name": "square"}], "images": [{"id": i, "file_name": f"{i}.png"}
                                                                    for i in (1, 2, 3)],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[6, 4, 18, 4, 18, 12, 6, 12]]},
                {"id": 2, "image_id": 2, "category_id": 1,
                 "segmentation": {"size": [20, 30], "counts": rle["counts"].decode()}},
                {"id": 3, "image_id": 3, "category_id": 1, "segmentation": {"size": [20, 30], "counts": counts}}]}
    masks = ReferenceMasks(coco, [ClassSpec(name="square")])
    reference = np.zeros((20, 30, 3), np.uint8)
    decoded = [masks.condition(str(i), reference) for i in (1, 2, 3)]
    assert all(c.categories == ["square"] for c in decoded)
    assert np.array_equal(decoded[1].instances == 1, square) and np.array_equal(decoded[2].instances == 1, square)
    polygon = decoded[0].instances == 1  # pycocotools rasterises the polygon's outline inclusively
    assert polygon[5:11, 7:17].all() and not polygon[15:].any() and abs(int(polygon.sum()) - 96) <= 30


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE: run lengths down the columns, starting with a run of zeros."""
    counts, current, run = [], False, 0
    for value in mask.T.ravel():
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    return counts + [run]


def test_small_instances_stay_visible_over_large_ones_and_labels_match_the_map():
    big, small = np.zeros((16, 16), bool), np.zeros((16, 16), bool)
    big[2:14, 2:14], small[6:9, 6:9] = True, True
    coco = {"categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}],
            "images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "segmentation": _rle(small)},
                            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": _rle(big)}]}
    condition = ReferenceMasks(coco, [ClassSpec(name="square"), ClassSpec(name="circle")]).condition(
        "1", np.zeros((16, 16, 3), np.uint8))
    labels = condition.labels(["square", "circle"])
    by_class = {i.category: i.mask for i in labels.instances}
    assert np.array_equal(by_class["circle"], small) and np.array_equal(by_class["square"], big & ~small)
    assert np.array_equal(labels.semantic, np.where(small, 2, np.where(big, 1, 0)))


def _rle(mask):
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}


def test_condition_is_fitted_like_its_reference():
    instances = np.zeros((40, 60), np.int32)
    instances[10:30, 20:40] = 1  # centred: the centre crop keeps it whole
    fitted = Condition(instances, ["circle"]).fitted(20, "center_crop")
    assert fitted.instances.shape == (20, 20) and (fitted.instances == 1).sum() == 100
    assert (Condition(instances, ["circle"]).fitted(20, "resize").instances == 1).sum() == 10 * 6  # pixel centres 3k + 1.5


# ---- spec-time refusals (exit 2, nothing written)
def _strip(references, tmp_path, masks=(), annotations=(), name="stripped.json") -> str:
    """The references' COCO file with the segmentation of the images ``masks`` and every annotation of
    the images ``annotations`` removed (image ids as ints); its path."""
    coco = json.load(open(f"{references}/annotations/instances_train.json"))
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in annotations]
    for ann in coco["annotations"]:
        if ann["image_id"] in masks:
            ann.pop("segmentation")
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return str(path)


def test_references_without_masks_are_refused_unless_a_mask_generator_is_set(spec_data, references, tiny_model,
                                                                             tiny_controlnet, tmp_path):
    data = controlnet_spec(spec_data, references, tiny_model, tiny_controlnet)
    data["prompts"]["annotations"] = _strip(references, tmp_path, masks=range(1, 7))
    with pytest.raises(UserError, match="expected a segmentation .* on every annotation") as info:
        build_pool(parse_spec(data))  # when the job starts, before anything is written
    assert "6 image(s) with annotations without a segmentation" in str(info.value)
    assert "set generator.params.condition.mask_generator" in str(info.value)
    data["prompts"]["annotations"] = _strip(references, tmp_path, annotations=[2], name="unannotated.json")
    with pytest.raises(UserError, match=r"1 image\(s\) without any annotation \(e.g. image id 2\)"):
        build_pool(parse_spec(data))
    data["generator"]["params"]["condition"] = {"mask_generator": {"segmenter": "embedded:segmenter"}}
    assert len(build_pool(parse_spec(data))) == 6


def test_a_mask_generator_that_cannot_serve_the_references_is_refused(spec_data, references, tiny_model,
                                                                      tiny_controlnet, tiny_sam, tmp_path):
    data = controlnet_spec(spec_data, references, tiny_model, tiny_controlnet)
    data["prompts"]["annotations"] = _strip(references, tmp_path, annotations=[1])
    data["generator"]["params"]["condition"] = {"mask_generator": {"segmenter": tiny_sam}}
    with pytest.raises(UserError, match=r"mask_generator.detector: expected a detector for the 1 image\(s\) without "
                                        r"any annotation"):
        build_pool(parse_spec(data))  # SAM needs box prompts: an image without annotations has none
    data["generator"]["params"]["condition"] = {"mask_generator": {"segmenter": tiny_model, "detector": tiny_sam}}
    with pytest.raises(UserError) as info:
        build_pool(parse_spec(data))
    assert "mask_generator.segmenter: expected 'embedded:segmenter', a transformers SamModel folder" in str(info.value)
    assert "mask_generator.detector: expected a transformers zero-shot object detection folder" in str(info.value)
    data["generator"]["params"]["condition"] = {"mask_generator": {"detector": "embedded:adapter"}}
    with pytest.raises(UserError, match="expected model 'embedded:shapes' for 'embedded:adapter'"):
        build_pool(parse_spec(data))  # the shipped heads read the embedded model's features


def test_cli_refuses_references_without_masks_before_writing(spec_data, references, tiny_model, tiny_controlnet,
                                                            tmp_path):
    data = controlnet_spec(spec_data, references, tiny_model, tiny_controlnet)
    data["prompts"]["annotations"] = _strip(references, tmp_path, masks=[3])
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    run = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "generator.params.condition.mask_generator" in run.stderr and "image id 3" in run.stderr
    assert not os.path.exists(data["output"])


# ---- the Mask Generator (references without masks)
@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    """A random SamModel (64 px) with its SamProcessor, built from config and saved as safetensors."""
    import torch
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    torch.manual_seed(2)
    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8,
                             output_channels=16, window_size=4, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16)
    folder = str(tmp_path_factory.mktemp("sam") / "sam")
    SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).save_pretrained(
        folder, safe_serialization=True)
    SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})).save_pretrained(
        folder)
    return folder


@pytest.fixture(scope="module")
def tiny_owlvit(tmp_path_factory):
    """A random OwlViT zero-shot detector (32 px, 16 queries) with its processor, saved as safetensors."""
    import torch
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    from engine.models.tokenizer import build_tokenizer

    torch.manual_seed(3)
    tokenizer = build_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    folder = str(tmp_path_factory.mktemp("owlvit") / "owlvit")
    OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(
        folder, safe_serialization=True)
    side = {"height": 32, "width": 32}
    OwlViTProcessor(image_processor=OwlViTImageProcessor(size=side, crop_size=side), tokenizer=tokenizer).save_pretrained(
        folder)
    return folder


def _reference_image(references, image_id):
    from PIL import Image

    return np.asarray(Image.open(f"{references}/images/train/{image_id:012d}.png").convert("RGB"))


def test_the_embedded_segmenter_makes_the_masks_of_rendered_references(references, tmp_path):
    """Boxes-only references: the shipped segmenter's class pixels inside each annotation box come close to
    the removed masks; a reference without annotations gets one instance per connected region."""
    from engine.backends.conditions import MaskGeneratorParams
    from engine.job.masks import MaskGenerator

    classes = [ClassSpec(name=c) for c in WORLD]
    truth = json.load(open(f"{references}/annotations/instances_train.json"))
    stripped = json.load(open(_strip(references, tmp_path, masks=range(1, 7), annotations=[6])))
    generator = MaskGenerator(MaskGeneratorParams(), classes)
    made = ReferenceMasks(stripped, classes, generator)
    given = ReferenceMasks(truth, classes)
    ious = []
    for image_id in range(1, 6):
        image = _reference_image(references, image_id)
        got, want = made.condition(str(image_id), image), given.condition(str(image_id), image)
        assert got.categories == want.categories  # one instance per annotation, in order
        for k in range(len(want.categories)):
            a, b = got.instances == k + 1, want.instances == k + 1
            ious.append((a & b).sum() / max((a | b).sum(), 1))
    assert np.mean(ious) > 0.8, ious
    image = _reference_image(references, 6)
    regions, want = made.condition("6", image), given.condition("6", image)
    assert sorted(regions.categories) == sorted(want.categories)


def test_detector_boxes_prompt_sam(references, tiny_sam, tiny_owlvit, tmp_path):
    """A reference without annotations: the zero-shot detector's boxes (prompted with the class names)
    prompt SAM; boxes-only annotations prompt SAM with their own boxes."""
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from engine.backends.conditions import MaskGeneratorParams
    from engine.job.masks import MaskGenerator

    classes = [ClassSpec(name=c) for c in WORLD]
    generator = MaskGenerator(MaskGeneratorParams(detector=tiny_owlvit, segmenter=tiny_sam, threshold=0.3), classes)
    image = _reference_image(references, 1)
    boxes = generator.detect(image)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(tiny_owlvit, use_safetensors=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_owlvit)
    with torch.no_grad():
        out = model(**processor(text=[WORLD], images=[image], return_tensors="pt"))
    found = processor.post_process_grounded_object_detection(out, threshold=0.3, target_sizes=[image.shape[:2]],
                                                             text_labels=[WORLD])[0]
    assert 0 < len(boxes) == len(found["scores"])
    assert {name for name, _ in boxes} <= set(found["text_labels"])
    assert all(0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0] for _, (x0, y0, x1, y1) in boxes)
    masks = generator.masks(image, boxes)
    assert [n for n, _ in masks] == [n for n, _ in boxes] and all(m.shape == image.shape[:2] for _, m in masks)
    stripped = json.load(open(_strip(references, tmp_path, masks=[2], annotations=[1])))
    conditions = ReferenceMasks(stripped, classes, generator)
    condition = conditions.condition("1", image)
    assert condition.categories == [n for n, _ in boxes]
    own = [a for a in stripped["annotations"] if a["image_id"] == 2]
    assert conditions.condition("2", _reference_image(references, 2)).categories == [
        stripped["categories"][a["category_id"] - 1]["name"] for a in own]


@pytest.mark.ray
def test_job_on_references_without_masks_labels_are_the_generated_masks(spec_data, references, tiny_model,
                                                                        tiny_controlnet, tiny_sam, tiny_owlvit,
                                                                        ray_local, tmp_path):
    """Boxes-only references (their boxes prompt SAM) and references without annotations (the detector's
    boxes do): the COCO labels of the job are the Mask Generator's masks, fitted to the image."""
    from pycocotools.coco import COCO

    from engine.backends.conditions import MaskGeneratorParams
    from engine.job.masks import MaskGenerator
    from engine.job.runner import run_job

    data = controlnet_spec(spec_data, references, tiny_model, tiny_controlnet)
    data["prompts"]["annotations"] = _strip(references, tmp_path, masks=[1, 2, 3], annotations=[4, 5, 6])
    params = {"detector": tiny_owlvit, "segmenter": tiny_sam, "threshold": 0.3}
    data["generator"]["params"]["condition"] = {"mask_generator": params}
    data.update(lower_bound=100, budget={"max_images": 6, "max_waves": 1}, unit_size=6, wave_size=6)
    result = run_job(parse_spec(data), quiet=True)
    assert result.images == 6
    classes = [ClassSpec(name=c) for c in WORLD]
    expected = ReferenceMasks(json.load(open(data["prompts"]["annotations"])), classes,
                              MaskGenerator(MaskGeneratorParams(**params), classes))
    out = COCO(os.path.join(data["output"], "coco", "instances.json"))
    import pyarrow.parquet as pq

    rows = pq.read_table(os.path.join(data["output"], "parquet")).to_pylist()
    seen = set()
    for row in rows:
        reference = int(row["reference_id"])
        seen.add(reference)
        labels = expected.condition(str(reference), _reference_image(references, reference)).fitted(
            32, "center_crop").labels(WORLD)
        want = sorted((i.category, i.mask.astype(np.uint8).tobytes()) for i in labels.instances)
        found = out.loadAnns(out.getAnnIds(imgIds=[row["image_id"]]))
        got = sorted((out.cats[a["category_id"]]["name"], out.annToMask(a).tobytes()) for a in found)
        assert got == want and want
    assert seen & {1, 2, 3} and seen & {4, 5, 6}  # both kinds of reference were used


def test_controlnet_that_does_not_fit_the_model_is_refused(spec_data, references, tiny_model, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    sd_style = ControlNetModel.from_unet(unet)  # SD's (16, 32, 96, 256): downsamples by 8, the VAE by 4
    sd_style.save_pretrained(str(tmp_path / "sd_style"), safe_serialization=True)
    with pytest.raises(SpecError, match="expected a conditioning embedding that downsamples by 4 .* got one that "
                                        "downsamples by 8"):
        parse_spec(controlnet_spec(spec_data, references, tiny_model, str(tmp_path / "sd_style")))


def test_cli_refuses_colliding_and_unmapped_classes_before_writing(spec_data, references, tiny_model,
                                                                   tiny_controlnet, tmp_path):
    data = controlnet_spec(spec_data, references, tiny_model, tiny_controlnet,
                           condition={"palette": "ade20k", "classes": {"circle": "road", "square": "skyscraper"}})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    run = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "sharing RGB [140, 140, 140]" in run.stderr
    assert "expected a palette class for job class 'triangle'" in run.stderr
    assert not os.path.exists(data["output"])


def test_condition_head_needs_a_mask_conditioned_backend(spec_data, tiny_model):
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model}}
    spec_data["label_head"] = {"name": "condition"}
    with pytest.raises(SpecError, match=r"which needs condition_masks \(offered by .controlnet.\)"):
        parse_spec(spec_data)


# ---- the backend
def test_condition_steers_the_image_and_strength_brings_the_reference(tiny_model, tiny_controlnet):
    from engine.backends.controlnet import ControlNetBackend, ControlNetParams

    classes = [ClassSpec(name=c) for c in WORLD]
    left, right = np.zeros((32, 32), np.int32), np.zeros((32, 32), np.int32)
    left[:, :16], right[:, 16:] = 1, 1

    def make(instances, **params):
        backend = ControlNetBackend(params=ControlNetParams(model=tiny_model, controlnet=tiny_controlnet, steps=4,
                                                            **params), classes=classes)
        reference = np.full((48, 48, 3), 230, np.uint8)
        request = ImageRequest(0, 11, "a square", classes=["square"], reference=reference,
                               condition=Condition(instances.copy(), ["square"]))
        return backend.generate([request])[0], request

    a, request = make(left)
    b, _ = make(right)
    again, _ = make(left)
    assert a.reject is None and a.image.shape == (32, 32, 3) and a.strength == 1.0
    assert request.condition.instances.shape == (32, 32)  # fitted to the generated image
    assert np.array_equal(a.image, again.image)  # seeded per image
    # the condition moves the image (random weights: a little), and only through the ControlNet
    assert (a.image != b.image).mean() > 0.05
    assert np.array_equal(make(left, conditioning_scale=0.0)[0].image, make(right, conditioning_scale=0.0)[0].image)
    low, _ = make(left, strength=(0.25, 0.25), scheduler="ddim")
    assert low.strength == 0.25 and np.abs(low.image.astype(int) - a.image.astype(int)).mean() > 1.0


@pytest.mark.ray
def test_controlnet_job_labels_equal_the_condition_masks(spec_data, references, tiny_model, tiny_controlnet,
                                                        ray_local):
    import pyarrow.parquet as pq
    from PIL import Image
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from engine.job.runner import run_job

    data = controlnet_spec(spec_data, references, tiny_model, tiny_controlnet)
    data.update(lower_bound=1, budget={"max_images": 8, "max_waves": 2}, unit_size=4, wave_size=8)
    result = run_job(parse_spec(data), quiet=True)
    assert result.images == 8
    source = COCO(f"{references}/annotations/instances_train.json")
    out = COCO(os.path.join(data["output"], "coco", "instances.json"))
    table = pq.read_table(os.path.join(data["output"], "parquet")).to_pylist()
    assert len(table) == 8
    for row in table:
        reference = int(row["reference_id"])
        expected = _expected_masks(source, reference, 32)  # each reference instance, centre-cropped, nearest
        found = out.loadAnns(out.getAnnIds(imgIds=[row["image_id"]]))
        got = sorted((out.cats[a["category_id"]]["name"], out.annToMask(a).tobytes()) for a in found)
        assert got == sorted((name, mask.astype(np.uint8).tobytes()) for name, mask in expected)
        parquet = sorted((a["category"], mask_utils.decode(a["segmentation"]).tobytes()) for a in row["annotations"])
        assert parquet == got
        semantic = np.array(Image.open(io.BytesIO(row["semantic_mask"])))
        truth = np.zeros((32, 32), np.uint8)
        for name, mask in expected:
            truth[mask] = WORLD.index(name) + 1
        assert np.array_equal(semantic, truth)


def _expected_masks(coco, image_id: int, size: int) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    expected = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
        mask = Image.fromarray(coco.annToMask(ann) * 255)
        side = min(mask.size)
        left, top = (mask.width - side) // 2, (mask.height - side) // 2
        mask = np.array(mask.crop((left, top, left + side, top + side)).resize((size, size), Image.NEAREST)) > 0
        if mask.any():
            expected.append((coco.cats[ann["category_id"]]["name"], mask))
    return expected


def test_controlnet_training_resumes_to_the_same_weights(tmp_path):
    """Two steps, stop, two more: the weights of four uninterrupted steps (randomness from (seed, step))."""
    import torch
    from safetensors.torch import load_file

    from engine.lab.train.controlnet import ControlNetRecipe, train_controlnet

    torch.manual_seed(0)
    recipe = ControlNetRecipe(steps=4, batch_size=2, checkpoint_every=2)
    quiet = lambda *_: None  # noqa: E731
    assert train_controlnet(str(tmp_path / "a"), recipe, echo=quiet)["step"] == 4
    assert train_controlnet(str(tmp_path / "b"), recipe, until_step=2, echo=quiet)["step"] == 2
    assert train_controlnet(str(tmp_path / "b"), recipe, echo=quiet) == {"step": 4, "trained": 2, "exported": True}
    a, b = (load_file(str(tmp_path / run / "controlnet" / "diffusion_pytorch_model.safetensors")) for run in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    zero = load_file(str(tmp_path / "a" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    assert zero["controlnet_mid_block.weight"].abs().sum() > 0  # the zero convolutions have learnt


def test_controlnet_warm_start_begins_from_the_given_controlnet(tmp_path):
    """--init-from (a new embedded model re-fits its predecessor's ControlNet): the run starts from
    those weights, not from_unet's zero convolutions; a folder that is not a ControlNet is exit 2."""
    import torch
    from safetensors.torch import load_file

    from engine.lab.train.controlnet import ControlNetRecipe, train_controlnet

    torch.manual_seed(0)
    quiet = lambda *_: None  # noqa: E731
    train_controlnet(str(tmp_path / "a"), ControlNetRecipe(steps=2, batch_size=2, worlds=("model", "default")),
                     echo=quiet)  # a batch of 2: one scene of each world
    assert json.load(open(tmp_path / "a" / "recipe.json"))["worlds"] == ["model", "default"]
    start = str(tmp_path / "a" / "controlnet")
    warm = ControlNetRecipe(steps=2, batch_size=2, init_from=start)
    assert train_controlnet(str(tmp_path / "b"), warm, until_step=0, echo=quiet)["step"] == 0
    a, b = (load_file(str(tmp_path / run / "controlnet" / "diffusion_pytorch_model.safetensors")) for run in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a) and b["controlnet_mid_block.weight"].abs().sum() > 0
    assert "_name_or_path" not in json.load(open(tmp_path / "b" / "controlnet" / "config.json")), "a machine's path"
    from .conftest import DDE

    bad = subprocess.run([DDE, "train", "controlnet", "--out", str(tmp_path / "c"), "--init-from", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--init-from" in bad.stderr and "diffusion_pytorch_model.safetensors" in bad.stderr
    assert not (tmp_path / "c").exists()
    bad = subprocess.run([DDE, "train", "controlnet", "--out", str(tmp_path / "c"), "--worlds", "model,moon"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--worlds: expected some of ['model', 'default'], got ['model', 'moon']" in bad.stderr
    assert not (tmp_path / "c").exists()


def test_the_shipped_adapter_finds_boxes_on_rendered_references(references):
    """detector: embedded:adapter runs the shipped head on the reference through Eq. 4, on the job's own
    embedded pipeline: its boxes land on the rendered objects (x0, y0, x1, y1 in the reference's pixels)."""
    from engine.backends.conditions import MaskGeneratorParams
    from engine.backends.controlnet import ControlNetBackend, ControlNetParams
    from engine.job.masks import MaskGenerator

    classes = [ClassSpec(name=c) for c in WORLD]
    backend = ControlNetBackend(params=ControlNetParams(), classes=classes)  # embedded:shapes + its ControlNet
    generator = MaskGenerator(MaskGeneratorParams(detector="embedded:adapter"), classes, backend)
    coco = json.load(open(f"{references}/annotations/instances_train.json"))
    best = []
    for image_id in (1, 3):
        truth = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id]
        boxes = generator.detect(_reference_image(references, image_id))
        assert boxes and {name for name, _ in boxes} <= set(WORLD)
        for _, (x0, y0, x1, y1) in boxes:
            best.append(max(_iou((x0, y0, x1 - x0, y1 - y0), t) for t in truth))
    assert np.mean(np.array(best) > 0.5) >= 0.5, best


def _iou(a, b) -> float:
    """IoU of two [x, y, w, h] boxes."""
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def test_downstream_bench_has_controlnet_sources_with_and_without_selection(references, tmp_path):
    """dde bench downstream's Diffusion Synthesis sources: the example job on the real set, with its
    High-quality Image Selection and without it; both valid jobs whose pools are the references' K prompts."""
    from engine.lab.evals.downstream import SOURCES, source_spec

    assert {"controlnet + condition", "controlnet + condition, selection"} <= set(SOURCES)
    selected = source_spec("controlnet + condition, selection", str(tmp_path), 12, references)
    plain = source_spec("controlnet + condition", str(tmp_path), 12, references)
    assert selected["selection"]["segmenter"]["min_miou"] == 0.5 and "selection" not in plain
    assert selected["output"] != plain["output"]
    assert selected["generator"]["params"]["steps"] == 20  # the example's own, unless the scale sets them
    assert source_spec("controlnet + condition", str(tmp_path), 12, references, 6)["generator"]["params"]["steps"] == 6
    for data in (selected, plain):
        spec = parse_spec(data)
        assert spec.generator.name == "controlnet" and spec.label_head.name == "condition"
        assert len(build_pool(spec)) == 6 * data["prompts"]["variants"]


def test_card_commands_reproduce_the_recipe(tmp_path):
    """The card's GPU command carries the recipe's warm start and worlds, so it reproduces the run."""
    from engine.lab.train.controlnet import write_card

    recipe = {"steps": 1200, "batch_size": 32, "cfg_dropout": 0.1, "init_from": "engine/models/controlnet",
              "worlds": ["model", "default"]}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    (tmp_path / "sessions.json").write_text(json.dumps([{"hardware": "cpu", "minutes": 1.0, "step": 1200}]))
    (tmp_path / "controlnet").mkdir()
    write_card(str(tmp_path), {"agreement": {"trained": {"images": 1, "mIoU": 0.5, "mean_image_mIoU": 0.5,
                                                         "seconds": 1.0}}, "command": "c", "note": "n"})
    card = (tmp_path / "controlnet" / "README.md").read_text()
    assert ("dde train controlnet --out training/controlnet --steps 1200 --init-from engine/models/controlnet "
            "--worlds model,default --export") in card


def test_a_refit_is_installed_only_above_the_controlnet_it_started_from():
    from engine.lab.evals.controlnet import strongest_baseline

    measured = {"untrained (from_unet)": {"mIoU": 0.17}, "start (engine/models/controlnet)": {"mIoU": 0.749},
                "trained": {"mIoU": 0.703}}
    assert strongest_baseline(measured) == "start (engine/models/controlnet)"
    assert strongest_baseline({"untrained (from_unet)": {"mIoU": 0.17}, "trained": {"mIoU": 0.7}}) == "untrained (from_unet)"
