"""One definition of throughput and ETA (engine/job/throughput.py), checked against a job's
wall clock and shared by the progress bar, `dde status`, the report and the API."""

import time

import pytest

from engine.job.progress import Progress
from engine.job.runner import run_job
from engine.job.status import format_status, job_status
from engine.job.throughput import eta_seconds, run_intervals, wall_seconds
from engine.output.ledger import Ledger
from engine.output.storage import Store
from engine.spec import parse_spec


def _unit(started: float, committed: float, images: int = 8, seconds: float = 1.0) -> dict:
    return {"driver_started_at": started, "committed_at": committed, "seconds": seconds, "images": images}


def test_time_between_runs_does_not_count_and_overlapping_runs_count_once():
    units = [_unit(0, 10), _unit(0, 20),  # a run from 0 to its last commit at 20
             _unit(1000, 1005), _unit(1000, 1030)]  # a resume the next morning, 30 s
    assert wall_seconds(run_intervals(units)) == 50
    assert wall_seconds(run_intervals(units, live_starts=[1020], now=1060)) == 80  # a second driver, still running
    # markers older than driver_started_at: each unit from its own start
    assert wall_seconds(run_intervals([{"committed_at": 5, "seconds": 2}, {"committed_at": 6, "seconds": 2}])) == 3


def test_eta_is_whichever_ends_the_job_first():
    bounds = {"circle": 100, "square": 100}
    # 100 s, 50 images: the budget (1000 more images) ends after 2000 s, but squares (10/s... 20 per 100 s,
    # 80 short) are met after 400 s; circles are met already
    assert eta_seconds(100, 50, 0, 1050, {"circle": 120, "square": 20}, bounds) == pytest.approx(400)
    # the interrupted job of issue 17: 384 images of budget left, bounds far off: not 0 s
    assert eta_seconds(60, 128, 0, 512, {"circle": 10, "square": 10}, {"circle": 1000, "square": 1000}) \
        == pytest.approx(384 / (128 / 60))
    # no square yet: squares never come at their rate so far, the budget ends the job
    assert eta_seconds(60, 10, 2, 1000, {"circle": 10}, {"circle": 20, "square": 5}) == pytest.approx(988 * 5)
    assert eta_seconds(0, 0, 0, 10, {}, bounds) is None


def test_status_and_progress_bar_rates_are_the_jobs_wall_clock_rate(spec_data):
    spec_data.update(output=f"memory://throughput/{time.time_ns()}", lower_bound=12)
    spec = parse_spec(spec_data)
    started = time.time()
    result = run_job(spec, quiet=True)
    took = time.time() - started
    status = job_status(Store(spec.output))
    assert 0 < status["wall_s"] <= took + 0.1
    assert status["images_per_s"] == pytest.approx(result.images / status["wall_s"], rel=0.01)
    assert status["images_per_s"] >= result.images / took - 0.01
    assert f"rate {status['images_per_s']} img/s" in format_status(status)
    # the bar of a driver resuming this job starts from the same numbers
    ledger = Ledger(Store(spec.output))
    ledger.refresh()
    progress = Progress(spec, quiet=True)
    progress.start(ledger, started_at=time.time())
    rate, _ = progress.rate()
    assert rate == pytest.approx(status["images_per_s"], rel=0.05)


def test_the_bar_shows_the_classes_of_the_unit_that_just_committed(spec_data, capsys):
    spec_data.update(output=f"memory://bar/{time.time_ns()}")
    spec = parse_spec(spec_data)
    ledger = Ledger(Store(spec.output))
    ledger.refresh()
    progress = Progress(spec)
    progress.start(ledger, started_at=time.time() - 2)
    progress.unit_done({"won": True, "counts": {"circle": 3, "square": 1}, "images": 2, "rejects": 0})
    shown = capsys.readouterr().err.split("\r")[-1]
    progress.close()
    assert "2/120" in shown and "circle 3/20" in shown and "square 1/20" in shown and "img/s" in shown, shown
