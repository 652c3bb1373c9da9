"""The trained box heads: the detector learns, loads deterministically, decodes boxes; `dde train
adapter` runs on Ray Train and resumes; `dde train grounding` runs both stages; jobs with each
head write boxes that load in pycocotools. Tiny random-weight diffusion model, CPU."""

import json
import os

import pytest
import torch

from engine.spec import parse_spec


def tiny_detector(**overrides):
    from engine.heads.boxes.detector import DetectorConfig, build_detector

    config = dict(levels={4: 6, 8: 10}, image_size=32, num_classes=3, width=32, query_side=4, heads=2, heatmap=True)
    torch.manual_seed(0)
    return build_detector(DetectorConfig(**{**config, **overrides}))


def pyramid(batch=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {4: torch.randn(batch, 6, 8, 8, generator=generator), 8: torch.randn(batch, 10, 4, 4, generator=generator)}


TARGETS = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.25]])},
           {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
           {"labels": torch.tensor([], dtype=torch.long), "boxes": torch.zeros(0, 4)},
           {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.2, 0.8, 0.2, 0.2]])}]


def test_a_few_training_steps_reduce_every_loss_including_the_heatmap():
    from engine.heads.boxes.detector import detection_loss

    model, features = tiny_detector(), pyramid()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        parts = detection_loss(model(features), TARGETS)
        first = first or {k: float(v.detach()) for k, v in parts.items()}
        optimizer.zero_grad()
        parts["total"].backward()
        optimizer.step()
    last = {k: float(v) for k, v in detection_loss(model(features), TARGETS).items()}
    assert set(last) == {"focal", "l1", "giou", "heatmap", "total"}
    assert last["total"] < 0.5 * first["total"] and last["heatmap"] < first["heatmap"]


def test_grounding_scores_any_class_name_embedding():
    model = tiny_detector(num_classes=0, text_width=12, heatmap=False).eval()
    out = model(pyramid(2), torch.randn(5, 12))
    assert out["logits"].shape == (2, 16, 5) and out["heatmap"] is None
    with pytest.raises(ValueError, match="text embeddings"):
        model(pyramid(2))


def test_saved_head_loads_deterministically(tmp_path):
    from engine.heads.boxes.weights import load_detector
    from engine.models.trained import save_trained

    model = tiny_detector()
    save_trained(model, str(tmp_path), "adapter", {"classes": ["a", "b", "c"], "detector": model.config.to_json()})
    first, card = load_detector(str(tmp_path), "adapter", "adapter")
    again, _ = load_detector(str(tmp_path), "adapter", "adapter")
    features = pyramid()
    with torch.no_grad():
        a, b, c = first(features), first(features), again(features)
    assert card["classes"] == ["a", "b", "c"] and not first.training
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["logits"], c["logits"])
    assert torch.equal(a["boxes"], c["boxes"])


def test_detections_keep_scores_above_the_threshold_in_pixels():
    from engine.heads.boxes.detector import detections

    logits = torch.full((1, 3, 2), -9.0)
    logits[0, 0, 1], logits[0, 2, 0] = 2.0, -0.5  # sigmoid 0.88 and 0.38
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.25], [0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2]]])
    found = detections({"logits": logits, "boxes": boxes}, threshold=0.3, image_size=64)
    assert [(c, round(s, 2)) for c, s, _ in found[0]] == [(1, 0.88), (0, 0.38)]
    assert found[0][0][2] == pytest.approx([16.0, 24.0, 32.0, 16.0])
    assert detections({"logits": logits, "boxes": boxes}, threshold=0.5, image_size=64)[0][0][0] == 1


# ---- training commands and jobs (real Ray Train, tiny model)
@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from engine.world import WorldConfig, export_coco

    folder = tmp_path_factory.mktemp("world")
    config = WorldConfig(size=32, max_objects=2, min_scale=0.3, max_scale=0.5)
    export_coco(folder, 24, "train", config=config)
    export_coco(folder, 8, "val", config=config)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_adapter(tiny_world, tiny_model, tmp_path_factory, ray_local):
    from engine.lab.train.adapter import AdapterRecipe, train_adapter

    out = str(tmp_path_factory.mktemp("adapter"))
    card = train_adapter(tiny_world, tiny_model, out, AdapterRecipe(steps=4, batch=4, eval_every=2))
    return out, card


