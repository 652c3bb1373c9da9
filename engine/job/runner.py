"""The driver: plan a wave, run its units on the actor pool, re-read the markers, repeat.

Everything the loop decides comes from storage (the recorded spec, the wave plans and
the commit markers), so killing the driver at any moment and running again continues
exactly where the committed state says, and plans exactly the same waves.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputChanged, SpecError, StorageUnavailable, UserError
from ..output.layout import COMMITS_DIR, PLANS_DIR, SPEC_FILE, plan_file
from ..output.lease import Lease, live_leases
from ..output.ledger import Ledger, read_job_spec, recorded_spec
from ..output.location import refuse_temporary_output
from ..output.ownership import check_owned, pinned_references, repair_broken_units
from ..output.storage import Store, storage_errors, unreachable, write_problem
from ..spec import JobSpec, diff_fingerprinted, fingerprint
from .cluster import check_address, ensure_ray
from .planner import Planner, job_stuck_classes, stop_reason
from .progress import Progress
from .prompts import PromptItem, build_pool

__all__ = ["run_job", "JobResult", "open_job"]


@dataclass
class JobResult:
    output: str
    stop_reason: str
    waves: int
    images: int
    instances: int
    counts: dict[str, int]
    stuck: list[str] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)  # the first few, with their reasons
    formats: list[str] = field(default_factory=lambda: ["parquet", "coco"])  # the output's layouts


def open_job(spec: JobSpec, inputs: dict | None = None) -> Store:
    """Check the output and record the spec with its inputs, or refuse: an output that holds
    files dde did not write, a recorded job with another spec, or inputs that changed since
    the job first read them. ``inputs``: what ``build_pool`` read (size and sha256 by field)."""
    refuse_temporary_output(spec.output)
    store = Store(spec.output, spec.storage_options)
    with storage_errors(spec.output, spec.storage_options):  # the first read: a wrong endpoint fails fast
        recorded = read_job_spec(Store(spec.output, spec.storage_options, quick=True))
    if recorded is None:
        check_owned(store, spec.name)
    store.check_writable()
    if recorded is not None and _continues(store, spec, recorded, inputs or {}):
        return store
    record = {"spec": recorded_spec(spec), "fingerprint": fingerprint(spec), "inputs": inputs or {}}
    if not store.create_only(SPEC_FILE, json.dumps(record, indent=1).encode()):  # a concurrent driver was first
        _check_same_job(store, spec, read_job_spec(store), inputs or {})
    return store


def _continues(store: Store, spec: JobSpec, recorded: tuple[JobSpec, str], inputs: dict) -> bool:
    """True if the output holds this job; False if it held another that committed nothing
    (forgotten now, so a corrected spec or input can start over); else UserError."""
    try:
        _check_same_job(store, spec, recorded, inputs)
        return True
    except UserError:
        if not _nothing_committed(store):
            raise
    print(f"note: {spec.output!r} held a job that committed nothing; starting it over with this spec",
          file=sys.stderr)
    _forget_plans(store)
    return False


def _check_same_job(store: Store, spec: JobSpec, recorded: tuple[JobSpec, str], inputs: dict) -> None:
    old_spec, old_fp = recorded
    if old_fp != fingerprint(spec):
        changes = "\n".join(f"  - {d}" for d in diff_fingerprinted(old_spec, spec))
        raise UserError(f"output {spec.output!r} holds a job with a different spec; resume refuses to mix "
                        f"datasets. Fields that differ:\n{changes}\nUse a new output, or restore these fields.")
    _check_inputs(store, spec, inputs)


def _nothing_committed(store: Store) -> bool:
    """No unit committed and no driver running: the recorded spec and plans bind nothing yet."""
    return not store.list_names(COMMITS_DIR) and not live_leases(store)


def _forget_plans(store: Store) -> None:
    for name in store.list_names(PLANS_DIR):
        store.delete(f"{PLANS_DIR}/{name}")
    store.delete(SPEC_FILE)


def _check_inputs(store: Store, spec: JobSpec, inputs: dict) -> None:
    """Refuse a resume whose input files differ from those the job recorded at its start
    (outputs made before inputs were recorded have none to compare)."""
    recorded = json.loads(store.read_bytes(SPEC_FILE)).get("inputs", {})
    changed = [f"  - {field}: {_describe_input(old)} is now " + (_describe_input(new) if new else "not read")
               for field, old in sorted(recorded.items())
               if (new := inputs.get(field)) is None or new["sha256"] != old["sha256"]]
    if changed:
        raise InputChanged(f"output {spec.output!r} holds a job planned from other input files; resume refuses "
                           f"to mix datasets. Inputs that changed since the job started:\n" + "\n".join(changed)
                           + "\nRestore these files, or use a new output.")


def _describe_input(record: dict) -> str:
    """'uri (123 bytes, sha256 ...)'; a folder's record counts images present instead of bytes."""
    return f"{record['uri']} ({record['size']} {record.get('unit', 'bytes')}, sha256 {record['sha256'][:12]})"


