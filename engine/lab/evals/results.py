"""Where a benchmark's result goes: ``NAME.json`` and, when given, ``NAME.md`` in one folder."""

from __future__ import annotations

import json
import os

__all__ = ["save_result"]


def save_result(out_dir: str, name: str, result: dict, markdown: str | None = None) -> None:
    """Write ``result`` to ``out_dir/NAME.json`` (indent 1) and ``markdown`` to ``out_dir/NAME.md``;
    creates ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    if markdown is not None:
        with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
            f.write(markdown)
