"""Where a job's output may live on a cluster: `dde submit` resolves or refuses a relative output,
and a driver refuses an output inside Ray's temporary folders (no Ray: the cluster is faked)."""

import os
import socket

import pytest

from engine.output import location
from engine.errors import UserError
from engine.output.location import refuse_temporary_output, resolve_submitted_output

REMOTE = "http://192.0.2.1:8265"  # TEST-NET-1: never this machine, never resolved through DNS


@pytest.fixture
def nodes(monkeypatch):
    """What the cluster at a local address says about its nodes (None: it cannot say)."""
    answer = {"ips": None}
    monkeypatch.setattr(location, "_cluster_node_ips", lambda address: answer["ips"])
    return answer


@pytest.mark.parametrize("uri", ["s3://bucket/dde/x", "gs://bucket/x", "memory://x", "s3://b/out/../x"])
def test_remote_uris_pass_unchanged(uri):
    assert resolve_submitted_output(uri, REMOTE) == uri
    assert resolve_submitted_output(uri, "http://127.0.0.1:8265") == uri


def test_an_absolute_path_passes_with_a_note_for_a_remote_cluster(capsys):
    assert resolve_submitted_output("/mnt/shared/dde/x", REMOTE) == "/mnt/shared/dde/x"
    assert resolve_submitted_output("file:///mnt/shared/x", REMOTE) == "file:///mnt/shared/x"
    assert "must be storage they all share" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["out/x", "./out/x", "file://out/x", "x"])
@pytest.mark.parametrize("address", [REMOTE, "ray://192.0.2.1:10001", "192.0.2.1:6379"])
def test_a_relative_path_to_a_remote_cluster_is_refused(output, address):
    with pytest.raises(UserError) as e:
        resolve_submitted_output(output, address)
    message = str(e.value)
    assert message.startswith("output: expected an s3:// URI or an absolute path on storage that every node")
    assert repr(output) in message and address in message and "--output s3://" in message


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "http://localhost:8265", "https://[::1]:8265",
                                     "127.0.0.1:6379", "auto", f"http://{socket.gethostname()}:8265"])
def test_a_relative_path_to_a_cluster_here_is_made_absolute(address, nodes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_submitted_output("out/x", address) == str(tmp_path / "out" / "x")
    assert resolve_submitted_output("file://out/x", address) == f"file://{tmp_path / 'out' / 'x'}"
    nodes["ips"] = ["127.0.0.1"]
    assert resolve_submitted_output("out/x", address) == str(tmp_path / "out" / "x")


def test_a_forwarded_localhost_of_a_remote_cluster_is_refused(nodes, capsys):
    nodes["ips"] = ["127.0.0.1", "192.0.2.7"]  # e.g. kubectl port-forward: the dashboard is local, a node is not
    with pytest.raises(UserError, match="got the relative path 'out/x'"):
        resolve_submitted_output("out/x", "http://localhost:8265")
    assert resolve_submitted_output("/data/x", "http://localhost:8265") == "/data/x"
    assert "must be storage they all share" in capsys.readouterr().err


def pkg_dir(root):
    folder = root / "session_2025-01-31_12-00-00_123456_789" / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    folder.mkdir(parents=True)
    return folder


def test_an_output_in_rays_working_dir_copy_is_refused(tmp_path, monkeypatch):
    out = pkg_dir(tmp_path) / "out"
    for uri in (str(out), f"file://{out}"):
        with pytest.raises(UserError) as e:
            refuse_temporary_output(uri)
        message = str(e.value)
        assert str(out) in message and "Ray deletes it" in message and "s3://" in message
    monkeypatch.chdir(out.parent)  # the driver of a submitted job runs there: a relative output resolves inside
    with pytest.raises(UserError, match="temporary copy of the job's working dir"):
        refuse_temporary_output("out/shapes")


def test_a_symlink_into_a_session_folder_is_refused(tmp_path):
    session = tmp_path / "session_2025-01-31_12-00-00_123456_789" / "logs"
    session.mkdir(parents=True)
    (tmp_path / "link").symlink_to(session)
    with pytest.raises(UserError, match="Ray session's temporary folder"):
        refuse_temporary_output(str(tmp_path / "link" / "out"))


def test_any_session_folder_under_rays_temp_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(UserError, match=f"under {tmp_path}"):
        refuse_temporary_output(str(tmp_path / "ray" / "session_custom" / "out"))
    refuse_temporary_output(str(tmp_path / "ray" / "datasets" / "out"))  # Ray's temp dir, but no session's


@pytest.mark.parametrize("uri", ["s3://bucket/runtime_resources/_ray_pkg_x/out", "memory://session_latest/x"])
def test_non_local_outputs_and_ordinary_paths_pass(uri, tmp_path):
    refuse_temporary_output(uri)
    refuse_temporary_output(str(tmp_path / "data" / "out"))
    refuse_temporary_output(os.path.relpath(tmp_path / "out"))
