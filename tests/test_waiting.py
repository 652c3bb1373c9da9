"""Visible waiting (issue 17): actors the cluster cannot start are reported with what they ask
and what the cluster offers, in the log or bar, `dde status` and the API, and the job fails
with that message after resources.startup_timeout_s."""

import time

import pytest

from engine.errors import UserError
from engine.job.runner import run_job
from engine.job.status import format_status, job_status
from engine.output.lease import Lease
from engine.output.storage import Store
from engine.spec import parse_spec


@pytest.mark.ray
def test_actors_no_node_can_hold_are_shown_then_fail_the_job(spec_data, ray_local, capfd):
    spec_data["resources"] = {"actors": {"min": 1, "max": 1}, "num_cpus": 4, "startup_timeout_s": 6}
    started = time.monotonic()
    with pytest.raises(UserError, match=r"startup_timeout_s=6s, got 0 \(1 actor\(s\) waiting for resources: each "
                                        r"asks CPU 4; the cluster has CPU 2 in all, CPU 2 free, and no node that "
                                        r"large\); lower"):
        run_job(parse_spec(spec_data), log=True)
    assert time.monotonic() - started < 40
    assert "waiting: 1 actor(s) waiting for resources: each asks CPU 4" in capfd.readouterr().err  # the job's log


def test_status_shows_what_a_running_driver_waits_for(spec_data):
    spec_data.update(output=f"memory://waiting/{time.time_ns()}", lower_bound=5)
    spec = parse_spec(spec_data)
    run_job(spec, quiet=True, finalize=False)
    store = Store(spec.output)
    assert job_status(store)["state"] == "interrupted"  # units, and no driver
    with Lease(store, "a driver") as lease:
        lease.note_waiting("2 actor(s) waiting for resources: each asks GPU 1")
        status = job_status(store)
        assert status["state"] == "running"
        assert status["waiting"] == ["2 actor(s) waiting for resources: each asks GPU 1"]
        assert "  waiting: 2 actor(s) waiting for resources: each asks GPU 1" in format_status(status)
        lease.note_waiting(None)
        assert job_status(store)["waiting"] == []
