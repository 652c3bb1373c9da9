"""The diffusion backend on tiny random-weight components built from config: CPU, seconds."""

import json
import os

import numpy as np
import pytest
import torch

from engine.errors import SpecError
from engine.records import ImageRequest
from engine.spec import parse_spec


def backend_for(model, **params):
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams

    return DiffusionBackend(params=DiffusionParams(model=model, steps=2, **params), classes=[])


def test_pipeline_folder_loads_in_standard_pipelines(tiny_model):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, use_safetensors=True)
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model, use_safetensors=True)
    out = img2img("a circle", image=torch.rand(1, 3, 32, 32), strength=0.5, num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 32, 32, 3)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    index = json.load(open(f"{tiny_model}/model_index.json"))
    assert index["scheduler"][1] == "DPMSolverMultistepScheduler"


def test_txt2img_is_seeded_per_image_not_per_batch(tiny_model):
    backend = backend_for(tiny_model)
    reqs = [ImageRequest(i, seed=1000 + i, prompt="a photograph of a circle") for i in range(3)]
    batch = backend.generate(reqs)
    again = backend.generate(reqs)
    alone = backend.generate([reqs[2]])
    assert all(g.reject is None and g.image.shape == (32, 32, 3) and g.image.dtype == np.uint8 for g in batch)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(batch, again))  # a rerun unit: same bytes
    # the same seed in another batch: the same image, up to GEMM rounding that depends on batch size
    assert np.abs(batch[2].image.astype(int) - alone[0].image.astype(int)).max() <= 2
    assert np.abs(batch[0].image.astype(int) - batch[1].image.astype(int)).mean() > 5
    assert batch[0].strength is None


def test_img2img_strength_per_image_from_range(tiny_model):
    backend = backend_for(tiny_model, strength=(0.3, 1.0), batch_size=4)
    reference = np.zeros((48, 40, 3), np.uint8)
    reference[10:30, 10:30] = 255
    reqs = [ImageRequest(i, seed=50 + i, prompt="a square", reference=reference) for i in range(4)]
    reqs.append(ImageRequest(9, seed=7, prompt="a square"))
    out = backend.generate(reqs)
    strengths = [g.strength for g in out]
    assert strengths[-1] is None
    assert all(0.3 <= s <= 1.0 and (s * 2) == int(s * 2) for s in strengths[:-1])  # whole steps of 2
    assert np.array_equal(backend.generate(reqs)[0].image, out[0].image)


def test_reference_enters_at_its_strength(tiny_model):
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams

    dark, bright = np.full((32, 32, 3), 20, np.uint8), np.full((32, 32, 3), 235, np.uint8)

    def make(strength, reference):
        backend = DiffusionBackend(params=DiffusionParams(model=tiny_model, steps=10, strength=(strength, strength),
                                                          scheduler="ddim"), classes=[])
        return backend.generate([ImageRequest(0, 3, "x", reference=reference)])[0]

    low_dark, low_bright = make(0.2, dark), make(0.2, bright)
    assert low_dark.strength == low_bright.strength == 0.2
    # random weights blur it, but the reference shows through at low strength
    assert np.abs(low_dark.image.astype(int) - low_bright.image.astype(int)).mean() > 1.0
    full_dark, full_bright = make(1.0, dark), make(1.0, bright)
    assert full_dark.strength == 1.0 and np.array_equal(full_dark.image, full_bright.image)  # pure txt2img


def test_degenerate_images_retry_then_reject(tiny_model, monkeypatch):
    backend = backend_for(tiny_model, retries=1)
    calls = []

    def blank(requests, seeds):
        calls.append(list(seeds))
        return [np.zeros((32, 32, 3)) for _ in requests], [None] * len(requests), [{} for _ in requests]

    monkeypatch.setattr(backend, "_sample", blank)
    out = backend.generate([ImageRequest(0, 11, "x")])
    assert out[0].image is None and out[0].reject == "blank (all-constant) image after 2 seed(s)"
    assert len(calls) == 2 and calls[0] != calls[1]


def test_spec_rejects_missing_local_model(spec_data, tmp_path):
    spec_data["generator"] = {"name": "diffusion", "params": {"model": str(tmp_path / "nope"), "steps": 0}}
    spec_data["label_head"] = {"name": "none"}
    with pytest.raises(SpecError) as info:
        parse_spec(spec_data)
    assert any(p.startswith("generator.params.steps: expected") for p in info.value.problems)
    spec_data["generator"]["params"]["steps"] = 2
    with pytest.raises(SpecError) as info:
        parse_spec(spec_data)
    assert "generator.params.model: expected" in info.value.problems[0]


