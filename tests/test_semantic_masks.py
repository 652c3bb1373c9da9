"""Semantic masks hold any vocabulary: uint8 palette PNGs up to 254 classes, uint16 PNGs beyond
(LVIS has 1,203), so class 255 is never read as 'uncertain' (paper-fidelity review, bug 2)."""

import io

import numpy as np
from PIL import Image

from engine.heads.attention import semantic_mask
from engine.output.sink import encode_png, semantic_palette
from engine.records import semantic_dtype, uncertain_value


def test_dtype_follows_the_vocabulary():
    assert semantic_dtype(6) == np.uint8 and uncertain_value(semantic_dtype(254)) == 255
    assert semantic_dtype(255) == np.uint16 and uncertain_value(semantic_dtype(1203)) == 65535


def test_class_255_and_beyond_keep_their_ids_and_uncertain_is_separate():
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[0, 0, :] = 1.0       # class 255: certain
    maps[1, 1, :] = 1.0       # class 256: certain
    maps[2, 2, :] = 0.55      # class 1203: in the uncertain band
    mask, _ = semantic_mask(maps, [255, 256, 1203], alpha=0.5, beta=0.6, dtype=semantic_dtype(1203))
    assert mask.dtype == np.uint16
    assert mask[0].tolist() == [255] * 4 and mask[1].tolist() == [256] * 4
    assert mask[2].tolist() == [65535] * 4 and mask[3].tolist() == [0] * 4


def test_masks_round_trip_through_png_in_both_widths():
    wide = np.array([[0, 255, 256], [1203, 65535, 7]], dtype=np.uint16)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(wide))))
    assert decoded.dtype.itemsize >= 2 and decoded.astype(np.int64).tolist() == wide.tolist()
    narrow = np.array([[0, 1, 255]], dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_png(narrow, semantic_palette())))
    assert image.mode == "P" and np.asarray(image).tolist() == narrow.tolist()


def vocabulary_300() -> list[str]:
    """300 classes: 'circle' is the 255th (id 255, the uint8 'uncertain'), 'square' the 256th."""
    names = [f"thing{k}" for k in range(298)]
    return names[:254] + ["circle", "square"] + names[254:]


def test_a_300_class_attention_job_keeps_ids_255_and_256_apart_from_uncertain(spec_data, tiny_model, ray_local,
                                                                                tmp_path):
    import json
    import os

    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    from engine.job.runner import run_job
    from engine.spec import parse_spec

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "a circle and a square", "classes": ["circle", "square"]}) + "\n"
                               for _ in range(4)))
    spec_data.update(classes=vocabulary_300(), lower_bound=1, budget={"max_images": 4, "max_waves": 1},
                     unit_size=4, wave_size=4, prompts={"source": "jsonl", "path": str(prompts)})
    spec_data["generator"] = {"name": "diffusion", "params": {"model": tiny_model, "steps": 2, "batch_size": 4}}
    spec_data["label_head"] = {"name": "attention", "params": {"min_area": 0.02}}
    run_job(parse_spec(spec_data), quiet=True)
    out = spec_data["output"]
    rows = pq.read_table(os.path.join(out, "parquet")).to_pylist()
    coco = COCO(os.path.join(out, "coco", "instances.json"))
    assert {c["name"]: c["id"] for c in coco.loadCats([255, 256])} == {"circle": 255, "square": 256}
    seen = set()
    for row in rows:
        image = Image.open(io.BytesIO(row["semantic_mask"]))
        mask = np.asarray(image).astype(np.int64)
        assert image.mode.startswith("I") and set(np.unique(mask)) <= {0, 255, 256, 65535}
        on_disk = np.asarray(Image.open(os.path.join(out, "coco", "semantic", row["image"]["path"])))
        assert np.array_equal(mask, on_disk.astype(np.int64))
        seen |= set(np.unique(mask).tolist())
    assert {255, 256} <= seen  # both classes labelled as themselves (min-max maps always reach beta somewhere)
    annotations = coco.loadAnns(coco.getAnnIds())
    assert {a["category_id"] for a in annotations} <= {255, 256} and annotations
    for ann in annotations:  # an instance of class 255 is that class's pixels, never the uncertain band
        row = next(r for r in rows if r["image_id"] == ann["image_id"])
        semantic = np.asarray(Image.open(io.BytesIO(row["semantic_mask"]))).astype(np.int64)
        assert (semantic[coco.annToMask(ann) > 0] == ann["category_id"]).all()


def test_segmentation_probe_reads_300_class_masks(tmp_path):
    """The probe's label maps keep class 255 and 256 and ignore 65535 (not class 255)."""
    from engine.lab.train.segprobe import IGNORE, _semantic_file

    path = tmp_path / "m.png"
    path.write_bytes(encode_png(np.array([[0, 255, 256, 65535, 300]], dtype=np.uint16)))
    index = {k: k for k in range(1, 301)}
    assert _semantic_file(str(path), index).astype(np.int64).tolist() == [[0, 255, 256, IGNORE, 300]]
    assert IGNORE not in range(0, 301)
