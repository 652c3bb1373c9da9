"""kill -9 of the driver, then resume: the same dataset as an uninterrupted run."""

import os
import signal
import subprocess
import time

import yaml

from .conftest import BASE_SPEC, DDE
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


def test_sigkill_then_resume_gives_the_same_dataset(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run("run", str(write_spec(tmp_path, "a", reference)))

    driver = subprocess.Popen([DDE, "run", str(write_spec(tmp_path, "b", killed)), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    commits = killed / "_commits"
    while time.time() < deadline and driver.poll() is None:
        if commits.exists() and len([n for n in os.listdir(commits) if n.endswith(".json")]) >= 5:
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the job finished before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert not (killed / "job.json").exists()
    time.sleep(1.0)  # let the orphaned actors notice; any that still commit are fine (create-only)

    run("resume", str(killed))
    assert dataset_digest(str(killed)) == dataset_digest(str(reference))
    assert job_record(str(killed)) == job_record(str(reference))
    ids = sorted(int(n[:-4]) for n in os.listdir(killed / "coco/images"))
    assert len(ids) == len(set(ids)) == job_record(str(reference))["images"]
