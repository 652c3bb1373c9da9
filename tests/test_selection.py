"""High-quality Image Selection (issue 14): the CLIP and segmenter filters, their spec checks, and a
job whose rejects carry reasons and scores while the bounds count kept images only."""

import os

import numpy as np
import pytest

from engine.errors import SpecError
from engine.records import Generated, ImageRequest, Labels
from engine.job.runner import run_job
from engine.job.selection import Selection, check_selection
from engine.spec import ClassSpec, SelectionSpec, parse_spec

WORLD = ["circle", "square", "triangle", "star", "ring", "cross"]


def scenes(count, seed=5):
    from engine.models.embedded import model_world
    from engine.world import render_scene

    return [render_scene(seed * 1000 + k, None, model_world()) for k in range(count)]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPModel

    from engine.models.tokenizer import build_tokenizer
    from engine.lab.train.clip import export_clip

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32),
                        vision_config=dict(image_size=64, patch_size=8, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2), projection_dim=16)
    folder = str(tmp_path_factory.mktemp("clip") / "clip")
    export_clip(folder, CLIPModel(config), tokenizer)
    return folder


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory):
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    labels = {0: "background", 1: "disc", 2: "box"}
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                             decoder_hidden_size=16, num_labels=3, id2label=labels,
                             label2id={v: k for k, v in labels.items()})
    folder = str(tmp_path_factory.mktemp("segformer") / "segformer")
    SegformerForSemanticSegmentation(config).save_pretrained(folder, safe_serialization=True)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def truth_labels(scene):
    return Labels([], semantic=scene.semantic.astype(np.uint8))  # world ids = job ids for classes in WORLD order


def test_segmenter_filter_keeps_right_labels_and_rejects_wrong_ones():
    shown = scenes(6)
    selection = Selection(SelectionSpec(segmenter={"min_miou": 0.6}), [ClassSpec(name=c) for c in WORLD])
    requests = [ImageRequest(k, k, "x", classes=[i.category for i in s.instances]) for k, s in enumerate(shown)]
    generated = [Generated(image=s.image) for s in shown]
    right = selection.judge(requests, generated, [truth_labels(s) for s in shown])
    assert right == [None] * 6
    wrong = [Labels([], semantic=np.roll(s.semantic, 20, axis=1).astype(np.uint8)) for s in shown]
    verdicts = selection.judge(requests, generated, wrong)
    assert all(v is not None and v["reason"].startswith("selection: segmenter mIoU") for v in verdicts)
    assert all(v["scores"]["segmenter_miou"] <= 0.6 for v in verdicts)
    rejected = [Generated(image=None, reject="blank")] + generated[1:]
    assert selection.judge(requests, rejected, wrong)[0] is None  # already rejected: left as it is


def test_clip_filter_is_equation_2(tiny_clip):
    shown = scenes(2)
    requests = [ImageRequest(0, 0, "x", reference=shown[0].image), ImageRequest(1, 1, "x", reference=shown[0].image)]
    generated = [Generated(image=shown[0].image), Generated(image=shown[1].image)]
    from engine.lab.metrics.clip import image_similarity, load_clip

    other = float(image_similarity(load_clip(tiny_clip), shown[0].image[None], shown[1].image[None])[0, 0])
    epsilon = (1 + other) / 2  # between the reference itself (cosine 1) and another scene
    selection = Selection(SelectionSpec(clip={"model": tiny_clip, "epsilon": epsilon}), [ClassSpec(name="circle")])
    verdicts = selection.judge(requests, generated, [Labels([]), Labels([])])
    assert verdicts[0] is None
    assert verdicts[1]["reason"] == "selection: CLIP image similarity to the reference below epsilon"
    assert verdicts[1]["scores"]["clip_cosine"] == pytest.approx(other, abs=1e-3)


