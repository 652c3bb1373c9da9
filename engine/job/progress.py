"""The progress bar of run/resume: images/s, ETA and per-class progress to the bounds.

Rate and ETA are ``engine.job.throughput``'s, as in ``dde status``, the report and the API
(tqdm's own rate would count only this run's images, smoothed, and its ETA only the budget).
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from ..spec import JobSpec
from .throughput import eta_seconds, run_intervals, wall_seconds

__all__ = ["Progress"]

_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class Progress:
    def __init__(self, spec: JobSpec, quiet: bool = False, log: bool = False):
        """``quiet``: no bar; ``log``: waiting said in log lines instead."""
        self.spec, self.quiet, self.log = spec, quiet, log
        self.bounds = spec.bounds()
        self.counts: Counter = Counter()
        self.bar = None
        self.stuck: list[str] = []
        self.images = self.rejects = 0
        self.wait_text: str | None = None
        self.earlier_s, self.started = 0.0, time.time()  # wall time of earlier runs; this run's start

    def start(self, ledger, started_at: float) -> None:
        """``started_at``: when this driver run began (its lease's start)."""
        self.counts = Counter(ledger.counts())
        self.images, _ = ledger.totals()
        self.rejects = sum(len(u["rejects"]) for u in ledger.units.values())
        self.earlier_s, self.started = wall_seconds(run_intervals(ledger.units.values())), started_at
        if self.quiet:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=self.spec.budget.max_images, initial=self.images + self.rejects, unit="img",
                        file=sys.stderr, dynamic_ncols=True, bar_format=_FORMAT, desc=self.spec.name)
        self._postfix()

    def unit_done(self, summary: dict) -> None:
        if summary["won"]:  # a unit committed by an earlier attempt was already counted
            self.counts.update(summary["counts"])
            self.images += summary["images"]
            self.rejects += summary["rejects"]
        if self.bar is not None and summary["won"]:
            self.bar.update(summary["images"] + summary["rejects"])
        self._postfix()  # redraws now: the bar's own redraw (at most every 0.1 s) may skip this unit

    def waiting(self, text: str | None) -> None:
        """What the actors still starting wait for (None: nothing). In log mode it goes to
        stderr, which is the job's log for a submitted job."""
        self.wait_text = text
        if self.log and text:
            print(f"waiting: {text}", file=sys.stderr, flush=True)
        self._postfix()

    def wave_done(self, wave: int, stuck: list[str]) -> None:
        self.stuck = stuck
        self._postfix()

    def rate(self) -> tuple[float | None, float | None]:
        """(committed images per second of the job's wall time, ETA in seconds), as ``dde status`` has them."""
        wall = self.earlier_s + time.time() - self.started
        eta = eta_seconds(wall, self.images, self.rejects, self.spec.budget.max_images, dict(self.counts),
                          self.bounds)
        return (self.images / wall if wall > 0 and self.images else None), eta

    def _postfix(self) -> None:
        if self.bar is None:
            return
        from tqdm import tqdm

        rate, eta = self.rate()
        speed = f"{rate:.2f} img/s" if rate else "? img/s"
        speed += f", ETA {tqdm.format_interval(eta)}" if eta is not None else ""
        below = [f"{c} {self.counts[c]}/{b}" for c, b in self.bounds.items() if self.counts[c] < b]
        text = " ".join(below[:6]) + (" ..." if len(below) > 6 else "") if below else "all bounds met"
        if self.stuck:
            text += f" | stuck: {','.join(self.stuck)}"
        waiting = f"waiting: {self.wait_text} | " if self.wait_text else ""
        self.bar.set_postfix_str(f"{waiting}{speed} | {text}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
