"""The layouts of a finished output: COCO in one file or shards, WebDataset tars, the manifest, `dde export`."""

import json
import os
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.errors import UserError
from engine.job.finalize import finalize_job
from engine.job.runner import run_job
from engine.spec import fingerprint, parse_spec
from engine.output.storage import Store

from .conftest import BASE_SPEC, DDE, make_bucket, s3_env, s3_options

pytestmark = pytest.mark.ray

LAYOUT = {"formats": ["parquet", "coco", "webdataset"], "coco_shard_images": 10, "webdataset_shard_bytes": 20_000}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("layouts") / "out"
    spec = parse_spec({**BASE_SPEC, "output": str(out), "layout": LAYOUT})
    result = run_job(spec, quiet=True)
    return spec, result, str(out)


def _parquet_rows(out: str) -> list[dict]:
    files = sorted(os.listdir(os.path.join(out, "parquet")))
    return [r for f in files for r in pq.read_table(os.path.join(out, "parquet", f)).to_pylist()]


def _manifest(out: str) -> dict:
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def test_coco_shards_are_each_valid_with_ids_unique_across_them(sharded):
    from pycocotools.coco import COCO

    spec, result, out = sharded
    entries = _manifest(out)["coco"]
    assert len(entries) > 1 and not os.path.exists(os.path.join(out, "coco/instances.json"))
    assert [e["file"] for e in entries] == [f"coco/instances-{i:05d}-of-{len(entries):05d}.json"
                                            for i in range(len(entries))]
    image_ids, ann_ids = [], []
    for entry in entries:
        coco = COCO(os.path.join(out, entry["file"]))
        assert len(coco.getImgIds()) == entry["images"] <= LAYOUT["coco_shard_images"]
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [c.name for c in spec.class_specs]
        assert {a["image_id"] for a in coco.dataset["annotations"]} <= set(coco.getImgIds())
        image_ids += coco.getImgIds()
        ann_ids += coco.getAnnIds()
    assert len(image_ids) == len(set(image_ids)) == result.images
    assert len(ann_ids) == len(set(ann_ids)) == result.instances


def test_manifest_indexes_parquet_with_counts_per_class(sharded):
    _, result, out = sharded
    parquet = _manifest(out)["parquet"]
    assert sorted(e["file"] for e in parquet) == sorted(f"parquet/{f}" for f in os.listdir(os.path.join(out, "parquet")))
    for entry in parquet:
        rows = pq.read_table(os.path.join(out, entry["file"])).to_pylist()
        assert entry["rows"] == len(rows)
        names = [a["category"] for r in rows for a in r["annotations"]]
        assert entry["instances"] == {c: names.count(c) for c in entry["instances"]}
    assert sum(sum(e["instances"].values()) for e in parquet) == result.instances


def test_webdataset_reads_back_with_the_webdataset_package(sharded):
    import webdataset as wds

    _, result, out = sharded
    tars = _manifest(out)["webdataset"]
    assert len(tars) > 1
    for entry in tars:  # a tar closes before a sample would take it past the bound (one sample at least)
        size = os.path.getsize(os.path.join(out, entry["file"]))
        assert entry["samples"] == 1 or size <= LAYOUT["webdataset_shard_bytes"]
    urls = [os.path.join(out, e["file"]) for e in tars]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    rows = {r["image_id"]: r for r in _parquet_rows(out)}
    assert len(samples) == result.images == sum(e["samples"] for e in tars)
    for sample in samples:
        row = rows[int(sample["__key__"])]
        meta = sample["json"]
        assert meta["prompt"] == row["prompt"] and meta["seed"] == row["seed"]
        assert [a["bbox"] for a in meta["annotations"]] == [a["bbox"] for a in row["annotations"]]
        assert sample["png"].shape == (row["height"], row["width"], 3)
        assert "seg.png" in sample


def test_refinalize_is_byte_identical_and_a_smaller_dataset_layout_replaces_the_shards(sharded):
    spec, _, out = sharded
    store = Store(out)
    tars = {e["file"]: store.read_bytes(e["file"]) for e in _manifest(out)["webdataset"]}
    user_file = os.path.join(out, "coco", "notes.txt")  # not a name dde gives: never removed
    with open(user_file, "w") as f:
        f.write("mine")
    finalize_job(store, spec)
    assert {f: store.read_bytes(f) for f in tars} == tars
    one_file = spec.model_copy(update={"layout": spec.layout.model_copy(update={"coco_shard_images": 10_000})})
    finalize_job(store, one_file)
    assert [e["file"] for e in _manifest(out)["coco"]] == ["coco/instances.json"]
    assert sorted(os.listdir(os.path.join(out, "coco"))) == ["images", "instances.json", "notes.txt", "semantic"]
    finalize_job(store, spec)  # back to shards: instances.json goes
    assert "instances.json" not in os.listdir(os.path.join(out, "coco"))


