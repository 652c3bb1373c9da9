"""Attention labels: capture on a tiny random UNet, the Eq. 3-5 maths on hand-made maps,
BCA, spec checks, and jobs whose masks land in Parquet and COCO."""

import io
import json
import os

import numpy as np
import pytest
import torch

from engine.errors import SpecError
from engine.records import ImageRequest
from engine.spec import ClassSpec, parse_spec

CLASSES = ["circle", "square", "triangle"]


def attached(model, head="attention", **head_params):
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.registry import HEADS

    backend = DiffusionBackend(params=DiffusionParams(model=model, steps=3, batch_size=4), classes=[])
    cls = HEADS.get(head)
    labeller = cls(params=cls.Params(**head_params), classes=[ClassSpec(name=c) for c in CLASSES])
    labeller.attach(backend)
    return backend, labeller


def requests():
    return [ImageRequest(0, 11, "a photograph of a circle", classes=["circle"]),
            ImageRequest(1, 12, "a circle and a square", classes=["circle", "square", "circle"]),
            ImageRequest(2, 13, "a photograph")]


def test_generation_keys_are_the_prompts_own_class_tokens(tiny_model):
    """cross_keys 'generation': each class column averages the tokens that name it in the prompt
    the image is generated from (plurals and synonyms too); a class the prompt does not name is
    appended after it; the softmax runs over those tokens and the start token only."""
    from engine.heads.attention import encode_class_prompts

    backend, _ = attached(tiny_model)
    pipe, tok = backend.pipe, backend.pipe.tokenizer
    prompt = "two red circles and a square on grass"
    embeds, weights, bias = encode_class_prompts(
        pipe, [["circle", "square", "triangle"]], "generation", [prompt], {"square": ["square", "box"]})
    row = [tok.bos_token_id, *tok(prompt, add_special_tokens=False).input_ids]
    where = {}
    for m, name in enumerate(["circles", "square"]):
        piece = tok(name, add_special_tokens=False).input_ids
        start = next(i for i in range(len(row)) if row[i:i + len(piece)] == piece)
        where[m] = range(start, start + len(piece))
        assert float(weights[0, start:start + len(piece), m].sum()) == pytest.approx(1.0)
    appended = tok("triangle", add_special_tokens=False).input_ids
    assert float(weights[0, len(row):len(row) + len(appended), 2].sum()) == pytest.approx(1.0)
    assert torch.allclose(weights[0].sum(0), torch.ones(3))
    allowed = {0, *where[0], *where[1], *range(len(row), len(row) + len(appended))}
    assert {int(i) for i in torch.nonzero(bias[0, 0] == 0).flatten()} == allowed
    # CLIP is causal: the prompt's tokens are what the generation sees, whatever is appended after them
    ids = torch.full((1, tok.model_max_length), tok.pad_token_id)
    ids[0, :len(row) + 1] = torch.tensor([*row, tok.eos_token_id])
    with torch.no_grad():
        alone = pipe.text_encoder(ids)[0]
    assert torch.allclose(embeds[0, :len(row)], alone[0, :len(row)], atol=1e-5)
    # a synonym names its class; a prompt too long to append to falls back to the class-only prompt
    _, weights, _ = encode_class_prompts(pipe, [["square"]], "generation", ["a box"], {"square": ["square", "box"]})
    box = tok("box", add_special_tokens=False).input_ids
    assert float(weights[0, 2:2 + len(box), 0].sum()) == pytest.approx(1.0)
    long_prompt = " ".join(["grass"] * tok.model_max_length)
    fallback = encode_class_prompts(pipe, [["circle"]], "generation", [long_prompt])
    class_only = encode_class_prompts(pipe, [["circle"]], "start_and_classes")
    assert all(torch.equal(a, b) for a, b in zip(fallback, class_only))


def test_capture_shapes_and_leaves_images_unchanged(tiny_model):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from engine.backends.diffusion import DiffusionBackend, DiffusionParams

    backend, _ = attached(tiny_model, cross_resolutions=[8, 4], self_resolution=8)
    processors = backend.pipe.unet.attn_processors
    wrapped = {n for n, p in processors.items() if type(p).__name__ == "_CaptureProcessor"}
    # the tiny UNet: attention at 8 (down_blocks.0, up_blocks.1) and 4 (mid_block); self only at 8
    assert wrapped == {n for n in processors if ".attn2." in n or (".attn1." in n and "mid_block" not in n)}
    assert isinstance(processors["mid_block.attentions.0.transformer_blocks.0.attn1.processor"], AttnProcessor2_0)

    out = backend.generate(requests())
    maps = [g.extras["attention"] for g in out]
    assert [m["classes"] for m in maps] == [["circle"], ["circle", "square"], []]
    for m in maps:
        assert m["cross"][8].shape == (64, 2) and m["cross"][4].shape == (16, 2)  # columns: the batch's widest
        assert m["self"].shape == (64, 64)
        assert torch.allclose(m["self"].sum(-1), torch.ones(64), atol=1e-4)  # head/layer/step means of softmaxes
    assert (maps[0]["cross"][8][:, 1] == 0).all() and (maps[2]["cross"][8] == 0).all()  # no class, no map
    # softmax over the start token and the class tokens: a one-class map is not constant, and below 1
    single = maps[0]["cross"][8][:, 0]
    assert 0 < single.min() < single.max() < 1
    pair = maps[1]["cross"][8]
    assert (pair.sum(-1) < 1).all() and (pair > 0).all()

    plain = DiffusionBackend(params=DiffusionParams(model=tiny_model, steps=3, batch_size=4), classes=[])
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, plain.generate(requests())))


