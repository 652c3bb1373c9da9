"""`dde submit / logs / stop` against a real Ray cluster started with `ray start --head` on 127.0.0.1."""

import json
import os
import subprocess
import time

import yaml

from .conftest import DDE
from .helpers import free_port


def dde(env, *args):
    proc = subprocess.run([DDE, *args], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_submit_is_idempotent_and_the_job_finishes(ray_head, spec_data, tmp_path):
    address, env = ray_head
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data))
    first = dde(env, "submit", str(spec_path), "--address", address)
    sid = first.split()[1]
    assert first.startswith("submitted: dde-t-")
    assert dde(env, "submit", str(spec_path), "--address", address).startswith(f"already submitted: {sid}")

    out = str(tmp_path / "out")
    deadline = time.time() + 240
    while not os.path.exists(os.path.join(out, "job.json")):  # dde status reads storage: works for submitted jobs
        assert time.time() < deadline, dde(env, "logs", sid, "--address", address)[-3000:]
        time.sleep(2)
    # job.json is the driver's last write; its last log lines can reach Ray's log a moment later
    while "bounds_met" not in (logs := dde(env, "logs", sid, "--address", address)):
        assert time.time() < deadline, logs[-3000:]
        time.sleep(1)
    job = json.load(open(tmp_path / "out" / "job.json"))
    assert job["stop_reason"] == "bounds_met"
    status = json.loads(dde(env, "status", out, "--json"))
    assert status["state"] == "finalized" and status["images"] == job["images"]
    # the driver exits a moment after its last line (Ray's shutdown): until then the job still runs
    while not (jobs := dde(env, "jobs", "--address", address)).startswith(f"{sid}  SUCCEEDED "):
        assert time.time() < deadline and jobs.startswith(f"{sid}  RUNNING "), jobs
        time.sleep(1)
    assert dde(env, "stop", sid, "--address", address).strip() == "not running"


def test_failed_submission_is_resubmitted(ray_head, spec_data, tmp_path):
    address, env = ray_head
    blocker = tmp_path / "file"
    blocker.write_text("x")
    spec_data["output"] = str(blocker / "out")  # unwritable: the driver exits with code 2
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data))
    sid = dde(env, "submit", str(spec_path), "--address", address).split()[1]
    deadline = time.time() + 120
    while "output: expected a writable location" not in dde(env, "logs", sid, "--address", address):
        assert time.time() < deadline
        time.sleep(2)
    # until Ray records the driver's exit the submission still counts as running (idempotent)
    deadline = time.time() + 60
    while not (again := dde(env, "submit", str(spec_path), "--address", address)).startswith("resubmitted"):
        assert again.startswith(f"already submitted: {sid}") and time.time() < deadline
        time.sleep(2)
    assert again.startswith(f"resubmitted: {sid}")


def test_submit_to_nothing_is_a_clear_error(spec_data, tmp_path):
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data))
    proc = subprocess.run([DDE, "submit", str(spec_path), "--address", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--address: expected a reachable Ray dashboard" in proc.stderr


def test_a_relative_output_is_resolved_against_the_submitters_cwd(ray_head, spec_data, tmp_path):
    """The examples' `output: out/...` submitted to a cluster on this machine: the spec sent carries
    the absolute path under the submitter's cwd, not one inside Ray's temporary working dir copy."""
    address, env = ray_head
    spec_data["output"] = "data/shapes"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec_data))
    proc = subprocess.run([DDE, "submit", "job.yaml", "--address", address, "--seed", "8", "--max-images", "100"],
                          capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = str(tmp_path / "data" / "shapes")
    assert f"output: {out}   watch: dde status {out}   " in proc.stdout
    sid = proc.stdout.split()[1]
    deadline = time.time() + 240
    while not os.path.exists(os.path.join(out, "job.json")):
        assert time.time() < deadline, dde(env, "logs", sid, "--address", address)[-3000:]
        time.sleep(1)
    job = json.load(open(os.path.join(out, "job.json")))
    assert (job["spec"]["seed"], job["spec"]["budget"]["max_images"]) == (8, 100)  # like `dde run`'s flags
    status = json.loads(dde(env, "status", out, "--json"))  # the printed watch line, from another cwd
    assert status["state"] == "finalized" and status["images"] == job["images"]


def test_an_unknown_job_id_is_one_line(ray_head):
    address, env = ray_head
    for command in ("logs", "stop"):
        proc = subprocess.run([DDE, command, "dde-typo", "--address", address], capture_output=True, text=True,
                              timeout=60, env=env)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "id: expected a submission id" in proc.stderr and "dde jobs --address" in proc.stderr


def test_a_driver_without_the_clusters_token_is_told_so(ray_head, spec_data, tmp_path):
    _, env = ray_head
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data))
    started = time.monotonic()
    proc = subprocess.run([DDE, "run", str(spec_path), "--address", env["RAY_ADDRESS"], "--quiet"],
                          capture_output=True, text=True, timeout=120, env=dict(env, RAY_AUTH_MODE="disabled"))
    assert proc.returncode == 2, proc.stderr[-2000:]  # not 75, "storage outage"
    assert "requires its auth token; set RAY_AUTH_MODE=token" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr and time.monotonic() - started < 60
