"""SDXL in the diffusion backend, on a tiny random SDXL built from config (bench/configs/tiny-sdxl.json:
SDXL's layout, two text encoders, text_time added conditions, at toy widths; 64 px images)."""

import io
import json
import os

import numpy as np
import pytest
import torch

from engine.errors import SpecError
from engine.records import ImageRequest
from engine.spec import ClassSpec, parse_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    from engine.lab.random_pipeline import load_config, save_random_pipeline

    folder = tmp_path_factory.mktemp("tiny-sdxl") / "model"
    return save_random_pipeline(load_config(os.path.join(REPO, "bench", "configs", "tiny-sdxl.json")), str(folder))


def backend_for(model, **params):
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams

    return DiffusionBackend(params=DiffusionParams(model=model, **{"steps": 2, **params}), classes=[])


def test_sdxl_folder_is_detected_and_conditioned_on_the_image_size(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    assert json.load(open(f"{tiny_sdxl}/model_index.json"))["_class_name"] == "StableDiffusionXLPipeline"
    backend = backend_for(tiny_sdxl)
    assert isinstance(backend.pipe, StableDiffusionXLPipeline) and backend.size == 64
    seen = []
    backend.pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["added_cond_kwargs"]), with_kwargs=True)
    reqs = [ImageRequest(i, seed=100 + i, prompt="a photograph of a circle") for i in range(3)]
    out = backend.generate(reqs)
    assert all(g.reject is None and g.image.shape == (64, 64, 3) and g.image.dtype == np.uint8 for g in out)
    # size and crop conditioning from the job's image size, for both CFG halves of every row
    assert seen and all(c["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 6 for c in seen)
    assert all(c["text_embeds"].shape == (6, 32) for c in seen)  # text_encoder_2's pooled projection
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, backend.generate(reqs)))  # seeded per image
    assert np.abs(out[0].image.astype(int) - out[1].image.astype(int)).mean() > 5


def test_sdxl_img2img_reference_enters_at_its_strength(tiny_sdxl):
    dark, bright = np.full((64, 64, 3), 20, np.uint8), np.full((64, 64, 3), 235, np.uint8)

    def make(strength, reference):
        backend = backend_for(tiny_sdxl, steps=10, strength=(strength, strength), scheduler="ddim")
        return backend.generate([ImageRequest(0, 3, "x", reference=reference)])[0]

    low_dark, low_bright = make(0.2, dark), make(0.2, bright)
    assert low_dark.strength == 0.2 and low_dark.image.shape == (64, 64, 3)
    assert np.abs(low_dark.image.astype(int) - low_bright.image.astype(int)).mean() > 1.0
    full_dark, full_bright = make(1.0, dark), make(1.0, bright)
    assert np.array_equal(full_dark.image, full_bright.image)  # strength 1: pure txt2img


def test_class_prompt_keys_come_from_both_encoders(tiny_sdxl):
    from engine.heads.attention import encode_class_prompts

    pipe = backend_for(tiny_sdxl).pipe
    embeds, weights, bias = encode_class_prompts(pipe, [["circle", "square"], ["triangle"]], "start_and_classes")
    assert embeds.shape == (2, 32, 64) == (2, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim)
    # what SDXL's cross-attention sees: both encoders' penultimate states, concatenated
    ids = torch.full((1, 32), pipe.tokenizer.pad_token_id)
    pieces = pipe.tokenizer("triangle", add_special_tokens=False).input_ids
    row = [pipe.tokenizer.bos_token_id, *pieces, pipe.tokenizer.eos_token_id]
    ids[0, :len(row)] = torch.tensor(row)
    with torch.no_grad():
        first = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        second = pipe.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(embeds[1:], torch.cat([first, second], dim=-1), atol=1e-5)
    assert weights.shape == (2, 32, 2) and float(weights[1, 1:1 + len(pieces), 0].sum()) == pytest.approx(1.0)


