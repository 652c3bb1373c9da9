"""Where one actor's time goes on the render backend, in one process: ms per image of the whole
unit, of the backend, and of the sink's ``write`` (encoding, annotations, staged files), on the
COCO-DE bench world (bench_scale.py's job, 8 units of 256 images after one warm-up unit).

    python bench/bench_sink.py
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
from bench_scale import job_spec

from engine.job.planner import Planner
from engine.job.prompts import build_pool
from engine.job.runner import open_job
from engine.output import sink
from engine.spec import parse_spec
from workers.unit import UnitMaker


def main(units: int = 8) -> None:
    spent = {"sink.write": 0.0}
    write = sink.UnitSink.write

    def timed_write(self, *args):
        start = time.perf_counter()
        write(self, *args)
        spent["sink.write"] += time.perf_counter() - start

    sink.UnitSink.write = timed_write
    spec = parse_spec(job_spec(tempfile.mkdtemp() + "/job", 205_287, 256))
    open_job(spec)
    pool = build_pool(spec)
    planner = Planner(spec, pool)
    plans = planner.plan_wave(0, {}, [], 0, 0, np.zeros(len(pool)), 0, 0)
    maker = UnitMaker(spec)
    maker.make(planner.unit(plans[0], {}))  # warm-up: imports, palette, directories
    spent["sink.write"] = 0.0
    start, backend = time.perf_counter(), 0.0
    for plan in plans[1:1 + units]:
        backend += maker.make(planner.unit(plan, {}))["backend_seconds"]
    images = units * 256
    for name, seconds in {"unit": time.perf_counter() - start, "backend": backend, **spent}.items():
        print(f"{name:12s} {1000 * seconds / images:.3f} ms/image")


if __name__ == "__main__":
    main()
