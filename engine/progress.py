"""The progress bar of run/resume: images/s, ETA and per-class progress to the bounds."""

from __future__ import annotations

import sys
from collections import Counter

from .spec import JobSpec

__all__ = ["Progress"]


class Progress:
    def __init__(self, spec: JobSpec, quiet: bool = False):
        self.spec, self.quiet = spec, quiet
        self.bounds = spec.bounds()
        self.counts: Counter = Counter()
        self.bar = None
        self.stuck: list[str] = []

    def start(self, ledger) -> None:
        self.counts = Counter(ledger.counts())
        if self.quiet:
            return
        from tqdm import tqdm

        images, _ = ledger.totals()
        self.bar = tqdm(total=self.spec.budget.max_images, initial=images, unit="img", file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.1, desc=self.spec.name)
        self._postfix()

    def unit_done(self, summary: dict) -> None:
        if summary["won"]:  # a unit committed by an earlier attempt was already counted
            self.counts.update(summary["counts"])
            if self.bar is not None:
                self.bar.update(summary["images"] + summary["rejects"])
        self._postfix()

    def wave_done(self, wave: int, stuck: list[str]) -> None:
        self.stuck = stuck
        self._postfix()

    def _postfix(self) -> None:
        if self.bar is None:
            return
        below = [f"{c} {self.counts[c]}/{b}" for c, b in self.bounds.items() if self.counts[c] < b]
        text = " ".join(below[:6]) + (" ..." if len(below) > 6 else "") if below else "all bounds met"
        if self.stuck:
            text += f" | stuck: {','.join(self.stuck)}"
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
