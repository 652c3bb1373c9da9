"""GPU throughput: a bare ``pipe()`` loop against dde end to end, on SD 2.1-base and SDXL built
from their public configs with random weights (throughput does not depend on the weights; no
hub is reachable), in one process. Ready before any GPU is seen; run it once on one:

    .venv/bin/python bench/bench_gpu.py --out bench/results/gpu

Cells, in priority order (a time budget, 8 minutes by default, skips the cells that no longer
fit and lists them in the results):

1. per model, the bare loop at batch 1, 2, 4, 8, 16, 32 (``--batches``): a warm-up call, then
   timed calls of ``pipe(prompt=..., num_inference_steps=steps, guidance_scale=7.5, latents=...)``;
2. per model, dde end to end (``run_job`` on local Ray, the same code ``dde run`` runs: one actor
   per GPU, ``resources.num_gpus: 1``) at ``--dde-batches`` with no head, ``attention`` and
   ``adapter`` (a random-weight detector sized for the model's feature pyramid: the adapter's
   cost, not its labels). Ray starts once for the process; each cell's wall time includes its
   actors' start and model load, and its steady rate counts the units after the first.

Per cell: img/s, UNet TFLOP/s achieved (``torch.utils.flop_counter.FlopCounterMode`` on one
UNet call, times 2 rows for CFG x steps x images / seconds; FLOPs are 2 x multiply-adds) and its
share of the GPU's dense bf16 peak (``PEAK_BF16_TFLOPS``, by device name), and peak GPU memory.
Inputs: ``bench/configs/*.json`` (a few KB). Results: ``OUT/gpu_bench.json`` and ``OUT/gpu_bench.md``.

CPU dry run of the plumbing (tiny configs, 64 px, 2 steps; about 2-3 minutes on 2 busy cores):

    .venv/bin/python bench/bench_gpu.py --dry-run --out /tmp/gpu-dry
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import yaml
from _common import REPO

CONFIGS = os.path.join(REPO, "bench", "configs")

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, without sparsity); the first name
# contained in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0), ("L4", 121.0),
]


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name, or None if the table does not know it."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


class Budget:
    """Wall-clock budget: a cell runs only if its estimate fits in what is left."""

    def __init__(self, seconds: float, clock=time.perf_counter):
        self.clock, self.deadline = clock, clock() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.deadline - self.clock()

    def allows(self, name: str, estimate_s: float) -> bool:
        if estimate_s <= self.left():
            return True
        self.skipped.append(f"{name} (needs ~{estimate_s:.0f} s, {max(0.0, self.left()):.0f} s left)")
        return False


def unet_flops(pipe, size: int, rows: int = 2) -> float:
    """FLOPs of one UNet call on ``rows`` latent rows at ``size`` px (2 rows: one image's CFG pair).
    Counted with the classic attention processor (explicit matmuls, which the counter sees;
    fused SDPA kernels do the same arithmetic), then the pipeline's processors are put back."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    from engine.models.conditioning import unet_conditioning

    unet = pipe.unet
    side = size // pipe.vae_scale_factor
    latents = torch.randn(rows, unet.config.in_channels, side, side, device=unet.device, dtype=unet.dtype)
    processors = unet.attn_processors
    with torch.no_grad():
        conditioning = unet_conditioning(pipe, [""] * rows, size)
        unet.set_attn_processor(AttnProcessor())
        try:
            with FlopCounterMode(display=False) as counter:
                unet(latents, torch.tensor(500, device=unet.device), **conditioning)
        finally:
            unet.set_attn_processor(processors)
    return float(counter.get_total_flops())


def _memory_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _memory_peak_gb(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def bare_cell(pipe, *, batch: int, steps: int, size: int, calls: int, device: str) -> dict:
    """A warm-up call, then ``calls`` timed calls of ``batch`` images."""
    import torch

    from engine.models.conditioning import size_conditioning

    def call(seed: int) -> None:
        generators = [torch.Generator("cpu").manual_seed(seed + k) for k in range(batch)]
        shape = (pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, pipe.unet.dtype)
        pipe(prompt=[f"a photograph of object {seed + k}" for k in range(batch)], height=size, width=size,
             num_inference_steps=steps, guidance_scale=7.5, latents=latents, output_type="np",
             **size_conditioning(pipe, size))

    call(0)
    _memory_reset(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(calls):
        call(1000 * (i + 1))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images": batch * calls, "seconds": round(seconds, 3), "img_s": batch * calls / seconds,
            "peak_memory_gb": _memory_peak_gb(device)}


def random_adapter(pipe, size: int, classes: list[str], folder: str) -> str:
    """A random-weight adapter head for this model's feature pyramid (the adapter's cost, not its labels)."""
    import torch

    from engine.heads.boxes.detector import DetectorConfig, build_detector
    from engine.heads.boxes.features import PyramidCapture, simulated_last_step
    from engine.models.trained import save_trained

    capture = PyramidCapture(pipe.unet, pipe.vae_scale_factor)
    images = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    pyramid = simulated_last_step(pipe, capture, images, torch.Generator(pipe.device).manual_seed(0))
    capture.remove()
    config = DetectorConfig(levels={s: int(p.shape[1]) for s, p in pyramid.items()}, image_size=size,
                            num_classes=len(classes))
    torch.manual_seed(0)
    save_trained(build_detector(config), folder, "adapter",
                 {"head": "adapter", "classes": classes, "model": "random", "detector": config.to_json()})
    return folder


def dde_cell(model_folder: str, *, head: str, batch: int, steps: int, images: int, gpus: int, work: str,
             dtype: str, adapter: str | None, classes: list[str], options: dict) -> dict:
    """One job through the engine on the process's Ray (``run_job``, what ``dde run`` runs)."""
    from engine.job.runner import run_job
    from engine.spec import parse_spec

    out = os.path.join(work, f"job-{head}-{batch}")
    shutil.rmtree(out, ignore_errors=True)
    heads = {"none": {"name": "none"}, "attention": {"name": "attention", "params": {}},
             "adapter": {"name": "adapter", "params": {"weights": adapter, "features": "simulated"}}}
    spec = {
        "name": f"gpu-{head}-{batch}", "output": out, "classes": classes, "lower_bound": 1,
        "budget": {"max_images": images, "max_waves": 1}, "unit_size": batch, "wave_size": images,
        "generator": {"name": "diffusion", "params": {"model": model_folder, "steps": steps, "batch_size": batch,
                                                      "dtype": dtype, "guidance_scale": 7.5, **options}},
        "label_head": heads[head], "prompts": {"source": "combinations", "max_classes": 2},
        "resources": {"actors": {"min": gpus, "max": gpus}, "num_gpus": 1 if gpus and options.get("device") != "cpu"
                      else 0, "num_cpus": 1, "threads_per_actor": max(1, (os.cpu_count() or 2) // max(gpus, 1))},
    }
    with open(out + ".yaml", "w") as f:
        yaml.safe_dump(spec, f)
    start = time.perf_counter()
    result = run_job(parse_spec(spec), quiet=True)
    wall = time.perf_counter() - start
    markers = [json.load(open(os.path.join(out, "_commits", n)))
               for n in sorted(os.listdir(os.path.join(out, "_commits"))) if n.endswith(".json")]
    markers.sort(key=lambda m: m["committed_at"])
    steady = None
    if len(markers) > 1:  # the units after the first: no actor start, model load or first-call warm-up
        span = markers[-1]["committed_at"] - markers[0]["committed_at"]
        steady = sum(m["images"] for m in markers[1:]) / span if span > 0 else None
    return {"images": result.images, "seconds": round(wall, 3), "img_s_end_to_end": result.images / wall,
            "img_s": steady, "units": len(markers)}


def capture_buffer_gb(unet_config: dict, batch: int, classes: int) -> float:
    """The attention head's fp32 running sums for one batch at its default resolutions (GB):
    cross-attention (r² x classes per side) and self-attention (r⁴), per image."""
    from engine.heads.attention.head import AttentionParams, capture_config

    config = capture_config(AttentionParams(), unet_config, with_self=True)
    per_image = sum(r * r * classes for r in config.cross_resolutions) + (config.self_resolution or 0) ** 4
    return round(4 * batch * per_image / 1e9, 3)


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def with_flops(cell: dict, flops_per_image: float, peak: float | None) -> dict:
    rate = cell.get("img_s")
    if rate:
        cell["unet_tflop_s"] = _sig(rate * flops_per_image / 1e12)
        cell["share_of_bf16_peak"] = _sig(cell["unet_tflop_s"] / peak) if peak else None
        cell["img_s"] = round(rate, 3)
    if cell.get("img_s_end_to_end"):
        cell["img_s_end_to_end"] = round(cell["img_s_end_to_end"], 3)
    return cell


def markdown(result: dict) -> str:
    lines = [f"# GPU benchmark: {result['device']}", "", f"Command: `{result['command']}`", "",
             f"dtype {result['dtype']}, {result['steps']} steps, guidance 7.5 (CFG: 2 UNet rows per image), "
             f"bf16 peak {result['peak_bf16_tflops']} TFLOP/s, {result['gpus']} GPU(s).", "",
             "| model | mode | head | batch | img/s | end-to-end img/s | UNet TFLOP/s | share of peak | peak GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in result["cells"]:
        share = c.get("share_of_bf16_peak")
        lines.append(f"| {c['model']} | {c['mode']} | {c.get('head', '-')} | {c['batch']} | {c.get('img_s')} | "
                     f"{c.get('img_s_end_to_end', '-')} | {c.get('unet_tflop_s')} | "
                     f"{'-' if share is None else f'{100 * share:.1f}%'} | {c.get('peak_memory_gb') or '-'} |")
    lines += ["", "UNet FLOPs per image (2 rows x steps): " + ", ".join(
        f"{m}: {v['unet_tflop_per_image']} TFLOP at {v['size']} px" for m, v in result["models"].items())]
    capture = [c for c in result["cells"] if c.get("capture_buffers_gb") is not None]
    if capture:
        lines += ["", "Attention capture buffers (fp32 running sums per batch, default resolutions): " + ", ".join(
            f"{c['model']} batch {c['batch']}: {c['capture_buffers_gb']} GB" for c in capture)]
    errors = [c for c in result["cells"] if c.get("error")]
    if errors:
        lines += ["", "Cells that failed:", *(f"- {c['model']} {c['mode']} {c.get('head', '')} batch {c['batch']}: "
                                             f"{c['error']}" for c in errors)]
    if result["skipped"]:
        lines += ["", f"Skipped by the {result['budget_s']} s budget:", *(f"- {s}" for s in result["skipped"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="results folder (gpu_bench.json, gpu_bench.md)")
    parser.add_argument("--models", default="sd21-base,sdxl-base", help="bench/configs names or JSON paths")
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--dde-batches", default="8,32,1")
    parser.add_argument("--heads", default="none,attention,adapter")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--work", default=None, help="model folders and job outputs (default: OUT/work)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny configs, 2 steps, batches 1 and 2")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.models, args.batches, args.dde_batches, args.steps, args.dtype = "tiny-sd,tiny-sdxl", "1,2", "2", 2, "fp32"
    import torch

    from engine.lab.random_pipeline import build_random_pipeline, load_config

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)" if args.dry_run else "cpu"
    gpus = torch.cuda.device_count() if device == "cuda" else 1
    peak = peak_bf16_tflops(device_name) if device == "cuda" else None
    budget = Budget(args.budget_s)
    work = args.work or os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    batches = [int(b) for b in args.batches.split(",")]
    classes = ["circle", "square", "triangle", "star", "ring", "cross"]
    command = f"{os.path.relpath(sys.executable, REPO)} bench/bench_gpu.py " + " ".join(argv or sys.argv[1:])
    result = {"command": command.strip(), "device": device_name, "gpus": gpus, "dtype": args.dtype,
              "steps": args.steps, "peak_bf16_tflops": peak, "budget_s": args.budget_s, "models": {}, "cells": [],
              "skipped": budget.skipped, "torch": torch.__version__}
    options = {"device": "cpu"} if device == "cpu" else {}
    plans = []
    for name in args.models.split(","):
        path = name if name.endswith(".json") else os.path.join(CONFIGS, f"{name}.json")
        config = load_config(path)
        label = os.path.basename(path)[:-5]
        start = time.perf_counter()
        pipe = build_random_pipeline(config, device=device, dtype=dtype)
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        flops = unet_flops(pipe, size) * args.steps  # one image: its CFG pair at every step
        folder = os.path.join(work, label)
        shutil.rmtree(folder, ignore_errors=True)
        pipe.save_pretrained(folder, safe_serialization=True)
        adapter = random_adapter(pipe, size, classes, os.path.join(work, f"{label}-adapter"))
        result["models"][label] = {"config": os.path.relpath(path, REPO), "size": size,
                                   "unet_tflop_per_image": _sig(flops / 1e12),
                                   "setup_s": round(time.perf_counter() - start, 1)}
        per_image = None
        for batch in batches:  # the bare loop first: it is the reference every dde cell is read against
            cell_name = f"{label} bare batch {batch}"
            calls = 2 if batch < 8 else 1
            if not budget.allows(cell_name, (per_image or 0) * batch * (calls + 1)):
                continue
            try:
                cell = bare_cell(pipe, batch=batch, steps=args.steps, size=size, calls=calls, device=device)
            except torch.OutOfMemoryError as e:  # the larger batches may not fit: say so, go on
                result["cells"].append({"model": label, "mode": "bare", "batch": batch, "error": str(e)[:200]})
                torch.cuda.empty_cache()
                continue
            per_image = cell["seconds"] / cell["images"]
            result["cells"].append(with_flops({"model": label, "mode": "bare", "batch": batch, **cell}, flops, peak))
            print(json.dumps(result["cells"][-1]), flush=True)
        plans.append((label, folder, adapter, size, flops, per_image, dict(pipe.unet.config)))
        del pipe
        if device == "cuda":
            torch.cuda.empty_cache()
    for batch in [int(b) for b in args.dde_batches.split(",")]:
        for head in args.heads.split(","):
            for label, folder, adapter, size, flops, per_image, unet_config in plans:
                images = 3 * batch * gpus  # three units per actor: the first one warms up
                cell_name = f"{label} dde head {head} batch {batch}"
                load_s = result["models"][label]["setup_s"] / 2
                if not budget.allows(cell_name, load_s + (per_image or 1.0) * images * 1.3):
                    continue
                base = {"model": label, "mode": "dde", "head": head, "batch": batch}
                if head == "attention":
                    base["capture_buffers_gb"] = capture_buffer_gb(unet_config, batch, 2)  # prompts of 2 classes
                try:
                    cell = dde_cell(folder, head=head, batch=batch, steps=args.steps, images=images, gpus=gpus,
                                    work=work, dtype=args.dtype, adapter=adapter, classes=classes, options=options)
                except Exception as e:  # noqa: BLE001 - one failed cell (an actor out of memory) is a result
                    result["cells"].append({**base, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    continue
                result["cells"].append(with_flops({**base, **cell}, flops, peak))
                print(json.dumps(result["cells"][-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
