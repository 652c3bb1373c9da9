"""COCO-DE scale on the render backend: throughput, driver RSS, kill at 50% + resume, overhead.

    .venv/bin/python bench/bench_scale.py --images 205287 --out bench/out/scale

Phases, all in one run so the ratios compare like with like:
  1. a bare loop (render, encode, RLE, Parquet: what a user would write by hand), two processes;
  2. `dde run` as a subprocess, SIGKILLed once half the images are committed;
  3. `dde resume`: time to the first newly committed unit, then to the end (finalize included);
  4. the bare loop again (the machine's speed can drift over a long run: the ratio uses the mean);
  5. every COCO file of the output loaded by pycocotools in a process of its own (peak RSS).
Driver RSS is sampled every 0.5 s: while generating, and during finalize (after the last commit).
Results go to bench/results/scale.json (``--result``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import yaml
from _common import DDE, REPO, fresh_dir, load_coco_files, read_markers, save_result

from engine.world import CLASSES

WORLD = {"size": 96, "min_objects": 5, "max_objects": 9, "min_scale": 0.14, "max_scale": 0.3}


def job_spec(out: str, images: int, unit_size: int) -> dict:
    return {
        "name": "coco-de-scale", "output": out, "seed": 0, "classes": list(CLASSES),
        # as high as the budget allows, so the budget (not the bounds) ends the job
        "lower_bound": images * WORLD["max_objects"] // len(CLASSES),
        "budget": {"max_images": images, "max_waves": 100},
        "unit_size": unit_size, "wave_size": unit_size * 100,
        "generator": {"name": "render", "params": WORLD}, "label_head": {"name": "ground_truth"},
        "prompts": {"source": "combinations", "max_classes": 2},
        "resources": {"actors": {"min": 2, "max": 2}, "num_cpus": 1},
    }


def bare_loop(images: int, unit_size: int, out: str, offset: int = 0) -> float:
    """Seconds for the same work with no engine: render, label, encode, write PNG and Parquet files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from pycocotools import mask as mask_utils

    from engine.world import WorldConfig, render_scene

    config = WorldConfig(**WORLD)
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for i in range(offset, offset + images):
        scene = render_scene(i, None, config)
        buf = io.BytesIO()
        Image.fromarray(scene.image).save(buf, format="PNG")
        anns = []
        for inst in scene.instances:
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            anns.append({"category": inst.category, "bbox": list(inst.bbox), "counts": rle["counts"].decode()})
        sem = io.BytesIO()
        Image.fromarray(scene.semantic).save(sem, format="PNG")
        with open(os.path.join(out, f"{i:012d}.png"), "wb") as f:
            f.write(buf.getvalue())
        with open(os.path.join(out, f"{i:012d}.semantic.png"), "wb") as f:
            f.write(sem.getvalue())
        rows.append({"image": buf.getvalue(), "annotations": anns, "semantic": sem.getvalue()})
        if len(rows) == unit_size:
            pq.write_table(pa.Table.from_pylist(rows), os.path.join(out, f"{i}.parquet"), compression="zstd")
            rows = []
    return time.perf_counter() - start


def bare_rate(images: int, unit_size: int, out: str) -> float:
    """Images per second of two bare loops in parallel: the same two cores the engine's two actors get."""
    from concurrent.futures import ProcessPoolExecutor

    half = images // 2
    fresh_dir(out)
    with ProcessPoolExecutor(2) as pool:
        t0 = time.perf_counter()
        list(pool.map(bare_loop, [half, half], [unit_size] * 2, [out] * 2, [0, half]))
        seconds = time.perf_counter() - t0
    fresh_dir(out)
    return 2 * half / seconds


def committed(out: str) -> int:
    try:
        return len([n for n in os.listdir(os.path.join(out, "_commits")) if n.endswith(".json")])
    except FileNotFoundError:
        return 0


def watch(proc: subprocess.Popen, out: str, unit_size: int, total_units: int, stop_at_units: int | None,
          samples: list) -> dict:
    """Sample driver RSS until the process ends or stop_at_units are committed; returns timings."""
    driver = psutil.Process(proc.pid)
    start, first_new, base = time.time(), None, committed(out)
    while proc.poll() is None:
        units = committed(out)
        try:
            rss = driver.memory_info().rss
        except psutil.NoSuchProcess:
            break
        done = units >= total_units  # every unit committed: the driver is finalizing
        samples.append({"t": time.time(), "images": units * unit_size, "rss_mb": round(rss / 2**20, 1),
                        "phase": "finalizing" if done else "generating"})
        if first_new is None and units > base:
            first_new = time.time() - start
        if stop_at_units is not None and units >= stop_at_units:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.5)
    return {"seconds": time.time() - start, "first_new_unit_s": first_new, "units_before": base}


