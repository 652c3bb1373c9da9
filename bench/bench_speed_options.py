"""The diffusion backend's speed options, measured on CPU on the embedded model (what CPU can
measure: time per image; memory effects and the GPU kernels are GPU-only, see bench_gpu.py).

    .venv/bin/python bench/bench_speed_options.py --images 32 --batch 16 --steps 20

Per option set: load the backend (compile's warm-up happens there), one untimed batch, then
``--repeats`` timed ``generate`` calls of ``--images`` images; the fastest repeat counts (the
cores are shared). Results: bench/results/speed_options.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _common import REPO, save_result

OPTION_SETS = {
    "baseline (fp32, sdpa, dpmsolver++)": {},
    "channels_last": {"channels_last": True},
    "bf16": {"dtype": "bf16"},
    "compile (default mode)": {"compile": "default"},
    "step_saver pab (skip 2, t in (100, 800))": {"step_saver": "pab"},
    "vae_slicing": {"vae_slicing": True},
    "vae_tiling": {"vae_tiling": True},
    "unipc, half the steps": {"scheduler": "unipc", "half_steps": True},
}


def measure(options: dict, *, images: int, batch: int, steps: int, repeats: int) -> dict:
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.records import ImageRequest
    from engine.world import CLASSES

    options = dict(options)
    if options.pop("half_steps", False):
        options["steps_per_scheduler"] = {options["scheduler"]: steps // 2}
    start = time.perf_counter()
    backend = DiffusionBackend(params=DiffusionParams(model="embedded:shapes", steps=steps, batch_size=batch,
                                                      device="cpu", **options), classes=[])
    load = time.perf_counter() - start
    requests = [ImageRequest(i, seed=100 + i, prompt=f"a photograph of a {CLASSES[i % len(CLASSES)]}")
                for i in range(images)]

    def run() -> float:
        begin = time.perf_counter()
        for first in range(0, images, batch):
            backend.generate(requests[first:first + batch])
        return time.perf_counter() - begin

    backend.generate(requests[:batch])  # untimed
    best = min(run() for _ in range(repeats))
    return {"load_s": round(load, 2), "s_per_image": round(best / images, 4), "images": images}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no spin-waiting on shared cores)")
    parser.add_argument("--only", default="", help="comma-separated indices into OPTION_SETS (0 = baseline, always run)")
    parser.add_argument("--result", default=os.path.join(REPO, "bench/results/speed_options.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = {}
    chosen = {0, *(int(i) for i in args.only.split(",") if i)} if args.only else set(range(len(OPTION_SETS)))
    for index, (name, options) in enumerate(OPTION_SETS.items()):
        if index not in chosen:
            continue
        rows[name] = measure(options, images=args.images, batch=args.batch, steps=args.steps, repeats=args.repeats)
        print(name, rows[name], flush=True)
    base = rows[next(iter(OPTION_SETS))]["s_per_image"]
    for row in rows.values():
        row["speedup_vs_baseline"] = round(base / row["s_per_image"], 3)
    save_result(args.result, {
        "command": f"{os.path.relpath(sys.executable, REPO)} bench/bench_speed_options.py --images {args.images} "
                   f"--batch {args.batch} --steps {args.steps} --repeats {args.repeats} --threads {args.threads}" + (f" --only {args.only}" if args.only else ""),
        "model": "embedded:shapes (64 px, latent 16)", "device": f"cpu, {args.threads} torch thread(s), shared cores", "rows": rows})


if __name__ == "__main__":
    main()
