"""The layouts a finished output offers, written from the committed units in bounded memory.

Parquet (``parquet/unit-NNNNNN.parquet``, one shard a unit) is the primary layout: units commit it.
Finalize and ``dde export`` derive the others from what is committed, holding one unit (COCO) or
one Parquet row group (WebDataset) in memory at a time, whatever the dataset's size:

- **COCO**: one ``coco/instances.json`` while the dataset has at most ``coco_shard_images`` images;
  above that, ``coco/instances-00000-of-000NN.json`` files of whole units, each a valid COCO file on
  its own (all categories, its images and their annotations), with image and annotation ids unique
  across the shards. A rerun that changes the count removes the COCO files it no longer writes.
- **WebDataset**: ``webdataset/dde-NNNNNN.tar`` files of about ``webdataset_shard_bytes`` each, one
  sample per image: ``<key>.<png|jpg|webp>`` (the image), ``<key>.json`` (its row: prompt, seed,
  annotations with COCO boxes and RLE masks) and ``<key>.seg.png`` (the semantic mask, if any), with
  ``<key>`` the 12-digit image id. Tar members carry mtime 0, so the bytes depend on the rows only.
- ``manifest.json`` lists every shard of every layout with its counts (Parquet: rows and instances
  per class), so a reader can plan without opening them.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .layout import COCO_FILE, MANIFEST_FILE, WEBDATASET_DIR, coco_shard_file, image_name, webdataset_shard_file
from ..records import category_ids
from .storage import Store

__all__ = ["CocoUnit", "coco_categories", "write_coco", "write_webdataset", "webdataset_sample", "write_manifest",
           "units_from_parquet", "image_files"]

_COCO_NAME = re.compile(r"instances(-\d{5}-of-\d{5})?\.json")
_TAR_NAME = re.compile(r"dde-\d{6}\.tar")


@dataclass(frozen=True)
class CocoUnit:
    """One committed unit as COCO: ``images`` (its image count) and ``load`` (returns
    ``{"images": [...], "annotations": [...]}``, annotations without ids), read when written."""
    images: int
    load: Callable[[], dict]


def coco_categories(class_names: list[str]) -> list[dict]:
    return [{"id": k, "name": name, "supercategory": "object"} for name, k in category_ids(class_names).items()]


def _groups(units: list[CocoUnit], max_images: int) -> list[list[CocoUnit]]:
    """Consecutive units, whole, at most ``max_images`` images a group (a larger unit is a group alone)."""
    groups: list[list[CocoUnit]] = [[]]
    count = 0
    for unit in units:
        if groups[-1] and count + unit.images > max_images:
            groups.append([])
            count = 0
        groups[-1].append(unit)
        count += unit.images
    return groups


def write_coco(store: Store, head: dict, units: list[CocoUnit], max_images: int,
               on_annotations: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Write the COCO layout (see the module docstring) and return its manifest entries.

    ``head``: the COCO ``info``, ``licenses`` and ``categories``. ``on_annotations`` sees each
    unit's annotations once (finalize counts images per class with it). Memory: one unit."""
    total = sum(u.images for u in units)
    groups = _groups(units, max_images) if total > max_images else [units]
    names = [COCO_FILE] if len(groups) == 1 else [coco_shard_file(i, len(groups)) for i in range(len(groups))]
    entries, next_id = [], 1
    for name, group in zip(names, groups):
        counts = {"images": 0, "annotations": 0}
        _write_stream(store, name, _coco_text(head, group, next_id, counts, on_annotations))
        next_id += counts["annotations"]
        entries.append({"file": name, **counts})
    _remove_stale(store, "coco", _COCO_NAME, set(names))
    return entries


def _coco_text(head: dict, units: list[CocoUnit], first_id: int, counts: dict,
               on_annotations: Callable[[list[dict]], None] | None) -> Iterator[str]:
    """COCO JSON text, one image or annotation at a time: images of all units, then annotations.
    Each unit is read once (one GET on object storage): its annotations wait in a local temporary
    file while the images are written, so memory stays at one unit."""
    yield json.dumps(head)[:-1] + ', "images": ['
    with tempfile.TemporaryFile("w+", encoding="utf-8") as pending:
        for unit in units:
            coco = unit.load()
            for image in coco["images"]:
                yield ("," if counts["images"] else "") + json.dumps({k: v for k, v in image.items() if k != "sha256"})
                counts["images"] += 1
            for ann in coco["annotations"]:
                pending.write(("," if counts["annotations"] else "") +
                              json.dumps({"id": first_id + counts["annotations"], **ann}))
                counts["annotations"] += 1
            if on_annotations is not None:
                on_annotations(coco["annotations"])
        yield '], "annotations": ['
        pending.seek(0)
        while chunk := pending.read(1 << 20):
            yield chunk
    yield "]}"


def _write_stream(store: Store, rel: str, chunks: Iterable[str | bytes]) -> None:
    """Write chunks to a temp name, then move into place: readers never see half a file."""
    tmp = f"{rel}.tmp-{uuid.uuid4().hex}"
    if store.is_local:
        store.fs.makedirs(store.path(rel).rsplit("/", 1)[0], exist_ok=True)
    with store.fs.open(store.path(tmp), "wb") as f:
        for chunk in chunks:
            f.write(chunk.encode() if isinstance(chunk, str) else chunk)
    store.move(tmp, rel)


