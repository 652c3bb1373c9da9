"""Issue 13: which change makes the embedded UNet learn shapes fastest on CPU, at equal wall-clock.

Each arm is one ``dde train diffusion`` recipe, trained for ``--minutes`` of wall-clock (the
latent pool is encoded before the clock starts), exported, and scored by ``dde bench fidelity``
(oracle fidelity per class on ``--per-class`` single-class prompts, and on as many pairs).
Run one arm per core so that arms compare (``taskset -c 0 ... --threads 1``)::

    python bench/bench_unet_arms.py --arm frozen-clip --seed 0 --minutes 20 --out /tmp/arms
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace

from _common import save_result

ARMS = {
    # v1's recipe, continued from the shipped v1 weights (its text encoder keeps training)
    "present": dict(text_encoder="train"),
    # the frozen small-CLIP text tower (as SD freezes CLIP); v1's UNet warm-started
    "frozen-clip": dict(text_encoder="frozen-clip"),
    "frozen-clip-lr1e-3": dict(text_encoder="frozen-clip", unet_lr=1e-3),
    # larger and fewer objects: at most 2 of 26-38 px
    "frozen-clip-large": dict(text_encoder="frozen-clip", max_objects=2, min_scale=0.4, max_scale=0.6),
    # a wider UNet, which cannot be warm-started from v1
    "frozen-clip-wide": dict(text_encoder="frozen-clip", unet_widths=(48, 96, 192)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=sorted(ARMS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--schedule-steps", type=int, default=3000,
                        help="the cosine schedule's length (set it near the steps an arm reaches)")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init-from", default="engine/models/shapes", help="the v1 weights to warm-start from")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rescore", action="store_true",
                        help="score an arm already trained (its model/) again, e.g. after the benchmark gained a metric")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKL

    from engine.lab.evals.fidelity import fidelity_benchmark
    from engine.lab.train.diffusion import DiffusionRecipe, _latent_pool, train_diffusion

    out = os.path.join(args.out, f"{args.arm}-seed{args.seed}")

    def score() -> dict:
        return fidelity_benchmark(model=os.path.join(out, "model"), per_class=args.per_class,
                                  out_dir=os.path.join(out, "eval"))

    if args.rescore:
        arm = json.load(open(os.path.join(out, "arm.json")))
        save_result(os.path.join(out, "arm.json"), {**arm, "fidelity": score()})
        return
    recipe = replace(DiffusionRecipe(), init_from=os.path.abspath(args.init_from), unet_steps=args.schedule_steps,
                     seed=args.seed, **ARMS[args.arm])
    os.makedirs(out, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(os.path.join(recipe.init_from, "vae")).eval()
    _latent_pool(out, vae, recipe)  # outside the clock: every arm gets the same training time
    started = time.time()
    status = train_diffusion(out, recipe, max_minutes=args.minutes, export_unfinished=True)
    trained = time.time() - started
    fidelity = score()
    save_result(os.path.join(out, "arm.json"), {
        "command": "python bench/bench_unet_arms.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "arm": args.arm, "seed": args.seed, "recipe": asdict(recipe), "unet_step": status["unet_step"],
        "train_seconds": round(trained, 1), "fidelity": fidelity})


if __name__ == "__main__":
    main()
