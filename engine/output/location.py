"""Where a job's output may live when the driver runs on a Ray cluster.

A relative output is relative to the driver's working directory. Under Ray Jobs that is
Ray's temporary copy of the submitted working dir (``.../runtime_resources/working_dir_files/
_ray_pkg_*``), which Ray deletes: the dataset would vanish with it. So ``dde submit``
resolves a relative output against the submitter's cwd, but only for a cluster on this
machine (the one place that folder is visible to the cluster), and refuses it otherwise;
and every driver refuses an output that lies inside a Ray session's temporary folders.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from urllib.parse import urlsplit

from ..errors import UserError

__all__ = ["resolve_submitted_output", "refuse_temporary_output"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_LOCAL_SCHEMES = ("file", "local")
# Ray's per-session folder (session_2025-01-31_12-00-00_123456_789) and its runtime-env dirs
_SESSION = re.compile(r"^session_(latest|\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d+_\d+)$")


def _split(uri: str) -> tuple[str | None, str]:
    """(local scheme or None for a bare path, path) for a local location; ('', uri) otherwise."""
    match = _SCHEME.match(uri)
    if match is None:
        return None, uri
    scheme = match.group(1).lower()
    return (scheme, match.group(2)) if scheme in _LOCAL_SCHEMES else ("", uri)


# ---------------------------------------------------------------- dde submit


def resolve_submitted_output(output: str, address: str) -> str:
    """``output`` as a job submitted to the cluster at ``address`` must carry it.

    A URI with a remote scheme (s3://, gs://, memory://...) and an absolute local path pass
    unchanged (the latter with a note on stderr when the cluster is not on this machine: it
    must be storage every node shares). A relative local path is made absolute against the
    current directory where the cluster runs on this machine, and refused otherwise."""
    scheme, path = _split(output)
    if scheme == "":
        return output
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        if expanded != path:  # ~ means the submitter's home, as the shell would expand it
            output = f"{scheme}://{expanded}" if scheme else expanded
        if not _cluster_on_this_machine(address):
            print(f"note: output {output} is a path on the cluster's nodes: it must be storage they all share "
                  f"(dde status reads it from here only if it is mounted here too)", file=sys.stderr)
        return output
    if not _cluster_on_this_machine(address):
        raise UserError(
            f"output: expected an s3:// URI or an absolute path on storage that every node of the cluster at "
            f"{address} shares, got the relative path {output!r}, which the driver would write inside Ray's "
            f"temporary copy of the working dir (deleted after the job); pass --output s3://BUCKET/PREFIX or "
            f"--output /SHARED/PATH, or submit to a cluster on this machine")
    absolute = os.path.abspath(expanded)
    return f"{scheme}://{absolute}" if scheme else absolute


def _address_host(address: str) -> str | None:
    address = address.strip()
    if address in ("auto", "local"):
        return "localhost"
    parts = urlsplit(address if "://" in address else f"//{address}")
    return parts.hostname


def _cluster_on_this_machine(address: str) -> bool:
    """Whether the dashboard at ``address`` is on this machine and, as far as the cluster says,
    so is every node (a port-forwarded localhost:8265 of a remote cluster is not)."""
    host = _address_host(address)
    if not host or not _is_this_machine(host):
        return False
    node_ips = _cluster_node_ips(address)
    return node_ips is None or all(_is_this_machine(ip) for ip in node_ips)


def _cluster_node_ips(address: str) -> list[str] | None:
    """The alive nodes' IPs, or None where the cluster cannot say (then the address decides)."""
    if not address.startswith(("http://", "https://")):  # a GCS or ray:// address: no quick dashboard query
        return None
    try:
        from ray.util.state import list_nodes

        nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], timeout=15,
                           raise_on_missing_output=False)
        return [n.node_ip for n in nodes] or None
    except Exception:  # unreachable, older cluster, no state API: submit reports the address itself
        return None


def _is_this_machine(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", socket.gethostname().lower()):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(_is_local_ip(family, sockaddr) for family, _, _, _, sockaddr in infos)


def _is_local_ip(family: int, sockaddr: tuple) -> bool:
    """Loopback, or an address of one of this machine's interfaces (only those can be bound)."""
    try:
        if ipaddress.ip_address(sockaddr[0].split("%")[0]).is_loopback:
            return True
    except ValueError:
        return False
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((sockaddr[0], 0, *sockaddr[2:]))
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- every driver


def refuse_temporary_output(uri: str) -> None:
    """Refuse a local output that resolves inside Ray's runtime working dir or a Ray session's
    temporary folder: Ray deletes those, and the dataset with them. Other URIs pass."""
    scheme, path = _split(uri)
    if scheme == "":
        return
    resolved = os.path.realpath(os.path.abspath(os.path.expanduser(path)))
    reason = _temporary_reason(resolved)
    if reason:
        raise UserError(f"output: expected a location that outlives the job, got {uri!r}, which resolves to "
                        f"{resolved}, {reason} (Ray deletes it); use an s3:// URI (--output s3://BUCKET/PREFIX) or an "
                        f"absolute path on storage every node shares")


def _temporary_reason(resolved: str) -> str | None:
    parts = resolved.split(os.sep)
    if "runtime_resources" in parts or any(p.startswith("_ray_pkg_") for p in parts):
        return "inside Ray's temporary copy of the job's working dir"
    if any(_SESSION.match(p) for p in parts):
        return "inside a Ray session's temporary folder"
    for root in _ray_temp_roots():
        rel = os.path.relpath(resolved, root)
        if not rel.startswith(os.pardir) and rel.split(os.sep)[0].startswith("session_"):
            return f"inside a Ray session's temporary folder under {root}"
    return None


def _ray_temp_roots() -> set[str]:
    """Ray's temp dirs: the default (/tmp/ray, $RAY_TMPDIR/ray), and the running session's."""
    bases = ["/tmp", os.environ.get("RAY_TMPDIR"), os.environ.get("TMPDIR")]
    roots = {os.path.join(b, "ray") for b in bases if b}
    if os.environ.get("RAY_TMPDIR"):
        roots.add(os.environ["RAY_TMPDIR"])
    ray = sys.modules.get("ray")  # only if this process already uses Ray: never import it here
    try:
        if ray is not None and ray.is_initialized():
            node = ray._private.worker._global_node
            if node is not None:
                roots.add(node.get_temp_dir_path())
    except Exception:  # Ray internals moved: the defaults and the path checks still hold
        pass
    return {os.path.realpath(r) for r in roots}
