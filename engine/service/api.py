"""The HTTP API: a FastAPI app over Ray Jobs (to submit) and storage (to watch).

Nothing is held in memory. The job list and each job's spec come from the Ray Jobs API
(the spec travels in the submission's runtime env, see ``submit.py``); progress and
samples come from the commit markers under the job's output. So the API answers the same
after a Serve, replica or driver restart. ``service.py`` runs this app on Ray Serve.

Settings (``load_settings``): the builder's ``args`` win over the environment.

    DDE_API_TOKEN / DDE_API_TOKEN_FILE  the bearer token, or a file holding it (args: token_file)
    DDE_ALLOWED_OUTPUT_ROOTS   comma-separated roots outputs must lie under, e.g. s3://bkt/dde,/data/dde
    DDE_API_RAY_ADDRESS        the Ray dashboard jobs go to (default http://127.0.0.1:8265)
    DDE_API_MAX_BODY_BYTES     largest request body accepted (default 1 MiB)
    DDE_API_UPLOAD_CHECKOUT    1: ship this checkout as the jobs' working_dir (default 0: the image has dde)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from ..errors import SpecError, UserError
from ..spec import JobSpec, describe_error, parse_spec

__all__ = ["Settings", "load_settings", "canonical_location", "allowed_output", "create_app", "openapi_schema",
           "openapi_json"]

TOKEN_ENV, TOKEN_FILE_ENV = "DDE_API_TOKEN", "DDE_API_TOKEN_FILE"
SETTINGS_ENV = {"token_file": TOKEN_FILE_ENV, "allowed_output_roots": "DDE_ALLOWED_OUTPUT_ROOTS",
                "ray_address": "DDE_API_RAY_ADDRESS", "max_body_bytes": "DDE_API_MAX_BODY_BYTES",
                "upload_checkout": "DDE_API_UPLOAD_CHECKOUT"}
OPEN_PATHS = ("/healthz",)  # probes carry no token
MAX_SAMPLES = 32
_JOB_ID = re.compile(r"^dde-[a-z0-9-]{1,80}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


# ---------------------------------------------------------------- settings


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr = Field(description="Bearer token every route but /healthz requires.")
    allowed_output_roots: tuple[str, ...] = Field(description="Outputs must lie under one of these.")
    ray_address: str = Field(default="http://127.0.0.1:8265", description="Ray dashboard that runs the jobs.")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Larger request bodies get 413.")
    upload_checkout: bool = Field(default=False, description="Ship this checkout as the jobs' working_dir.")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError(f"expected a token of at least 16 characters, got {len(v.get_secret_value())}")
        return v

    @field_validator("allowed_output_roots", mode="before")
    @classmethod
    def _split(cls, v):
        return [r.strip() for r in v.split(",") if r.strip()] if isinstance(v, str) else v

    @field_validator("allowed_output_roots")
    @classmethod
    def _canonical(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("expected at least one root, like s3://bucket/prefix or /data/dde, got none")
        return tuple(canonical_location(r) for r in v)


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise UserError(f"token_file ({TOKEN_FILE_ENV}): expected a readable file, got {path!r} ({e.strerror})") from e


def load_settings(args: dict | None = None, environ: dict | None = None) -> Settings:
    """Settings from the environment, overridden by ``args`` (a Serve config's ``args:``).
    The token itself never comes from ``args``: config files are not secret."""
    environ = os.environ if environ is None else environ
    args = dict(args or {})
    if "token" in args:
        raise UserError(f"args.token: expected the token in {TOKEN_ENV} or in a file named by token_file or "
                        f"{TOKEN_FILE_ENV}, got it in the config; remove it from the config")
    data = {key: environ[var] for key, var in SETTINGS_ENV.items() if var in environ} | args
    token_file = data.pop("token_file", None)
    if token_file and environ.get(TOKEN_ENV):
        raise UserError(f"{TOKEN_ENV}: expected either the token or a token file, got both "
                        f"({TOKEN_ENV} and token_file {token_file!r})")
    token = _read_token(token_file) if token_file else environ.get(TOKEN_ENV)
    if token is not None:  # else pydantic reports it missing, under its variables' names
        data["token"] = token
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        lines = [describe_error(_named_after_env(err)) for err in e.errors()]
        raise UserError("invalid API settings:\n" + "\n".join(f"  - {line}" for line in lines)) from None


def _named_after_env(error: dict) -> dict:
    """Name a setting's error after the variable that sets it, and never echo a token."""
    key = str(error["loc"][0]) if error["loc"] else ""
    var = {"token": f"{TOKEN_ENV} or {TOKEN_FILE_ENV}"}.get(key, SETTINGS_ENV.get(key))
    loc = (f"{key} ({var})", *error["loc"][1:]) if var else error["loc"]
    return dict(error, loc=loc, input="<hidden>" if key == "token" else error.get("input"))


# ---------------------------------------------------------------- output locations


def canonical_location(uri: str) -> str:
    """``uri`` in the one form used to compare it with the allowed roots: a local path made
    absolute with its symlinks resolved, or ``scheme://segments`` with empty and ``.``
    segments dropped. ``..`` is refused wherever it is, not only where it would escape."""
    if any(ord(c) < 32 for c in uri) or "%" in uri:
        raise ValueError(f"expected a location without control characters or %-escapes, got {uri!r}")
    if "::" in uri:  # fsspec chains filesystems with '::': that switches where the bytes go
        raise ValueError(f"expected a single URI without '::' chaining, got {uri!r}")
    match = _SCHEME.match(uri)
    scheme, path = (match.group(1).lower(), match.group(2)) if match else ("file", uri)
    if ".." in path.split("/"):
        raise ValueError(f"expected a location without '..' segments, got {uri!r}")
    if scheme == "file":
        if not path.startswith("/"):
            raise ValueError(f"expected an absolute path or a URI like s3://bucket/prefix, got {uri!r}")
        return os.path.realpath(path)
    segments = [s for s in path.split("/") if s not in ("", ".")]
    if not segments:
        raise ValueError(f"expected a bucket or host after {scheme}://, got {uri!r}")
    return f"{scheme}://{'/'.join(segments)}"


def allowed_output(output: str, roots: tuple[str, ...]) -> str:
    """The canonical form of ``output`` if it lies strictly under one of ``roots``."""
    location = canonical_location(output)
    if not any(location.startswith(root.rstrip("/") + "/") for root in roots):
        raise ValueError(f"expected a location under one of the allowed roots {list(roots)}, got {output!r}")
    return location


# ---------------------------------------------------------------- response models


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the field, e.g. budget.max_images or query.n.")
    message: str = Field(description="What was expected and what was given.")


class Problem(BaseModel):
    detail: list[FieldError] | str


class JobRef(BaseModel):
    id: str
    output: str
    outcome: Literal["submitted", "resubmitted", "already submitted"]


class JobSummary(BaseModel):
    id: str
    name: str
    output: str
    state: str = Field(description="The Ray job's state: pending, running, stopped, succeeded or failed.")
    message: str | None = None
    submitted_at: float | None = Field(default=None, description="Unix time (s).")
    ended_at: float | None = None


class ClassProgress(BaseModel):
    count: int
    lower_bound: int
    met: bool
    state: str = Field(description="met, below, stuck, or 'not labelled' (the job's head makes no labels).")


class Reject(BaseModel):
    image_id: int
    reference_id: str | None = None
    reason: str


class Progress(BaseModel):
    """What the committed markers say (``dde status``)."""

    state: str = Field(description="started (nothing committed, no driver), running (a driver holds the output), "
                                    "interrupted (units committed, no driver), or finalized.")
    stop_reason: str | None
    fingerprint: str
    waves_planned: int
    units_done: int
    images: int
    instances: int
    classes: dict[str, ClassProgress]
    stuck: list[str]
    rejects: int
    reject_samples: list[Reject]
    notes: list[str] = Field(default_factory=list, description="What the input checks found at the job's start: "
                                                                "reference images missing, prompts past the text "
                                                                "encoder's limit.")
    waiting: list[str] = Field(description="What running drivers wait for: actors the cluster has no resources "
                                           "for now, with what it offers.")
    wall_s: float = Field(description="Seconds the job's drivers have run (from each start to its last commit, "
                                      "or to now while running).")
    images_per_s: float | None = Field(description="Committed images per second of wall_s.")
    eta_s: float | None = Field(description="Seconds until the bounds are met or the budget is spent, whichever "
                                            "comes first, at the rates so far.")


class JobDetail(JobSummary):
    progress: Progress | None = Field(description="None until the driver has recorded the job in storage.")


class Rle(BaseModel):
    size: list[int]
    counts: str


class Annotation(BaseModel):
    category_id: int
    category: str
    bbox: list[float] = Field(description="x, y, width, height in pixels.")
    area: float
    score: float
    segmentation: Rle | None = Field(description="COCO RLE (pycocotools.mask.decode); null from box-only heads.")


class Sample(BaseModel):
    image_id: int
    width: int
    height: int
    prompt: str
    png_base64: str = Field(description="The image, PNG bytes in base64.")
    annotations: list[Annotation]


class Samples(BaseModel):
    id: str
    samples: list[Sample]


class Stopped(BaseModel):
    id: str
    stopped: bool = Field(description="False if the job was not running.")


# ---------------------------------------------------------------- guard


def _digest(token: bytes) -> bytes:
    # comparing fixed-length digests keeps even the token's length out of the timing
    return hashlib.sha256(token).digest()


class _Guard:
    """Auth and body size, in front of every route (FastAPI's /docs and /openapi.json too)."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.token = _digest(settings.token.get_secret_value().encode())
        self.limit = settings.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if not (scheme.lower() == b"bearer" and hmac.compare_digest(_digest(given.strip()), self.token)):
            return await _problem(401, "Authorization: expected 'Bearer <token>' with the service's token, got "
                                  + ("a wrong token" if given else "none"),
                                  {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await _problem(413, self._too_large(length.decode("latin-1")))(scope, receive, send)
        await self.app(scope, self._limited(receive), send)

    def _too_large(self, got: str) -> str:
        return f"body: expected at most {self.limit} bytes, got {got}"

    def _limited(self, receive):
        """Counts a streamed (chunked) body, which has no Content-Length to check up front."""
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self._too_large(f"more ({seen} so far)"))
            return message

        return limited


def _problem(status: int, detail, headers: dict | None = None):
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _field_errors(lines: list[str]) -> list[dict]:
    """'field: expected ..., got ...' lines (``describe_error``, ``SpecError``) as field errors."""
    return [dict(zip(("field", "message"), line.split(": ", 1))) for line in lines]


# ---------------------------------------------------------------- routes


# The body is read raw (to answer 413 before parsing and 422 in the spec's own words), so its
# schema is declared here and filled in by _openapi.
_SPEC_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}}}}


def _router():
    from ..output.storage import public_options
    from . import submit as jobs

    router = APIRouter(prefix="/v1", responses={401: {"model": Problem}, 422: {"model": Problem}})

    def current_settings(request: Request) -> Settings:
        return request.app.state.settings

    def visible_job(job_id: str, settings: Settings = Depends(current_settings)):
        """The job and its spec, if it is a dde job whose output lies under the allowed roots."""
        info = jobs.job_info(job_id, settings.ray_address) if _JOB_ID.match(job_id) else None
        spec = jobs.submitted_spec(info) if info else None
        if spec is None or not _under_roots(spec.output, settings):
            raise HTTPException(404, f"id: expected the id of a dde job of this service, got {job_id!r}")
        return info, spec

    def checked_spec(body: bytes, settings: Settings) -> JobSpec:
        try:
            data = json.loads(body)
        except ValueError as e:
            raise HTTPException(422, _field_errors([f"(body): expected a job spec as JSON, got invalid JSON ({e})"]))
        if not isinstance(data, dict):
            raise HTTPException(422, _field_errors([f"(body): expected a JSON object, got {type(data).__name__}"]))
        try:
            spec = parse_spec(data)
        except SpecError as e:
            raise HTTPException(422, _field_errors(e.problems)) from None
        try:
            output = allowed_output(spec.output, settings.allowed_output_roots)
        except ValueError as e:
            raise HTTPException(403, _field_errors([f"output: {e}"])) from None
        if spec.storage_options:
            raise HTTPException(403, _field_errors([
                f"storage_options: expected none (the service reads and writes storage with its own credentials), "
                f"got keys {sorted(spec.storage_options)}"]))
        inputs = getattr(spec.prompts, "storage_options", None) or {}
        if public_options(inputs) != inputs:
            raise HTTPException(403, _field_errors([
                "prompts.storage_options: expected no credentials (the service's nodes use their own), got some; "
                "keep only options like client_kwargs.endpoint_url or anon"]))
        return spec.model_copy(update={"output": output})

    def submitted(response: Response, spec: JobSpec, settings: Settings) -> JobRef:
        sid, outcome = jobs.submit(spec, settings.ray_address, use_working_dir=settings.upload_checkout)
        response.status_code = 200 if outcome == "already submitted" else 201
        response.headers["Location"] = f"/v1/jobs/{sid}"
        return JobRef(id=sid, output=spec.output, outcome=outcome)

    @router.post("/jobs", status_code=201, response_model=JobRef, openapi_extra=_SPEC_BODY,
                 responses={200: {"model": JobRef, "description": "Already submitted: the same job (same output "
                                  "and fingerprint) is pending, running or done."},
                            403: {"model": Problem}, 413: {"model": Problem}})
    async def create_job(request: Request, response: Response, settings: Settings = Depends(current_settings)):
        """Validate a job spec and submit it as a Ray job. Idempotent: the id derives from the
        output and the spec's fingerprint; a failed or stopped job is resubmitted and resumes."""
        body = await request.body()  # async: the guard may refuse it while it streams in
        return await run_in_threadpool(lambda: submitted(response, checked_spec(body, settings), settings))

    @router.get("/jobs", response_model=list[JobSummary])
    def list_jobs(settings: Settings = Depends(current_settings)):
        """The dde jobs the cluster knows whose outputs lie under the allowed roots, newest first."""
        return [_summary(j, j.metadata["dde_name"], j.metadata["dde_output"])
                for j in jobs.list_jobs(settings.ray_address) if _under_roots(j.metadata["dde_output"], settings)]

    @router.get("/jobs/{job_id}", response_model=JobDetail, responses={404: {"model": Problem}})
    def get_job(job=Depends(visible_job)):
        """The Ray job's state and the progress read from the job's committed markers."""
        from ..job.status import job_status
        from ..output.storage import Store

        info, spec = job
        try:
            progress = job_status(Store(spec.output, spec.storage_options))
        except UserError:  # the driver has not recorded the job yet
            progress = None
        return JobDetail(**_summary(info, spec.name, spec.output).model_dump(), progress=progress)

    @router.post("/jobs/{job_id}/resume", response_model=JobRef, responses={404: {"model": Problem}})
    def resume_job(response: Response, job=Depends(visible_job), settings: Settings = Depends(current_settings)):
        """Submit a failed or stopped job again: it continues from its commit markers."""
        return submitted(response, job[1], settings)

    @router.post("/jobs/{job_id}/stop", response_model=Stopped, responses={404: {"model": Problem}})
    def stop_job(job_id: str, job=Depends(visible_job), settings: Settings = Depends(current_settings)):
        """Stop the job's driver; committed units stay, and resume continues from them."""
        return Stopped(id=job_id, stopped=jobs.stop_job(job_id, settings.ray_address))

    @router.get("/jobs/{job_id}/samples", response_model=Samples, responses={404: {"model": Problem}})
    def samples(job_id: str, n: int = Query(8, ge=1, le=MAX_SAMPLES), job=Depends(visible_job)):
        """The first n committed images with their labels (boxes, categories, RLE masks)."""
        from ..job.preview import committed_samples
        from ..output.storage import Store

        _, spec = job
        rows = committed_samples(Store(spec.output, spec.storage_options), n)
        return Samples(id=job_id, samples=[
            Sample(**{k: row[k] for k in ("image_id", "width", "height", "prompt", "annotations")},
                   png_base64=base64.b64encode(row["image"]["bytes"]).decode()) for row in rows])

    return router


def _under_roots(output: str, settings: Settings) -> bool:
    try:
        allowed_output(output, settings.allowed_output_roots)
    except ValueError:
        return False
    return True


def _summary(info, name: str, output: str) -> JobSummary:
    return JobSummary(id=info.submission_id, name=name, output=output, state=info.status.value.lower(),
                      message=info.message, submitted_at=info.start_time and info.start_time / 1000,
                      ended_at=info.end_time and info.end_time / 1000)


# ---------------------------------------------------------------- app


def _base_app():
    app = FastAPI(title="dde", version="1", description="Generate labelled detection and segmentation datasets "
                  "with diffusion models: submit job specs, watch their progress, preview samples.")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """Liveness; the only route without a token."""
        return {"ok": True}

    app.include_router(_router())

    @app.exception_handler(RequestValidationError)
    def _invalid(_request, exc: RequestValidationError):
        return _problem(422, _field_errors([describe_error(dict(e)) for e in exc.errors()]))

    @app.exception_handler(UserError)
    def _misconfigured(_request, exc: UserError):
        # A UserError that gets here comes from the service's own Ray Jobs address or token.
        return _problem(502, str(exc))

    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app) -> dict:
    """FastAPI's schema plus the JobSpec body and the bearer scheme the guard enforces."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update({**spec_schema.pop("$defs"), "JobSpec": spec_schema})
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        schema["paths"]["/healthz"]["get"]["security"] = []
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings):
    """The API with its guard in front, for Serve (``service.py``) or any ASGI server."""
    app = _base_app()
    app.state.settings = settings
    app.add_middleware(_Guard, settings=settings)
    return app


def openapi_schema() -> dict:
    """The API's OpenAPI document; needs no settings."""
    return _base_app().openapi()


def openapi_json() -> str:
    """The OpenAPI document as checked in at deploy/openapi.json."""
    return json.dumps(openapi_schema(), indent=1) + "\n"