def _remove_stale(store: Store, folder: str, pattern: re.Pattern, keep: set[str]) -> None:
    """Remove the files of a layout that an earlier finalize wrote and this one did not (only
    names dde gives: a user's file in the folder is left alone)."""
    for name in store.list_names(folder):
        rel = f"{folder}/{name}"
        if pattern.fullmatch(name) and rel not in keep:
            store.delete(rel)


def webdataset_sample(row: dict) -> dict:
    """One Parquet row (``sink.parquet_schema``) as a WebDataset sample: ``__key__`` and bytes per extension."""
    image = row["image"]
    extension = image["path"].rsplit(".", 1)[-1]
    meta = {k: row[k] for k in ("image_id", "width", "height", "prompt", "negative_prompt", "seed", "strength",
                                "reference_id", "model", "label_head")}
    meta["file_name"] = image["path"]
    meta["annotations"] = row["annotations"]
    sample = {"__key__": f"{row['image_id']:012d}", extension: image["bytes"],
              "json": json.dumps(meta, separators=(",", ":")).encode()}
    if row["semantic_mask"] is not None:
        sample["seg.png"] = row["semantic_mask"]
    return sample


def _parquet_rows(store: Store, rel: str, batch_rows: int = 64) -> Iterator[dict]:
    """Rows of one Parquet shard, a batch at a time (images dominate a row's size)."""
    import pyarrow.parquet as pq

    with store.fs.open(store.path(rel), "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
            yield from batch.to_pylist()


def _tar_bytes(sample: dict) -> int:
    """A sample's bytes in a tar: per member a 512-byte header and the data padded to 512."""
    return sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if k != "__key__")


def _tar_file_bytes(members: int) -> int:
    """A tar file's size: its members, the 1,024-byte end marker, padded to 10,240-byte records."""
    return -(-(members + 1024) // 10240) * 10240


def write_webdataset(src: Store, parquet_files: list[str], dst: Store, shard_bytes: int) -> list[dict]:
    """Write the WebDataset layout into ``dst`` from ``src``'s Parquet shards, in their order;
    returns the manifest entries. A tar closes before a sample would take its file past
    ``shard_bytes`` (a tar holds at least one sample). Memory: one Parquet batch and one sample."""
    from webdataset import TarWriter

    names: list[str] = []
    entries: list[dict] = []
    writer = handle = None
    size = 0

    def close() -> None:
        writer.close()
        handle.close()
        dst.move(tmp, names[-1])

    for rel in parquet_files:
        for row in _parquet_rows(src, rel):
            sample = webdataset_sample(row)
            sample_bytes = _tar_bytes(sample)
            if writer is None or (entries[-1]["samples"] and _tar_file_bytes(size + sample_bytes) > shard_bytes):
                if writer is not None:
                    close()
                names.append(webdataset_shard_file(len(names)))
                entries.append({"file": names[-1], "samples": 0})
                tmp = f"{names[-1]}.tmp-{uuid.uuid4().hex}"
                if dst.is_local:
                    dst.fs.makedirs(dst.path(WEBDATASET_DIR), exist_ok=True)
                handle = dst.fs.open(dst.path(tmp), "wb")
                writer, size = TarWriter(handle, mtime=0, encoder=False), 0  # an int: a float mtime adds a pax header
            writer.write(sample)
            size += sample_bytes
            entries[-1]["samples"] += 1
    if writer is not None:
        close()
    _remove_stale(dst, WEBDATASET_DIR, _TAR_NAME, set(names))
    return entries


def write_manifest(store: Store, layouts: dict[str, list[dict]]) -> None:
    """``manifest.json``: ``{"parquet": [{"file", "rows", "instances": {class: n}}], "coco": [...], ...}``."""
    store.replace_bytes(MANIFEST_FILE, json.dumps(layouts, indent=1).encode())


def units_from_parquet(store: Store, parquet_files: list[str]) -> list[CocoUnit]:
    """Committed units as COCO, read from their Parquet shards (for ``dde export --to coco``):
    the image and annotation records finalize writes, boxes and areas at float32 precision."""
    import pyarrow.parquet as pq

    def loader(rel: str) -> Callable[[], dict]:
        def load() -> dict:
            images, annotations = [], []
            for row in _parquet_rows(store, rel):
                images.append({"id": row["image_id"], "file_name": row["image"]["path"], "width": row["width"],
                               "height": row["height"], "prompt": row["prompt"], "seed": row["seed"],
                               "strength": row["strength"], "reference_id": row["reference_id"]})
                annotations.extend(_coco_annotation(row["image_id"], a) for a in row["annotations"])
            return {"images": images, "annotations": annotations}
        return load

    units = []
    for rel in parquet_files:
        with store.fs.open(store.path(rel), "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        units.append(CocoUnit(rows, loader(rel)))
    return units


def _coco_annotation(image_id: int, ann: dict) -> dict:
    out = {"image_id": image_id, "category_id": ann["category_id"], "bbox": ann["bbox"], "area": ann["area"],
           "iscrowd": 0, "score": ann["score"]}
    if ann["segmentation"] is not None:
        out["segmentation"] = ann["segmentation"]
    return out


def image_files(store: Store, parquet_files: list[str]) -> Iterator[tuple[str, bytes]]:
    """``(relative path, bytes)`` of every image and semantic mask in the Parquet shards, as COCO lays them out."""
    for rel in parquet_files:
        for row in _parquet_rows(store, rel):
            yield f"coco/images/{row['image']['path']}", row["image"]["bytes"]
            if row["semantic_mask"] is not None:
                yield f"coco/semantic/{image_name(row['image_id'])}", row["semantic_mask"]

