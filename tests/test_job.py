"""End to end on a real local Ray: run, finalize, load, resume, refuse a changed spec."""

import json
import os
import subprocess

import numpy as np
import pytest

from engine.errors import UserError
from engine.job.runner import run_job
from engine.job.status import job_status
from engine.output.storage import Store
from engine.spec import parse_spec

from .conftest import DDE
from .helpers import dataset_digest, job_record

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_local):
    from .conftest import BASE_SPEC

    out = tmp_path_factory.mktemp("job") / "out"
    spec = parse_spec({**BASE_SPEC, "output": str(out)})
    result = run_job(spec, quiet=True)
    return spec, result, str(out)


def test_run_meets_bounds_and_counts_match_output(finished):
    spec, result, out = finished
    assert result.stop_reason == "bounds_met"
    assert all(result.counts[c] >= b for c, b in spec.bounds().items())
    from pycocotools.coco import COCO

    coco = COCO(os.path.join(out, "coco/instances.json"))
    assert len(coco.getImgIds()) == result.images
    per_class = {c["name"]: len(coco.getAnnIds(catIds=[c["id"]])) for c in coco.loadCats(coco.getCatIds())}
    assert per_class == result.counts
    ann = coco.loadAnns(coco.getAnnIds())[0]
    mask = coco.annToMask(ann)
    assert mask.sum() == ann["area"]
    x, y, w, h = ann["bbox"]
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
    for image in coco.loadImgs(coco.getImgIds()[:5]):
        assert os.path.exists(os.path.join(out, "coco/images", image["file_name"]))
    ids = sorted(a["id"] for a in coco.dataset["annotations"])
    assert ids == list(range(1, len(ids) + 1))


def test_output_layout_is_clean_after_finalize(finished):
    _, result, out = finished
    store = Store(out)
    assert store.find("_staging") and all("/parquet/" not in p and "/coco/" not in p for p in store.find("_staging"))
    units = store.list_names("_commits")
    assert store.list_names("parquet") == [u.replace(".json", ".parquet") for u in units]
    card = open(os.path.join(out, "README.md")).read()
    assert "| circle |" in card and f"images: {result.images}" in card
    job = json.load(open(os.path.join(out, "job.json")))
    assert job["stop_reason"] == "bounds_met" and job["images"] == result.images


def test_parquet_loads_in_ray_data_and_torchvision(finished):
    import ray

    _, result, out = finished
    ds = ray.data.read_parquet(os.path.join(out, "parquet"))
    assert ds.count() == result.images
    row = ds.take(1)[0]
    assert row["image"]["bytes"][:4] == b"\x89PNG" and row["label_head"] == "ground_truth"
    from torchvision.datasets import CocoDetection

    tv = CocoDetection(os.path.join(out, "coco/images"), os.path.join(out, "coco/instances.json"))
    image, targets = tv[0]
    assert image.size == (32, 32) and all("bbox" in t for t in targets)


def test_status_reads_storage(finished):
    spec, result, out = finished
    status = job_status(Store(out))
    assert status["state"] == "finalized" and status["stop_reason"] == "bounds_met"
    assert status["images"] == result.images and status["stuck"] == []
    assert {c: s["count"] for c, s in status["classes"].items()} == result.counts
    proc = subprocess.run([DDE, "status", out, "--json"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(proc.stdout)["units_done"] == status["units_done"]


def test_rerun_is_a_noop_and_changed_spec_is_refused(finished):
    spec, result, out = finished
    before = dataset_digest(out)
    again = run_job(spec, quiet=True)
    assert (again.images, again.counts) == (result.images, result.counts)
    assert dataset_digest(out) == before
    changed = parse_spec({**spec.model_dump(mode="json"), "seed": 99, "lower_bound": 21})
    with pytest.raises(UserError) as info:
        run_job(changed, quiet=True)
    assert "lower_bound: 20 -> 21" in str(info.value) and "seed: 7 -> 99" in str(info.value)


def test_same_seed_same_dataset_elsewhere(finished, tmp_path):
    spec, _, out = finished
    other = parse_spec({**spec.model_dump(mode="json"), "output": str(tmp_path / "again")})
    run_job(other, quiet=True)
    assert dataset_digest(str(tmp_path / "again")) == dataset_digest(out)
    assert job_record(str(tmp_path / "again")) == job_record(out)


def test_unreachable_class_reported_stuck_and_job_ends(spec_data, tmp_path, ray_local):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a circle", "classes": ["circle"]}\n')
    spec_data.update(classes=["circle", "square"], lower_bound=5, wave_size=8,
                     prompts={"source": "jsonl", "path": str(prompts)})
    spec_data["generator"]["params"] = {"size": 32, "min_objects": 1, "max_objects": 1}
    result = run_job(parse_spec(spec_data), quiet=True)
    assert result.stop_reason == "stuck" and result.stuck == ["square"]
    assert result.waves <= 3
    card = open(os.path.join(spec_data["output"], "README.md")).read()
    assert "stuck classes: square" in card
