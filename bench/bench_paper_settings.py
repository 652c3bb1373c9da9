"""Issue 18: each paper setting the shipped box heads depart from, changed alone, against the
shipped settings at equal iterations, with two or more seeds.

    python bench/bench_paper_settings.py --part adapter --data DIR --steps 600 --seeds 0 1
    python bench/bench_paper_settings.py --part grounding --images 300 --base-steps 400 --novel-steps 200 --seeds 0 1

DIR is a `dde world export` folder with train and val splits (the adapter trains on rendered
scenes). The grounding head generates its own img2img images from the embedded model (cached
under ``--work``, shared by every arm of a seed). Each (arm, seed) is one training run in a
process of its own pinned to one core, two at a time. Scores: the final rendered-val box AP50
and AP (adapter); base and novel AP50 after base training and after self-training on the
head's img2img val set (grounding). Writes bench/results/paper_settings-<part>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _common import REPO, save_result

BASE, NOVEL = ["circle", "square", "triangle", "cross"], ["star", "ring"]

# arm -> the recipe fields it changes from the shipped head's (the paper each comes from in the name)
ADAPTER_ARMS = {
    "shipped": {},
    "focal class weight 1 (DINO)": {"class_weight": 1.0},
    "heatmap weight 1.5 (PROPS code)": {"heatmap_weight": 1.5},
    "heatmap sigma = r (PROPS)": {"heatmap_sigma": "radius"},
    "heatmap on the coarsest level (PROPS code)": {"heatmap_level": "coarsest"},
}
GROUNDING_ARMS = {
    "shipped": {},
    "class context 'a photograph of a {}' (InstaGen)": {"class_template": "a photograph of a {}"},
    "teacher copied at the midpoint (InstaGen)": {"midpoint": True},
    "stage 2 at the same learning rate (InstaGen)": {"novel_lr_scale": 1.0},
    "loss over the prompt's classes only (InstaGen)": {"score_classes": "named"},
    "focal class weight 1 (InstaGen config)": {"class_weight": 1.0},
}


def run_one(job: dict) -> dict:
    """One training run (in this process): the final scores of ``job``'s arm and seed."""
    change = dict(job["change"])
    if job["part"] == "adapter":
        from engine.lab.train.adapter import AdapterRecipe, train_adapter

        recipe = AdapterRecipe(steps=job["steps"], eval_every=job["steps"] // 2, val_images=job["val_images"],
                               seed=job["seed"], **change)
        cache = os.path.join(job["work"], f"adapter-cache-{job['seed']}")
        os.makedirs(cache, exist_ok=True)
        os.makedirs(job["out"], exist_ok=True)
        if not os.path.exists(os.path.join(job["out"], "cache")):  # Eq. 4 features: one extraction per seed
            os.symlink(cache, os.path.join(job["out"], "cache"))
        card = train_adapter(job["data"], job["model"], job["out"], recipe, device="cpu")
        return {"AP50": card["val"]["AP50"], "AP": card["val"]["AP"], "minutes": card["train_minutes"]}
    from engine.lab.train.grounding import GroundingRecipe, train_grounding

    base_steps, novel_steps = job["base_steps"], job["novel_steps"]
    if change.pop("midpoint", False):  # the same total, the teacher copied half-way
        base_steps = novel_steps = (base_steps + novel_steps) // 2
    recipe = GroundingRecipe(base=BASE, novel=NOVEL, images=job["images"], base_steps=base_steps,
                             novel_steps=novel_steps, val_images=job["val_images"], seed=job["seed"],
                             eval_every=max(base_steps, novel_steps), **change)
    card = train_grounding(job["model"], job["out"], recipe, teacher="world", device="cpu",
                           cache=os.path.join(job["work"], "grounding-cache"))
    with open(os.path.join(job["out"], "grounding-base.json")) as f:
        before = json.load(f)["val"]
    return {"base_AP50_before": before["base_AP50"], "novel_AP50_before": before["novel_AP50"],
            "base_AP50": card["val"]["base_AP50"], "novel_AP50": card["val"]["novel_AP50"],
            "pseudo_boxes_per_novel_image": card["pseudo_boxes_per_novel_image"], "minutes": card["train_minutes"]}


