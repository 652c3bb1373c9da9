"""dde writes only where it owns the output, cleans up only what it can prove it wrote, and
never commits or deletes around a running attempt (issue: data safety)."""

import json
import os
import subprocess
import time

import pytest
import yaml

from engine.errors import UserError
from engine.job.finalize import finalize_job
from engine.job.runner import run_job
from engine.output.layout import COMMITS_DIR, LEASES_DIR, STAGING_DIR, marker_file
from engine.output.lease import TTL_S, Lease
from engine.output.storage import Store
from engine.spec import parse_spec
from workers.unit import UnitMaker

from .conftest import BASE_SPEC, DDE, make_bucket, s3_env, s3_options
from .helpers import dataset_digest, download, job_record
from .test_fault import write_spec

pytestmark = pytest.mark.ray

USER_FILES = {  # what case 23 found deleted or overwritten: an existing dataset and notes under the output
    "coco/images/my_photo_0001.jpg": b"\xff\xd8user jpeg",
    "coco/semantic/my_photo_0001.png": b"\x89PNG user mask",
    "coco/instances.json": b'{"images": [{"id": 1}], "annotations": [], "categories": []}',
    "parquet/train-00000-of-00001.parquet": b"PAR1 user parquet",
    "README.md": b"# my dataset notes\n",
    "job.json": b'{"mine": 1}\n',
    "photos/keep.jpg": b"\xff\xd8keep",
}


def put_user_files(store: Store) -> None:
    for rel, data in USER_FILES.items():
        store.write_bytes(rel, data)


def assert_user_files_intact(store: Store) -> None:
    for rel, data in USER_FILES.items():
        assert store.read_bytes(rel) == data, rel


def small_spec(output, **fields):
    return parse_spec({**BASE_SPEC, "output": output, "lower_bound": 4,
                       "budget": {"max_images": 16, "max_waves": 3}, "wave_size": 16, **fields})


