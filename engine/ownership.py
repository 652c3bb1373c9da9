"""What dde owns under an output, and the only clean-up it does there.

dde writes into an output that is empty or already holds a dde job (``_job/spec.json``);
anything else is refused before a byte is written (``check_owned``). Under a job's output
dde owns ``_job/``, ``_plans/``, ``_commits/``, ``_staging/``, ``parquet/``,
``coco/`` (``instances.json``, ``images/``, ``semantic/``), ``README.md``, ``job.json``,
``preview.png`` and ``report.html``.

Clean-up never works by "not listed, so delete". It removes only:

- attempt folders ``_staging/unit-NNNNNN.<attempt>`` that no commit marker lists and whose
  driver's lease is over (``remove_stale_attempts``): an attempt that may still be running
  is never touched;
- the files of a committed unit whose files went missing, listed by that unit's own marker,
  so the unit is regenerated with its planned seeds (``repair_broken_units``).
"""

from __future__ import annotations

import sys

from .errors import UserError
from .layout import PUBLISHED_DIRS, SPEC_FILE, STAGING_DIR, marker_file
from .lease import attempt_lease, live_leases
from .ledger import iter_markers, marker_names
from .storage import Store

__all__ = ["check_owned", "remove_stale_attempts", "broken_units", "repair_broken_units", "describe_broken"]

_OWN_TOP = "_job"  # probe and lease files of an earlier start may be all an output holds


def check_owned(store: Store, job_name: str) -> None:
    """UserError (exit 2) unless the output is empty or holds a dde job. Reads one listing."""
    foreign = [n for n in store.list_names("") if n != _OWN_TOP]
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
    removed = kept = 0
    for name in store.list_names(STAGING_DIR):
        path = f"{STAGING_DIR}/{name}"
        ours, lease = attempt_lease(name)
        if path in committed or not ours:
            continue
        if lease in live or (lease is None and live):  # an attempt without a lease id: any live driver may own it
            kept += 1
            continue
        store.delete(path, recursive=True)
        removed += 1
    return removed, kept


def broken_units(store: Store) -> dict[str, tuple[dict, list[str]]]:
    """Committed units some of whose files are in neither their staging folder nor at their
    final name: {unit id: (marker, missing files)}."""
    # Markers first: a unit commits only once its files are staged, so every listed marker's
    # files were staged before the staging listing. Staging before the final names: a
    # concurrent finalize moves files from staging to final, where the later listing sees them.
    names = marker_names(store)
    if not names:
        return {}
    staged = set(store.find(STAGING_DIR))
    final = {rel for folder in PUBLISHED_DIRS for rel in store.find(folder)}
    broken = {}
    for marker in iter_markers(store, names):
        missing = [rel for rel in [*marker["files"], marker["shard"]]
                   if rel not in final and f"{marker['staging']}/{rel}" not in staged]
        if missing:
            broken[marker["unit_id"]] = (marker, missing)
    return broken


def describe_broken(broken: dict[str, tuple[dict, list[str]]]) -> str:
    return "; ".join(f"{uid}: {len(missing)} file(s) missing, e.g. {missing[0]}"
                     for uid, (_, missing) in sorted(broken.items())[:5]) + (
        f"; and {len(broken) - 5} more unit(s)" if len(broken) > 5 else "")


def repair_broken_units(store: Store) -> list[str]:
    """Un-commit every broken unit (its marker, then the files that marker lists), so the
    driver regenerates it from its stored plan: same image ids and seeds, same bytes.
    Says so on stderr. Returns the unit ids."""
    broken = broken_units(store)
    if broken:
        print(f"warning: {len(broken)} committed unit(s) have files missing from storage ({describe_broken(broken)}); "
              f"regenerating them with their planned seeds", file=sys.stderr)
    for uid, (marker, _) in sorted(broken.items()):
        store.delete(marker_file(uid))
        for rel in marker["files"]:
            store.delete(rel)
        store.delete(marker["staging"], recursive=True)
    return sorted(broken)