def test_timestep_range_and_late_references_weight_steps(tiny_model):
    from engine.heads.attention import AttentionStore, CaptureConfig

    store = AttentionStore(CaptureConfig(cross_resolutions=(8,), self_resolution=None, timesteps=(0.5, 1.0)))
    weights = torch.zeros(2, 4, 1)
    store.begin(torch.zeros(2, 4, 128), weights, torch.zeros(2, 1, 4), start_steps=[0, 3], steps=4)
    seen = []
    for _ in range(4):
        store._on_step(None, ())
        seen.append(store._weights.tolist())
    assert seen == [[0, 0], [0, 0], [1, 0], [1, 1]]  # second half only; the reference joins at step 3


def test_bad_resolution_lists_the_valid_ones(spec_data, tiny_model):
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model}}
    spec_data["label_head"] = {"name": "attention", "params": {"cross_resolutions": [16]}}
    with pytest.raises(SpecError, match=r"expected attention resolutions among \[8, 4\].*got \[16\]"):
        parse_spec(spec_data)
    spec_data["label_head"] = {"name": "attention", "params": {"alpha": 0.7, "beta": 0.6}}
    with pytest.raises(SpecError, match="label_head.params.*alpha <= beta"):
        parse_spec(spec_data)
    spec_data["generator"] = {"name": "render"}
    spec_data["label_head"] = {"name": "bca"}
    with pytest.raises(SpecError, match="got 'bca', which needs .*offered by 'controlnet' and 'diffusion'"):
        parse_spec(spec_data)


def test_default_blocks_follow_the_head_and_the_model(spec_data, tiny_model):
    """The attention head captures the up blocks alone on a small latent whose up blocks hold every
    default side (embedded:shapes); bca, SD-scale models and UNets with a side only in the mid
    block (the tiny one) capture every block; an explicit list that misses a side is one error."""
    from engine.heads.attention.head import AttentionParams, CaptureParams, capture_config
    from engine.models import resolve_model

    shapes = json.load(open(os.path.join(resolve_model("embedded:shapes"), "unet", "config.json")))
    tiny = json.load(open(os.path.join(tiny_model, "unet", "config.json")))
    sd = {**shapes, "sample_size": 64, "block_out_channels": [320, 640, 1280, 1280],
          "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
          "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    config = capture_config(AttentionParams(), shapes, with_self=True)
    assert config.blocks == ("up",) and config.cross_resolutions == (16, 8) and config.self_resolution == 16
    assert capture_config(CaptureParams(), shapes, with_self=False).blocks == ("down", "mid", "up")
    assert capture_config(AttentionParams(), tiny, with_self=True).blocks == ("down", "mid", "up")
    assert capture_config(AttentionParams(), sd, with_self=True).blocks == ("down", "mid", "up")
    assert capture_config(AttentionParams(blocks=["down"]), shapes, with_self=True).blocks == ("down",)

    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model}}
    spec_data["label_head"] = {"name": "attention", "params": {"blocks": ["up"], "cross_resolutions": [8, 4]}}
    with pytest.raises(SpecError, match=r"among \[8\] for this model in its up blocks, got \[4\].*or add blocks"):
        parse_spec(spec_data)


# ---- the maths on hand-made maps
def two_region_attention(side: int, blob: np.ndarray):
    """Self-attention that is uniform within the blob and within the rest: an ideal affinity."""
    flat = blob.reshape(-1)
    same = (flat[:, None] == flat[None, :]).astype(np.float64)
    return torch.tensor(same / same.sum(1, keepdims=True), dtype=torch.float32)


def test_self_attention_exponentiation_spreads_a_seed_over_its_blob():
    from engine.heads.attention import class_maps

    side = 8
    blob = np.zeros((side, side), bool)
    blob[2:6, 1:5] = True
    cross = torch.zeros(side * side, 1)
    cross[2 * side + 2, 0] = 1.0  # one hot cell inside the blob
    cross += 0.01
    captured = {"cross": {side: cross}, "self": two_region_attention(side, blob)}
    raw = class_maps(captured, side, tau=0)[0]
    assert raw[blob].mean() < 0.1 and raw.max() == pytest.approx(1.0)  # only the seed cell is high
    refined = class_maps(captured, side, tau=4)[0]
    assert refined[blob].min() > 0.99 and refined[~blob].max() < 0.01  # the whole blob, nothing else


