"""What is committed: read from the create-only markers, never from memory.

Markers are immutable once written, so the ledger caches their small summaries; the
listing of ``_commits/`` is always fresh.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from ..errors import UserError
from ..spec import JobSpec, parse_spec
from .layout import COMMITS_DIR, SPEC_FILE
from .storage import Store, public_options

__all__ = ["Ledger", "read_job_spec", "require_job_spec", "not_a_job", "recorded_spec", "iter_markers",
           "marker_names"]

_MARKER = re.compile(r"unit-\d+\.json")
_SUMMARY_KEYS = ("unit_id", "index", "wave", "images", "instances", "counts", "rejects",
                 "backend_seconds", "seconds", "committed_at")


def read_job_spec(store: Store) -> tuple[JobSpec, str] | None:
    """The resolved spec and fingerprint recorded when the job first started, if any."""
    if not store.exists(SPEC_FILE):
        return None
    try:
        data = json.loads(store.read_bytes(SPEC_FILE))
        return parse_spec(data["spec"]), data["fingerprint"]
    except (ValueError, KeyError, TypeError, UserError) as e:
        raise UserError(f"output: expected dde's record of the job in {store.uri}/{SPEC_FILE}, got an unreadable "
                        f"file ({type(e).__name__}: {str(e)[:120]}); restore it from a copy, or use a new output") from e


def recorded_spec(spec: JobSpec) -> dict:
    """The spec as the output records it (_job/spec.json, job.json): storage credentials left out."""
    data = spec.model_dump(mode="json")
    data["storage_options"] = public_options(data["storage_options"])
    if data["prompts"].get("storage_options"):
        data["prompts"]["storage_options"] = public_options(data["prompts"]["storage_options"])
    return data


def not_a_job(uri: str) -> UserError:
    """The error for a URI that holds no dde job: the one wording of this check."""
    return UserError(f"URI: expected the output of a dde job (with {SPEC_FILE}), got {uri!r}")


def require_job_spec(store: Store, uri: str | None = None) -> tuple[JobSpec, str]:
    """``read_job_spec``, or ``not_a_job`` (naming ``uri``, by default the store's) when there is none."""
    recorded = read_job_spec(store)
    if recorded is None:
        raise not_a_job(uri or store.uri)
    return recorded


def marker_names(store: Store) -> list[str]:
    """The committed units' marker file names, in unit order (a fresh listing)."""
    return [n for n in store.list_names(COMMITS_DIR) if _MARKER.fullmatch(n)]  # other files are not dde's markers


def iter_markers(store: Store, names: list[str] | None = None):
    """Full markers in unit order, read one at a time (summaries are in ``Ledger``).
    ``names``: a listing taken earlier (``marker_names``), to read just those."""
    for name in marker_names(store) if names is None else names:
        yield json.loads(store.read_bytes(f"{COMMITS_DIR}/{name}"))


class Ledger:
    def __init__(self, store: Store):
        self.store = store
        self.units: dict[str, dict] = {}

    def refresh(self) -> dict[str, dict]:
        names = marker_names(self.store)
        new = [f"{COMMITS_DIR}/{n}" for n in names if n[:-5] not in self.units]
        if new:
            # one batched read: s3fs fetches the markers concurrently
            blobs = self.store.fs.cat([self.store.path(p) for p in new])
            for blob in blobs.values():
                marker = json.loads(blob)
                self.units[marker["unit_id"]] = {**{k: marker[k] for k in _SUMMARY_KEYS},
                                                 "references": marker.get("references", {}),
                                                 "driver_started_at": marker.get("driver_started_at")}
        return self.units

    def reference_digests(self) -> dict[str, str]:
        """sha256 of each reference image as committed units read it, by URI."""
        return {uri: digest for unit in self.units.values() for uri, digest in unit["references"].items()}

    def counts(self, before_wave: int | None = None) -> dict[str, int]:
        total: Counter = Counter()
        for unit in self.units.values():
            if before_wave is None or unit["wave"] < before_wave:
                total.update(unit["counts"])
        return dict(total)

    def history(self, waves: int) -> list[dict[str, int]]:
        """Cumulative counts: [before wave 0, after wave 0, ..., after wave waves-1]. One pass over
        the units (the driver asks for it at every wave barrier: no waves x units loop)."""
        per_wave = [Counter() for _ in range(waves)]
        for unit in self.units.values():
            if unit["wave"] < waves:
                per_wave[unit["wave"]].update(unit["counts"])
        cumulative, total = [{}], Counter()
        for counts in per_wave:
            total.update(counts)
            cumulative.append(dict(total))
        return cumulative

    def totals(self, before_wave: int | None = None) -> tuple[int, int]:
        units = [u for u in self.units.values() if before_wave is None or u["wave"] < before_wave]
        return sum(u["images"] for u in units), sum(u["instances"] for u in units)