def test_cli_refuses_a_local_output_with_user_files_before_writing(tmp_path):
    out = tmp_path / "shared"
    store = Store(str(out))
    put_user_files(store)
    before = sorted(store.find(""))
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({**BASE_SPEC, "output": str(out)}))
    proc = subprocess.run([DDE, "run", str(spec), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "holds files dde did not write" in proc.stderr and "README.md" in proc.stderr
    assert f"{out}/dde-t" in proc.stderr  # the fix: a sub-folder
    assert sorted(store.find("")) == before  # nothing written, not even a probe
    assert_user_files_intact(store)


def test_a_run_into_a_sub_folder_leaves_user_files_alone(tmp_path, ray_local):
    store = Store(str(tmp_path / "shared"))
    put_user_files(store)
    result = run_job(small_spec(str(tmp_path / "shared" / "dde-t")), quiet=True)
    assert result.stop_reason == "bounds_met"
    assert_user_files_intact(store)
    assert sorted(n for n in store.list_names("") if n != "dde-t") == ["README.md", "coco", "job.json", "parquet",
                                                                        "photos"]


def test_s3_prefix_with_user_files_is_refused_and_a_sub_prefix_runs(s3_endpoint, ray_local):
    bucket, options = make_bucket(s3_endpoint), s3_options(s3_endpoint)
    shared = Store(f"s3://{bucket}/shared", options)
    put_user_files(shared)
    before = sorted(shared.find(""))
    with pytest.raises(UserError, match="holds files dde did not write"):
        run_job(small_spec(shared.uri, storage_options=options), quiet=True)
    assert sorted(shared.find("")) == before
    # a prefix that merely starts like a user's one is another prefix
    assert run_job(small_spec(f"s3://{bucket}/shared-dde", storage_options=options), quiet=True).images
    assert run_job(small_spec(f"{shared.uri}/dde", storage_options=options), quiet=True).images
    assert_user_files_intact(shared)


def test_a_marker_never_lists_files_that_vanished_before_the_commit(tmp_path, ray_local):
    from engine.output.sink import UnitSink

    from .test_sink import first_unit

    spec = small_spec(str(tmp_path / "out"))
    from engine.job.runner import open_job

    store = open_job(spec)
    unit = first_unit(spec)
    maker = UnitMaker(spec)
    sink = UnitSink(store, maker.context, unit)
    sink.on_write_start()
    maker._fill(sink, unit)
    store.delete(f"{sink.staging}/{sink.files[0]}")  # what a clean-up racing this attempt did (case 37)
    with pytest.raises(RuntimeError, match="vanished before the commit"):
        sink.on_write_complete()
    assert not store.exists(marker_file(unit.unit_id))


@pytest.fixture
def finished(tmp_path, ray_local):
    spec = small_spec(str(tmp_path / "out"))
    run_job(spec, quiet=True)
    return spec, Store(spec.output)


def test_finalize_refuses_while_a_driver_holds_the_output(finished):
    spec, store = finished
    with Lease(store, "the driver of job 't'"):
        proc = subprocess.run([DDE, "finalize", spec.output], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "running driver" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert store.list_names(LEASES_DIR) == []  # a driver that ends gives its lease back
    proc = subprocess.run([DDE, "finalize", spec.output], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def stale_lease(store: Store, lease_id: str) -> None:
    old = time.time() - TTL_S - 5
    store.write_bytes(f"{LEASES_DIR}/{lease_id}.json", json.dumps(
        {"lease": lease_id, "host": "gone", "pid": 1, "started_at": old, "heartbeat_at": old}).encode())


def test_clean_up_removes_only_abandoned_attempts_it_named(finished):
    spec, store = finished
    digest = dataset_digest(spec.output)
    stale_lease(store, "aaaaaaaaaaaa")
    with Lease(store, "another driver") as live:
        attempts = {
            "live": f"{STAGING_DIR}/unit-000900.{live.id}-0123abcd",           # may still be running: kept
            "stale": f"{STAGING_DIR}/unit-000901.aaaaaaaaaaaa-0123abcd",       # its driver's lease expired
            "unleased": f"{STAGING_DIR}/unit-000902.0123456789ab",             # no lease id: kept while any driver runs
            "foreign": f"{STAGING_DIR}/my-notes",                              # not a name dde gives: never touched
        }
        for path in attempts.values():
            store.write_bytes(f"{path}/coco/images/000000000900.png", b"x")
        store.write_bytes("coco/images/not-listed.png", b"a file no marker lists")
        job = finalize_job(store, spec)
        assert (job["attempts_removed"], job["attempts_kept"]) == (1, 2)
        left = set(store.list_names(STAGING_DIR))
        assert {p.split("/")[1] for k, p in attempts.items() if k != "stale"} <= left
        assert attempts["stale"].split("/")[1] not in left
    assert finalize_job(store, spec)["attempts_removed"] == 2  # that driver ended: its attempts are abandoned
    assert store.read_bytes("coco/images/not-listed.png") == b"a file no marker lists"
    assert store.exists(f"{attempts['foreign']}/coco/images/000000000900.png")
    digest_after = dataset_digest(spec.output)
    digest_after.pop("coco/images/not-listed.png")
    assert digest_after == digest


def test_a_committed_unit_with_missing_files_is_regenerated_byte_for_byte(finished, capfd):
    spec, store = finished
    digest, record = dataset_digest(spec.output), job_record(spec.output)
    marker = json.loads(store.read_bytes(marker_file("unit-000001")))
    for rel in marker["files"][:3]:
        store.delete(rel)  # lost (case 37 on S3: deleted under a committed marker)
    with pytest.raises(UserError, match=r"unit-000001: 3 file\(s\).*dde resume"):
        finalize_job(store, spec)
    capfd.readouterr()
    run_job(spec, quiet=True)
    assert "unit-000001: 3 file(s) missing" in capfd.readouterr().err
    assert dataset_digest(spec.output) == digest and job_record(spec.output) == record
    assert json.loads(store.read_bytes(marker_file("unit-000001")))["attempt"] != marker["attempt"]
    assert len(store.list_names(COMMITS_DIR)) == record["units"]


def test_finalize_racing_a_running_job_on_s3(s3_endpoint, tmp_path):
    """Case 37: `dde finalize` while `dde run` writes the same S3 prefix. Finalize refuses; the
    job completes byte for byte like an uninterrupted one, and finalizes by itself."""
    fields = {"lower_bound": 20, "budget": {"max_images": 160, "max_waves": 8}, "wave_size": 40}
    bucket, env = make_bucket(s3_endpoint), s3_env(s3_endpoint)
    reference = tmp_path / "reference"
    subprocess.run([DDE, "run", str(write_spec(tmp_path, "ref", reference, **fields)), "--quiet"], check=True,
                   capture_output=True, timeout=300)
    uri = f"s3://{bucket}/racing"
    store = Store(uri, s3_options(s3_endpoint))
    driver = subprocess.Popen([DDE, "run", str(write_spec(tmp_path, "job", uri, **fields)), "--quiet"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not any(p.endswith(".png") for p in store.find(STAGING_DIR)):
        assert driver.poll() is None and time.time() < deadline, driver.stderr.read().decode()[-2000:]
        time.sleep(0.1)
    proc = subprocess.run([DDE, "finalize", uri], capture_output=True, text=True, timeout=120, env=env)
    assert driver.poll() is None, "the job ended before finalize raced it: the test proves nothing"
    assert proc.returncode == 2 and "running driver" in proc.stderr, proc.stderr
    assert driver.wait(timeout=300) == 0, driver.stderr.read().decode()[-2000:]
    copy = download(store, tmp_path / "copy")
    assert dataset_digest(copy) == dataset_digest(str(reference))
    assert job_record(copy) == job_record(str(reference))
    assert store.list_names(LEASES_DIR) == []


def test_resume_writes_where_the_uri_says_even_after_a_move(finished, tmp_path):
    """A moved (or relatively recorded) output resumes in place, not at the recorded path."""
    import shutil

    spec, _ = finished
    digest = dataset_digest(spec.output)
    moved = tmp_path / "moved"
    shutil.move(spec.output, moved)
    (moved / "coco" / "images" / "000000000003.png").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([DDE, "resume", str(moved), "--quiet"], capture_output=True, text=True, timeout=300,
                          cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert dataset_digest(str(moved)) == digest
    assert not os.path.exists(spec.output) and os.listdir(elsewhere) == []


def test_a_lease_whose_process_is_gone_on_this_machine_ends_at_once(finished):
    from engine.output.lease import _process_namespace, live_leases

    spec, store = finished
    gone = subprocess.Popen(["true"])
    gone.wait()
    now = time.time()
    for lease_id, pid in (("aaaaaaaaaaaa", gone.pid), ("bbbbbbbbbbbb", os.getpid())):
        store.write_bytes(f"{LEASES_DIR}/{lease_id}.json", json.dumps(
            {"lease": lease_id, "host": "here", "pid": pid, "namespace": _process_namespace(), "started_at": now,
             "heartbeat_at": now}).encode())
    assert set(live_leases(store)) == {"bbbbbbbbbbbb"}
    store.delete(f"{LEASES_DIR}/bbbbbbbbbbbb.json")
    proc = subprocess.run([DDE, "finalize", spec.output], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert store.list_names(LEASES_DIR) == []  # finalize removes leases that protect nothing


def test_bookkeeping_that_is_not_dde_s_is_one_line_or_ignored(finished):
    spec, store = finished
    store.write_bytes(f"{COMMITS_DIR}/README.json", b"my notes")  # not a marker name: ignored
    assert finalize_job(store, spec)["units"] == len(store.list_names(COMMITS_DIR)) - 1
    store.write_bytes("_job/spec.json", b'{"spec": {"name"')
    proc = subprocess.run([DDE, "status", spec.output], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unreadable" in proc.stderr and "Traceback" not in proc.stderr


def test_outputs_that_are_a_file_or_an_s3_console_folder(tmp_path, s3_endpoint, ray_local):
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    with pytest.raises(UserError, match="which is a file"):
        run_job(small_spec(str(afile)), quiet=True)
    assert afile.read_text() == "mine"
    bucket, options = make_bucket(s3_endpoint), s3_options(s3_endpoint)
    console = Store(f"s3://{bucket}", options)
    console.write_bytes("console/", b"")  # what "Create folder" in the S3 console makes
    assert run_job(small_spec(f"s3://{bucket}/console/", storage_options=options), quiet=True).images
