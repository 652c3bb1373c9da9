"""Submitting jobs to a Ray cluster through Ray Jobs (``JobSubmissionClient``).

The resolved spec travels in the runtime env (``DDE_SPEC``), without storage credentials
(the Ray dashboard shows every job's runtime env: the cluster's nodes bring their own,
from the standard AWS variables or an instance role), with this checkout as the working dir (or a prebuilt image that already has it). The submission id is derived from
the job's identity (name, output and fingerprint), so resubmitting the same job is
idempotent: it finds the existing submission instead of starting a second driver, unless
that one failed or was stopped, in which case the job is submitted again and resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from ..errors import UserError
from ..output.ledger import recorded_spec
from ..spec import JobSpec, fingerprint, parse_spec

__all__ = ["submission_id", "submit", "job_logs", "stop_job", "list_jobs", "job_info", "submitted_spec", "SPEC_ENV"]

SPEC_ENV = "DDE_SPEC"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXCLUDES = [".venv", ".git", "out", ".train", "bench/out", "**/__pycache__", ".pytest_cache"]


def submission_id(spec: JobSpec) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")[:40] or "job"
    identity = hashlib.sha256(f"{spec.output}\n{fingerprint(spec)}".encode()).hexdigest()[:12]
    return f"dde-{slug}-{identity}"


def _client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise UserError(f"--address: the cluster at {address} requires its auth token; set RAY_AUTH_MODE=token and "
                        f"put the token in RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head)") from e
    except Exception as e:  # connection refused, bad scheme, no dashboard
        raise UserError(f"--address: expected a reachable Ray dashboard like http://HEAD:8265, got {address!r} "
                        f"({type(e).__name__}: {str(e)[:160]})") from e


def submit(spec: JobSpec, address: str, *, use_working_dir: bool = True, driver_gpus: float | None = None,
           driver_resources: dict | None = None) -> tuple[str, str]:
    """Submit ``spec``; returns (submission id, what happened: submitted, resubmitted or already submitted).

    A pending, running or finished submission of the same job is left alone; a failed or
    stopped one is replaced, and the new driver resumes from the commit markers.
    """
    from ray.job_submission import JobStatus

    client = _client(address)
    sid = submission_id(spec)
    outcome = "submitted"
    info = _info(client, sid)
    status = info.status if info else None
    if status in (JobStatus.FAILED, JobStatus.STOPPED):
        _await_supervisor_exit(sid, address)
        client.delete_job(sid)
        outcome = "resubmitted"
    elif status is not None:
        return sid, "already submitted"
    runtime_env: dict = {"env_vars": {SPEC_ENV: json.dumps(recorded_spec(spec))}}
    if use_working_dir:
        runtime_env.update(working_dir=REPO, excludes=_EXCLUDES)
    kwargs = dict(entrypoint=f"python -m jobs.run_job env:{SPEC_ENV} --log", submission_id=sid,
                  runtime_env=runtime_env, metadata={"dde_name": spec.name, "dde_output": spec.output},
                  entrypoint_num_gpus=driver_gpus, entrypoint_resources=driver_resources)
    _with_retries(lambda: client.submit_job(**kwargs), address)
    return sid, outcome


def _await_supervisor_exit(sid: str, address: str, timeout_s: float = 60.0) -> None:
    """A stopped or failed job's supervisor actor outlives its final status by a moment, and
    Ray's monitor of that job (polling every second) notices its exit a moment later still.
    A resubmission under the same id before then is taken for the old job: the monitor
    marks it FAILED ("Job supervisor actor died"). So wait for the actor, then the monitor."""
    import time

    from ray.dashboard.modules.job.common import JOB_ACTOR_NAME_TEMPLATE
    from ray.util.state import list_actors

    living = [("name", "=", JOB_ACTOR_NAME_TEMPLATE.format(job_id=sid)), ("state", "!=", "DEAD")]
    deadline = time.time() + timeout_s
    while list_actors(address=address, filters=living, raise_on_missing_output=False):
        if time.time() > deadline:
            raise UserError(f"job {sid}: its previous driver's supervisor is still alive after {timeout_s:.0f}s; "
                            f"submit again in a minute")
        time.sleep(0.5)
    time.sleep(3.0)


def _with_retries(call, address: str, attempts: int = 8, first_wait_s: float = 1.0, max_wait_s: float = 15.0):
    """A fresh cluster's dashboard answers before its job agent is up ("No available agent
    to submit job, please try again later"): say so, wait and retry that with backoff (about
    a minute in all), then give up in one line; any other refusal is one line at once."""
    import sys
    import time

    waited = 0.0
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            if "try again later" not in str(e):
                raise UserError(f"--address: the cluster at {address} refused the job ({reason})") from e
            if attempt == attempts:
                raise UserError(f"--address: the cluster at {address} has no job agent that accepts jobs after "
                                f"{waited:.0f}s ({reason}); check the head node (`ray status`, its "
                                f"dashboard_agent.log) and submit again") from e
            wait = min(first_wait_s * 2 ** (attempt - 1), max_wait_s)
            print(f"waiting for the cluster's job agent ({reason}); retrying in {wait:.0f}s "
                  f"[{attempt}/{attempts - 1}]", file=sys.stderr)
            time.sleep(wait)
            waited += wait


def _info(client, sid: str):
    try:
        return client.get_job_info(sid)
    except Exception:  # no such submission
        return None


def _is_dde(info) -> bool:
    return bool(info.submission_id) and "dde_output" in (info.metadata or {})


def list_jobs(address: str) -> list:
    """The dde submissions the cluster knows (``JobDetails``), newest first."""
    jobs = [j for j in _client(address).list_jobs() if _is_dde(j)]
    return sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)


def job_info(sid: str, address: str):
    """The dde submission ``sid`` (``JobInfo``), or None if the cluster has no such dde job."""
    info = _info(_client(address), sid)
    return info if info is not None and _is_dde(info) else None


def submitted_spec(info) -> JobSpec:
    """The resolved spec a submission carries in its runtime env."""
    return parse_spec(json.loads(info.runtime_env["env_vars"][SPEC_ENV]))


def _known(client, sid: str, address: str) -> None:
    if _info(client, sid) is None:
        raise UserError(f"id: expected a submission id the cluster at {address} knows (`dde jobs --address "
                        f"{address}` lists them), got {sid!r}")


def job_logs(sid: str, address: str) -> str:
    client = _client(address)
    _known(client, sid, address)
    return client.get_job_logs(sid)


def stop_job(sid: str, address: str) -> bool:
    client = _client(address)
    _known(client, sid, address)
    return client.stop_job(sid)