def test_thresholds_make_the_uncertain_band_where_it_belongs():
    from engine.heads.attention import semantic_mask

    first = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.65, 0.8, 0.9, 1.0])
    second = np.full(11, 0.05)
    second[:2] = [0.58, 0.9]
    maps = np.stack([np.tile(first, (2, 1)), np.tile(second, (2, 1))])
    mask, objectness = semantic_mask(maps, [3, 7], alpha=0.5, beta=0.6)
    # at or below alpha: background (0.5 too); between: uncertain; at or above beta: the arg-max class
    assert mask[0].tolist() == [255, 7, 0, 0, 0, 0, 255, 3, 3, 3, 3]
    assert objectness[0].tolist() == pytest.approx(np.maximum(first, second).tolist())


def test_bca_splits_components_and_skips_flat_maps():
    from engine.heads.attention import bca_instances

    heat = np.zeros((2, 32, 32))
    heat[0, 2:10, 3:9] = 1.0
    heat[0, 20:30, 18:28] = 0.9
    heat[0] += np.random.default_rng(0).random((32, 32)) * 0.05
    found = bca_instances(heat, min_area=4)
    boxes = sorted((m, *np.nonzero(region)[0][[0, -1]]) for m, region, _ in found)
    assert boxes == [(0, 2, 9), (0, 20, 29)]
    assert all(0.85 < score <= 1.05 for _, _, score in found)


# ---- jobs
def masks_job(spec_data, tiny_model, head):
    import pyarrow.parquet as pq
    from PIL import Image
    from pycocotools.coco import COCO

    from engine.job.runner import run_job

    spec_data.update(lower_bound=1, budget={"max_images": 4, "max_waves": 1}, unit_size=4, wave_size=4)
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model, "steps": 2, "batch_size": 4}}
    spec_data["label_head"] = {"name": head, "params": {"min_area": 0.02}}
    run_job(parse_spec(spec_data), quiet=True)
    out = spec_data["output"]
    table = pq.read_table(os.path.join(out, "parquet")).to_pylist()
    coco = COCO(os.path.join(out, "coco", "instances.json"))
    return out, table, coco, Image


def test_attention_job_writes_masks_to_parquet_and_coco(spec_data, tiny_model, ray_local):
    out, rows, coco, Image = masks_job(spec_data, tiny_model, "attention")
    assert len(rows) == 4 and all(r["label_head"] == "attention" for r in rows)
    ids = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    for row in rows:
        mask = np.asarray(Image.open(io.BytesIO(row["semantic_mask"])))
        named = {ids[c] for c in ids if c in row["prompt"]}
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255} | named
        on_disk = np.asarray(Image.open(os.path.join(out, "coco", "semantic", row["image"]["path"])))
        assert np.array_equal(mask, on_disk)
        for ann in row["annotations"]:  # instances are the mask's components of their class
            assert ann["category_id"] in named and 0 < ann["score"] <= 1
    annotations = coco.loadAnns(coco.getAnnIds())
    assert annotations, "the attention head found no instance in 4 images"
    for ann in annotations:
        decoded = coco.annToMask(ann)
        image = next(r for r in rows if r["image_id"] == ann["image_id"])
        semantic = np.asarray(Image.open(io.BytesIO(image["semantic_mask"])))
        assert (semantic[decoded > 0] == ann["category_id"]).all()


def test_bca_job_writes_boxes_that_load_in_pycocotools(spec_data, tiny_model, ray_local):
    _, rows, coco, _ = masks_job(spec_data, tiny_model, "bca")
    assert all(r["semantic_mask"] is None for r in rows)
    annotations = coco.loadAnns(coco.getAnnIds())
    assert annotations and all(len(a["bbox"]) == 4 and a["bbox"][2] > 0 and a["area"] >= 0.02 * 32 * 32
                               for a in annotations)
    info = json.load(open(os.path.join(spec_data["output"], "job.json")))
    assert info["spec"]["label_head"]["name"] == "bca"


def test_box_ap_is_one_for_the_truth_and_lower_for_a_shifted_box():
    from engine.lab.metrics.boxes import box_ap
    from engine.records import Instance

    def square(y, x, side=10):
        mask = np.zeros((64, 64), bool)
        mask[y:y + side, x:x + side] = True
        return mask

    truth = [[Instance("circle", square(5, 5)), Instance("star", square(30, 30))], [Instance("ring", square(0, 40))]]
    assert box_ap(truth, truth, 64)["AP"] == pytest.approx(1.0)
    shifted = [[Instance("circle", square(9, 9)), Instance("star", square(30, 30))], [Instance("ring", square(0, 40))]]
    scores = box_ap(truth, shifted, 64)
    assert scores["AP50"] < 1.0 and scores["AP"] < 1.0 and scores["detections"] == 3