def test_transformers_segmenter_maps_its_labels_to_job_classes(tiny_segformer):
    shown = scenes(2)
    classes = [ClassSpec(name="circle"), ClassSpec(name="square")]
    selection = Selection(SelectionSpec(segmenter={"model": tiny_segformer, "classes": {"circle": "disc",
                                                                                        "square": 2}}), classes)
    predicted = selection.segmenter.labels(np.stack([s.image for s in shown]))
    assert predicted.shape == (2, 64, 64) and set(np.unique(predicted)) <= {0, 1, 2}
    assert selection.segmenter.lut.tolist() == [0, 1, 2]


def test_embedded_clip_names_the_shipped_clip(spec_data):
    from engine.lab.metrics.clip import image_similarity, load_clip

    spec_data["selection"] = {"clip": {"model": "embedded:clip"}}
    assert not [p for p in check_selection(parse_spec(spec_data)) if p.startswith("selection.clip.model")]
    shown = scenes(2)
    same = image_similarity(load_clip("embedded:clip"), shown[0].image[None], shown[0].image[None])
    assert float(same[0, 0]) == pytest.approx(1.0, abs=1e-4)


def test_selection_spec_problems(spec_data, tmp_path, tiny_segformer):
    spec_data["selection"] = {"clip": {"model": str(tmp_path / "no-clip")},
                              "segmenter": {"model": tiny_segformer, "classes": {"circle": "disc"}}}
    text = "\n".join(check_selection(parse_spec(spec_data)))
    assert "selection.clip: expected prompts.source 'references'" in text
    assert "selection.clip.model: expected 'embedded:clip' (the shipped shapes CLIP), a CLIPModel folder" in text
    assert "selection.segmenter.classes: expected the model's label for every job class, got none for" in text
    spec_data["classes"] = ["circle", "widget"]
    spec_data["generator"] = {"name": "diffusion"}
    spec_data["label_head"] = {"name": "none"}
    spec_data["selection"] = {"segmenter": {}}
    (problem,) = check_selection(parse_spec(spec_data))
    assert "selection.segmenter.model: expected job classes the shipped segmenter knows" in problem
    assert problem.endswith("got ['widget']; use a transformers segmenter with selection.segmenter.classes")
    with pytest.raises(SpecError, match="selection.segmenter.model"):  # refused when the job starts
        run_job(parse_spec(spec_data), quiet=True)
    assert not os.path.exists(spec_data["output"])


@pytest.mark.ray
def test_rejected_images_are_recorded_with_scores_and_bounds_count_kept_images(spec_data, ray_local):
    from engine.output.ledger import Ledger
    from engine.job.status import job_status
    from engine.output.storage import Store

    spec_data.update(classes=WORLD, lower_bound=1, budget={"max_images": 24, "max_waves": 1}, unit_size=12,
                     wave_size=24)
    # rendered images with exact labels, the default (smaller) world: the segmenter misses some small objects
    spec_data["selection"] = {"segmenter": {"min_miou": 0.9}}
    result = run_job(parse_spec(spec_data), quiet=True)
    status = job_status(Store(spec_data["output"]))
    units = list(Ledger(Store(spec_data["output"])).refresh().values())
    rejects = [r for u in units for r in u["rejects"]]
    assert 0 < len(rejects) < 24 and result.images == 24 - len(rejects)
    assert all(r["reason"] == "selection: segmenter mIoU against the labels below min_miou" and
               r["scores"]["segmenter_miou"] <= 0.9 and r["classes"] for r in rejects)
    table = {name: (kept, rejected) for name, kept, rejected in status["selection"]}
    assert sum(kept for kept, _ in table.values()) == status["instances"]  # bounds count kept images only
    assert sum(rejected for _, rejected in table.values()) == sum(len(r["classes"]) for r in rejects)
    card = open(os.path.join(spec_data["output"], "README.md")).read()
    assert "## High-quality Image Selection" in card
    assert "High-quality Image Selection" in open(os.path.join(spec_data["output"], "report.html")).read()
