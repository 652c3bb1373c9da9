"""Export rendered shapes-world scenes as a COCO-format dataset.

Layout under `out_dir`:
    images/{split}/{id:012d}.png            RGB images
    semantic/{split}/{id:012d}.png          palette PNGs, values as Scene.semantic
    annotations/instances_{split}.json      COCO instances, RLE segmentations
    annotations/captions_{split}.json       COCO captions

The export is byte-identical across runs: per-image seeds come from a stable hash,
JSON has no timestamps and PNGs are written by PIL with fixed settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np
from PIL import Image

from engine.records import category_ids
from engine.world.render import CLASSES, Instance, WorldConfig, render_scene

_INFO = {
    "description": "shapes world: procedural scenes of coloured geometric shapes",
    "version": "1.0",
    "contributor": "engine.world",
}
# Semantic PNG palette: index 0 background, then one distinct colour per class.
_SEMANTIC_COLORS = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200),
                    (255, 225, 25), (240, 50, 230), (70, 240, 240))
_SEMANTIC_PALETTE = [channel for color in _SEMANTIC_COLORS for channel in color]


def image_seed(seed: int, split: str, index: int) -> int:
    """Stable per-image seed; Python's hash() is salted per process, so it is not used."""
    digest = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def export_coco(out_dir: str | os.PathLike, images: int, split: str = "train", seed: int = 0,
                config: WorldConfig = WorldConfig()) -> pathlib.Path:
    """Render `images` scenes into a COCO dataset; returns the instances json path."""
    _validate(images, split)
    root = pathlib.Path(out_dir)
    image_dir, semantic_dir, annotation_dir = (root / "images" / split, root / "semantic" / split,
                                               root / "annotations")
    for directory in (image_dir, semantic_dir, annotation_dir):
        directory.mkdir(parents=True, exist_ok=True)

    image_entries, instance_entries, caption_entries = [], [], []
    for image_id in range(1, images + 1):
        scene_seed = image_seed(seed, split, image_id - 1)
        scene = render_scene(scene_seed, config=config)
        file_name = f"{image_id:012d}.png"
        Image.fromarray(scene.image).save(image_dir / file_name)
        _save_semantic(scene.semantic, semantic_dir / file_name)
        image_entries.append({"id": image_id, "file_name": file_name, "width": config.size,
                              "height": config.size, "seed": scene_seed})
        for instance in scene.instances:
            instance_entries.append(_annotation(len(instance_entries) + 1, image_id, instance))
        caption_entries.append({"id": image_id, "image_id": image_id, "caption": scene.caption})

    instances_path = annotation_dir / f"instances_{split}.json"
    _write_json(instances_path, {
        "info": _INFO, "licenses": [], "images": image_entries, "annotations": instance_entries,
        "categories": [{"id": k, "name": name, "supercategory": "shape"} for name, k in category_ids(CLASSES).items()],
    })
    _write_json(annotation_dir / f"captions_{split}.json", {
        "info": _INFO, "licenses": [], "images": image_entries, "annotations": caption_entries,
    })
    return instances_path


def _validate(images: int, split: str) -> None:
    if not isinstance(images, int) or isinstance(images, bool) or images < 0:
        raise ValueError(f"images: expected an int >= 0, got {images!r}")
    if not isinstance(split, str) or not split or "/" in split or "\\" in split or split in (".", ".."):
        raise ValueError(f"split: expected a non-empty name without path separators, got {split!r}")


def _annotation(annotation_id: int, image_id: int, instance: Instance) -> dict:
    from pycocotools import mask as mask_utils  # here: rendering (the trainers' use) needs no pycocotools

    rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_ids(CLASSES)[instance.category],
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": instance.area,
        "bbox": list(instance.bbox),
        "iscrowd": 0,
        "color": instance.color,
    }


def _save_semantic(semantic: np.ndarray, path: pathlib.Path) -> None:
    height, width = semantic.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(semantic).tobytes())
    image.putpalette(_SEMANTIC_PALETTE)
    image.save(path)


def _write_json(path: pathlib.Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n", encoding="utf-8")
