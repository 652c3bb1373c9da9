"""Whole jobs on field inputs, in process (memory:// outputs run without Ray): an output whose
units had every image rejected still loads in HF ``datasets`` (case 08), a ``none`` head's
classes are "not labelled" rather than "stuck", and a job that makes no image fails (case 07)."""

import json
import os
import subprocess

import fsspec
import pytest
import yaml
from PIL import Image

from engine.job.runner import run_job
from engine.job.status import format_status, job_status
from engine.output.storage import Store
from engine.spec import parse_spec

from .conftest import BASE_SPEC, DDE


def references_job(tmp_path, output: str, undecodable: set[int], **fields) -> dict:
    """8 references, 2 per unit in id order; those in ``undecodable`` are not images."""
    refs = tmp_path / "refs"
    refs.mkdir(exist_ok=True)
    coco = {"images": [{"id": i, "file_name": f"{i}.png"} for i in range(8)],
            "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
            "annotations": [{"image_id": i, "category_id": 1 + i % 2} for i in range(8)]}
    (refs / "instances.json").write_text(json.dumps(coco))
    for i in range(8):
        if i in undecodable:
            (refs / f"{i}.png").write_text("<html>404 not found</html>")
        else:
            Image.new("RGB", (32, 32), "gray").save(refs / f"{i}.png")
    return {**BASE_SPEC, "output": output, "classes": ["circle", "square"], "lower_bound": 1,
            "budget": {"max_images": 8, "max_waves": 1}, "unit_size": 2, "wave_size": 8,
            "prompts": {"source": "references", "annotations": str(refs / "instances.json")}, **fields}


def test_rejected_units_leave_no_empty_parquet_and_none_head_is_not_labelled(tmp_path):
    import datasets

    output = f"memory://field-{tmp_path.name}"
    spec = parse_spec(references_job(tmp_path, output, undecodable={0, 2, 4, 6, 7},
                                     label_head={"name": "none"}))
    result = run_job(spec, quiet=True)
    assert (result.stop_reason, result.images, result.stuck) == ("max_images", 3, [])
    local = tmp_path / "copy"
    fsspec.filesystem("memory").get(Store(output).root + "/", str(local), recursive=True)
    shards = sorted(os.listdir(local / "parquet"))
    assert len(shards) < 4  # at least one unit had both its images rejected and wrote no file
    rows = datasets.load_dataset("parquet", data_files=str(local / "parquet" / "*.parquet"), split="train",
                                 cache_dir=str(tmp_path / "hf"))
    assert len(rows) == 3 and rows[0]["image"].mode == "RGB"
    status = job_status(Store(output))
    assert status["rejects"] == 5 and "not an image Pillow can decode" in status["reject_samples"][0]["reason"]
    assert {c["state"] for c in status["classes"].values()} == {"not labelled"}
    assert "STUCK" not in format_status(status) and "circle        0 / 1        not labelled" in format_status(status)
    card = (local / "README.md").read_text()
    assert "| circle | 0 | 0 | 1 | not labelled |" in card


def test_a_job_that_makes_no_image_exits_nonzero(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(references_job(tmp_path, f"memory://none-{tmp_path.name}",
                                                       undecodable=set(range(8)))))
    proc = subprocess.run([DDE, "run", str(spec_file), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: the job made no image; the first reject: reference" in proc.stderr
    assert "not an image Pillow can decode" in proc.stderr


@pytest.mark.parametrize("breakage", ["missing prompts file", "class typo", "all images missing", "duplicate key"])
def test_a_failed_input_check_writes_nothing_and_the_fixed_spec_runs(tmp_path, breakage):
    """Case 19's kind: every input check runs before the output is touched."""
    output = tmp_path / "out"
    data = references_job(tmp_path, str(output), undecodable=set())
    broken = json.loads(json.dumps(data))
    if breakage == "missing prompts file":
        broken["prompts"]["annotations"] += ".typo"
    elif breakage == "class typo":
        broken["classes"] = ["circle", "squares-ish"]
    elif breakage == "all images missing":
        broken["prompts"]["images"] = str(tmp_path)
    spec_file = tmp_path / "spec.yaml"
    text = yaml.safe_dump(broken) + ("seed: 3\n" if breakage == "duplicate key" else "")
    spec_file.write_text(text)
    proc = subprocess.run([DDE, "run", str(spec_file), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert not output.exists()
    data["output"] = f"memory://fixed-{tmp_path.name}"
    assert run_job(parse_spec(data), quiet=True).images == 8


def test_jpeg_output_is_recorded_in_the_card_and_parquet_metadata(tmp_path):
    import pyarrow.parquet as pq

    output = f"memory://jpeg-{tmp_path.name}"
    spec = parse_spec({**BASE_SPEC, "output": output, "lower_bound": 2, "budget": {"max_images": 8, "max_waves": 1},
                       "unit_size": 4, "wave_size": 8, "image_format": {"format": "jpeg", "quality": 80}})
    assert run_job(spec, quiet=True).images == 8
    local = tmp_path / "copy"
    fsspec.filesystem("memory").get(Store(output).root + "/", str(local), recursive=True)
    assert sorted(os.listdir(local / "coco" / "images"))[0] == "000000000000.jpg"
    assert sorted(os.listdir(local / "coco" / "semantic"))[0] == "000000000000.png"  # class ids stay lossless
    coco = json.loads((local / "coco" / "instances.json").read_text())
    assert all((local / "coco" / "images" / image["file_name"]).exists() for image in coco["images"])
    parquet = pq.ParquetFile(sorted((local / "parquet").iterdir())[0])
    assert json.loads(parquet.schema_arrow.metadata[b"dde"]) == {"image_format": {"format": "jpeg", "quality": 80}}
    assert parquet.read().column("image")[0].as_py()["bytes"][:3] == b"\xff\xd8\xff"
    assert "- images: 8 (JPEG, quality 80)" in (local / "README.md").read_text()


def test_row_groups_stay_under_the_limit(monkeypatch):
    """The HF dataset viewer refuses row groups over 286 MiB; dde keeps them under ROW_GROUP_BYTES."""
    import numpy as np
    import pyarrow.parquet as pq

    from engine.output import sink
    from engine.output.sink import SinkContext, UnitSink
    from engine.records import Generated, ImageRequest, Labels, Unit

    monkeypatch.setattr(sink, "ROW_GROUP_BYTES", 3000)  # a small limit stands for 100 MB
    store = Store(f"memory://groups-{os.getpid()}")
    unit = UnitSink(store, SinkContext(("circle",), "m", "none"), Unit("unit-000000", 0, 0, ()))
    unit.on_write_start()
    noise = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)  # ~1.7 kB as PNG
    for i in range(5):
        unit.write(ImageRequest(i, i, "p"), Generated(noise), Labels([]))
    unit.on_write_complete()
    shard = next(p for p in store.find("_staging") if p.endswith(".parquet"))
    with store.fs.open(store.path(shard), "rb") as f:
        groups = pq.ParquetFile(f).metadata
        assert groups.num_rows == 5 and groups.num_row_groups == 5
    store.delete("", recursive=True)
