"""Inputs pinned to the job: a resume refuses a prompts, annotations or captions file, or a
reference image, that differs from what the job planned and generated with (case 28)."""

import json
import subprocess

import pytest
import yaml
from PIL import Image

from engine.errors import InputChanged
from engine.job.runner import open_job, run_job
from engine.output.layout import COMMITS_DIR, SPEC_FILE, marker_file
from engine.output.storage import Store
from engine.spec import parse_spec

from .conftest import BASE_SPEC, DDE
from .helpers import dataset_digest, job_record

pytestmark = pytest.mark.ray

PROMPTS = ['{"prompt": "a circle and a square"}', '{"prompt": "a square"}', '{"prompt": "a triangle"}',
           '{"prompt": "a circle"}']


def jsonl_spec(tmp_path, output, **fields):
    path = tmp_path / "prompts.jsonl"
    if not path.exists():
        path.write_text("\n".join(PROMPTS) + "\n")
    data = {**BASE_SPEC, "output": str(output), "classes": ["circle", "square", "triangle"], "lower_bound": 3,
            "budget": {"max_images": 16, "max_waves": 2}, "unit_size": 2, "wave_size": 8,
            "prompts": {"source": "jsonl", "path": str(path)}, **fields}
    return parse_spec(data), path


@pytest.mark.parametrize("edit", ["reorder", "drop_lines"])
def test_resume_refuses_an_edited_prompts_file(tmp_path, ray_local, edit):
    spec, prompts = jsonl_spec(tmp_path, tmp_path / "out")
    run_job(spec, quiet=True, finalize=False)
    original = prompts.read_text()
    lines = original.splitlines()
    prompts.write_text("\n".join(lines[::-1] if edit == "reorder" else lines[:2]) + "\n")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(json.loads(spec.model_dump_json())))
    for argv in (["resume", spec.output], ["run", str(spec_file)]):
        proc = subprocess.run([DDE, *argv, "--quiet"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"prompts.path: {prompts}" in proc.stderr and "sha256" in proc.stderr
    prompts.write_text(original)  # restored: the job continues
    assert run_job(spec, quiet=True).stop_reason == "bounds_met"


def test_a_job_that_committed_nothing_starts_over_with_the_edited_file(tmp_path, ray_local):
    """Case 28 with the kill right after planning: nothing is bound yet, so the edit is taken,
    and the dataset is the one the edited file gives."""
    spec, prompts = jsonl_spec(tmp_path, tmp_path / "killed")
    from engine.job.prompts import build_pool

    inputs: dict = {}
    build_pool(spec, inputs)
    open_job(spec, inputs)  # what a driver killed before its first commit leaves
    prompts.write_text("\n".join(PROMPTS[::-1]) + "\n")
    run_job(spec, quiet=True)
    reference, _ = jsonl_spec(tmp_path, tmp_path / "reference")
    run_job(reference, quiet=True)
    assert dataset_digest(spec.output) == dataset_digest(reference.output)
    recorded = json.loads(Store(spec.output).read_bytes(SPEC_FILE))["inputs"]["prompts.path"]
    assert recorded["size"] == prompts.stat().st_size


def test_resume_refuses_an_edited_annotations_file(tmp_path, ray_local):
    from engine.world import export_coco

    annotations = export_coco(tmp_path / "refs", 6, split="train", seed=3)
    spec = parse_spec({**BASE_SPEC, "output": str(tmp_path / "out"), "lower_bound": 2,
                       "budget": {"max_images": 16, "max_waves": 2}, "wave_size": 16,
                       "prompts": {"source": "references", "annotations": str(annotations),
                                   "images": str(tmp_path / "refs" / "images" / "train")}})
    run_job(spec, quiet=True, finalize=False)
    coco = json.loads(open(annotations).read())
    coco["annotations"] = coco["annotations"][1:]
    open(annotations, "w").write(json.dumps(coco))
    with pytest.raises(InputChanged, match=r"prompts\.annotations: .*instances_train\.json"):
        run_job(spec, quiet=True)


def test_resume_refuses_a_reference_image_replaced_under_its_name(tmp_path, ray_local):
    """A unit not yet committed at the kill would read the new image, while committed units
    read the old one: one dataset, two versions of one reference. Resume refuses."""
    from engine.world import export_coco

    annotations = export_coco(tmp_path / "refs", 3, split="train", seed=3)
    data = {**BASE_SPEC, "lower_bound": 2, "budget": {"max_images": 24, "max_waves": 1}, "wave_size": 24,
            "unit_size": 4, "prompts": {"source": "references", "annotations": str(annotations),
                                        "images": str(tmp_path / "refs" / "images" / "train")}}
    reference = parse_spec({**data, "output": str(tmp_path / "reference")})
    run_job(reference, quiet=True)
    spec = parse_spec({**data, "output": str(tmp_path / "out")})
    run_job(spec, quiet=True, finalize=False)
    store = Store(spec.output)
    markers = {n[:-5]: json.loads(store.read_bytes(f"{COMMITS_DIR}/{n}")) for n in store.list_names(COMMITS_DIR)}
    uri = sorted(markers["unit-000000"]["references"])[0]
    assert sum(uri in m["references"] for m in markers.values()) >= 2  # read by more than one unit
    store.delete(marker_file("unit-000000"))  # as if it had not committed before the kill
    original = open(uri, "rb").read()
    Image.new("RGB", (64, 64), "red").save(uri)
    with pytest.raises(InputChanged, match="changed since committed units of this job read it"):
        run_job(spec, quiet=True)
    open(uri, "wb").write(original)  # restored: the resumed dataset is the uninterrupted one
    run_job(spec, quiet=True)
    assert dataset_digest(spec.output) == dataset_digest(reference.output)
    assert job_record(spec.output) == job_record(reference.output)


def test_a_regenerated_unit_reads_the_references_its_lost_commit_read(tmp_path, ray_local):
    """A reference read only by a unit whose files went missing stays pinned when that unit
    is un-committed and regenerated: a replaced file is refused, not taken."""
    from engine.world import export_coco

    annotations = export_coco(tmp_path / "refs", 12, split="train", seed=3)
    spec = parse_spec({**BASE_SPEC, "output": str(tmp_path / "out"), "lower_bound": 1,
                       "budget": {"max_images": 8, "max_waves": 1}, "wave_size": 8, "unit_size": 4,
                       "prompts": {"source": "references", "annotations": str(annotations),
                                   "images": str(tmp_path / "refs" / "images" / "train")}})
    run_job(spec, quiet=True)
    store = Store(spec.output)
    markers = [json.loads(store.read_bytes(f"{COMMITS_DIR}/{n}")) for n in store.list_names(COMMITS_DIR)]
    only_first = set(markers[0]["references"]) - {u for m in markers[1:] for u in m["references"]}
    assert only_first, "every reference of the first unit is also read by another: the test proves nothing"
    Image.new("RGB", (64, 64), "red").save(sorted(only_first)[0])
    store.delete(markers[0]["files"][0])  # the unit is broken: resume regenerates it
    with pytest.raises(InputChanged, match="changed since committed units of this job read it"):
        run_job(spec, quiet=True)
