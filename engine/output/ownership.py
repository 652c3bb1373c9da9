"""What dde owns under an output, and the only clean-up it does there.

dde writes into an output that is empty or already holds a dde job (``_job/spec.json``);
anything else is refused before a byte is written (``check_owned``). Under a job's output
dde owns ``_job/``, ``_plans/``, ``_commits/``, ``_staging/``, ``parquet/``,
``coco/`` (``instances*.json``, ``images/``, ``semantic/``), ``webdataset/``, ``README.md``,
``job.json``, ``manifest.json``, ``preview.png`` and ``report.html``.

Clean-up never works by "not listed, so delete". It removes only:

- attempt folders ``_staging/unit-NNNNNN.<attempt>`` that no commit marker lists and whose
  driver's lease is over (``remove_stale_attempts``): an attempt that may still be running
  is never touched;
- the files of a committed unit whose files went missing, listed by that unit's own marker,
  so the unit is regenerated with its planned seeds (``repair_broken_units``);
- lease files whose heartbeat expired.
"""

from __future__ import annotations

import json
import sys

from ..errors import UserError
from .layout import PINS_DIR, SPEC_FILE, STAGING_DIR, marker_file
from .lease import attempt_lease, expired_leases, live_leases
from .ledger import iter_markers, marker_names
from .storage import Store

__all__ = ["check_owned", "remove_stale_attempts", "broken_units", "repair_broken_units", "describe_broken",
           "pinned_references"]

# Not the user's data: probe and lease files of an earlier start (_job), and what operating
# systems leave in any folder. dde never writes or deletes these.
_NOT_DATA = frozenset({"_job", ".DS_Store", "Thumbs.db", "desktop.ini", "lost+found"})


def check_owned(store: Store, job_name: str) -> None:
    """UserError (exit 2) unless the output is empty or holds a dde job. Reads one listing."""
    if store.fs.isfile(store.root):
        raise UserError(f"output: expected a folder or prefix, got {store.uri!r}, which is a file; "
                        f"use a folder or prefix that is empty or does not exist yet")
    foreign = [n for n in store.list_names("") if n not in _NOT_DATA]
    if not foreign or store.exists(SPEC_FILE):  # a concurrent driver of a job may have just recorded it
        return
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    suggestion = f"{store.uri.rstrip('/')}/dde-{job_name}"
    raise UserError(f"output: expected an empty location or the output of a dde job, got {store.uri!r}, which "
                    f"holds files dde did not write ({shown}); dde would overwrite or remove such files. Use an "
                    f"empty folder or prefix, or a sub-folder such as {suggestion!r}.")


def remove_stale_attempts(store: Store, committed: set[str], own_lease: str | None = None) -> tuple[int, int]:
    """Delete uncommitted attempt folders that cannot be running any more.

    ``committed``: staging folders that markers list. ``own_lease``: the caller's lease, whose
    attempts are over (its pool is shut down). Returns (removed, kept because a live driver
    may still be writing them). Folders whose names dde does not give are never touched.
    """
    live = set(live_leases(store)) - {own_lease}
    for lease_file in expired_leases(store):
        store.delete(lease_file)
    removed = kept = 0
    for name in store.list_names(STAGING_DIR):
        path = f"{STAGING_DIR}/{name}"
        ours, lease = attempt_lease(name)
        if path in committed or not ours:
            continue
        if lease in live or (lease is None and live) or _committed_since(store, name):
            kept += 1  # an attempt without a lease id: any live driver may own it
            continue
        store.delete(path, recursive=True)
        removed += 1
    return removed, kept


def _committed_since(store: Store, staging_name: str) -> bool:
    """Whether the attempt ``staging_name`` committed after the caller listed the markers
    (an actor of a driver that just died may still be finishing its unit)."""
    uid = staging_name.split(".", 1)[0]
    try:
        return json.loads(store.read_bytes(marker_file(uid)))["staging"] == f"{STAGING_DIR}/{staging_name}"
    except FileNotFoundError:
        return False


def broken_units(store: Store) -> dict[str, tuple[dict, list[str]]]:
    """Committed units some of whose files are in neither their staging folder nor at their
    final name: {unit id: (marker, missing files)}. Memory: one unit's names at a time."""
    # Markers first: a unit commits only once its files are staged, so every listed marker's
    # files were staged before its staging listing. Staging before the final names: a
    # concurrent finalize moves files from staging to final, where the later check sees them.
    broken = {}
    for marker in iter_markers(store, marker_names(store)):
        missing = missing_files(store, marker)
        if missing:
            broken[marker["unit_id"]] = (marker, missing)
    return broken


def missing_files(store: Store, marker: dict) -> list[str]:
    """One committed unit's files found neither in its staging folder (one listing of it) nor at
    their final names (``Store.present``: a stat each locally, a listing per folder on S3)."""
    staging = marker["staging"]
    staged = set(store.find(staging))
    elsewhere = [rel for rel in [*marker["files"], marker["shard"]] if f"{staging}/{rel}" not in staged]
    present = store.present(elsewhere)
    return [rel for rel in elsewhere if rel not in present]


def describe_broken(broken: dict[str, tuple[dict, list[str]]]) -> str:
    return "; ".join(f"{uid}: {len(missing)} file(s) missing, e.g. {missing[0]}"
                     for uid, (_, missing) in sorted(broken.items())[:5]) + (
        f"; and {len(broken) - 5} more unit(s)" if len(broken) > 5 else "")


def repair_broken_units(store: Store) -> list[str]:
    """Un-commit every broken unit (its marker, then the files that marker lists), so the
    driver regenerates it from its stored plan: same image ids and seeds, same bytes. The
    references it read stay pinned (``pinned_references``). Says so on stderr. Returns the unit ids."""
    broken = broken_units(store)
    if broken:
        print(f"warning: {len(broken)} committed unit(s) have files missing from storage ({describe_broken(broken)}); "
              f"regenerating them with their planned seeds", file=sys.stderr)
    for uid, (marker, _) in sorted(broken.items()):
        if marker.get("references"):
            store.replace_bytes(f"{PINS_DIR}/{uid}.json", json.dumps(marker["references"]).encode())
        store.delete(marker_file(uid))
        for rel in marker["files"]:
            store.delete(rel)
        store.delete(marker["staging"], recursive=True)
    return sorted(broken)


def pinned_references(store: Store) -> dict[str, str]:
    """sha256 by URI of the references that un-committed (repaired) units had read: the
    regenerated unit must read the same bytes, like any unit after a commit that read them."""
    pins: dict[str, str] = {}
    for name in store.list_names(PINS_DIR):
        pins.update(json.loads(store.read_bytes(f"{PINS_DIR}/{name}")))
    return pins
