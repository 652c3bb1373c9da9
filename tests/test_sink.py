"""The unit sink and the commit protocol, without Ray: UnitMaker is what each actor runs."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.job.planner import Planner
from engine.job.prompts import build_pool
from engine.job.runner import open_job
from engine.output.layout import COMMITS_DIR, STAGING_DIR, marker_file
from engine.output.sink import UnitSink
from engine.output.storage import Store
from engine.spec import parse_spec
from workers.unit import UnitMaker

from .conftest import make_bucket, s3_options


def first_unit(spec):
    pool = build_pool(spec)
    planner = Planner(spec, pool)
    return planner.unit(planner.plan_wave(0, {}, [], 0, 0, np.zeros(len(pool)), 0, 0)[0], {})


@pytest.fixture
def job(spec_data):
    spec = parse_spec(spec_data)
    open_job(spec)
    return spec, Store(spec.output), first_unit(spec)


@pytest.fixture(params=["local", "s3"])
def job_anywhere(request, spec_data):
    """``job`` on a local disk and on S3 (moto server): the commit protocol must hold on both."""
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        spec_data.update(output=f"s3://{make_bucket(endpoint)}/job", storage_options=s3_options(endpoint))
    spec = parse_spec(spec_data)
    open_job(spec)
    return spec, Store(spec.output, spec.storage_options), first_unit(spec)


def test_unit_writes_files_then_a_marker(job):
    spec, store, unit = job
    summary = UnitMaker(spec).make(unit)
    assert summary["won"] and summary["images"] == 8 and summary["rejects"] == 0
    marker = json.loads(store.read_bytes(marker_file(unit.unit_id)))
    staged = set(store.find(marker["staging"]))
    for rel in marker["files"]:
        assert f"{marker['staging']}/{rel}" in staged
    assert sum(marker["counts"].values()) == marker["instances"] == summary["instances"] > 0
    shard = json.loads(store.read_bytes(f"{marker['staging']}/{marker['shard']}"))
    assert [im["id"] for im in shard["images"]] == [image.image_id for image in unit.images]
    assert len(shard["annotations"]) == marker["instances"]


def test_rerun_of_committed_unit_does_nothing(job):
    spec, store, unit = job
    UnitMaker(spec).make(unit)
    before = store.find("")
    again = UnitMaker(spec).make(unit)
    assert not again["won"] and store.find("") == before


def test_racing_attempts_leave_exactly_one_committed(job_anywhere):
    spec, store, unit = job_anywhere
    maker = UnitMaker(spec)
    sinks = [UnitSink(store, maker.context, unit) for _ in range(2)]
    for sink in sinks:  # both attempts write all their files before either commits
        sink.on_write_start()
        maker._fill(sink, unit)
    results = [sink.on_write_complete() for sink in sinks]
    assert [won for won, _ in results] == [True, False]
    assert results[0][1]["attempt"] == results[1][1]["attempt"] == sinks[0].attempt
    assert store.list_names(STAGING_DIR) == [f"{unit.unit_id}.{sinks[0].attempt}"]
    assert store.list_names(COMMITS_DIR) == [f"{unit.unit_id}.json"]


def test_failed_attempt_removes_its_files(job):
    spec, store, unit = job
    maker = UnitMaker(spec)
    sink = UnitSink(store, maker.context, unit)
    sink.on_write_start()
    maker._fill(sink, unit)
    assert store.find(sink.staging)
    sink.on_write_failed()
    assert store.find(STAGING_DIR) == [] and not store.exists(marker_file(unit.unit_id))


def test_parquet_columns_and_hf_features(job):
    spec, store, unit = job
    UnitMaker(spec).make(unit)
    marker = json.loads(store.read_bytes(marker_file(unit.unit_id)))
    path = store.path(f"{marker['staging']}/parquet/{unit.unit_id}.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["image", "image_id", "width", "height", "prompt", "negative_prompt", "seed",
                                  "strength", "reference_id", "model", "label_head", "annotations", "semantic_mask"]
    row = table.slice(0, 1).to_pylist()[0]
    image = Image.open(io.BytesIO(row["image"]["bytes"]))
    assert image.size == (32, 32) and row["image"]["path"] == f"{row['image_id']:012d}.png"
    semantic = np.asarray(Image.open(io.BytesIO(row["semantic_mask"])))
    ann_ids = {a["category_id"] for a in row["annotations"]}
    assert set(np.unique(semantic)) - {0} == ann_ids

    import datasets

    ds = datasets.load_dataset("parquet", data_files=path, split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["image"].size == (32, 32)
    assert ds[0]["annotations"][0]["segmentation"]["size"] == [32, 32]


def test_missing_and_corrupt_references_are_rejected_not_fatal(tmp_path, spec_data):
    from engine.world import export_coco

    ann_path = export_coco(tmp_path / "refs", 6, split="train", seed=3)
    images = tmp_path / "refs" / "images" / "train"
    (images / "000000000001.png").unlink()
    (images / "000000000002.png").write_bytes(b"not a png")
    spec_data["prompts"] = {"source": "references", "annotations": str(ann_path), "images": str(images)}
    spec_data["wave_size"] = spec_data["unit_size"] = 6
    spec = parse_spec(spec_data)
    open_job(spec)
    unit = first_unit(spec)
    summary = UnitMaker(spec).make(unit)
    marker = json.loads(Store(spec.output).read_bytes(marker_file(unit.unit_id)))
    rejected = {r["reference_id"] for r in marker["rejects"]}  # the missing one never entered the pool
    assert rejected == {"2"} and summary["images"] == 6 - len(marker["rejects"])
    assert all("unusable" in r["reason"] and "not an image Pillow can decode" in r["reason"]
               for r in marker["rejects"])
