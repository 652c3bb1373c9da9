"""The CLI's one-line answers to common mistakes, and its small conveniences (issue 17).
In-process where no cluster is needed; a subprocess where the process itself is the point."""

import os
import signal
import subprocess
import time

import pytest
import yaml

from engine.cli import main
from engine.errors import UserError
from engine.service.submit import _with_retries

from .conftest import DDE
from .helpers import free_port


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def spec_file(spec_data, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec_data))
    return str(path)


def test_a_dashboard_address_for_a_driver_is_refused_with_the_fix(spec_file, spec_data, tmp_path, capsys):
    rc, _, err = _run(capsys, "run", spec_file, "--address", "http://127.0.0.1:8265")
    assert rc == 2 and err.count("\n") == 1 and "dde submit --address http://127.0.0.1:8265" in err, err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_an_address_nothing_answers_on_is_one_line_at_once(spec_file, tmp_path, capsys):
    started = time.monotonic()
    rc, _, err = _run(capsys, "run", spec_file, "--address", f"127.0.0.1:{free_port()}")
    assert rc == 2 and "--address: expected a Ray cluster at 127.0.0.1:" in err and err.count("\n") == 1, err
    assert time.monotonic() - started < 10 and not (tmp_path / "out").exists()


def test_submit_says_it_waits_for_the_job_agent_then_gives_up_in_one_line(capsys):
    busy = RuntimeError("Request failed with status code 503: No available agent to submit job, please try again "
                        "later.")
    calls = []

    def agent_down():
        calls.append(1)
        raise busy

    with pytest.raises(UserError, match=r"no job agent that accepts jobs after 0s .*submit again"):
        _with_retries(agent_down, "http://head:8265", attempts=3, first_wait_s=0.01)
    waits = capsys.readouterr().err.splitlines()
    assert len(calls) == 3 and len(waits) == 2 and waits[0].startswith("waiting for the cluster's job agent")
    answers = iter([busy])

    def agent_up_late():
        for e in answers:
            raise e
        return "ok"

    assert _with_retries(agent_up_late, "http://head:8265", first_wait_s=0.01) == "ok"
    with pytest.raises(UserError, match="refused the job"):
        _with_retries(lambda: (_ for _ in ()).throw(RuntimeError("status code 500: boom")), "http://head:8265")


def test_a_reader_that_leaves_early_gets_no_traceback():
    proc = subprocess.Popen([DDE, "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` that has read enough before dde writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and err == "", err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("dde ")


@pytest.mark.ray
def test_quiet_shows_only_the_result(spec_file, tmp_path):
    """A local Ray says it enabled token auth, workers print what they print: not with --quiet."""
    proc = subprocess.run([DDE, "run", spec_file, "--quiet"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == ["bounds_met", "dataset"]


def test_ctrl_c_is_one_line(spec_file):
    # a job of minutes (~600 img/s: 96,000 images), so it cannot end on its own before the signal;
    # SIGINT's default restored in the child: a shell that starts this suite in the background
    # (`make test &`) hands its children SIGINT ignored, and Python then installs no handler
    proc = subprocess.Popen([DDE, "run", spec_file, "--output", "memory://ctrl-c", "--max-images", "100000",
                             "--set", "lower_bound=20000", "--set", "budget.max_waves=2000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    shown = b""
    # a unit committed (the bar has an ETA): imports are done, since a SIGINT that lands in a
    # C extension's import (numpy.random, imported on first use) can be lost
    while b"ETA" not in shown:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, shown.decode()
        shown += chunk
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.splitlines()[-1] == "interrupted (committed units are kept: `dde resume memory://ctrl-c` continues " \
                                   "the job)", err[-2000:]
