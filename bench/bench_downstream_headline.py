"""The headline cells of `dde bench downstream` at full scale, one process per seed.

(a) real only, `render` + `ground_truth` and one diffusion source at equal image counts, and
(b) 10% real alone and with 3x that source, at the bench's FULL scale (2,000 images a source,
800 probe steps of batch 32, 300 val scenes). The cells carry the full bench's names, so a later
`dde bench downstream --out ROOT` reads them back instead of training them again. A probe runs on
one torch thread, so two seed processes fill two cores.

    python bench/bench_downstream_headline.py --out ROOT --prepare        # the sets and the sources, once
    python bench/bench_downstream_headline.py --out ROOT --seed 0 &       # the probes of one seed
    python bench/bench_downstream_headline.py --out ROOT --seed 1
    python bench/bench_downstream_headline.py --out ROOT --report         # -> bench/results/downstream-headline.*
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from engine.lab.evals.downstream import FULL, _slug, probe_cell, rendered_sets, run_source  # noqa: E402
from engine.lab.evals.results import save_result  # noqa: E402

RENDER = "render + ground_truth"


def cells(root: str, source: str) -> dict[str, tuple]:
    """{row name: (cell, output folder, probe options)} of the headline table."""
    sets, tenth = rendered_sets(root, FULL), FULL.images // 10
    render, synthetic = (os.path.join(root, "sources", _slug(name)) for name in (RENDER, source))
    return {"real only": ("a-real", render, {"real": sets["real"], "alpha": 0.0}),
            RENDER: (f"a-{_slug(RENDER)}", render, {}),
            source: (f"a-{_slug(source)}", synthetic, {}),
            "10% real only": ("b-real10", render, {"real": sets["real10"], "alpha": 0.0}),
            f"10% real + 3x {source}": (f"b-3x-{_slug(source)}", synthetic,
                                        {"real": sets["real10"], "alpha": 0.75, "synthetic_images": 3 * tenth})}


def report(root: str, source: str, seeds: list[int]) -> dict:
    val = rendered_sets(root, FULL)["val"]
    rows = {}
    for name, (cell, out, options) in cells(root, source).items():
        runs = [probe_cell(root, cell, out, val, FULL, seed, **options) for seed in seeds
                if os.path.exists(os.path.join(root, "probes", f"{cell}-seed{seed}", "probe.json"))]
        rows[name] = {"AP": [r["AP"] for r in runs], "AP50": [r["AP50"] for r in runs],
                      "train_seconds": [r["train_seconds"] for r in runs]}
    base = rows["real only"]["AP"]
    lines = ["# Downstream headline cells (full scale): a from-scratch FCOS trained on dde output", "",
             f"{FULL.images} images a source, {FULL.steps} steps of batch {FULL.batch}, val: {FULL.val} rendered "
             f"default-world scenes; mean (min-max) over seeds {seeds}. Share: of real only's mean AP.", "",
             "| train set | AP | AP50 | share of real-only AP | seeds |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        if not row["AP"]:
            lines.append(f"| {name} | not run | | | 0 |")
            continue
        mean = sum(row["AP"]) / len(row["AP"])
        share = f"{100 * mean / (sum(base) / len(base)):.0f}%" if base else "-"
        lines.append(f"| {name} | {mean:.3f} ({min(row['AP']):.3f}-{max(row['AP']):.3f}) | "
                     f"{sum(row['AP50']) / len(row['AP50']):.3f} | {share} | {len(row['AP'])} |")
    result = {"scale": vars(FULL), "source": source, "seeds": seeds, "rows": rows,
              "command": "python bench/bench_downstream_headline.py " + " ".join(sys.argv[1:])}
    save_result("bench/results", "downstream-headline", result, "\n".join(lines) + "\n")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the bench's work folder (sets, sources, probes)")
    parser.add_argument("--source", default="img2img + adapter", help="the diffusion source of the table")
    parser.add_argument("--prepare", action="store_true", help="write the sets and run the two sources' jobs")
    parser.add_argument("--seed", type=int, help="run this seed's probes")
    parser.add_argument("--report", action="store_true", help="write the table from the probes that have run")
    args = parser.parse_args()
    root = os.path.abspath(args.out)
    if args.prepare:
        real = rendered_sets(root, FULL)["real"]
        for name in (RENDER, args.source):
            run_source(name, root, FULL.images, real)
    if args.seed is not None:
        val = rendered_sets(root, FULL)["val"]
        for name, (cell, out, options) in cells(root, args.source).items():
            print(name, json.dumps(probe_cell(root, cell, out, val, FULL, args.seed, **options)["AP"]), flush=True)
    if args.report:
        print(json.dumps(report(root, args.source, [0, 1])["rows"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
