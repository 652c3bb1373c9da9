"""Joining a Ray cluster from a driver (``dde run|resume --address``).

The forms users have: ``auto`` (a cluster on this node), ``HOST:PORT`` (the head's GCS),
``ray://HOST:10001`` (Ray Client). The dashboard's ``http://HOST:8265`` is what ``dde
submit|jobs|logs|stop|serve`` take; a driver cannot join through it, so it is refused with
the fix. A ``HOST:PORT`` that nothing answers on, or a cluster that wants its auth token, is
one line at once (exit 2), not minutes of retries ending in a misleading error.
"""

from __future__ import annotations

import os
import re
import socket

from ..errors import UserError

__all__ = ["check_address", "ensure_ray"]

_HOST_PORT = re.compile(r"^\[?([^\]/]+?)\]?:(\d+)$")
# ray.init retries a GCS for 20 s (a missing token) to minutes (a silent port): a driver
# joining a running cluster needs seconds, unless the operator says otherwise
_GCS_WAIT_S = "5"


def _given(address: str | None) -> tuple[str | None, str]:
    """(the address, the name to blame in messages)."""
    if address:
        return address, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def check_address(address: str | None) -> None:
    """Refuse an address a driver cannot join, before anything is written (no Ray import)."""
    address, name = _given(address)
    if address is None or address in ("auto", "local") or address.startswith("ray://"):
        return
    if re.match(r"^https?://", address):
        raise UserError(f"{name}: expected a cluster address a driver joins (auto, HOST:6379 or ray://HOST:10001), "
                        f"got the dashboard address {address!r}; `dde submit --address {address}` runs the job on "
                        f"that cluster, or give the head's HOST:PORT (`ray status` on the head shows it)")
    match = _HOST_PORT.match(address)
    if match is None:
        raise UserError(f"{name}: expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=3).close()
    except OSError as e:
        raise UserError(f"{name}: expected a Ray cluster at {address}, got no answer ({e.strerror or e}); check "
                        f"the head's address (`ray status` on the head shows it)") from None


def ensure_ray(address: str | None, quiet: bool = False) -> None:
    """``quiet``: Ray's warnings and the workers' output stay in Ray's logs (session_latest/logs)."""
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return
    options = {"include_dashboard": False, "log_to_driver": not quiet,
               "logging_level": "ERROR" if quiet else "WARNING"}
    joined, name = _given(address)
    if joined is None:
        ray.init(address="local", num_cpus=os.cpu_count(), **options)
        return
    check_address(address)
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", _GCS_WAIT_S)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, AuthenticationError) as e:
        raise _join_problem(e, joined, name) from None


def _join_problem(exc: BaseException, address: str, name: str) -> UserError:
    from ray.exceptions import AuthenticationError

    text = f"{exc} {exc.__cause__ or exc.__context__ or ''}"
    if isinstance(exc, AuthenticationError) or "Unauthenticated" in text or "InvalidAuthToken" in text:
        return UserError(f"{name}: the cluster at {address} requires its auth token; set RAY_AUTH_MODE=token and "
                         f"put the token in RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head)")
    return UserError(f"{name}: expected a Ray cluster at {address} that a driver can join, got {exc}; check the "
                     f"address (`ray status` on the head shows it) and that this machine reaches every port of it")
