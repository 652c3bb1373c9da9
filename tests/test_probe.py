"""`dde probe`: the alpha sampler's mix, a tiny real probe on Ray Train (a render + ground_truth
dde job against a `dde world export` val set) that scores AP and resumes, and the refusals."""

import copy
import json
import os

import numpy as np
import pytest

from .conftest import BASE_SPEC


def test_alpha_sampler_draws_synthetic_with_probability_alpha_and_repeats_itself():
    from engine.lab.train.mixing import AlphaSampler

    sampler = AlphaSampler(synthetic=50, real=200, alpha=0.4, seed=3)
    picks = np.concatenate([sampler.draw(step, 32) for step in range(500)])
    share = float((picks < 50).mean())
    assert abs(share - 0.4) < 0.02  # 16,000 draws: 4 standard deviations is 0.016
    assert picks.min() >= 0 and picks.max() < 250 and len(set(picks[picks < 50])) == 50
    assert np.array_equal(sampler.draw(7, 32), AlphaSampler(50, 200, 0.4, seed=3).draw(7, 32))
    assert not np.array_equal(sampler.draw(7, 32), sampler.draw(8, 32))
    assert set(AlphaSampler(5, 0, 1.0)) <= set(range(5)) and len(AlphaSampler(5, 0, 1.0, num_samples=9)) == 9
    assert all(i >= 5 for i in AlphaSampler(5, 7, 0.0))
    with pytest.raises(ValueError, match="alpha"):
        AlphaSampler(0, 7, 0.5)


def test_schedule_warms_up_linearly_then_decays():
    from engine.lab.train.detection import Schedule

    schedule = Schedule(100, 1.0, warmup=10)
    assert [schedule.lr_at(s) for s in (0, 4, 9, 50, 80)] == pytest.approx([0.1, 0.5, 1.0, 1.0, 0.1])
    assert Schedule(100, 1.0).lr_at(0) == 1.0  # no warm-up unless asked


def test_probe_detector_is_torchvisions_mobilenet_fpn_fcos_with_a_narrower_fpn():
    """build_fcos composes torchvision's public parts into what mobilenet_backbone + FCOS build,
    but with FPN_CHANNELS (128) FPN and head channels: at 256 every parameter has the shape of
    main's mobilenet_backbone(..., returned_layers=RETURNED_STAGES) FPN; at the default, the
    levels reaching the head of a 64-px image are 8x8 to 1x1 with 128 channels."""
    import torch
    from torch import nn
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    from engine.lab.train.probe import FPN_CHANNELS, RETURNED_STAGES, build_fcos

    standard = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True,
                                  norm_layer=nn.BatchNorm2d, trainable_layers=6, returned_layers=RETURNED_STAGES)
    wide = build_fcos(6, 64, channels=256).backbone
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in standard.state_dict().items()}
    assert wide.body.return_layers == standard.body.return_layers
    model = build_fcos(6, 64).eval()
    assert FPN_CHANNELS == 128 and model.transform.min_size == (64,) and model.transform.max_size == 64
    images, _ = model.transform([torch.rand(3, 64, 64)])
    assert images.tensors.shape == (1, 3, 64, 64)  # not resized to torchvision's default 800 px
    levels = model.backbone(images.tensors)
    assert [tuple(v.shape[1:]) for v in levels.values()] == [(128, 8, 8), (128, 4, 4), (128, 2, 2), (128, 1, 1)]
    assert all(p.requires_grad for p in model.parameters())  # trained from scratch: nothing frozen


