"""Jobs on S3 that are killed or lose their endpoint, run as `dde` subprocesses whose Ray workers
reach the moto server through the standard AWS variables. Each must end with the same dataset,
byte for byte, as an uninterrupted run on a local disk."""

import os
import signal
import subprocess
import time

import pytest

from engine.output.storage import Store

from .conftest import DDE, S3_SECRET, make_bucket, s3_env, s3_options
from .helpers import Gate, Throttle, dataset_digest, download, job_record
from .test_fault import run, write_spec

SMALL = {"lower_bound": 20, "budget": {"max_images": 160, "max_waves": 8}, "wave_size": 40}
OUTAGE_S = 30.0  # an endpoint restart; longer than botocore's retries ride out without backoff


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    run("run", str(write_spec(tmp, "reference", tmp / "out", **SMALL)))
    return dataset_digest(str(tmp / "out")), job_record(str(tmp / "out"))


def start(tmp_path, uri, env):
    """A `dde run` driver in the background; its stderr goes to a file the test reads after."""
    spec = write_spec(tmp_path, "job", uri, **SMALL)
    with open(tmp_path / "stderr.txt", "wb") as err:
        return subprocess.Popen([DDE, "run", str(spec), "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=err)


def wait_for_commits(store, count, driver) -> int:
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        committed = len(store.list_names("_commits"))
        if committed >= count:
            return committed
        time.sleep(0.2)
    pytest.fail(f"the job ended or stalled before {count} units were committed (exit {driver.poll()})")


def assert_same_dataset(store, tmp_path, reference):
    copy = download(store, tmp_path / "copy")
    assert dataset_digest(copy) == reference[0]
    assert job_record(copy) == reference[1]


@pytest.mark.ray
def test_sigkill_then_resume_on_s3(s3_endpoint, reference, tmp_path):
    uri = f"s3://{make_bucket(s3_endpoint)}/killed"
    store = Store(uri, s3_options(s3_endpoint))
    driver = start(tmp_path, uri, s3_env(s3_endpoint))
    wait_for_commits(store, 3, driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert not store.exists("job.json")
    time.sleep(1.0)  # orphaned actors may still commit: create-only markers keep one

    resumed = run("resume", uri, env=s3_env(s3_endpoint))
    assert S3_SECRET not in resumed.stdout + resumed.stderr
    assert_same_dataset(store, tmp_path, reference)


@pytest.mark.ray
def test_short_outage_is_ridden_out_by_retries(s3_endpoint, reference, tmp_path):
    gate = Gate(s3_endpoint)
    uri = f"s3://{make_bucket(s3_endpoint)}/outage"
    store = Store(uri, s3_options(s3_endpoint))  # watches the bucket past the gate
    driver = start(tmp_path, uri, s3_env(gate.url))
    before = wait_for_commits(store, 2, driver)
    gate.down()
    time.sleep(OUTAGE_S)
    assert driver.poll() is None, "the run gave up during the outage: " + (tmp_path / "stderr.txt").read_text()[-2000:]
    gate.up()
    assert driver.wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert len(store.list_names("_commits")) > before  # units were still to come when the endpoint went away
    assert_same_dataset(store, tmp_path, reference)


@pytest.mark.ray
def test_outage_past_the_retries_fails_cleanly_then_resumes(s3_endpoint, reference, tmp_path):
    gate = Gate(s3_endpoint)
    uri = f"s3://{make_bucket(s3_endpoint)}/down"
    store = Store(uri, s3_options(s3_endpoint))
    driver = start(tmp_path, uri, s3_env(gate.url, AWS_MAX_ATTEMPTS="2", AWS_RETRY_MODE="standard"))
    wait_for_commits(store, 2, driver)
    gate.down()
    code = driver.wait(timeout=240)
    gate.up()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert code == 75, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: output: {uri!r} stayed unreachable") and f"dde resume {uri}" in last, last
    assert S3_SECRET not in stderr and not store.exists("job.json")

    run("resume", uri, env=s3_env(gate.url))
    assert_same_dataset(store, tmp_path, reference)


@pytest.mark.ray
def test_throttling_is_ridden_out_with_backoff(s3_endpoint, reference, tmp_path):
    """S3's 503 SlowDown with Retry-After: a burst on every request, then every 7th request to the end."""
    proxy = Throttle(s3_endpoint)
    uri = f"s3://{make_bucket(s3_endpoint)}/throttled"
    store = Store(uri, s3_options(s3_endpoint))
    try:
        proxy.every(7)
        driver = start(tmp_path, uri, s3_env(proxy.url))
        wait_for_commits(store, 2, driver)
        proxy.throttle(4.0)
        assert driver.wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    finally:
        proxy.close()
    assert proxy.throttled > 20
    assert_same_dataset(store, tmp_path, reference)
