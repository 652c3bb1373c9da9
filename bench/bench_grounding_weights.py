"""Grounding heads side by side on the same images: each weights folder, both stages, with and
without the CLIP region classification (engine/heads/boxes/regions.py).

img2img images of all six classes at strength 0.2-0.35 (the labels benchmark's, whose
references' boxes are the truth), from each reference world; box AP50 over all classes, base and
novel (COCOeval, score floor 0.05). Base and novel are those of each head's card.

    python bench/bench_grounding_weights.py --weights OLD NEW [--images 240] [--worlds model default]

Writes bench/results/grounding-weights.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.heads.grounding import GroundingHead
    from engine.lab.evals.labels import generate_kept, img2img_requests
    from engine.lab.metrics.boxes import box_ap
    from engine.records import Instance
    from engine.spec import ClassSpec
    from engine.world import CLASSES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", required=True,
                        help="grounding head folders (dde train grounding --out)")
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--worlds", nargs="+", default=["model", "default"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    backend = DiffusionBackend(params=DiffusionParams(model="embedded:shapes", steps=25, guidance_scale=7.5,
                                                      batch_size=16, strength=(0.2, 0.35)), classes=[])
    classes = [ClassSpec(name=c) for c in CLASSES]
    heads = {(folder, stage, clip): GroundingHead(params=GroundingHead.Params(
        weights=folder, threshold=0.05, stage=stage, region_clip=clip), classes=classes)
        for folder in args.weights for stage in ("base", "self_trained") for clip in ("none", "embedded:clip")}
    for head in heads.values():
        head.attach(backend)
    rows = []
    for world in args.worlds:
        requests, scenes = img2img_requests(args.images, args.seed, world, backend.size)
        kept, generated = generate_kept(backend, requests, 16)
        truth = [[Instance(i.category, i.mask) for i in scenes[k].instances] for k in kept]
        requests = [requests[k] for k in kept]
        for (folder, stage, clip), head in heads.items():
            found = [labels.instances for labels in head.label(requests, generated)]
            seen = head.card["classes_seen"]
            scores = box_ap(truth, found, backend.size, groups={"base": seen["base"], "novel": seen["novel"]})
            rows.append({"weights": folder, "stage": stage, "region_clip": clip, "world": world, "images": len(kept),
                         **{k: scores[k] for k in ("AP50", "base_AP50", "novel_AP50")}})
            print(json.dumps(rows[-1]), flush=True)
    command = (f"python bench/bench_grounding_weights.py --weights {' '.join(args.weights)} --images {args.images} "
               f"--worlds {' '.join(args.worlds)}")
    result = {"command": command, "seconds": round(time.time() - started, 1), "rows": rows}
    with open("bench/results/grounding-weights.json", "w") as f:
        json.dump(result, f, indent=1)
    lines = ["# Grounding heads on the same img2img images", "", f"`{command}`, {result['seconds']} s. AP50 (%).", "",
             "| weights | stage | region CLIP | references | AP50 | base AP50 | novel AP50 |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['weights']} | {r['stage']} | {r['region_clip']} | {r['world']} world | {100 * r['AP50']:.1f} | "
              f"{100 * r['base_AP50']:.1f} | {100 * r['novel_AP50']:.1f} |" for r in rows]
    with open("bench/results/grounding-weights.md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