def test_train_adapter_runs_on_ray_train_and_resumes(tiny_adapter, tiny_world, tiny_model):
    from engine.lab.train.adapter import AdapterRecipe, train_adapter

    out, card = tiny_adapter
    assert card["classes"][:2] == ["circle", "square"] and card["train_images"] == 24 and card["val_images"] == 8
    assert set(card["val"]) == {"AP", "AP50"} and os.path.exists(f"{out}/curve.png")
    assert [row["step"] for row in json.load(open(f"{out}/checkpoint/meta.json"))["curve"]] == [2, 4]
    longer = train_adapter(tiny_world, tiny_model, out, AdapterRecipe(steps=6, batch=4, eval_every=2))
    steps = [int(line.split(",")[0]) for line in open(f"{out}/curve.csv").read().split()[1:]]
    assert steps == [2, 4, 6] and longer["schedule"]["steps"] == 6  # resumed at 4, not restarted


def test_bad_coco_folder_is_one_clear_error(tmp_path):
    from engine.cli import main

    assert main(["train", "adapter", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_adapter_pools_several_coco_folders(tiny_world, tmp_path):
    from engine.lab.train.adapter import _check_folders, _split
    from engine.world import WorldConfig, export_coco

    other = tmp_path / "default-world"
    export_coco(other, 10, "train", config=WorldConfig(size=32))  # no val split: its last 2 images are held out
    _check_folders([tiny_world, str(other)])
    (train, train_instances), (val, val_instances), classes = _split([tiny_world, str(other)], val_images=500)
    assert train.shape == (24 + 8, 32, 32, 3) and len(train_instances) == 32
    assert val.shape[0] == len(val_instances) == 8 + 2 and classes[:2] == ["circle", "square"]


def test_adapter_folders_that_disagree_are_refused_before_anything_is_written(tiny_world, tmp_path, capsys):
    from engine.cli import main
    from engine.world import WorldConfig, export_coco

    larger = tmp_path / "larger"
    export_coco(larger, 4, "train", config=WorldConfig(size=48))
    out = tmp_path / "out"
    assert main(["train", "adapter", "--data", tiny_world, "--data", str(larger), "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert "--data" in message and "32 px" in message and "48 px" in message and not out.exists()


@pytest.mark.parametrize("args, field", [
    (["--base", "circle,zebra", "--novel", "star"], "--base/--novel"),
    (["--base", "circle", "--novel", "circle"], "--base/--novel"),
    (["--base", "circle", "--novel", "star", "--model", "embedded:nope"], "--model"),
    (["--base", "circle", "--novel", "star", "--teacher", "NOWHERE"], "--teacher"),
    (["--base", "circle", "--novel", "star", "--region-clip", "NOWHERE"], "--region-clip"),
])
def test_bad_grounding_inputs_fail_before_ray_with_the_field_named(tmp_path, capsys, args, field):
    from engine.cli import main

    args = [a.replace("NOWHERE", str(tmp_path / "none")) for a in args]
    assert main(["train", "grounding", *args, "--out", str(tmp_path / "o")]) == 2
    # the message is dde's last line; a Ray cluster an earlier test started may log lines of its own before it
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: {field}:")


def box_job(spec_data, tiny_model, head, params, classes):
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    from engine.job.runner import run_job

    spec_data.update(classes=classes, lower_bound=1, budget={"max_images": 4, "max_waves": 1}, unit_size=4,
                     wave_size=4)
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model, "steps": 2, "batch_size": 4}}
    spec_data["label_head"] = {"name": head, "params": params}
    run_job(parse_spec(spec_data), quiet=True)
    out = spec_data["output"]
    return pq.read_table(os.path.join(out, "parquet")).to_pylist(), COCO(os.path.join(out, "coco", "instances.json"))


def check_boxes(rows, coco, classes):
    annotations = coco.loadAnns(coco.getAnnIds())
    assert annotations, "threshold 0 keeps every query: there must be boxes"
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(classes)
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 32.01 and y + h <= 32.01
        assert "segmentation" not in ann and ann["area"] == pytest.approx(w * h, rel=1e-4)
    assert all(a["segmentation"] is None for r in rows for a in r["annotations"])
    results = coco.loadRes([{**a, "score": a["score"]} for a in annotations])  # loads as detections too
    assert len(results.getAnnIds()) == len(annotations)


def test_adapter_job_writes_boxes_that_load_in_pycocotools(spec_data, tiny_model, tiny_adapter, ray_local):
    classes = ["circle", "square", "star"]
    rows, coco = box_job(spec_data, tiny_model, "adapter", {"weights": tiny_adapter[0], "threshold": 0.0}, classes)
    check_boxes(rows, coco, classes)
    check_finished_output_is_a_train_split(spec_data["output"], coco, classes)


def check_finished_output_is_a_train_split(out, coco, classes):
    """The engine's own data trains a head (`dde train adapter --data OUT`): a finished output is a
    train split, and has no val split."""
    from engine.errors import UserError
    from engine.lab.train.detection import load_coco

    images, instances, names = load_coco(out, "train")
    assert images.shape == (len(coco.getImgIds()), 32, 32, 3) and names == classes
    assert sum(map(len, instances)) == len(coco.getAnnIds())
    with pytest.raises(UserError, match="instances_val.json"):
        load_coco(out, "val")


def test_adapter_rejects_classes_it_was_not_trained_on(spec_data, tiny_model, tiny_adapter):
    from engine.errors import SpecError

    spec_data.update(classes=["circle", "zebra"])
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model}}
    spec_data["label_head"] = {"name": "adapter", "params": {"weights": tiny_adapter[0]}}
    with pytest.raises(SpecError, match="zebra"):
        parse_spec(spec_data)