def test_probe_segmenter_is_torchvisions_lraspp_on_a_small_or_large_mobilenet_trunk():
    """build_lraspp composes torchvision's public LRASPP and feature extractor: on the large trunk it
    has exactly the parameters of torchvision's own lraspp_mobilenet_v3_large; the small trunk is the
    default; another trunk is refused by name."""
    import torch
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    from engine.errors import UserError
    from engine.lab.train.probe import ProbeRecipe
    from engine.lab.train.segprobe import build_lraspp

    large = build_lraspp(6, "mobilenet_v3_large")
    reference = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=7)
    assert sorted(p.shape for p in large.parameters()) == sorted(p.shape for p in reference.parameters())
    small = build_lraspp(6)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in large.parameters()) / 2
    assert small(torch.rand(2, 3, 128, 128))["out"].shape == (2, 7, 128, 128)
    assert ProbeRecipe(task="segmentation").segmenter == "mobilenet_v3_small"
    with pytest.raises(UserError, match="--segmenter: expected one of mobilenet_v3_small, mobilenet_v3_large"):
        ProbeRecipe(task="segmentation", segmenter="resnet50")


@pytest.fixture(scope="module")
def probe_inputs(tmp_path_factory, ray_local):
    """A finished 32-image render + ground_truth dde output and a 16-image val set, 32 px."""
    from engine.job.runner import run_job
    from engine.spec import parse_spec
    from engine.world import WorldConfig, export_coco

    root = tmp_path_factory.mktemp("probe")
    data = copy.deepcopy(BASE_SPEC)
    data.update(output=str(root / "out"), budget={"max_images": 32, "max_waves": 4}, lower_bound=5)
    result = run_job(parse_spec(data), quiet=True)
    assert result.images == 32
    export_coco(root / "val", 16, "val", seed=1, config=WorldConfig(size=32, max_objects=3))
    return str(root / "out"), str(root / "val")


def test_probe_trains_on_ray_scores_ap_and_resumes(probe_inputs, tmp_path):
    from engine.lab.train.probe import ProbeRecipe, probe

    out, val = probe_inputs
    folder = str(tmp_path / "probe")
    result = probe(out, val, ProbeRecipe(steps=2, batch=4, eval_every=1), folder=folder)
    assert 0 <= result["AP"] <= 1 and 0 <= result["AP50"] <= 1
    assert set(result["per_class"]) == set(result["classes"]) and result["images"] == {"synthetic": 32, "real": 0,
                                                                                       "val": 16}
    assert json.load(open(f"{folder}/probe.json")) == result and os.path.exists(f"{folder}/curve.png")
    assert result["threads"] == 1 and "FPN of 128 channels" in result["model"]  # one torch thread unless --threads
    assert result["lr"] == 1e-2 and ProbeRecipe(task="segmentation").lr == 1e-2  # the default peak lr
    # a rerun with more steps continues from step 2 (here directly on the CPU, without a second Ray Train run)
    longer = probe(out, val, ProbeRecipe(steps=3, batch=4, eval_every=1), folder=folder, device="cpu")
    steps = [int(line.split(",")[0]) for line in open(f"{folder}/curve.csv").read().split()[1:]]
    assert steps == [1, 2, 3] and longer["steps"] == 3


def test_probe_mixes_real_data_by_alpha(probe_inputs, tmp_path):
    from engine.lab.train.probe import ProbeRecipe, probe

    out, val = probe_inputs
    real = tmp_path / "real"
    from engine.world import WorldConfig, export_coco

    export_coco(real, 8, "train", seed=2, config=WorldConfig(size=32, max_objects=3))
    result = probe(out, val, ProbeRecipe(steps=1, batch=2, alpha=0.5), real=str(real), folder=str(tmp_path / "p"),
                   device="cpu")
    assert result["alpha"] == 0.5 and result["images"]["real"] == 8
    # --real also takes a finished dde output (coco/instances.json), as `dde train adapter --data` does
    other = probe(out, val, ProbeRecipe(steps=1, batch=2, alpha=0.5), real=out, folder=str(tmp_path / "o"),
                  device="cpu")
    assert other["images"]["real"] == 32
    first = probe(out, val, ProbeRecipe(steps=1, batch=2, synthetic_images=10), folder=str(tmp_path / "q"),
                  device="cpu")
    assert first["images"]["synthetic"] == 10  # the output's first 10 images: sources compared at equal counts


