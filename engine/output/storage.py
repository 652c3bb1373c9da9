"""Object storage through fsspec: any URI (path, file://, s3://, memory://).

``Store`` is built from (uri, storage_options) inside each process that uses it:
filesystems are never pickled across a fork (s3fs sessions do not survive one).

``s3://`` goes through s3fs. Endpoint, region and credentials come from the spec's
storage_options or, where those leave them out, from the standard variables
(AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE). Credentials are never recorded
in the output: ``public_options`` is what the recorded spec keeps.

Inputs (prompt files, captions, references) are read with ``input_options``: the spec's
``prompts.storage_options`` when it gives them, else the output's options only for an input
on the output's protocol (an s3:// reference with an s3:// output), else none: an
https:// reference never gets an s3 endpoint.

Commands that open a job by its URI (``dde status|resume|finalize|report``) read
``_job/spec.json`` with what the user gives (``--storage-option``, the AWS_* variables)
and quickly (``quick``: a wrong endpoint is likelier there than an outage), then use
``job_options``: the recorded public options, under what the user gave.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import sys
import threading
import time
import uuid

from ..errors import StorageUnavailable, UserError

__all__ = ["Store", "public_options", "unreachable", "input_options", "job_options", "storage_problem", "write_problem",
           "storage_errors", "report_retries"]

_MEMORY_LOCK = threading.Lock()
# Option names that hold credentials, at any depth (s3fs's own and botocore's client_kwargs).
_SECRET_KEYS = frozenset({"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                          "aws_session_token", "session_token", "access_key", "secret_key"})
# botocore's standard mode: exponential backoff with full jitter, capped at 20 s a wait. With
# fifteen attempts a call waits about 2 minutes in all (and over 30 s all but never) before it
# fails: an endpoint restart or a 30 s outage costs nothing. SlowDown (503) is retried alike.
_S3_RETRIES = {"max_attempts": 15, "mode": "standard"}
# A command's first read of an output: answer within seconds, since a missing endpoint or
# credential is likelier there than an outage (botocore's defaults take 60 s per connection).
_QUICK = {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 3, "read_timeout": 10}
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_STORAGE_CLIENTS = frozenset({"botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "adlfs"})


def public_options(options: dict) -> dict:
    """``options`` without credentials, at any depth: what may be recorded in the output or shown."""
    return {k: public_options(v) if isinstance(v, dict) else v
            for k, v in options.items() if k.lower() not in _SECRET_KEYS}


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def input_options(uri: str, spec) -> dict:
    """Storage options for reading the input at ``uri`` of job ``spec`` (see the module's doc)."""
    if "://" not in uri:
        return {}
    own = getattr(spec.prompts, "storage_options", None)
    if own is not None:
        return own
    return spec.storage_options if _protocol(uri) == _protocol(spec.output) else {}


def _merged(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _endpoint(options: dict) -> str | None:
    """The S3 endpoint ``options`` or the standard variables name; None means AWS's own."""
    given = (options.get("client_kwargs") or {}).get("endpoint_url") or options.get("endpoint_url")
    return given or next((os.environ[v] for v in _ENDPOINT_VARIABLES if os.environ.get(v)), None)


def job_options(recorded: dict, given: dict) -> dict:
    """The options to open a recorded job's output with: what the user ``given`` (flags) wins,
    then an endpoint in the standard variables, then what the job recorded (never credentials)."""
    recorded = public_options(recorded)
    if _endpoint(given):  # the endpoint the first read just reached, e.g. through a port-forward
        recorded.get("client_kwargs", {}).pop("endpoint_url", None)
        recorded.pop("endpoint_url", None)
    return _merged(recorded, given)


def write_problem(exc: BaseException, uri: str) -> UserError | None:
    """A write that failed because the output's disk is full (StorageUnavailable, exit 75) or
    became read-only (UserError, exit 2), as one line with what to do; None for other failures.
    Committed units are never touched by either: `dde resume` continues once it is fixed."""
    codes = {getattr(e, "errno", None) for e in _causes(exc)}
    if codes & {errno.ENOSPC, errno.EDQUOT}:
        return StorageUnavailable(f"output: {uri!r} is full (no space left on its device); committed units are "
                                  f"kept: free space or raise the quota, then `dde resume {uri}` continues")
    if errno.EROFS in codes:
        return UserError(f"output: expected a writable location, got {uri!r}, which is read-only now; committed "
                         f"units are kept: make it writable, then `dde resume {uri}` continues")
    return None


def storage_problem(exc: BaseException, uri: str, options: dict) -> UserError | None:
    """A storage failure as the one line a user can act on, or None if it is none of these."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    written = write_problem(exc, uri)
    if written is not None:
        return written
    causes = _causes(exc)
    if any(isinstance(e, (NoCredentialsError, PartialCredentialsError)) for e in causes):
        return UserError(f"storage: no credentials for {uri}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or "
                         f"AWS_PROFILE), or give key and secret as storage options (--storage-option key=... "
                         f"--storage-option secret=..., or the spec's storage_options); a job's recorded spec "
                         f"keeps no credentials")
    if any(isinstance(e, PermissionError) for e in causes):
        hint = "; check the credentials and the endpoint (client_kwargs.endpoint_url or AWS_ENDPOINT_URL)"
        return UserError(f"storage: access denied to {uri} ({exc}){hint if _protocol(uri) == 's3' else ''}")
    if not unreachable(exc):
        return None
    if _protocol(uri) == "s3" and _endpoint(options) is None:
        return UserError(f"storage: cannot reach {uri} at AWS's own endpoint ({type(exc).__name__}); for another "
                         f"S3 service pass --storage-option client_kwargs.endpoint_url=URL or set AWS_ENDPOINT_URL")
    return StorageUnavailable(f"storage: {uri} is unreachable ({type(exc).__name__}: {str(exc)[:160]}); "
                              f"try again once it is back")


@contextlib.contextmanager
def storage_errors(uri: str, options: dict):
    """Raise what ``storage_problem`` makes of a storage failure inside the block."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        problem = storage_problem(e, uri, options)
        if problem is None:
            raise
        raise problem from e


class _RetryNotice(logging.Filter):
    """Turns botocore's debug line about sleeping before a retry into one line on stderr, for
    waits of ``min_s`` or more (short ones are routine) and at most every ``every_s``, so a
    long retry is visibly a retry and not a hang."""

    def __init__(self, min_s: float = 3.0, every_s: float = 10.0):
        super().__init__()
        self.min_s, self.every_s, self.last = min_s, every_s, -every_s

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.msg.startswith("Response received to retry"):
            return False
        delay = float(record.args[0])
        if delay >= self.min_s and time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            print(f"storage: no answer from the endpoint, retrying in {delay:.0f}s", file=sys.stderr)
        return False


def report_retries() -> None:
    """Say on stderr when storage calls retry (for the CLI's own process)."""
    logger = logging.getLogger("botocore.endpoint")
    if not any(isinstance(f, _RetryNotice) for f in logger.filters):
        logger.addFilter(_RetryNotice())
        logger.setLevel(logging.DEBUG)


def _s3_options(options: dict, quick: bool) -> dict:
    if options.get("use_listings_cache"):
        raise UserError("storage_options.use_listings_cache: expected false (a cached listing of _commits "
                        "would hide commits), got true")
    config = dict(options.get("config_kwargs") or {})
    if quick:  # a fresh client too: a cached one keeps the credentials and endpoint it was made with
        config = {**config, **_QUICK}
        options = {**options, "skip_instance_cache": True}
    elif not {"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} & set(os.environ):  # the standard variables win when set
        config.setdefault("retries", dict(_S3_RETRIES))
    return {**options, "use_listings_cache": False, "config_kwargs": config}


def _causes(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and all(exc is not e for e in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) means a storage endpoint could not be reached: a
    connection error that a storage client raised (not, say, a Ray cluster's own)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    causes = _causes(exc)
    return (any(isinstance(e, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)) for e in causes)
            and any(type(e).__module__.split(".")[0] in _STORAGE_CLIENTS for e in causes))


class Store:
    def __init__(self, uri: str, storage_options: dict | None = None, *, quick: bool = False):
        """``quick``: few retries and short timeouts, for a first read that should fail fast."""
        import fsspec

        self.uri = uri
        self.storage_options = dict(storage_options or {})
        options = _s3_options(self.storage_options, quick) if uri.startswith("s3://") else self.storage_options
        try:
            self.fs, self.root = fsspec.core.url_to_fs(uri, **options)
        except (ImportError, ValueError, TypeError) as e:
            raise UserError(f"output: expected a URI fsspec can open, got {uri!r} ({e})") from e
        self.root = self.root.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)
        self.is_s3 = "s3" in _protocols(self.fs)
        self._made_dirs: set[str] = set()

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def rel(self, path: str) -> str:
        return posixpath.relpath(self.fs._strip_protocol(path), self.root)

    # ---- reads
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def list_names(self, rel_dir: str) -> list[str]:
        """Base names directly under ``rel_dir`` (fresh listing, never cached)."""
        folder = self.path(rel_dir)
        self.fs.invalidate_cache(folder)
        try:
            entries = self.fs.ls(folder, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        # an S3 console "folder" is an empty object named like the prefix: not an entry of it
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries
                      if self.fs._strip_protocol(e).rstrip("/") != folder.rstrip("/"))

    def find(self, rel_dir: str) -> list[str]:
        """All files below ``rel_dir``, relative to the store root."""
        self.fs.invalidate_cache(self.path(rel_dir))
        try:
            return sorted(self.rel(p) for p in self.fs.find(self.path(rel_dir)))
        except FileNotFoundError:
            return []

    def present(self, rels: list[str]) -> set[str]:
        """Which of ``rels`` exist. Local and memory: a stat each. S3: one listing per folder,
        of the names' common prefix (one unit's files share a long one), not a HEAD a file."""
        if not self.is_s3:
            return {rel for rel in rels if self.exists(rel)}
        found: set[str] = set()
        folders: dict[str, list[str]] = {}
        for rel in rels:
            folders.setdefault(posixpath.dirname(rel), []).append(posixpath.basename(rel))
        for folder, names in folders.items():
            self.fs.invalidate_cache(self.path(folder))
            listed = self.fs.find(self.path(folder), prefix=os.path.commonprefix(names))
            found |= {self.rel(p) for p in listed}
        return found & set(rels)

    # ---- writes
    def write_bytes(self, rel: str, data: bytes, content_type: str | None = None) -> None:
        """``content_type`` matters on S3 only: a browser renders an object by its Content-Type."""
        path = self.path(rel)
        if self.is_local:
            self._makedirs(posixpath.dirname(path))
            with open(path, "wb") as f:  # plain open: fsspec's local wrapper costs more than the write
                f.write(data)
            return
        headers = {"ContentType": content_type} if content_type and self.is_s3 else {}
        self.fs.pipe_file(path, data, **headers)

    def replace_bytes(self, rel: str, data: bytes) -> None:
        """Overwrite ``rel`` so that readers see the old or the new bytes, never part of them
        (a rename on local disks; a PUT is atomic on S3 and in memory://)."""
        if not self.is_local:
            self.write_bytes(rel, data)
            return
        path = self.path(rel)
        self._makedirs(posixpath.dirname(path))
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def _makedirs(self, directory: str) -> None:
        if directory not in self._made_dirs:
            os.makedirs(directory, exist_ok=True)
            self._made_dirs.add(directory)

    def create_only(self, rel: str, data: bytes) -> bool:
        """Write ``data`` at ``rel`` unless something is there. True if this call created it.

        Atomic on local disks (hard link of a complete temp file), on S3 (If-None-Match: *)
        and in memory://. Readers never see a partial file.
        """
        path = self.path(rel)
        if self.is_local:
            return _link_create(path, data)
        if "memory" in _protocols(self.fs):
            with _MEMORY_LOCK:
                if self.fs.exists(path):
                    return False
                self.fs.pipe_file(path, data)
                return True
        try:
            self.fs.pipe_file(path, data, mode="create")
            return True
        except Exception:  # s3fs surfaces PreconditionFailed in several shapes
            self.fs.invalidate_cache(path)
            if not self.fs.exists(path):
                raise
            # A PUT whose response was lost is retried and meets its own object (412): that is
            # still this call's create. Markers hold a unique attempt id, so a rival's never matches.
            return self.fs.cat_file(path) == data

    def move(self, src_rel: str, dst_rel: str) -> None:
        dst = self.path(dst_rel)
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
        self.fs.mv(self.path(src_rel), dst)

    def delete(self, rel: str, recursive: bool = False) -> None:
        try:
            self.fs.rm(self.path(rel), recursive=recursive)
        except FileNotFoundError:
            pass

    def check_writable(self) -> None:
        """Fail before any work starts if the output cannot be written."""
        probe = f"_job/.probe-{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except Exception as e:  # any backend error means the same thing to the user
            raise UserError(f"output: expected a writable location, got {self.uri!r} "
                            f"({type(e).__name__}: {e}); check the path, bucket and credentials") from e


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _link_create(path: str, data: bytes) -> bool:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails with EEXIST if another attempt committed first
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