def test_grounding_trains_both_stages_and_its_job_takes_unseen_names(spec_data, tiny_model, tiny_adapter, tmp_path,
                                                                     ray_local):
    from engine.lab.train.grounding import GroundingRecipe, train_grounding

    recipe = GroundingRecipe(base=["circle", "square"], novel=["star"], images=8, base_steps=2, novel_steps=2,
                             batch=4, eval_every=2, val_images=8, alpha=0.0, beta=0.0, sampling_steps=2)
    out = str(tmp_path / "grounding")
    card = train_grounding(tiny_model, out, recipe, teacher=tiny_adapter[0], device="cpu")
    base_card = json.load(open(f"{out}/grounding-base.json"))
    assert {"novel_AP50", "base_AP50"} <= set(card["val"]) and base_card["recipe"]["novel"] == ["star"]
    assert card["teacher_boxes_per_base_image"] > 0 and card["pseudo_boxes_per_novel_image"] > 0
    classes = ["circle", "hexagon"]  # a name no training ever saw
    rows, coco = box_job(spec_data, tiny_model, "grounding", {"weights": out, "threshold": 0.0}, classes)
    check_boxes(rows, coco, classes)


def test_grounding_scores_only_the_named_classes_when_asked_and_refuses_other_values(tiny_model, tiny_adapter,
                                                                                       tmp_path):
    """InstaGen's loss over the prompt's classes (``score_classes: named``) trains both stages."""
    from engine.errors import UserError
    from engine.lab.train.grounding import GroundingRecipe, train_grounding

    settings = dict(base=["circle", "square"], novel=["star"], images=8, base_steps=2, novel_steps=2, batch=4,
                    eval_every=2, val_images=8, alpha=0.0, beta=0.0, sampling_steps=2)
    card = train_grounding(tiny_model, str(tmp_path / "g"), GroundingRecipe(**settings, score_classes="named"),
                           teacher=tiny_adapter[0], device="cpu")
    assert card["recipe"]["score_classes"] == "named" and {"novel_AP50", "base_AP50"} <= set(card["val"])
    with pytest.raises(UserError, match="--score-classes: expected one of"):
        train_grounding(tiny_model, str(tmp_path / "h"), GroundingRecipe(**settings, score_classes="every"),
                        teacher=tiny_adapter[0], device="cpu")
    assert not (tmp_path / "h").exists()


