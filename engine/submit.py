"""Submitting jobs to a Ray cluster through Ray Jobs (``JobSubmissionClient``).

The resolved spec travels in the runtime env (``DDE_SPEC``), with this checkout as the
working dir (or a prebuilt image that already has it). The submission id is derived from
the job's identity (name, output and fingerprint), so resubmitting the same job is
idempotent: it finds the existing submission instead of starting a second driver, unless
that one failed or was stopped, in which case the job is submitted again and resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from .errors import UserError
from .spec import JobSpec, fingerprint

__all__ = ["submission_id", "submit", "job_logs", "stop_job", "SPEC_ENV"]

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
    try:
        status = client.get_job_info(sid).status
    except Exception:  # no such submission yet
        status = None
    if status in (JobStatus.FAILED, JobStatus.STOPPED):
        client.delete_job(sid)
        outcome = "resubmitted"
    elif status is not None:
        return sid, "already submitted"
    runtime_env: dict = {"env_vars": {SPEC_ENV: json.dumps(spec.model_dump(mode="json"))}}
    if use_working_dir:
        runtime_env.update(working_dir=REPO, excludes=_EXCLUDES)
    kwargs = dict(entrypoint=f"python -m jobs.run_job env:{SPEC_ENV} --quiet", submission_id=sid,
                  runtime_env=runtime_env, metadata={"dde_name": spec.name, "dde_output": spec.output},
                  entrypoint_num_gpus=driver_gpus, entrypoint_resources=driver_resources)
    _with_retries(lambda: client.submit_job(**kwargs))
    return sid, outcome


def _with_retries(call, attempts: int = 8, first_wait_s: float = 1.0):
    """A fresh cluster's dashboard answers before its job agent is up ("No available agent
    to submit job, please try again later"): wait and retry that, with backoff."""
    import time

    for attempt in range(attempts):
        try:
            return call()
        except RuntimeError as e:
            if "try again later" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(first_wait_s * 2**attempt)


def job_logs(sid: str, address: str) -> str:
    return _client(address).get_job_logs(sid)


def stop_job(sid: str, address: str) -> bool:
    return _client(address).stop_job(sid)