def test_attention_capture_on_the_sdxl_unet(tiny_sdxl):
    from engine.registry import HEADS

    backend = backend_for(tiny_sdxl, steps=3, batch_size=4)
    plain = [g.image for g in backend_for(tiny_sdxl, steps=3, batch_size=4).generate(requests())]
    cls = HEADS.get("attention")
    head = cls(params=cls.Params(), classes=[ClassSpec(name=c) for c in CLASSES])
    head.attach(backend)
    # SDXL's layout: no attention at the top level; the defaults take the two finest sides there are
    assert head.store.config.cross_resolutions == (8, 4) and head.store.config.self_resolution == 8
    wrapped = [n for n, p in backend.pipe.unet.attn_processors.items() if type(p).__name__ == "_CaptureProcessor"]
    # a small latent whose up blocks hold both sides: the head's default captures them alone, SDXL's
    # two-transformer blocks included
    assert wrapped and all(n.startswith("up_blocks.") for n in wrapped)
    assert any(".transformer_blocks.1.attn2" in n for n in wrapped)
    out = backend.generate(requests())
    maps = [g.extras["attention"] for g in out]
    assert maps[1]["classes"] == ["circle", "square"]
    assert maps[1]["cross"][8].shape == (64, 2) and maps[1]["cross"][4].shape == (16, 2) and maps[1]["self"].shape == (64, 64)
    assert torch.allclose(maps[1]["self"].sum(-1), torch.ones(64), atol=1e-4)
    assert 0 < float(maps[0]["cross"][8][:, 0].min()) < float(maps[0]["cross"][8][:, 0].max()) < 1
    assert all(np.array_equal(g.image, p) for g, p in zip(out, plain))  # capture leaves the images unchanged
    labels = head.label(requests(), out)
    assert labels[1].semantic.shape == (64, 64)


def requests():
    return [ImageRequest(0, 11, "a photograph of a circle", classes=["circle"]),
            ImageRequest(1, 12, "a circle and a square", classes=["circle", "square"])]


def test_feature_pyramid_on_the_sdxl_unet(tiny_sdxl):
    from engine.heads.boxes.features import PyramidCapture, simulated_last_step
    from engine.heads.boxes.text import class_text

    pipe = backend_for(tiny_sdxl).pipe
    capture = PyramidCapture(pipe.unet, pipe.vae_scale_factor)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    pyramid = simulated_last_step(pipe, capture, images, torch.Generator().manual_seed(0))
    # block outputs by side (strides in image pixels): 16x16: up 1, up 2 (32 + 16); 8x8: down 0 (after
    # its downsampler), up 0 (16 + 32); 4x4: down 1, down 2, mid (32 * 3)
    assert {s: tuple(p.shape) for s, p in pyramid.items()} == {
        4: (2, 32 + 16, 16, 16), 8: (2, 16 + 32, 8, 8), 16: (2, 32 * 3, 4, 4)}
    assert class_text(pipe, ["circle", "traffic light"]).shape == (2, 64)


