"""Object storage through fsspec: any URI (path, file://, s3://, memory://).

``Store`` is built from (uri, storage_options) inside each process that uses it:
filesystems are never pickled across a fork (s3fs sessions do not survive one).
"""

from __future__ import annotations

import os
import posixpath
import threading
import uuid

from .errors import UserError

__all__ = ["Store"]

_MEMORY_LOCK = threading.Lock()


class Store:
    def __init__(self, uri: str, storage_options: dict | None = None):
        import fsspec

        self.uri = uri
        self.storage_options = dict(storage_options or {})
        options = dict(self.storage_options)
        if uri.startswith("s3://"):
            # Listings of _commits must never be stale: a cached listing would hide commits.
            options.setdefault("use_listings_cache", False)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(uri, **options)
        except (ImportError, ValueError, TypeError) as e:
            raise UserError(f"output: expected a URI fsspec can open, got {uri!r} ({e})") from e
        self.root = self.root.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)
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
        self.fs.invalidate_cache(self.path(rel_dir))
        try:
            entries = self.fs.ls(self.path(rel_dir), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def find(self, rel_dir: str) -> list[str]:
        """All files below ``rel_dir``, relative to the store root."""
        self.fs.invalidate_cache(self.path(rel_dir))
        try:
            return sorted(self.rel(p) for p in self.fs.find(self.path(rel_dir)))
        except FileNotFoundError:
            return []

    # ---- writes
    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        if self.is_local:
            self._makedirs(posixpath.dirname(path))
            with open(path, "wb") as f:  # plain open: fsspec's local wrapper costs more than the write
                f.write(data)
            return
        self.fs.pipe_file(path, data)

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
            if self.fs.exists(path):
                return False
            raise

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
