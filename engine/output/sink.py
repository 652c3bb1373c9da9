"""The unit sink: one attempt at one unit, with Ray Data's Datasink lifecycle.

    sink.on_write_start()          # new attempt id and staging folder
    sink.write(request, generated, labels) / sink.reject(request, reason)
    sink.on_write_complete()  -> (won, marker)   # files, then a create-only commit marker
    sink.on_write_failed()         # removes this attempt's files

Files land under ``_staging/<unit>.<attempt>/`` with the names they will have after
finalize (``parquet/unit-000123.parquet``, ``coco/images/000000000123.png``), so a
racing attempt never touches another's files and finalize only moves them.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field

import numpy as np

from ..records import Generated, ImageRequest, Instance, Labels, Unit, category_ids
from ..spec import ImageFormat
from .layout import SHARD_FILE, STAGING_DIR, image_name, marker_file
from .lease import new_attempt_id
from .storage import Store

__all__ = ["SinkContext", "UnitSink", "parquet_schema", "encode_png", "encode_image", "semantic_palette",
           "ROW_GROUP_BYTES"]

ROW_GROUP_BYTES = 100 * 2**20  # the HF dataset viewer refuses row groups over 286 MiB


@dataclass(frozen=True)
class SinkContext:
    categories: tuple[str, ...]  # job classes; category id = index + 1
    model: str
    label_head: str
    image_format: ImageFormat = field(default_factory=ImageFormat)
    coco: bool = True  # write coco/images and coco/semantic files (else images live in Parquet only)


def parquet_schema(image_format: ImageFormat | None = None):
    import pyarrow as pa

    rle = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
    annotation = pa.struct([
        ("category_id", pa.int32()), ("category", pa.string()), ("bbox", pa.list_(pa.float32())),
        ("area", pa.float32()), ("score", pa.float32()), ("segmentation", rle),
    ])
    schema = pa.schema([
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("image_id", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
        ("prompt", pa.string()), ("negative_prompt", pa.string()), ("seed", pa.int64()),
        ("strength", pa.float32()), ("reference_id", pa.string()),
        ("model", pa.string()), ("label_head", pa.string()),
        ("annotations", pa.list_(annotation)), ("semantic_mask", pa.binary()),
    ])
    features = {f.name: _hf_feature(f.type, f.name) for f in schema}
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}}),
                                 "dde": json.dumps({"image_format": (image_format or ImageFormat()).model_dump()})})


def _hf_feature(arrow_type, name: str = "") -> dict:
    """The HF ``datasets`` feature for an arrow type, so load_dataset restores the Image column."""
    import pyarrow as pa

    if name == "image":
        return {"_type": "Image"}
    if pa.types.is_list(arrow_type):
        return {"feature": _hf_feature(arrow_type.value_type), "_type": "List"}
    if pa.types.is_struct(arrow_type):
        return {f.name: _hf_feature(f.type) for f in arrow_type}
    dtype = {"float": "float32", "double": "float64"}.get(str(arrow_type), str(arrow_type))
    return {"dtype": dtype, "_type": "Value"}


def semantic_palette() -> list[int]:
    """0 black background, 255 white uncertain, classes from matplotlib's tab20."""
    from matplotlib import colormaps

    colors = [(0, 0, 0)] + [tuple(int(255 * v) for v in colormaps["tab20"](i % 20)[:3]) for i in range(254)]
    colors.append((255, 255, 255))
    return [v for rgb in colors for v in rgb]


def encode_png(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    """PNG bytes of a uint8 HxWx3 image, a uint8 HxW mask (with ``palette``: a palette PNG whose
    values are the indices), or a uint16 HxW mask (a 16-bit grey PNG)."""
    from PIL import Image

    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)  # an "L" image becomes "P" with its values as indices
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def encode_image(array: np.ndarray, image_format: ImageFormat) -> bytes:
    """A generated image in the job's format (``image_format``)."""
    if image_format.format == "png":
        return encode_png(array)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=image_format.format.upper(), quality=image_format.quality)
    return buf.getvalue()


def _annotation_of(instance: Instance, category_id: int) -> dict | None:
    """An instance as a dataset row's annotation, or None if it covers nothing.

    A mask's box and area come from its RLE (pycocotools, in C): the same numbers as scanning
    the mask (``Instance.bbox``/``area``) at a fraction of the cost. An explicit ``box`` wins."""
    if instance.mask is None:  # box heads: boxes only
        if instance.is_empty():
            return None
        bbox, area, segmentation = instance.bbox(), instance.area(), None
    else:
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.asfortranarray(instance.mask, dtype=np.uint8))
        area = float(mask_utils.area(rle))
        if not area:
            return None
        bbox = instance.bbox() if instance.box is not None else [float(v) for v in mask_utils.toBbox(rle)]
        segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return {"category_id": category_id, "category": instance.category, "bbox": bbox, "area": area,
            "score": float(instance.score), "segmentation": segmentation}


