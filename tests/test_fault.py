"""kill -9 of the driver, then resume: the same dataset as an uninterrupted run."""

import os
import signal
import subprocess
import time

import pytest
import yaml

from .conftest import BASE_SPEC, DDE, REPO
from .helpers import dataset_digest, job_record


def write_spec(tmp_path, name, output, **fields):
    data = {**BASE_SPEC, "output": str(output), "lower_bound": 60,
            "budget": {"max_images": 400, "max_waves": 8}, "unit_size": 8, "wave_size": 96, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(*args, timeout=600, env=None):
    proc = subprocess.run([DDE, *args, "--quiet"], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    run("run", str(write_spec(tmp, "a", tmp / "out")))
    return str(tmp / "out")


def start_and_stop(tmp_path, output, sig, commits=5) -> None:
    """Start a driver, then send it ``sig`` once ``commits`` units are committed."""
    driver = subprocess.Popen([DDE, "run", str(write_spec(tmp_path, "b", output)), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    markers = output / "_commits"
    while time.time() < deadline and driver.poll() is None:
        if markers.exists() and len([n for n in os.listdir(markers) if n.endswith(".json")]) >= commits:
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the job finished before it could be stopped"
    os.kill(driver.pid, sig)
    driver.wait()
    assert not (output / "job.json").exists()
    time.sleep(1.0)  # let the orphaned actors notice; any that still commit are fine (create-only)


def assert_same_dataset(output, reference) -> None:
    assert dataset_digest(str(output)) == dataset_digest(reference)
    assert job_record(str(output)) == job_record(reference)
    ids = sorted(int(n[:-4]) for n in os.listdir(output / "coco/images"))
    assert len(ids) == len(set(ids)) == job_record(reference)["images"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_stopped_driver_then_resume_gives_the_same_dataset(tmp_path, reference, sig):
    killed = tmp_path / "killed"
    start_and_stop(tmp_path, killed, sig)
    run("resume", str(killed))
    assert_same_dataset(killed, reference)


def test_two_drivers_on_one_output_give_the_same_dataset(tmp_path, reference):
    """Both run to the end; each unit commits once; the first to finish finalizes without
    removing the other's running attempts, and the second finalizes again."""
    output = tmp_path / "shared"
    spec = str(write_spec(tmp_path, "b", output))
    drivers = [subprocess.Popen([DDE, "run", spec, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for _ in range(2)]
    for driver in drivers:
        assert driver.wait(timeout=600) == 0, driver.stderr.read().decode()[-3000:]
    assert_same_dataset(output, reference)
    assert os.listdir(output / "_job" / "leases") == []


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a disk that fills up mid-job, and that can turn read-only (needs mount rights)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip() or 'mount failed'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def test_a_full_disk_stops_with_one_line_and_resume_completes(tmp_path, small_disk, reference):
    output = small_disk / "out"
    proc = subprocess.run([DDE, "run", str(write_spec(tmp_path, "b", output)), "--quiet"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 75, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: output: {str(output)!r} is full (no space left on its device); committed units are "
                    f"kept: free space or raise the quota, then `dde resume {output}` continues"), proc.stderr[-3000:]
    committed = len(os.listdir(output / "_commits"))
    assert committed >= 1 and not (output / "job.json").exists()
    _remount(small_disk, "size=64m")
    run("resume", str(output))
    assert_same_dataset(output, reference)


def test_an_output_turned_read_only_stops_with_one_line_and_resume_completes(tmp_path, small_disk, reference):
    _remount(small_disk, "size=64m")
    output = small_disk / "out"
    with open(tmp_path / "stderr.txt", "wb") as err:
        driver = subprocess.Popen([DDE, "run", str(write_spec(tmp_path, "b", output)), "--quiet"],
                                  stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None and not (
            (output / "_commits").exists() and len(os.listdir(output / "_commits")) >= 3):
        time.sleep(0.05)
    _remount(small_disk, "ro")
    assert driver.wait(timeout=300) == 2
    # the driver's one line, last: no forwarded traceback of the units that failed of the same cause
    lines = (tmp_path / "stderr.txt").read_text().strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith(f"error: output: expected a writable location, got "
                                                      f"{str(output)!r}") and f"dde resume {output}" in errors[0], lines[-5:]
    _remount(small_disk, "rw")
    run("resume", str(output))
    assert_same_dataset(output, reference)


def test_a_memory_error_in_a_unit_is_retried_on_a_fresh_actor(tmp_path):
    """A MemoryError raised while a unit is labelled: the unit is retried on a new actor (the old
    one's heap may be spent, so it is killed), and the dataset equals a run without the fault."""
    head = {"name": "tests.fixtures.fault_heads:MemoryErrorOnceHead"}
    flag = tmp_path / "raised"
    flag.write_text("")  # present: the head never raises
    # the dde subprocess and its Ray workers import the head from this checkout's tests/ package
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, DDE_FAULT_FLAG=str(flag), PYTHONPATH=path)
    run("run", str(write_spec(tmp_path, "a", tmp_path / "clean", label_head=head)), env=env)
    flag.unlink()
    (tmp_path / "raised.calls").unlink()
    run("run", str(write_spec(tmp_path, "b", tmp_path / "faulty", label_head=head)), env=env)
    calls = (tmp_path / "raised.calls").read_text().split()
    raised = calls.index(next(c for c in calls if c.endswith("!")))
    assert calls[raised][:-1] not in calls[raised + 1:], calls  # that actor labelled nothing more
    assert dataset_digest(str(tmp_path / "faulty")) == dataset_digest(str(tmp_path / "clean"))
    assert job_record(str(tmp_path / "faulty")) == job_record(str(tmp_path / "clean"))
