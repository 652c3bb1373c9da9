"""The pieces of bench/bench_gpu.py (its full dry run is not in `make test`: see BENCHMARKS.md)."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import bench_gpu
        yield bench_gpu
    finally:
        sys.path.remove(os.path.join(REPO, "bench"))


def test_peak_table_knows_the_datacentre_gpus(bench):
    assert bench.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_bf16_tflops("NVIDIA H200") == 989.4
    assert bench.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_bf16_tflops("Some Future GPU") is None


def test_budget_skips_cells_that_no_longer_fit_and_says_so(bench):
    now = [0.0]
    budget = bench.Budget(100, clock=lambda: now[0])
    assert budget.allows("a", 60)
    now[0] = 70.0
    assert not budget.allows("b", 60) and budget.allows("c", 20)
    assert budget.skipped == ["b (needs ~60 s, 30 s left)"]


def test_public_configs_are_small_and_build_the_published_shapes(bench):
    from engine.lab.random_pipeline import load_config

    sizes = {n: os.path.getsize(os.path.join(bench.CONFIGS, n)) for n in os.listdir(bench.CONFIGS)}
    assert sum(sizes.values()) < 64 * 2**20 and {"sd21-base.json", "sdxl-base.json"} <= set(sizes)
    sdxl = load_config(os.path.join(bench.CONFIGS, "sdxl-base.json"))
    unet = sdxl["unet"]
    # projection_class_embeddings_input_dim = pooled text (1280) + 6 time ids x 256
    assert unet["projection_class_embeddings_input_dim"] == sdxl["text_encoder_2"]["projection_dim"] + 6 * 256
    assert unet["cross_attention_dim"] == sdxl["text_encoder"]["hidden_size"] + sdxl["text_encoder_2"]["hidden_size"]


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl"])
def test_unet_flops_count_attention_and_scale_with_rows(bench, name):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from engine.lab.random_pipeline import build_random_pipeline, load_config

    pipe = build_random_pipeline(load_config(os.path.join(bench.CONFIGS, f"{name}.json")))
    one, two = bench.unet_flops(pipe, 64, rows=1), bench.unet_flops(pipe, 64, rows=2)
    assert one > 0 and two == pytest.approx(2 * one, rel=0.01)
    # the pipeline's own (fused) processors are back afterwards
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    # a lower bound by hand: the first conv alone is 2 x 4 x 16 x 9 x 16 x 16 FLOPs per row
    assert one > 2 * 4 * 16 * 9 * 16 * 16


def test_markdown_lists_cells_and_skips(bench):
    result = {"device": "cpu", "command": "x", "dtype": "fp32", "steps": 2, "peak_bf16_tflops": None, "gpus": 1,
              "budget_s": 10, "models": {"m": {"unet_tflop_per_image": 0.1, "size": 64}},
              "cells": [bench.with_flops({"model": "m", "mode": "bare", "batch": 2, "img_s": 4.0}, 1e11, 100.0)],
              "skipped": ["m dde head none batch 2 (needs ~9 s, 1 s left)"]}
    text = bench.markdown(result)
    assert "| m | bare | - | 2 | 4.0 | - | 0.4 | 0.4% | - |" in text and "needs ~9 s" in text
    json.dumps(result)
