"""Sample images with their labels: the ``preview.png`` grid, and rows for the API's samples."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["write_preview", "render_preview", "committed_samples", "committed_shards", "SAMPLES"]

_COLUMNS = ["image", "annotations"]
SAMPLES = 24  # images on preview.png and the report's grid


def _draw(row: dict, colors: list[tuple[int, int, int]], scale: int):
    from PIL import Image, ImageDraw
    from pycocotools import mask as mask_utils

    image = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")).astype(np.float32)
    for ann in (a for a in row["annotations"] if a["segmentation"]):  # box heads give boxes only
        mask = mask_utils.decode({"size": ann["segmentation"]["size"],
                                  "counts": ann["segmentation"]["counts"].encode()}).astype(bool)
        image[mask] = 0.55 * image[mask] + 0.45 * np.array(colors[ann["category_id"] % len(colors)])
    canvas = Image.fromarray(image.astype(np.uint8)).resize((image.shape[1] * scale, image.shape[0] * scale),
                                                            Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for ann in row["annotations"]:
        x, y, w, h = (v * scale for v in ann["bbox"])
        color = colors[ann["category_id"] % len(colors)]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=color, width=1)
        draw.text((x + 2, y + 1), ann["category"], fill=(255, 255, 255))
    return canvas


def _read_rows(store, rel: str, count: int, columns: list[str]) -> list[dict]:
    import pyarrow.parquet as pq

    with store.fs.open(store.path(rel), "rb") as f:
        return pq.read_table(f, columns=columns).slice(0, count).to_pylist()


def committed_shards(store, images: int) -> list[str]:
    """Parquet files of the first committed units, enough for ``images`` images, wherever each
    is now: in its staging folder until finalize, then under its final name."""
    from ..output.ledger import iter_markers

    shards, seen = [], 0
    for marker in iter_markers(store):
        if seen >= images:
            break
        rel = next((f for f in marker["files"] if f.startswith("parquet/")), None)
        if rel is None:  # every image of the unit was rejected: it has no parquet file
            continue
        staged = f"{marker['staging']}/{rel}"
        shards.append(staged if store.exists(staged) else rel)
        seen += marker["images"]
    return shards


def _first_rows(store, parquet_files: list[str], count: int, columns: list[str]) -> list[dict]:
    rows: list[dict] = []
    for rel in parquet_files:
        if len(rows) >= count:
            break
        rows.extend(_read_rows(store, rel, count - len(rows), columns))
    return rows


def committed_samples(store, count: int) -> list[dict]:
    """The first ``count`` committed images with their labels, finalized or not."""
    return _first_rows(store, committed_shards(store, count), count,
                       [*_COLUMNS, "image_id", "width", "height", "prompt"])


def render_preview(store, parquet_files: list[str], count: int = SAMPLES, columns: int = 6) -> bytes | None:
    """A PNG of the first ``count`` images of the first shards; None if there is nothing to draw."""
    from matplotlib import colormaps
    from PIL import Image

    rows = _first_rows(store, parquet_files, count, _COLUMNS)
    if not rows:
        return None
    colors = [tuple(int(255 * c) for c in colormaps["tab10"](i)[:3]) for i in range(10)]
    first = Image.open(io.BytesIO(rows[0]["image"]["bytes"]))
    scale = max(1, 192 // max(first.size))
    tiles = [_draw(row, colors, scale) for row in rows]
    width, height = tiles[0].size
    sheet = Image.new("RGB", (columns * width, ((len(tiles) + columns - 1) // columns) * height), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * width, (k // columns) * height))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def write_preview(store, parquet_files: list[str], path: str = "preview.png") -> bytes | None:
    """``preview.png`` from the first shards; returns its bytes (None if there is nothing to draw)."""
    png = render_preview(store, parquet_files)
    if png is not None:
        store.write_bytes(path, png)
    return png
