"""The one definition of a job's throughput and ETA, for the progress bar, ``dde status``,
the report and the API alike.

Throughput: committed images per second of wall time while the job runs. Each driver run
(``dde run``, a resume, a submitted driver) counts from its start to its last commit, or to
now while it still runs; the time between runs (a job stopped overnight) does not count,
and runs that overlap count once. Markers record their driver's start
(``driver_started_at``); older markers count from their own unit's start.

ETA: the job ends when its bounds are met or its image budget is spent, whichever comes
first: the smaller of the time to spend what is left of the budget (images and rejects both
spend it) and the time for the slowest class below its bound to reach it at its own rate.
"""

from __future__ import annotations

import math
from typing import Iterable

__all__ = ["run_intervals", "wall_seconds", "eta_seconds"]


def run_intervals(units: Iterable[dict], live_starts: Iterable[float] = (), now: float | None = None
                  ) -> list[tuple[float, float]]:
    """(start, end) of each driver run that committed ``units`` (marker summaries), plus the
    runs still going (``live_starts``, which end ``now``)."""
    ends: dict[float, float] = {}
    for unit in units:
        start = unit.get("driver_started_at")
        start = unit["committed_at"] - unit["seconds"] if start is None else start
        ends[start] = max(ends.get(start, start), unit["committed_at"])
    for start in live_starts:
        ends[start] = max(ends.get(start, start), now)
    return sorted(ends.items())


def wall_seconds(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``intervals`` (sorted by start)."""
    total, reach = 0.0, -math.inf
    for start, end in intervals:
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def eta_seconds(wall_s: float, images: int, rejects: int, max_images: int, counts: dict[str, int],
                bounds: dict[str, int]) -> float | None:
    """Seconds until the job ends at the rates so far (a class with no instance yet never meets
    its bound at its rate: the budget ends the job); None before there is a rate."""
    if wall_s <= 0 or images + rejects == 0:
        return None
    budget = max(0, max_images - images - rejects) / ((images + rejects) / wall_s)
    short = [(bound - counts.get(c, 0), counts.get(c, 0)) for c, bound in bounds.items() if counts.get(c, 0) < bound]
    bounds_met = max((deficit / (have / wall_s) if have else math.inf for deficit, have in short), default=0.0)
    return min(budget, bounds_met)
