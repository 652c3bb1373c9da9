"""What the benchmark scripts share. They run as scripts (``python bench/NAME.py``), so this
folder is on sys.path and ``import _common`` finds this file."""

from __future__ import annotations

import json
import os
import shutil
import sys

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