def test_spec_refuses_a_folder_of_another_pipeline(spec_data, tiny_sdxl, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_sdxl, other)
    index = json.load(open(other / "model_index.json"))
    open(other / "model_index.json", "w").write(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    spec_data["generator"] = {"name": "diffusion", "params": {"model": str(other)}}
    spec_data["label_head"] = {"name": "none"}
    with pytest.raises(SpecError, match="generator.params.model: expected a Stable Diffusion or SDXL pipeline folder"):
        parse_spec(spec_data)
    spec_data["generator"]["params"]["architecture"] = "sdxl"  # explicit: loads as SDXL
    assert parse_spec(spec_data).generator.config.architecture == "sdxl"
    spec_data["generator"]["params"]["architecture"] = "sd3"
    with pytest.raises(SpecError, match="generator.params.architecture"):
        parse_spec(spec_data)


@pytest.mark.ray
def test_sdxl_jobs_end_to_end_on_ray(spec_data, tiny_sdxl, tmp_path, ray_local):
    """Two real jobs on local Ray: txt2img with attention masks, then img2img from rendered references."""
    import pyarrow.parquet as pq
    from PIL import Image
    from pycocotools.coco import COCO

    from engine.job.runner import run_job
    from engine.world import export_coco

    spec_data.update(classes=CLASSES, lower_bound=1, budget={"max_images": 4, "max_waves": 1}, unit_size=4, wave_size=4)
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_sdxl, "steps": 2, "batch_size": 4}}
    spec_data["label_head"] = {"name": "attention", "params": {"min_area": 0.02}}
    result = run_job(parse_spec(spec_data), quiet=True)
    assert result.images == 4
    out = spec_data["output"]
    rows = pq.read_table(os.path.join(out, "parquet")).to_pylist()
    assert len(rows) == 4 and {r["model"] for r in rows} == {tiny_sdxl}
    for row in rows:
        assert Image.open(io.BytesIO(row["image"]["bytes"])).size == (64, 64)
        assert np.asarray(Image.open(io.BytesIO(row["semantic_mask"]))).shape == (64, 64)
    COCO(os.path.join(out, "coco", "instances.json"))  # loads in pycocotools

    annotations = export_coco(tmp_path / "refs", 4, split="train", seed=3)
    spec_data.update(output=str(tmp_path / "img2img"), classes=["circle", "square", "triangle", "star", "ring", "cross"])
    spec_data["generator"]["params"]["strength"] = [0.5, 0.5]
    spec_data["label_head"] = {"name": "none"}
    spec_data["prompts"] = {"source": "references", "annotations": str(annotations),
                            "images": str(tmp_path / "refs" / "images" / "train")}
    run_job(parse_spec(spec_data), quiet=True)
    rows = pq.read_table(os.path.join(spec_data["output"], "parquet")).to_pylist()
    assert len(rows) == 4 and {r["strength"] for r in rows} == {0.5}


def test_controlnet_backend_on_sdxl(tiny_sdxl, tiny_model, tmp_path):
    """StableDiffusionXLControlNetPipeline with a ControlNet made from the SDXL UNet; an SD one is refused."""
    from diffusers import StableDiffusionXLControlNetPipeline

    from engine.backends.conditions import Condition
    from engine.backends.controlnet import ControlNetBackend, ControlNetParams, fit_problems

    from .helpers import random_controlnet

    random_controlnet(tiny_sdxl, str(tmp_path / "cn"))
    classes = [ClassSpec(name=c) for c in ["circle", "square", "triangle", "star", "ring", "cross"]]
    left, right = np.zeros((64, 64), np.int32), np.zeros((64, 64), np.int32)
    left[:, :32], right[:, 32:] = 1, 1

    def make(instances):
        backend = ControlNetBackend(params=ControlNetParams(model=tiny_sdxl, controlnet=str(tmp_path / "cn"), steps=3),
                                    classes=classes)
        request = ImageRequest(0, 11, "a square", classes=["square"], reference=np.full((64, 64, 3), 230, np.uint8),
                               condition=Condition(instances.copy(), ["square"]))
        return backend, backend.generate([request])[0]

    backend, a = make(left)
    assert isinstance(backend.pipe, StableDiffusionXLControlNetPipeline)
    assert a.reject is None and a.image.shape == (64, 64, 3) and a.extras["condition_masks"].instances
    assert (a.image != make(right)[1].image).mean() > 0.05  # the condition steers the image
    sd_unet = json.load(open(f"{tiny_model}/unet/config.json"))
    sd_vae = json.load(open(f"{tiny_model}/vae/config.json"))
    problems = fit_problems(json.load(open(tmp_path / "cn" / "config.json")), sd_unet, sd_vae)
    assert any("expected addition_embed_type None (the model's UNet), got text_time;" in p for p in problems)
