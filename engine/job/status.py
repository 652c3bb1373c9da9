"""Job status from storage alone: works for local, submitted and finished jobs alike."""

from __future__ import annotations

import json
import time

from ..output.layout import JOB_FILE, PLANS_DIR, SPEC_FILE
from ..output.lease import live_leases
from ..output.ledger import Ledger, require_job_spec
from ..output.storage import Store
from .planner import class_state, job_stuck_classes
from .throughput import eta_seconds, run_intervals, wall_seconds

__all__ = ["job_status", "format_status"]


def job_status(store: Store, ledger: Ledger | None = None) -> dict:
    spec, fp = require_job_spec(store)
    ledger = ledger or Ledger(store)
    units = ledger.refresh()
    waves = len([n for n in store.list_names(PLANS_DIR) if n.endswith(".json")])
    completed_waves = max([u["wave"] for u in units.values()], default=-1) + 1
    bounds, counts = spec.bounds(), ledger.counts()
    images, instances = ledger.totals()
    rejects = [r for u in sorted(units.values(), key=lambda u: u["index"]) for r in u["rejects"]]
    finalized = store.exists(JOB_FILE)
    stuck = job_stuck_classes(spec, ledger.history(completed_waves))
    live = {} if finalized else live_leases(store)
    running = [lease["started_at"] for lease in live.values()]
    wall = wall_seconds(run_intervals(units.values(), running, time.time()))
    rate = images / wall if wall > 0 and images else None
    eta = None if finalized else eta_seconds(wall, images, len(rejects), spec.budget.max_images, counts, bounds)
    return {
        "name": spec.name, "output": store.uri, "fingerprint": fp,
        "state": "finalized" if finalized else "running" if live else "interrupted" if units else "started",
        "stop_reason": json.loads(store.read_bytes(JOB_FILE)).get("stop_reason") if finalized else None,
        "waves_planned": waves, "units_done": len(units), "images": images, "instances": instances,
        "classes": {c: {"count": counts.get(c, 0), "lower_bound": b, "met": counts.get(c, 0) >= b,
                        "state": class_state(spec, counts.get(c, 0), b, c in stuck)} for c, b in bounds.items()},
        "stuck": stuck,
        "rejects": len(rejects), "reject_samples": rejects[:20], "notes": _input_notes(store),
        "waiting": [lease["waiting"] for lease in live.values() if lease.get("waiting")],
        "wall_s": round(wall, 3), "images_per_s": round(rate, 2) if rate else None,
        "eta_s": None if eta is None else round(eta, 1),
        "selection": _selection(spec, units, bounds),
    }


def _selection(spec, units: dict, bounds: dict) -> list | None:
    """Kept and rejected instances per class when the job selects images (``selection``), else None."""
    from .selection import per_class_table

    return per_class_table(list(units.values()), list(bounds)) if spec.selection is not None else None


def _input_notes(store: Store) -> list[str]:
    """What the job's input checks found at its start, as recorded with its inputs: reference
    images missing on disk, prompts past the text encoder's limit. One line each."""
    from .prompt_limits import RECORD, describe_limit
    from .references import describe_missing

    inputs = json.loads(store.read_bytes(SPEC_FILE)).get("inputs", {})
    notes = {"prompts.images": describe_missing(inputs.get("prompts.images")),
             "prompts": describe_limit(inputs.get(RECORD))}
    return [f"{field}: {note}" for field, note in notes.items() if note]


def format_status(status: dict) -> str:
    lines = [f"job {status['name']} at {status['output']}: {status['state']}"
             + (f" ({status['stop_reason']})" if status["stop_reason"] else ""),
             f"  units {status['units_done']}, waves {status['waves_planned']}, images {status['images']}, "
             f"instances {status['instances']}, rejects {status['rejects']}"]
    if status["images_per_s"]:
        lines.append(f"  rate {status['images_per_s']} img/s over {status['wall_s']:.0f}s of running"
                     + (f", ETA {status['eta_s']:.0f}s" if status["eta_s"] is not None else ""))
    lines += [f"  {note}" for note in status["notes"]]
    lines.extend(f"  waiting: {text}" for text in status["waiting"])
    width = max(len(c) for c in status["classes"])
    for name, c in status["classes"].items():
        mark = {"met": "ok", "stuck": "STUCK", "below": ".."}.get(c["state"], c["state"])
        lines.append(f"  {name:<{width}} {c['count']:>8} / {c['lower_bound']:<8} {mark}")
    for r in status["reject_samples"][:5]:
        lines.append(f"  reject image {r['image_id']}: {r['reason']}")
    return "\n".join(lines)