class _Driver:
    def __init__(self, spec: JobSpec, store: Store, pool: list[PromptItem], lease: Lease, progress: Progress):
        self.spec, self.store, self.lease, self.progress = spec, store, lease, progress
        self.pool_items = pool
        self.planner = Planner(spec, self.pool_items)
        self.ledger = Ledger(store)
        self.uses = np.zeros(len(self.pool_items))
        self.executor = None

    def run(self, address: str | None) -> JobResult:
        wave = first_unit = images_planned = 0
        repair_broken_units(self.store)
        self.pinned = pinned_references(self.store)
        self.ledger.refresh()
        self.progress.start(self.ledger, self.lease.record["started_at"])
        while True:
            units = self._load_plan(wave)
            if units is None:
                history = self.ledger.history(wave)
                stuck = job_stuck_classes(self.spec, history)
                reason = stop_reason(self.spec, wave, history[-1], stuck, images_planned)
                if reason:
                    return self._result(reason, wave, stuck)
                images, instances = self.ledger.totals(before_wave=wave)
                units = self.planner.plan_wave(wave, history[-1], stuck, images_planned, first_unit, self.uses,
                                               images, instances)
                if not units:
                    return self._result("max_images", wave, stuck)
                units = self._save_plan(wave, units)
            else:
                for unit in units:
                    np.add.at(self.uses, [item for _, item, _ in unit["images"]], 1)
            pending = [u for u in units if u["unit_id"] not in self.ledger.units]
            if pending:
                self._execute(pending, address)
            missing = [u["unit_id"] for u in units if u["unit_id"] not in self.ledger.refresh()]
            if missing:
                raise RuntimeError(f"wave {wave} ended with uncommitted units: {missing[:5]}")
            self.progress.wave_done(wave, job_stuck_classes(self.spec, self.ledger.history(wave + 1)))
            images_planned += sum(len(u["images"]) for u in units)
            first_unit += len(units)
            wave += 1

    def _load_plan(self, wave: int) -> list[dict] | None:
        if not self.store.exists(plan_file(wave)):
            return None
        return json.loads(self.store.read_bytes(plan_file(wave)))["units"]

    def _save_plan(self, wave: int, units: list[dict]) -> list[dict]:
        if self.store.create_only(plan_file(wave), json.dumps({"wave": wave, "units": units}).encode()):
            return units
        return self._load_plan(wave)  # a concurrent driver planned it first; plans are deterministic anyway

    def _execute(self, units: list[dict], address: str | None) -> None:
        if self.executor is None:
            from ..registry import EXECUTORS

            if self.spec.output.startswith("memory://"):  # a memory filesystem lives in this process only
                kind = "in_process"
            else:
                kind = "ray"
                ensure_ray(address, quiet=self.progress.quiet and not self.progress.log)
            self.executor = EXECUTORS.get(kind)(self.spec, on_wait=self._waiting)
        digests = {**self.pinned, **self.ledger.reference_digests()}
        self.executor.run([self.planner.unit(u, digests, self.lease.id, self.lease.record["started_at"])
                           for u in units], self.progress.unit_done)

    def _waiting(self, text: str | None) -> None:
        """Actors that cannot start: say so in the bar or the log, and in the lease for `dde status`."""
        self.progress.waiting(text)
        self.lease.note_waiting(text)

    def _result(self, reason: str, waves: int, stuck: list[str]) -> JobResult:
        images, instances = self.ledger.totals()
        rejects = [r for u in sorted(self.ledger.units.values(), key=lambda u: u["index"]) for r in u["rejects"]]
        return JobResult(self.spec.output, reason, waves, images, instances, self.ledger.counts(), stuck, rejects[:5],
                         list(self.spec.layout.formats))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()


def run_job(spec: JobSpec, *, address: str | None = None, quiet: bool = False, log: bool = False,
            finalize: bool = True) -> JobResult:
    """Run (or continue) ``spec``. Every input is read and checked before anything is written.
    Storage that stays unreachable through every retry ends the run with StorageUnavailable:
    a clean stop that ``dde resume`` continues from the markers. ``quiet``: no progress bar, and
    Ray's and the workers' output stays in Ray's logs; ``log``: no bar, but waiting and the
    workers' output as log lines (a submitted driver: its output is the job's log)."""
    from .prompt_limits import limit_prompts

    from .selection import check_selection

    inputs: dict = {}
    if not spec.output.startswith("memory://"):  # memory:// jobs run in this process, without Ray
        check_address(address)
    problems = check_selection(spec)
    if problems:
        raise SpecError(problems)
    pool = limit_prompts(spec, build_pool(spec, inputs), inputs)
    store = open_job(spec, inputs)
    try:
        with Lease(store, f"the driver of job {spec.name!r}") as lease:
            return _run(spec, store, pool, lease, address, Progress(spec, quiet=quiet or log, log=log), finalize)
    except Exception as e:
        if isinstance(e, UserError):
            raise
        problem = write_problem(e, spec.output)  # a full disk, a read-only output
        if problem is not None:
            raise problem from e
        if not unreachable(e):  # e.g. a cluster that refused to be joined
            raise
        raise StorageUnavailable(f"output: {spec.output!r} stayed unreachable through every retry "
                                 f"({type(e).__name__}: {str(e)[:200]}); committed units are kept: "
                                 f"`dde resume {spec.output}` continues once it is back") from e


def _run(spec: JobSpec, store: Store, pool: list[PromptItem], lease: Lease, address: str | None, progress: Progress,
         finalize: bool) -> JobResult:
    driver = _Driver(spec, store, pool, lease, progress)
    try:
        result = driver.run(address)
    finally:
        driver.progress.close()
        driver.close()
    if finalize:
        from .finalize import finalize_job

        finalize_job(store, spec, stop=result.stop_reason, lease=lease.id)
    return result
