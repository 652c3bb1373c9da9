"""A pool of UnitWorker actors on Ray Core, with per-unit timeouts and retries.

Why Ray Core actors rather than Ray Data ``map_batches``: a unit is one commit, so the
unit (not a block of rows) must be the scheduling and retry granularity; waves need a
barrier after which the driver re-reads the markers and plans again; and a stuck or
dead actor must not hang the job (see Ray #62746), which a per-unit timeout handles.
Exactly-once comes from the create-only markers, so a retried unit is always safe.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from engine.errors import UserError
from engine.records import Unit
from engine.spec import JobSpec

__all__ = ["UnitPool", "InProcessPool"]


class UnitPool:
    def __init__(self, spec: JobSpec, on_wait: Callable[[str | None], None] = lambda text: None):
        """``on_wait``: told what the actors still starting wait for (None once nothing waits)."""
        import ray

        from .unit_worker import UnitWorker

        self.spec = spec
        resources = spec.resources
        self.max_attempts = resources.max_attempts
        self.unit_timeout_s = resources.unit_timeout_s
        self.startup_timeout_s = resources.startup_timeout_s
        self.on_wait, self._waiting, self._checked = on_wait, None, 0.0
        self._actor_cls = ray.remote(UnitWorker).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=0, max_task_retries=0)
        self._spec_data = spec.model_dump(mode="json")
        self._starting: dict = {}  # ready() ref -> actor
        self._idle: list = []
        self._running: dict = {}  # ref -> (unit, attempt, actor, started) of the run() in progress
        self._created = time.time()
        self._alive = 0  # actors that started and have not died
        for _ in range(resources.actors.max):
            self._spawn()

    def _replace(self) -> None:
        self._alive -= 1
        self._spawn()

    def _spawn(self) -> None:
        actor = self._actor_cls.remote(self._spec_data)
        self._starting[actor.ready.remote()] = actor

    def run(self, units: list[Unit], on_done: Callable[[dict], None]) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        queue = deque((unit, 1) for unit in units)
        running = self._running
        while queue or running:
            self._report_waiting()
            self._wait_for_minimum()
            while queue and self._idle:
                unit, attempt = queue.popleft()
                actor = self._idle.pop()
                running[actor.make.remote(unit)] = (unit, attempt, actor, time.time())
            done, _ = ray.wait(list(running) + list(self._starting), num_returns=1, timeout=1.0)
            for ref in done:
                if ref in self._starting:
                    self._actor_started(ref)
                    continue
                unit, attempt, actor, _ = running.pop(ref)
                try:
                    summary = ray.get(ref)
                except RayActorError:
                    self._replace()  # the actor (or its node) died: replace it, retry the unit
                    self._retry(queue, unit, attempt, "its actor died")
                except RayTaskError as e:
                    cause = getattr(e, "cause", e)
                    if isinstance(cause, UserError):  # e.g. an input changed: a retry would meet it again
                        raise cause from None
                    if isinstance(cause, MemoryError):  # its heap may be spent: the retry gets a fresh actor
                        ray.kill(actor)
                        self._replace()
                    else:
                        self._idle.append(actor)
                    self._retry(queue, unit, attempt, repr(cause), cause)
                else:
                    self._idle.append(actor)
                    on_done(summary)
            self._expire(running, queue)

    def _actor_started(self, ref) -> None:
        import ray

        from ray.exceptions import RayActorError

        actor = self._starting.pop(ref)
        try:
            ray.get(ref)
        except RayActorError as e:
            if getattr(e, "_actor_init_failed", True):  # its constructor raised: every actor would
                raise RuntimeError(f"a worker failed to start: {e}") from e
            self._spawn()  # it died for another reason (its node was lost): start another
            return
        except Exception as e:  # a backend or head that cannot load fails every actor alike
            raise RuntimeError(f"a worker failed to start: {e}") from e
        self._alive += 1
        self._idle.append(actor)

    def _retry(self, queue: deque, unit: Unit, attempt: int, why: str, cause: BaseException | None = None) -> None:
        if attempt >= self.max_attempts:  # chained, so the driver can tell an unreachable storage apart
            raise RuntimeError(f"{unit.unit_id} failed {attempt} times; last error: {why}") from cause
        queue.append((unit, attempt + 1))

    def _expire(self, running: dict, queue: deque) -> None:
        import ray

        now = time.time()
        for ref, (unit, attempt, actor, started) in list(running.items()):
            if now - started > self.unit_timeout_s:
                running.pop(ref)
                ray.kill(actor)  # a hung actor may still commit later: the create-only marker keeps one
                self._replace()
                self._retry(queue, unit, attempt, f"timed out after {self.unit_timeout_s:.0f}s")

    def _report_waiting(self, every_s: float = 5.0) -> None:
        """Every ``every_s``, while actors are starting: tell ``on_wait`` what they ask that the
        cluster cannot give now (an actor loading its model waits for nothing)."""
        if time.time() - self._checked < every_s:
            return
        self._checked = time.time()
        waiting = _unmet_demand(self.spec, len(self._starting)) if self._starting else None
        if waiting != self._waiting:
            self._waiting = waiting
            self.on_wait(waiting)

    def _wait_for_minimum(self) -> None:
        r = self.spec.resources
        if self._alive >= r.actors.min or time.time() - self._created < self.startup_timeout_s:
            return
        raise UserError(f"resources.actors.min: expected {r.actors.min} actor(s) with num_cpus={r.num_cpus}, "
                        f"num_gpus={r.num_gpus} to start within resources.startup_timeout_s="
                        f"{self.startup_timeout_s:.0f}s, got {self._alive}"
                        + (f" ({self._waiting})" if self._waiting else "")
                        + "; lower resources.actors.min, num_gpus or num_cpus, or add nodes")

    def shutdown(self) -> None:
        import ray

        # busy actors too: after a failed run() their units are abandoned, and an error they
        # raise later would only be printed as Ray's "unhandled error" after the driver's own
        busy = [actor for _, _, actor, _ in self._running.values()]
        for actor in list(self._starting.values()) + self._idle + busy:
            ray.kill(actor)
        self._starting.clear()
        self._idle.clear()
        self._running.clear()


def _unmet_demand(spec: JobSpec, starting: int) -> str | None:
    """What ``starting`` actors ask that the cluster has not free now, with what it offers; None
    if it has room (they are loading, not waiting)."""
    import ray

    r = spec.resources
    demand = {k: v for k, v in (("CPU", r.num_cpus), ("GPU", r.num_gpus)) if v}
    free, total = ray.available_resources(), ray.cluster_resources()
    if all(free.get(k, 0.0) >= v for k, v in demand.items()):
        return None
    largest = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = any(all(node.get(k, 0.0) >= v for k, v in demand.items()) for node in largest)

    def show(resources: dict) -> str:
        return ", ".join(f"{k} {resources.get(k, 0.0):g}" for k in demand) or "nothing"

    return (f"{starting} actor(s) waiting for resources: each asks {show(demand)}; the cluster has "
            f"{show(total)} in all, {show(free)} free" + ("" if fits else ", and no node that large"))


class InProcessPool:
    """Runs units in the driver's own process, for ``memory://`` outputs: a memory filesystem
    lives in one process, so actors elsewhere could not write to it."""

    def __init__(self, spec: JobSpec, on_wait: Callable[[str | None], None] = lambda text: None):
        from .unit import UnitMaker

        self.maker = UnitMaker(spec)

    def run(self, units: list[Unit], on_done: Callable[[dict], None]) -> None:
        for unit in units:
            on_done(self.maker.make(unit))

    def shutdown(self) -> None:
        pass