def _settle(out: str, quiet_s: float = 5.0) -> int:
    """Wait until no new commit has appeared for quiet_s seconds; returns the committed units."""
    count, since = committed(out), time.time()
    while time.time() - since < quiet_s:
        time.sleep(0.5)
        if committed(out) != count:
            count, since = committed(out), time.time()
    return count


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=205_287)
    parser.add_argument("--unit-size", type=int, default=256)
    parser.add_argument("--bare-images", type=int, default=32768)
    parser.add_argument("--out", default=os.path.join(REPO, "bench/out/scale"))
    parser.add_argument("--result", default=os.path.join(REPO, "bench/results/scale.json"))
    args = parser.parse_args()
    fresh_dir(args.out)
    output = os.path.join(args.out, "job")
    spec_path = os.path.join(args.out, "spec.yaml")
    with open(spec_path, "w") as f:
        yaml.safe_dump(job_spec(output, args.images, args.unit_size), f)

    bare_first = bare_rate(args.bare_images, args.unit_size, os.path.join(args.out, "bare"))
    print(f"bare loop: {bare_first:.1f} img/s on two processes", flush=True)

    samples: list = []
    total_units = -(-args.images // args.unit_size)
    half_units = total_units // 2
    run = subprocess.Popen([DDE, "run", spec_path, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = watch(run, output, args.unit_size, total_units, half_units, samples)
    if run.returncode not in (None, -signal.SIGKILL):
        sys.exit(f"run failed: {run.stderr.read().decode()[-2000:]}")
    settled = _settle(output)  # actors of the dead driver may still commit their in-flight units
    print(f"killed after {first['seconds']:.0f}s; {settled} units committed once settled", flush=True)
    resume = subprocess.Popen([DDE, "resume", output, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = watch(resume, output, args.unit_size, total_units, None, samples)
    if resume.returncode != 0:
        sys.exit(f"resume failed: {resume.stderr.read().decode()[-2000:]}")

    bare_last = bare_rate(args.bare_images, args.unit_size, os.path.join(args.out, "bare"))
    bare = (bare_first + bare_last) / 2
    job = json.load(open(os.path.join(output, "job.json")))
    markers = read_markers(output)
    last_commit = max(m["committed_at"] for m in markers)
    finalize_s = os.path.getmtime(os.path.join(output, "job.json")) - last_commit
    busy = sum(m["seconds"] for m in markers)
    backend = sum(m["backend_seconds"] for m in markers)
    wall = first["seconds"] + second["seconds"]
    generating = [s for s in samples if s["phase"] == "generating"]
    finalizing = [s for s in samples if s["phase"] == "finalizing"]
    rate, generation_rate = job["images"] / wall, job["images"] / (wall - finalize_s)
    result = {
        "command": f"{sys.executable} bench/bench_scale.py --images {args.images} --unit-size {args.unit_size} "
                   f"--bare-images {args.bare_images}",
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "world": WORLD,
        "images": job["images"], "instances": job["instances"], "units": job["units"],
        "wall_s_total": round(wall, 1), "finalize_s": round(finalize_s, 1),
        "bare_loop_images_per_s_two_processes": {"before": round(bare_first, 1), "after": round(bare_last, 1)},
        "images_per_s_generating": round(generation_rate, 1),
        "generating_vs_bare_loop": round(generation_rate / bare, 3),
        "images_per_s_with_finalize": round(rate, 1),
        "with_finalize_vs_bare_loop": round(rate / bare, 3),
        "peak_driver_rss_mb_generating": round(max(s["rss_mb"] for s in generating), 1),
        "driver_rss_mb_by_progress": {f"{p}%": round(max((s["rss_mb"] for s in generating
                                                          if s["images"] <= p / 100 * args.images), default=0), 1)
                                      for p in (10, 25, 50, 75, 100)},
        "peak_driver_rss_mb_finalizing": round(max((s["rss_mb"] for s in finalizing), default=0), 1),
        "output_bytes": du(output), "output_gb": round(du(output) / 1e9, 2),
        "resume_to_first_new_unit_s": round(second["first_new_unit_s"] or -1, 1),
        "units_committed_at_kill": second["units_before"],
        "share_of_actor_time_in_backend": round(backend / busy, 3),
        "share_of_wall_actors_idle": round(1 - busy / (2 * (wall - finalize_s)), 3),
        "coco_files": load_coco_files(output),
        "driver_rss_mb_over_time": [{**s, "t": round(s["t"] - samples[0]["t"], 1)}
                                    for s in samples[::max(1, len(samples) // 200)]],
    }
    save_result(args.result, result)


if __name__ == "__main__":
    main()
