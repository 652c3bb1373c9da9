"""What the benchmark scripts share. They run as scripts (``python bench/NAME.py``), so this
folder is on sys.path and ``import _common`` finds this file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DDE = os.path.join(os.path.dirname(sys.executable), "dde")


def fresh_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def read_markers(output: str) -> list[dict]:
    """The commit markers of a finished local job (their timings are the engine's own record)."""
    commits = os.path.join(output, "_commits")
    return [json.load(open(os.path.join(commits, n))) for n in sorted(os.listdir(commits)) if n.endswith(".json")]


def save_result(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command, its children included, sampled every 0.2 s."""
    import psutil

    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    parent, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with exit {proc.returncode}")
    return time.time() - start, peak / 2**20


def load_coco_files(output: str) -> list[dict]:
    """Each COCO file of a finished output (its manifest's list) loaded by pycocotools in a process of
    its own: images, annotations, bytes, load seconds and peak RSS in MB."""
    with open(os.path.join(output, "manifest.json")) as f:
        manifest = json.load(f)
    loads = []
    for entry in manifest["coco"]:
        path = os.path.join(output, entry["file"])
        load_s, load_rss = peak_rss([sys.executable, "-c", f"from pycocotools.coco import COCO; COCO({path!r})"])
        loads.append({"file": entry["file"], "images": entry["images"], "annotations": entry["annotations"],
                      "bytes": os.path.getsize(path), "load_s": round(load_s, 1), "load_peak_rss_mb": round(load_rss)})
    return loads