def _refusal(capsys, argv, field):
    from engine.cli import main

    assert main(["probe", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}:") and err.count("\n") == 1, err


def test_probe_refuses_an_output_that_is_not_a_finished_dde_job(tmp_path, capsys, probe_inputs):
    _refusal(capsys, [str(tmp_path), "--val", probe_inputs[1]], "OUT")
    assert os.listdir(tmp_path) == []


def test_probe_refuses_a_val_set_without_shared_classes(tmp_path, capsys, probe_inputs):
    out, val = probe_inputs
    other = tmp_path / "val"
    (other / "annotations").mkdir(parents=True)
    coco = json.load(open(f"{val}/annotations/instances_val.json"))
    for category in coco["categories"]:
        category["name"] = "zebra-" + category["name"]
    (other / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    _refusal(capsys, [out, "--val", str(other), "--out", str(tmp_path / "p")], "--val")
    assert not os.path.exists(tmp_path / "p") and not os.path.exists(f"{out}/probe")


def test_probe_refuses_an_empty_dataset(tmp_path, capsys, probe_inputs):
    from engine.world import export_coco

    out, _ = probe_inputs
    export_coco(tmp_path / "val", 0, "val")
    _refusal(capsys, [out, "--val", str(tmp_path / "val"), "--out", str(tmp_path / "p")], "--val")
    assert not os.path.exists(tmp_path / "p")


@pytest.mark.parametrize("extra, field", [(["--alpha", "0.3"], "--alpha"), (["--out", "VAL/probe"], "--out")])
def test_probe_refuses_alpha_without_real_and_an_out_inside_the_val_set(capsys, probe_inputs, extra, field):
    out, val = probe_inputs
    _refusal(capsys, [out, "--val", val, *[a.replace("VAL", val) for a in extra]], field)
    assert sorted(os.listdir(val)) == ["annotations", "images", "semantic"] and not os.path.exists(f"{out}/probe")


def test_segmentation_label_maps_from_dde_masks_agree_with_the_coco_instances(probe_inputs):
    """The output's semantic PNGs and its own COCO RLE, read the two ways the probe reads data,
    give the same label maps (the render's masks are exact and its instances do not overlap)."""
    from engine.lab.train.segprobe import IGNORE, load_semantic

    out, _ = probe_inputs
    classes = ["circle", "square", "triangle", "star", "ring", "cross"]
    images, annotations = os.path.join(out, "coco", "images"), os.path.join(out, "coco", "instances.json")
    pictures, from_png = load_semantic(images, annotations, classes, 64, os.path.join(out, "coco", "semantic"))
    _, from_coco = load_semantic(images, annotations, classes[:3], 64)  # the last three are not scored
    assert len(pictures) == 32 and pictures[0].shape == (3, 64, 64) and from_png[0].shape == (64, 64)
    png, coco = np.stack(from_png), np.stack(from_coco)
    shared = png <= 3
    assert (png > 0).mean() > 0.05 and np.array_equal(png[shared], coco[shared])
    assert set(np.unique(coco[~shared])) <= {IGNORE} and set(np.unique(png)) <= set(range(7))


def test_segmentation_probe_scores_miou_and_resumes(probe_inputs, tmp_path):
    from engine.lab.train.probe import ProbeRecipe, probe

    out, val = probe_inputs
    folder = str(tmp_path / "seg")
    result = probe(out, val, ProbeRecipe(steps=2, batch=4, eval_every=1, task="segmentation"), folder=folder,
                   device="cpu")
    assert result["task"] == "segmentation" and 0 <= result["mIoU"] <= 1 and "AP" not in result
    assert set(result["per_class"]) == set(result["classes"]) and all(set(v) == {"IoU"}
                                                                      for v in result["per_class"].values())
    assert "LR-ASPP" in result["model"] and os.path.exists(f"{folder}/curve.png")
    longer = probe(out, val, ProbeRecipe(steps=3, batch=4, eval_every=1, task="segmentation"), folder=folder,
                   device="cpu")
    steps = [int(line.split(",")[0]) for line in open(f"{folder}/curve.csv").read().split()[1:]]
    assert steps == [1, 2, 3] and longer["steps"] == 3


def test_segmentation_probe_refuses_outputs_and_val_sets_without_masks(tmp_path, probe_inputs, ray_local):
    import subprocess

    from engine.job.runner import run_job
    from engine.spec import parse_spec

    from .conftest import DDE

    out, val = probe_inputs
    boxes = copy.deepcopy(BASE_SPEC)
    boxes.update(output=str(tmp_path / "boxes"), budget={"max_images": 8, "max_waves": 1}, lower_bound=1,
                 label_head={"name": "none"})
    run_job(parse_spec(boxes), quiet=True)
    proc = subprocess.run([DDE, "probe", str(tmp_path / "boxes"), "--val", val, "--task", "segmentation"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "expected semantic masks (coco/semantic/)" in proc.stderr, proc.stderr
    no_masks = tmp_path / "val"
    (no_masks / "annotations").mkdir(parents=True)
    data = json.load(open(os.path.join(val, "annotations", "instances_val.json")))
    for ann in data["annotations"]:
        ann.pop("segmentation", None)
    json.dump(data, open(no_masks / "annotations" / "instances_val.json", "w"))
    os.symlink(os.path.join(val, "images"), no_masks / "images")
    proc = subprocess.run([DDE, "probe", out, "--val", str(no_masks), "--task", "segmentation", "--out",
                           str(tmp_path / "p")], capture_output=True, text=True)
    assert proc.returncode == 2 and "--val: expected instance masks" in proc.stderr, proc.stderr
    assert not (tmp_path / "p").exists()


def test_downstream_sets_are_written_once_with_the_scale_counts(tmp_path):
    """The bench's rendered sets: val, real and a tenth of real, as COCO folders; a rerun reuses them."""
    from engine.lab.evals.downstream import Scale, rendered_sets

    scale = Scale(images=20, val=6, steps=1, batch=2, seeds=1)
    sets = rendered_sets(str(tmp_path), scale)
    counts = {name: len(json.load(open(os.path.join(folder, "annotations", f"instances_{split}.json")))["images"])
              for (name, folder), split in zip(sets.items(), ("val", "train", "train"))}
    assert counts == {"val": 6, "real": 20, "real10": 2}
    stamp = os.path.getmtime(os.path.join(sets["real"], "annotations", "instances_train.json"))
    assert rendered_sets(str(tmp_path), scale) == sets
    assert os.path.getmtime(os.path.join(sets["real"], "annotations", "instances_train.json")) == stamp


def test_downstream_cells_read_back_their_probes_with_more_seeds_for_headline_cells(tmp_path):
    """A cell already measured (its probe.json exists) is read back, not trained again; headline
    cells take scale.headline_seeds seeds and report their spread, the others scale.seeds."""
    from engine.lab.evals.downstream import FULL, Cell, Scale, _measure

    assert (FULL.seeds, FULL.headline_seeds) == (1, 2)
    for cell, seed, ap in (("a-real", 0, 0.5), ("a-real", 1, 0.3), ("a-render", 0, 0.6)):
        folder = tmp_path / "probes" / f"{cell}-seed{seed}"
        folder.mkdir(parents=True)
        (folder / "probe.json").write_text(json.dumps({"AP": ap, "alpha": 0.0 if cell == "a-real" else 1.0,
                                                       "images": {"synthetic": 7, "real": 9 * (cell == "a-real")}}))
    scale = Scale(images=10, val=5, steps=2, batch=2, seeds=1, headline_seeds=2)
    cells = [Cell("a", "real only", "a-real", "unused", headline=True), Cell("a", "render", "a-render", "unused")]
    for shard in ((0, 1), (1, 2)):
        tables = _measure(str(tmp_path), cells, "unused", scale, shard)
        assert tables["a"]["render"] == {"mean": 0.6, "spread": 0.0, "runs": [0.6], "images": "7 dde"}
        assert tables["a"]["real only"]["images"] == "9 real"  # alpha 0: the output's images are not drawn
        assert tables["a"]["real only"]["runs"] == [0.5, 0.3]
        assert tables["a"]["real only"]["mean"] == pytest.approx(0.4)
        assert tables["a"]["real only"]["spread"] == pytest.approx(0.2)