def launch(job: dict, core: int) -> dict:
    """``run_one(job)`` in a child process pinned to ``core`` (``taskset``)."""
    done = subprocess.run(["taskset", "-c", str(core), sys.executable, __file__, "--run-one", json.dumps(job)],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{job['arm']} seed {job['seed']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_all(jobs: list[dict], cores: int) -> list[dict]:
    """The jobs, ``cores`` at a time, each on a core of its own (of those this process may use);
    results in job order."""
    free = sorted(os.sched_getaffinity(0))[:cores]

    def pinned(job):
        core = free.pop()
        try:
            return launch(job, core)
        finally:
            free.append(core)

    with ThreadPoolExecutor(cores) as pool:
        return list(pool.map(pinned, jobs))


def table(part: str, arms: dict, jobs: list[dict], results: list[dict]) -> tuple[dict, str]:
    metrics = ["AP50", "AP"] if part == "adapter" else ["base_AP50", "novel_AP50", "novel_AP50_before"]
    by_arm: dict[str, dict] = {}
    for job, result in zip(jobs, results):
        by_arm.setdefault(job["arm"], {"change": job["change"], "seeds": {}})["seeds"][job["seed"]] = result
    shipped = {m: float(np.mean([r[m] for r in by_arm["shipped"]["seeds"].values()])) for m in metrics}
    lines = ["| setting (changed alone) | " + " | ".join(f"{m} mean (per seed)" for m in metrics)
             + " | " + " | ".join(f"{m} vs shipped" for m in metrics) + " |",
             "|---|" + "---|" * (2 * len(metrics))]
    for arm, row in by_arm.items():
        means = {m: float(np.mean([r[m] for r in row["seeds"].values()])) for m in metrics}
        row["mean"] = {m: round(v, 4) for m, v in means.items()}
        row["vs_shipped"] = {m: round(means[m] - shipped[m], 4) for m in metrics}
        per_seed = [" / ".join(f"{r[m]:.3f}" for r in row["seeds"].values()) for m in metrics]
        lines.append(f"| {arm} | " + " | ".join(f"{means[m]:.3f} ({s})" for m, s in zip(metrics, per_seed))
                     + " | " + " | ".join("—" if arm == "shipped" else f"{row['vs_shipped'][m]:+.3f}"
                                          for m in metrics) + " |")
    spread = {m: round(float(np.ptp([r[m] for r in by_arm["shipped"]["seeds"].values()])), 4) for m in metrics}
    lines.append("")
    lines.append("Seed-to-seed spread of the shipped settings (max - min): "
                 + ", ".join(f"{m} {v:.3f}" for m, v in spread.items()) + ".")
    return {"arms": by_arm, "shipped_seed_spread": spread}, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["adapter", "grounding"])
    parser.add_argument("--data", help="adapter: a `dde world export` folder (train + val)")
    parser.add_argument("--model", default="embedded:shapes")
    parser.add_argument("--steps", type=int, default=600, help="adapter iterations")
    parser.add_argument("--images", type=int, default=300, help="grounding: generated images per stage")
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--novel-steps", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", help="only these arms (names as in the table; default all)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", default="/tmp/dde-bench-paper-settings")
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))))
        return
    if args.part == "adapter" and not args.data:
        parser.error("--part adapter needs --data (a `dde world export` folder with train and val)")
    arms = ADAPTER_ARMS if args.part == "adapter" else GROUNDING_ARMS
    names = args.arms or list(arms)
    base = {"part": args.part, "data": os.path.abspath(args.data) if args.data else None, "model": args.model,
            "steps": args.steps, "images": args.images, "base_steps": args.base_steps,
            "novel_steps": args.novel_steps, "val_images": args.val_images, "work": os.path.abspath(args.work)}
    # the shipped arm of each seed runs first, one per core, and fills the cache that seed's other arms read
    jobs = [{**base, "arm": arm, "change": arms[arm], "seed": seed,
             "out": os.path.join(args.work, f"{args.part}-{list(arms).index(arm)}-seed{seed}")}
            for arm in names for seed in args.seeds]
    results = run_all(jobs, args.cores)
    summary, markdown = table(args.part, arms, jobs, results)
    unused = {"run_one", "work"} | ({"images", "base_steps", "novel_steps"} if args.part == "adapter"
                                     else {"data", "steps"})
    command = "python bench/bench_paper_settings.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if v is not None and k not in unused)
    stem = os.path.join(REPO, "bench", "results", f"paper_settings-{args.part}")
    save_result(stem + ".json", {"command": command, **summary})
    with open(stem + ".md", "w") as f:
        f.write(f"`{command}`\n\n{markdown}")
    print(markdown)


if __name__ == "__main__":
    main()
