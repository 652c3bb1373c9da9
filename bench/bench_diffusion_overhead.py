"""Engine overhead on the embedded diffusion model: a bare loop of pipe(...) calls against
`dde run` making the same images end to end (plan, generate, encode, write, commit,
finalize), with the same steps and batch size, in one run.

    .venv/bin/python bench/bench_diffusion_overhead.py --images 256 --batch 32 --steps 20

Both sides use both cores (the actor asks for num_cpus=2 and threads_per_actor=2).
Results go to bench/results/diffusion_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import yaml
from _common import DDE, REPO, fresh_dir, read_markers, save_result

from engine.world import CLASSES



def bare_loop(images: int, batch: int, steps: int) -> tuple[float, float]:
    """(seconds including the model load, seconds of pipe calls alone)."""
    import torch

    from engine.models import load_pipeline

    start = time.perf_counter()
    pipe = load_pipeline("embedded:shapes")
    loaded = time.perf_counter()
    prompts = [f"a photograph of a {CLASSES[i % len(CLASSES)]}" for i in range(images)]
    for first in range(0, images, batch):
        chunk = prompts[first:first + batch]
        generators = [torch.Generator().manual_seed(first + k) for k in range(len(chunk))]
        pipe(prompt=chunk, num_inference_steps=steps, guidance_scale=7.5, generator=generators, output_type="np")
    end = time.perf_counter()
    return end - start, end - loaded


def engine_run(images: int, batch: int, steps: int, out: str) -> tuple[float, float, float, dict]:
    """(wall seconds of `dde run` end to end, seconds the actor spent making units, of those
    the seconds outside the backend (the sink's encoding, writes and commit), and the phases of
    the wall time from the markers' clocks: start-up until the driver's lease, the lease until
    the first unit starts (actor start and model load), the units, and finalize)."""
    spec = {
        "name": "overhead", "output": out, "classes": list(CLASSES), "lower_bound": 1,
        "budget": {"max_images": images, "max_waves": 1}, "unit_size": batch * 2, "wave_size": images,
        "generator": {"name": "diffusion", "params": {"model": "embedded:shapes", "steps": steps,
                                                      "batch_size": batch}},
        "label_head": {"name": "none"}, "prompts": {"source": "combinations", "max_classes": 1},
        "resources": {"actors": {"min": 1, "max": 1}, "num_cpus": 2, "threads_per_actor": 2},
    }
    path = os.path.join(os.path.dirname(out), "overhead.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    start, began = time.perf_counter(), time.time()
    subprocess.run([DDE, "run", path, "--quiet"], check=True, capture_output=True)
    wall, ended = time.perf_counter() - start, time.time()
    markers = read_markers(out)
    first_start = min(m["committed_at"] - m["seconds"] for m in markers)
    last_commit = max(m["committed_at"] for m in markers)
    lease = markers[0].get("driver_started_at") or first_start
    phases = {"startup_until_lease_s": lease - began, "lease_until_first_unit_s": first_start - lease,
              "units_s": last_commit - first_start, "finalize_s": ended - last_commit,
              "first_unit_s": min(markers, key=lambda m: m["committed_at"])["seconds"],
              "median_unit_s": sorted(m["seconds"] for m in markers)[len(markers) // 2], "units": len(markers)}
    return (wall, sum(m["seconds"] for m in markers), sum(m["seconds"] - m["backend_seconds"] for m in markers),
            {k: round(v, 2) for k, v in phases.items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", default=os.path.join(REPO, "bench/out/overhead"))
    parser.add_argument("--result", default=os.path.join(REPO, "bench/results/diffusion_overhead.json"))
    args = parser.parse_args()
    fresh_dir(args.work)
    bare_total, bare_pipe = bare_loop(args.images, args.batch, args.steps)
    engine_wall, engine_busy, engine_sink, phases = engine_run(args.images, args.batch, args.steps, os.path.join(args.work, "job"))
    result = {
        "command": f"{sys.executable} bench/bench_diffusion_overhead.py --images {args.images} "
                   f"--batch {args.batch} --steps {args.steps}",
        "images": args.images, "batch": args.batch, "steps": args.steps,
        "bare_loop_s_with_model_load": round(bare_total, 2), "bare_loop_s_pipe_calls": round(bare_pipe, 2),
        "engine_s_end_to_end": round(engine_wall, 2), "engine_s_in_units": round(engine_busy, 2),
        "engine_s_outside_backend_in_units": round(engine_sink, 2),
        "ratio_end_to_end": round(engine_wall / bare_total, 3),
        "ratio_units_vs_pipe_calls": round(engine_busy / bare_pipe, 3),
        "engine_phases": phases,
        "bare_s_per_batch": round(bare_pipe / -(-args.images // args.batch), 3),
    }
    save_result(args.result, result)


if __name__ == "__main__":
    main()
