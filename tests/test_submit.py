"""`dde submit / logs / stop` against a real Ray cluster started with `ray start --head` on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from .conftest import DDE
from .helpers import free_port

BIN = os.path.dirname(sys.executable)


def dashboard_up(address: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{address}/api/version", timeout=2)
    except urllib.error.HTTPError:
        return True  # 401: up, and asking for the cluster's token
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_head():
    port, dashboard = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAY_AUTH_MODE="token")
    head = subprocess.Popen(
        [f"{BIN}/ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
         "--include-dashboard", "true", "--disable-usage-stats", "--temp-dir", temp,
         # the suite's own local Ray holds the default agent ports: a second cluster needs its own
         *[arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                            "--metrics-export-port", "--runtime-env-agent-port", "--ray-client-server-port")
           for arg in (flag, str(free_port()))]],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while not dashboard_up(address):
        if time.time() > deadline or head.poll() is not None:
            os.killpg(head.pid, signal.SIGKILL)
            pytest.fail("ray start --head did not come up")
        time.sleep(1)
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


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
    logs = dde(env, "logs", sid, "--address", address)
    assert "bounds_met" in logs
    job = json.load(open(tmp_path / "out" / "job.json"))
    assert job["stop_reason"] == "bounds_met"
    status = json.loads(dde(env, "status", out, "--json"))
    assert status["state"] == "finalized" and status["images"] == job["images"]
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
