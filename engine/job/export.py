"""``dde export``: a finished output in another layout, made from its Parquet shards without regenerating.

The destination is a new folder or prefix (absent or empty): an export never writes into the
source or into anything that holds files. Memory stays bounded whatever the size (``views``).
"""

from __future__ import annotations

import json

from ..errors import UserError
from ..output.layout import JOB_FILE
from ..output.storage import Store
from ..output.views import CocoUnit, coco_categories, image_files, units_from_parquet, write_coco, write_manifest, \
    write_webdataset

__all__ = ["FORMATS", "export_output"]

FORMATS = ("parquet", "coco", "webdataset")


def _finished(src: Store) -> dict:
    if not src.exists(JOB_FILE):
        raise UserError(f"OUT: expected a finished dde output (with {JOB_FILE}, written by finalize), got "
                        f"{src.uri!r}; run `dde finalize {src.uri}` first if it holds a job")
    return json.loads(src.read_bytes(JOB_FILE))


def _empty(dst: Store) -> None:
    if dst.fs.isfile(dst.root) or dst.list_names(""):
        raise UserError(f"--out: expected a folder or prefix that is empty or does not exist yet, got "
                        f"{dst.uri!r}, which holds files; choose a new folder")


def export_output(src: Store, to: str, dst: Store, *, coco_shard_images: int = 200_000,
                  webdataset_shard_bytes: int = 1_000_000_000) -> dict[str, list[dict]]:
    """Write ``src``'s dataset into ``dst`` as ``to`` (one of ``FORMATS``) and a ``manifest.json``;
    returns the manifest. Raises UserError (exit 2) before writing anything if ``src`` is not a
    finished output, ``to`` is unknown, or ``dst`` holds files."""
    if to not in FORMATS:
        raise UserError(f"--to: expected one of {', '.join(FORMATS)}, got {to!r}")
    job = _finished(src)
    if dst.uri.rstrip("/") == src.uri.rstrip("/"):
        raise UserError(f"--out: expected a new folder, got the source itself ({src.uri!r})")
    _empty(dst)
    parquet = src.find("parquet")
    parquet = [rel for rel in parquet if rel.endswith(".parquet")]
    if to == "parquet":
        for rel in parquet:
            dst.write_bytes(rel, src.read_bytes(rel))
        layouts = {"parquet": [{"file": rel} for rel in parquet]}
    elif to == "coco":
        classes = [c if isinstance(c, str) else c["name"] for c in job["spec"]["classes"]]
        for rel, data in image_files(src, parquet):
            dst.write_bytes(rel, data)
        head = {"info": {"description": f"dde dataset {job['spec']['name']}", "version": job["fingerprint"]},
                "licenses": [], "categories": coco_categories(classes)}
        units: list[CocoUnit] = units_from_parquet(src, parquet)
        layouts = {"coco": write_coco(dst, head, units, coco_shard_images)}
    else:
        layouts = {"webdataset": write_webdataset(src, parquet, dst, webdataset_shard_bytes)}
    write_manifest(dst, layouts)
    return layouts
