"""The Ray actor: one generator backend and one label head, a whole unit per call.

The actor writes the unit's shard itself and returns only a small summary row, so
images never travel through the driver.
"""

from __future__ import annotations

import os

from engine.records import Unit

__all__ = ["UnitWorker"]


class UnitWorker:
    def __init__(self, spec_data: dict):
        from engine.output.storage import report_retries
        from engine.spec import JobSpec

        from .unit import UnitMaker

        report_retries()  # a unit waiting out a storage outage says so in the job's log
        self.maker = UnitMaker(JobSpec.model_validate(spec_data))

    def ready(self) -> int:
        return os.getpid()

    def threads(self) -> int | None:
        """torch's intra-op thread count here (resources.threads_per_actor, not Ray's num_cpus), or
        None when the backend runs without torch."""
        import sys

        return sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None

    def make(self, unit: Unit) -> dict:
        return self.maker.make(unit)