def test_export_to_coco_from_parquet_equals_finalize_coco(sharded, tmp_path):
    from pycocotools.coco import COCO

    _, _, out = sharded
    proc = subprocess.run([DDE, "export", out, "--to", "coco", "--out", str(tmp_path / "c")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    exported = COCO(str(tmp_path / "c/coco/instances.json"))
    shards = [COCO(os.path.join(out, e["file"])) for e in _manifest(out)["coco"]]
    images = {i["id"]: i for s in shards for i in s.dataset["images"]}
    assert {i["id"]: i for i in exported.dataset["images"]} == images
    original = [a for s in shards for a in s.dataset["annotations"]]
    assert len(exported.dataset["annotations"]) == len(original)
    for a, b in zip(exported.dataset["annotations"], original):
        assert (a["id"], a["image_id"], a["category_id"], a["segmentation"]) == \
               (b["id"], b["image_id"], b["category_id"], b["segmentation"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], rtol=1e-6)
    for image in images.values():
        with open(tmp_path / "c/coco/images" / image["file_name"], "rb") as f, \
                open(os.path.join(out, "coco/images", image["file_name"]), "rb") as g:
            assert f.read() == g.read()


def test_export_to_webdataset_and_parquet(sharded, tmp_path):
    _, _, out = sharded
    for to in ("webdataset", "parquet"):
        proc = subprocess.run([DDE, "export", out, "--to", to, "--out", str(tmp_path / to),
                               "--webdataset-shard-bytes", str(LAYOUT["webdataset_shard_bytes"])],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    for entry in _manifest(out)["webdataset"]:  # the same tars as finalize wrote
        with open(tmp_path / "webdataset" / entry["file"], "rb") as f, open(os.path.join(out, entry["file"]), "rb") as g:
            assert f.read() == g.read()
    assert sorted(os.listdir(tmp_path / "parquet/parquet")) == sorted(os.listdir(os.path.join(out, "parquet")))


def test_export_refuses_a_folder_with_files_and_an_unfinished_source(sharded, tmp_path):
    _, _, out = sharded
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    proc = subprocess.run([DDE, "export", out, "--to", "coco", "--out", str(busy)], capture_output=True, text=True)
    assert proc.returncode == 2 and "--out" in proc.stderr and "holds files" in proc.stderr
    assert os.listdir(busy) == ["keep.txt"]
    proc = subprocess.run([DDE, "export", str(tmp_path), "--to", "coco", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "finished dde output" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_parquet_only_output_stores_each_image_once(tmp_path, ray_local):
    spec = parse_spec({**BASE_SPEC, "output": str(tmp_path / "out"), "layout": {"formats": ["parquet"]}})
    result = run_job(spec, quiet=True)
    out = str(tmp_path / "out")
    assert result.images and not os.path.exists(os.path.join(out, "coco"))
    assert set(_manifest(out)) == {"parquet"}
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
    assert "coco/" not in card and "segmentation" in card  # the masks are in Parquet
    job = json.load(open(os.path.join(out, "job.json")))
    assert sum(c["images"] for c in job["classes"].values()) >= result.images  # images per class still counted


def test_layout_spec_checks_and_fingerprint(spec_data):
    base = fingerprint(parse_spec(spec_data))
    assert fingerprint(parse_spec({**spec_data, "layout": {"formats": ["parquet", "coco", "webdataset"],
                                                            "coco_shard_images": 5}})) == base
    assert fingerprint(parse_spec({**spec_data, "layout": {"formats": ["parquet"]}})) != base
    with pytest.raises(UserError, match="parquet"):
        parse_spec({**spec_data, "layout": {"formats": ["coco"]}})


def test_layouts_on_s3_and_export_to_a_local_folder(s3_endpoint, ray_local, tmp_path):
    import webdataset as wds

    options = s3_options(s3_endpoint)
    spec = parse_spec({**BASE_SPEC, "output": f"s3://{make_bucket(s3_endpoint)}/job", "storage_options": options,
                       "lower_bound": 10, "layout": LAYOUT})
    result = run_job(spec, quiet=True)
    store = Store(spec.output, options)
    manifest = json.loads(store.read_bytes("manifest.json"))
    assert len(manifest["coco"]) > 1 and len(manifest["webdataset"]) > 1
    assert sorted(store.find("webdataset")) == [e["file"] for e in manifest["webdataset"]]  # no temp names left
    proc = subprocess.run([DDE, "export", spec.output, "--to", "webdataset", "--out", str(tmp_path / "w")],
                          capture_output=True, text=True, env=s3_env(s3_endpoint))
    assert proc.returncode == 0, proc.stderr
    tars = sorted(str(p) for p in (tmp_path / "w/webdataset").iterdir())
    assert len(list(wds.WebDataset(tars, shardshuffle=False))) == result.images


def test_refinalize_on_s3_finds_published_files_and_names_lost_ones(s3_endpoint, ray_local):
    """A second finalize finds every file at its final name (one prefix listing a folder and unit);
    a published file deleted behind dde's back is named, with its unit, before anything changes."""
    options = s3_options(s3_endpoint)
    spec = parse_spec({**BASE_SPEC, "output": f"s3://{make_bucket(s3_endpoint)}/job", "storage_options": options,
                       "lower_bound": 5})
    run_job(spec, quiet=True)
    store = Store(spec.output, options)
    card = store.read_bytes("README.md")
    finalize_job(store, spec)
    assert store.read_bytes("README.md") == card
    lost = sorted(store.find("coco/images"))[3]
    store.delete(lost)
    with pytest.raises(UserError, match=r"1 committed unit\(s\) with files missing \(unit-000000: 1 file\(s\), "
                                        rf"e\.g\. {lost}\); `dde resume"):
        finalize_job(store, spec)
