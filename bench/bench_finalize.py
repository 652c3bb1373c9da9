"""Finalize at any size: peak memory and time of `dde finalize`, and of loading each COCO shard.

    .venv/bin/python bench/bench_finalize.py --images 205287 --out bench/out/finalize-205k
    .venv/bin/python bench/bench_finalize.py --images 2052870 --out bench/out/finalize-2m

Generating 2M images takes hours on 2 cores, and finalize does not care how images were made,
so this bench runs one real unit (`dde run --no-finalize`, render backend, COCO-DE density:
96 px, 5-9 objects a scene, 256 images a unit) and commits copies of it as further units, the
way a sink would: hard links of its image and mask files under new image ids, its COCO shard
with the ids shifted, a create-only marker each. Then it times `dde finalize` (publish, COCO
in one file or shards, manifest, card, preview) in a subprocess, sampling its RSS every 0.2 s,
and loads every COCO file in pycocotools in a subprocess of its own (peak RSS each).
Results: bench/results/finalize-<images>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import yaml
from _common import DDE, REPO, fresh_dir, load_coco_files, peak_rss, save_result

from engine.world import CLASSES

WORLD = {"size": 96, "min_objects": 5, "max_objects": 9, "min_scale": 0.14, "max_scale": 0.3}
UNIT = 256


def first_unit(out: str) -> dict:
    spec = {"name": "finalize-scale", "output": out, "seed": 0, "classes": list(CLASSES), "lower_bound": UNIT * WORLD["max_objects"] // len(CLASSES),
            "budget": {"max_images": UNIT, "max_waves": 1}, "unit_size": UNIT, "wave_size": UNIT,
            "generator": {"name": "render", "params": WORLD}, "label_head": {"name": "ground_truth"},
            "resources": {"actors": {"min": 1, "max": 1}, "num_cpus": 1}}
    path = os.path.join(out + ".yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    subprocess.run([DDE, "run", path, "--no-finalize", "--quiet"], check=True)
    with open(os.path.join(out, "_commits", "unit-000000.json")) as f:
        return json.load(f)


def copy_unit(out: str, marker: dict, shard: dict, index: int) -> None:
    """Commit unit ``index`` as a copy of unit 0 whose image ids are shifted by index * UNIT."""
    shift = index * UNIT
    uid = f"unit-{index:06d}"
    staging = f"_staging/{uid}.{marker['attempt']}"
    files = []
    for rel in marker["files"]:
        if rel.startswith("parquet/"):
            new = f"parquet/{uid}.parquet"
        else:
            folder, name = rel.rsplit("/", 1)
            stem, ext = name.split(".")
            new = f"{folder}/{int(stem) + shift:012d}.{ext}"
        os.makedirs(os.path.dirname(os.path.join(out, staging, new)), exist_ok=True)
        os.link(os.path.join(out, marker["staging"], rel), os.path.join(out, staging, new))
        files.append(new)
    moved = {"unit_id": uid,
             "images": [{**im, "id": im["id"] + shift, "file_name": f"{im['id'] + shift:012d}.{im['file_name'].split('.')[1]}"}
                        for im in shard["images"]],
             "annotations": [{**a, "image_id": a["image_id"] + shift} for a in shard["annotations"]]}
    with open(os.path.join(out, staging, marker["shard"]), "w") as f:
        json.dump(moved, f, separators=(",", ":"))
    with open(os.path.join(out, "_commits", f"{uid}.json"), "w") as f:
        json.dump({**marker, "unit_id": uid, "index": index, "staging": staging, "files": files}, f)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=205_287)
    p.add_argument("--out", default="bench/out/finalize")
    args = p.parse_args()
    out = os.path.abspath(args.out)
    fresh_dir(out)
    marker = first_unit(out)
    with open(os.path.join(out, marker["staging"], marker["shard"])) as f:
        shard = json.load(f)
    units = -(-args.images // UNIT)
    t0 = time.time()
    for index in range(1, units):
        copy_unit(out, marker, shard, index)
    made = time.time() - t0
    seconds, rss = peak_rss([DDE, "finalize", out])
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    loads = load_coco_files(out)
    result = {"images": units * UNIT, "units": units, "instances": sum(e["annotations"] for e in manifest["coco"]),
              "commit_copies_s": round(made, 1), "finalize_s": round(seconds, 1),
              "finalize_peak_rss_mb": round(rss), "coco_files": loads}
    save_result(os.path.join(REPO, "bench", "results", f"finalize-{units * UNIT}.json"), result)


if __name__ == "__main__":
    main()