class UnitSink:
    def __init__(self, store: Store, context: SinkContext, unit: Unit):
        self.store, self.context, self.unit = store, context, unit
        self.category_id = category_ids(context.categories)
        self._palette = None

    # ---- lifecycle
    def on_write_start(self) -> None:
        self.attempt = new_attempt_id(self.unit.lease)
        self.staging = f"{STAGING_DIR}/{self.unit.unit_id}.{self.attempt}"
        self.rows: list[dict] = []
        self.files: list[str] = []
        self.shard_images: list[dict] = []
        self.shard_annotations: list[dict] = []
        self.rejects: list[dict] = []
        self.references: dict[str, str] = {}  # reference URI -> sha256 of the bytes read
        self.counts = {name: 0 for name in self.context.categories}
        self.started = time.time()

    def write(self, request: ImageRequest, generated: Generated, labels: Labels) -> None:
        height, width = generated.image.shape[:2]
        encoded = encode_image(generated.image, self.context.image_format)
        name = image_name(request.image_id, self.context.image_format.extension)
        semantic_png = None
        if labels.semantic is not None:  # class ids: PNG whatever the images' format, a lossy mask would mix them
            semantic_png = encode_png(labels.semantic, self.palette if labels.semantic.dtype == np.uint8 else None)
        if self.context.coco:
            self._put(f"coco/images/{name}", encoded)
            if semantic_png is not None:
                self._put(f"coco/semantic/{image_name(request.image_id)}", semantic_png)
        annotations = [a for a in (_annotation_of(i, self.category_id[i.category]) for i in labels.instances) if a]
        for ann in annotations:
            self.counts[ann["category"]] += 1
        self.rows.append({
            "image": {"bytes": encoded, "path": name}, "image_id": request.image_id,
            "width": width, "height": height, "prompt": request.prompt,
            "negative_prompt": request.negative_prompt, "seed": request.seed,
            "strength": generated.strength, "reference_id": request.reference_id,
            "model": self.context.model, "label_head": self.context.label_head,
            "annotations": annotations, "semantic_mask": semantic_png,
        })
        self.shard_images.append({
            "id": request.image_id, "file_name": name, "width": width, "height": height,
            "prompt": request.prompt, "seed": request.seed, "strength": generated.strength,
            "reference_id": request.reference_id, "sha256": hashlib.sha256(encoded).hexdigest(),
        })
        self.shard_annotations.extend(
            {"image_id": request.image_id, "category_id": a["category_id"], "bbox": a["bbox"], "area": a["area"],
             "iscrowd": 0, "score": a["score"], **({"segmentation": a["segmentation"]} if a["segmentation"] else {})}
            for a in annotations)

    def reject(self, request: ImageRequest, reason: str, **details) -> None:
        """Record an image not written: its reason, and ``details`` (e.g. a filter's scores and the classes)."""
        self.rejects.append({"image_id": request.image_id, "reference_id": request.reference_id, "reason": reason,
                             **details})

    def on_write_complete(self, backend_seconds: float = 0.0) -> tuple[bool, dict]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        parquet = None
        if self.rows:  # a 0-row file breaks datasets.load_dataset for the whole folder: none is written
            table = pa.Table.from_pylist(self.rows, schema=parquet_schema(self.context.image_format))
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd", row_group_size=self._rows_per_group())
            parquet = buf.getvalue()
            self._put(f"parquet/{self.unit.unit_id}.parquet", parquet)
        shard = {"unit_id": self.unit.unit_id, "images": self.shard_images, "annotations": self.shard_annotations}
        shard_bytes = json.dumps(shard, separators=(",", ":")).encode()
        self.store.write_bytes(f"{self.staging}/{SHARD_FILE}", shard_bytes)
        marker = {
            "unit_id": self.unit.unit_id, "index": self.unit.index, "wave": self.unit.wave,
            "attempt": self.attempt, "staging": self.staging, "files": self.files,
            "shard": SHARD_FILE, "shard_sha256": hashlib.sha256(shard_bytes).hexdigest(),
            "parquet_sha256": parquet and hashlib.sha256(parquet).hexdigest(),
            "images": len(self.rows), "instances": sum(self.counts.values()), "counts": self.counts,
            "rejects": self.rejects, "references": self.references, "backend_seconds": round(backend_seconds, 4),
            "seconds": round(time.time() - self.started, 4), "committed_at": time.time(),
            "driver_started_at": self.unit.driver_started_at,  # for throughput: when this run began
        }
        self._check_staged()
        won = self.store.create_only(marker_file(self.unit.unit_id), json.dumps(marker).encode())
        if not won:  # another attempt committed first: its files are the unit's, ours are garbage
            self.on_write_failed()
            marker = json.loads(self.store.read_bytes(marker_file(self.unit.unit_id)))
        return won, marker

    def on_write_failed(self) -> None:
        self.store.delete(self.staging, recursive=True)

    # ---- helpers
    def _rows_per_group(self) -> int:
        """Rows per Parquet row group, so that a group stays under ROW_GROUP_BYTES (images dominate)."""
        largest = max(len(r["image"]["bytes"]) + len(r["semantic_mask"] or b"") for r in self.rows)
        return max(1, ROW_GROUP_BYTES // max(largest, 1))

    def _check_staged(self) -> None:
        """Every file the marker will list is in storage (one listing): a marker never
        commits files that something else removed while this attempt ran."""
        staged = set(self.store.find(self.staging))
        missing = [rel for rel in [*self.files, SHARD_FILE] if f"{self.staging}/{rel}" not in staged]
        if missing:
            raise RuntimeError(f"{self.unit.unit_id}: {len(missing)} staged file(s) vanished before the commit "
                               f"(e.g. {missing[0]}); this attempt is not committed and the unit is retried")


    @property
    def palette(self) -> list[int]:
        if self._palette is None:
            self._palette = semantic_palette()
        return self._palette

    def _put(self, rel: str, data: bytes) -> None:
        self.store.write_bytes(f"{self.staging}/{rel}", data)
        self.files.append(rel)