def test_ground_truth_head_needs_render(spec_data, tiny_model):
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model}}
    with pytest.raises(SpecError, match="got 'ground_truth', which needs ground_truth \\(offered by 'render'\\)"):
        parse_spec(spec_data)


@pytest.mark.ray
def test_diffusion_job_end_to_end_on_ray(spec_data, tiny_model, ray_local):
    import pyarrow.parquet as pq

    from engine.job.runner import run_job

    spec_data.update(lower_bound=1, budget={"max_images": 8, "max_waves": 2}, unit_size=4, wave_size=8)
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model, "steps": 2, "batch_size": 4}}
    spec_data["label_head"] = {"name": "none"}
    result = run_job(parse_spec(spec_data), quiet=True)
    assert result.images == 8 and result.stop_reason == "max_images"
    table = pq.read_table(os.path.join(spec_data["output"], "parquet"))
    assert table.num_rows == 8 and set(table.column("model").to_pylist()) == {tiny_model}
    assert len(set(table.column("seed").to_pylist())) == 8


def test_fidelity_benchmark_reports_every_metric(tiny_model, tmp_path):
    """The benchmark's plumbing on a random model: its numbers are meaningless, their shape is not."""
    from engine.lab.evals.fidelity import fidelity_benchmark
    from engine.models.shipped import ORACLE_DIR

    if not os.path.exists(os.path.join(ORACLE_DIR, "classifier.safetensors")):
        pytest.skip("the oracle is not trained yet (dde train oracle)")
    result = fidelity_benchmark(tiny_model, per_class=2, steps=2, batch_size=6, out_dir=str(tmp_path))
    assert 0 <= result["fidelity_single"] <= 1 and 0 <= result["fidelity_pair"] <= 1
    assert result["oracle_ceiling_single"] > 0.9, "the oracle must find single rendered objects"
    assert 0 <= result["exact_single"] <= result["fidelity_single"], "exact match is the stricter score"
    assert result["oracle_ceiling_exact_single"] > 0.7, "rendered single-class scenes hold no other class"
    assert set(result["fidelity_single_per_class"]) == {"circle", "square", "triangle", "star", "ring", "cross"}
    assert result["frechet_oracle_generated_vs_rendered"] > result["frechet_oracle_rendered_vs_rendered"] >= 0
    assert (result["frechet_oracle_generated_vs_prompted_rendered"]
            > result["frechet_oracle_prompted_rendered_vs_rendered"] >= 0)
    assert json.load(open(tmp_path / "fidelity.json")) == result
    assert (tmp_path / "fidelity_preview.png").stat().st_size > 0


def test_bench_results_of_several_seeds_and_worlds_do_not_overwrite_each_other():
    from engine.lab.evals.labels import result_name

    names = [result_name(world, seed) for world in ("model", "default") for seed in (0, 1)]
    assert names == ["labels", "labels-seed1", "labels-default-world", "labels-default-world-seed1"]


def test_labels_benchmark_takes_img2img_references_from_either_world(tiny_model, tmp_path):
    """--reference-world default: the img2img references are `dde world export`'s default scenes (up to
    4 smaller objects), scored against their own masks and written apart from the model-world result."""
    from engine.lab.evals.labels import img2img_requests, labels_benchmark
    from engine.models.embedded import MODEL_WORLD
    from engine.models.shipped import SEGMENTER_DIR

    _, model_scenes = img2img_requests(24, 0, "model")
    _, default_scenes = img2img_requests(24, 0, "default")
    assert max(len(s.instances) for s in model_scenes) <= MODEL_WORLD["max_objects"] < max(
        len(s.instances) for s in default_scenes)
    if not os.path.exists(os.path.join(SEGMENTER_DIR, "segmenter.safetensors")):
        pytest.skip("the segmentation oracle is not trained yet (dde train segmenter)")
    result = labels_benchmark(tiny_model, images=2, steps=2, batch_size=2, out_dir=str(tmp_path), world="default")
    assert result["reference_world"] == "default" and result["img2img"]["images"] == 2
    assert json.load(open(tmp_path / "labels-default-world.json")) == result
    assert "default-world references" in (tmp_path / "labels-default-world.md").read_text()
    assert list(result["txt2img"]["boxes"]) == ["bca", "attention_components"]  # bca on its own capture
    assert {"head", "head_tau0"} <= set(result["img2img"]["segmentation"])  # the head with and without self-attention
