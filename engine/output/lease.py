"""Driver leases: who is working on an output right now.

A driver (``dde run``, ``dde resume``, a submitted job) holds a lease while it runs: an
object ``_job/leases/<lease id>.json`` that a daemon thread rewrites every
``HEARTBEAT_S`` seconds and that the driver deletes when it ends. A lease whose last
heartbeat is older than ``TTL_S`` belongs to a driver that died (``kill -9``, a lost
node): it no longer protects anything.

Every attempt a driver starts carries its lease id in its name
(``_staging/unit-000123.<lease>-<nonce>``), so clean-up can tell an attempt that may
still be running (its driver's lease is live) from one that cannot (its lease ended or
expired). Two drivers on one output are allowed (each commit is create-only); a
``dde finalize`` while any driver holds the output is refused.

Heartbeats compare the holder's clock with the reader's: clocks that disagree by more
than ``TTL_S - HEARTBEAT_S`` (45 s) can make a live lease look expired.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid

from ..errors import UserError
from .layout import LEASES_DIR
from .storage import Store

__all__ = ["Lease", "live_leases", "expired_leases", "refuse_if_held", "attempt_lease", "new_attempt_id", "HEARTBEAT_S", "TTL_S"]

HEARTBEAT_S = 15.0
TTL_S = 60.0
_ATTEMPT = re.compile(r"unit-\d+\.(?:(?P<lease>[0-9a-f]{12})-[0-9a-f]{8}|[0-9a-f]{12})")


def new_attempt_id(lease_id: str | None) -> str:
    """``<lease>-<nonce>`` for an attempt started under a lease, else a bare 12-hex nonce."""
    return f"{lease_id}-{uuid.uuid4().hex[:8]}" if lease_id else uuid.uuid4().hex[:12]


def attempt_lease(staging_name: str) -> tuple[bool, str | None]:
    """(whether ``staging_name`` is an attempt folder dde names, the lease id it carries or None)."""
    match = _ATTEMPT.fullmatch(staging_name)
    return (match is not None, match.group("lease") if match else None)


def live_leases(store: Store, now: float | None = None) -> dict[str, dict]:
    """Leases whose last heartbeat is younger than TTL_S, by lease id."""
    now = time.time() if now is None else now
    live = {}
    for name in store.list_names(LEASES_DIR):
        if not name.endswith(".json"):
            continue
        try:
            record = json.loads(store.read_bytes(f"{LEASES_DIR}/{name}"))
        except (FileNotFoundError, ValueError):  # ended (deleted) or half-written just now
            continue
        if now - record.get("heartbeat_at", 0) < TTL_S and not _dead_here(record):
            live[name[:-5]] = record
    return live


def expired_leases(store: Store) -> list[str]:
    """Lease files that no longer protect anything (their driver died), to delete."""
    live = live_leases(store)
    return [f"{LEASES_DIR}/{n}" for n in store.list_names(LEASES_DIR) if n.endswith(".json") and n[:-5] not in live]


def _process_namespace() -> str | None:
    """This kernel boot and PID namespace (Linux), where a PID names one process; else None."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _dead_here(record: dict) -> bool:
    """Whether the lease's driver ran in this PID namespace and its process is gone (a kill -9
    on this machine): then its lease ends now, not TTL_S later. A reused PID keeps it alive."""
    namespace = _process_namespace()
    if namespace is None or record.get("namespace") != namespace:
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def describe(record: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    return (f"{record.get('command', 'a driver')} on {record.get('host', '?')} (pid {record.get('pid', '?')}), "
            f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.get('started_at', 0)))}, "
            f"last heartbeat {now - record.get('heartbeat_at', 0):.0f}s ago")


def refuse_if_held(store: Store, action: str) -> None:
    """UserError (exit 2) naming the holders if any driver holds a live lease on ``store``."""
    live = live_leases(store)
    if not live:
        return
    holders = "; ".join(describe(r) for r in live.values())
    raise UserError(f"{action}: expected no job running on {store.uri!r}, got a running driver: {holders}. "
                    f"It finalizes the output itself when it ends; `dde status {store.uri}` shows progress now. "
                    f"If that driver is gone, its lease expires {TTL_S:.0f}s after its last heartbeat.")


class Lease:
    """A live lease on ``store`` for as long as the ``with`` block runs."""

    def __init__(self, store: Store, command: str):
        self.store, self.id = store, uuid.uuid4().hex[:12]
        self.file = f"{LEASES_DIR}/{self.id}.json"
        self.record = {"lease": self.id, "command": command, "host": socket.gethostname(), "pid": os.getpid(),
                       "namespace": _process_namespace(), "started_at": time.time()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"dde-lease-{self.id}", daemon=True)

    def __enter__(self) -> "Lease":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.store.delete(self.file)
        except Exception:  # storage gone: the lease expires by itself
            pass

    def note_waiting(self, waiting: str | None) -> None:
        """Record what the driver waits for (``dde status`` and the API show it), or that it no longer waits."""
        self.record["waiting"] = waiting
        try:
            self._write()
        except Exception:  # as in a heartbeat: the next one carries it
            pass

    def _write(self) -> None:
        self.store.replace_bytes(self.file, json.dumps({**self.record, "heartbeat_at": time.time()}).encode())

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception:  # a storage outage: the driver's own writes report it; keep trying
                pass