# ---- capacity (queries, layers, width): configurable, sized for the data by default
def test_capacity_defaults_follow_the_data_and_keep_the_shipped_size_for_shapes():
    from engine.heads.boxes.detector import capacity

    assert capacity(4, 6) == {"query_side": 8, "layers": 2, "width": 128, "heads": 4}  # the shipped adapter's
    assert capacity(93, 80)["query_side"] == 20  # COCO's busiest image: 4 x 93 -> 400 queries
    assert capacity(1, 1203)["width"] == 256 and capacity(1, 1203)["heads"] == 8
    assert capacity(50, 6, queries=9, layers=1, width=32) == {"query_side": 3, "layers": 1, "width": 32, "heads": 1}


@pytest.mark.parametrize("flag, value", [("--queries", "10"), ("--width", "48"), ("--layers", "0")])
def test_bad_capacity_is_refused_before_anything_is_written(tmp_path, capsys, flag, value):
    from engine.cli import main

    with pytest.raises(SystemExit) as exit_info:  # argparse's own refusals exit 2 as well
        code = main(["train", "adapter", "--data", str(tmp_path), "--out", str(tmp_path / "o"), flag, value])
        raise SystemExit(code)
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err and not os.path.exists(tmp_path / "o")


def test_a_tiny_adapter_capacity_is_saved_in_its_card_and_rebuilt_at_inference(tiny_world, tiny_model, tmp_path):
    from engine.heads.boxes.weights import load_detector
    from engine.lab.train.adapter import AdapterRecipe, train_adapter

    out = str(tmp_path / "small")
    card = train_adapter(tiny_world, tiny_model, out, AdapterRecipe(steps=2, batch=4, eval_every=2, queries=9,
                                                                    layers=1, width=32), device="cpu")
    assert {k: card["detector"][k] for k in ("query_side", "layers", "width", "heads")} == \
        {"query_side": 3, "layers": 1, "width": 32, "heads": 1}
    detector, loaded = load_detector(out, "adapter", "adapter")
    assert len(detector.encoder.layers) == 1 and detector.position.shape == (9, 32)
    levels = {int(s): c for s, c in loaded["detector"]["levels"].items()}
    out_ = detector({s: torch.randn(2, c, 32 // s, 32 // s) for s, c in levels.items()})
    assert out_["logits"].shape[:2] == (2, 9) and out_["boxes"].shape == (2, 9, 4)


@pytest.mark.parametrize("empty_images", [None, "keep"])
def test_images_without_a_box_are_skipped_by_default_and_kept_on_request(spec_data, tiny_model, tiny_adapter,
                                                                         ray_local, empty_images):
    """DiffusionEngine's code skips a generated image in which the adapter finds no box ('No Valid
    Box, Skip'), and so does the default (``empty_images: skip``); ``keep`` writes it."""
    from engine.job.runner import run_job

    spec_data.update(classes=["circle", "square"], lower_bound=1, budget={"max_images": 4, "max_waves": 1},
                     unit_size=4, wave_size=4)
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model, "steps": 2, "batch_size": 4}}
    params = {"weights": tiny_adapter[0], "threshold": 1.0}  # no box can score above 1
    spec_data["label_head"] = {"name": "adapter", "params": {**params, **({"empty_images": empty_images}
                                                                          if empty_images else {})}}
    run_job(parse_spec(spec_data), quiet=True)
    commits = os.path.join(spec_data["output"], "_commits")
    markers = [json.load(open(os.path.join(commits, n))) for n in os.listdir(commits) if n.endswith(".json")]
    rejects = [r for m in markers for r in m["rejects"]]
    if empty_images == "keep":
        assert not rejects and sum(m["images"] for m in markers) == 4
    else:
        assert len(rejects) == 4 and all("empty_images: skip" in r["reason"] for r in rejects)
