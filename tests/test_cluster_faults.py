"""Faults on a multi-node Ray cluster: `ray start` processes on 127.0.0.1, a head that runs no
actors and worker nodes of one CPU each. A worker node dies mid-wave, or an actor is SIGKILLed
mid-unit: the job completes with the dataset an uninterrupted run gives, byte for byte."""

import contextlib
import os
import secrets
import signal
import subprocess
import tempfile
import time

import psutil
import pytest

from .conftest import BIN, DDE
from .helpers import free_port
from .test_fault import assert_same_dataset, run, write_spec

pytestmark = pytest.mark.ray

RESOURCES = {"actors": {"min": 1, "max": 2}, "num_cpus": 1}  # an actor fills a worker node
_AGENT_PORTS = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                "--runtime-env-agent-port")


def _ports() -> list[str]:
    """Each node on this machine needs its own agent ports (the suite's local Ray holds the defaults)."""
    return [arg for flag in _AGENT_PORTS for arg in (flag, str(free_port()))]


class Cluster:
    def __init__(self):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: socket paths have a length limit
        self.env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAY_ADDRESS=self.address,
                        RAY_AUTH_MODE="token")
        if "RAY_AUTH_TOKEN" not in self.env and not os.path.exists(os.path.expanduser("~/.ray/auth_token")):
            self.env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # a fresh machine (CI): nodes and clients share it
        self.head = self._start(["--head", "--port", str(self.port), "--num-cpus", "0", "--include-dashboard",
                                 "false", "--ray-client-server-port", str(free_port())])
        self.workers: list[subprocess.Popen] = []

    def _start(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [f"{BIN}/ray", "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
             "--temp-dir", self.temp, "--object-store-memory", str(100 * 2**20), *_ports(), *args],
            env=self.env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def add_worker(self, attempts: int = 3) -> subprocess.Popen:
        """A worker node of 1 CPU, once it has joined: nodes on one machine share the session
        folder, and two raylets starting at once can race for its socket names. On a loaded
        machine (the suite runs three files at once) a raylet can give up waiting for its
        dashboard agent and exit; such a node is started again, with fresh ports."""
        for _ in range(attempts):
            node = self._start(["--address", self.address, "--num-cpus", "1"])
            self.workers.append(node)
            live = sum(w.poll() is None for w in self.workers)
            if self.cpus(live, node) == live and node.poll() is None:
                return node
            self.kill(node)
            self.workers.remove(node)
        raise AssertionError(f"a worker node did not join in {attempts} attempts; logs under {self.temp}")

    def cpus(self, wanted: int, node: subprocess.Popen, timeout: float = 120) -> float:
        """The cluster's CPU count once it reaches `wanted`; 0 as soon as `node` exits first."""
        probe = ("import ray, time\nray.init()\nend = time.time() + %f\n"
                 "while ray.cluster_resources().get('CPU', 0) < %d and time.time() < end: time.sleep(0.5)\n"
                 "print('CPUS', ray.cluster_resources().get('CPU', 0))" % (timeout, wanted))
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen([f"{BIN}/python", "-c", probe], env=self.env, stdout=out, stderr=err)
            while proc.poll() is None:
                if node.poll() is not None:
                    proc.kill()
                    proc.wait()
                    return 0.0
                time.sleep(0.5)
            out.seek(0)
            err.seek(0)
            counts = [line.split()[1] for line in out if line.startswith("CPUS ")]
            assert counts, err.read()[-2000:]  # the probe itself failed: Ray's own message
        return float(counts[-1])

    @staticmethod
    def kill(node: subprocess.Popen) -> None:
        """A node lost at once: its raylet and every process it started (workers have process
        groups of their own), SIGKILL."""
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(node.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait()

    def unit_workers(self) -> list[psutil.Process]:
        """The dde actors' processes on this cluster's worker nodes (not on other Rays of the machine)."""
        found = []
        for node in self.workers:
            with contextlib.suppress(psutil.Error):
                for proc in psutil.Process(node.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if any("UnitWorker" in part for part in proc.cmdline()):
                            found.append(proc)
        return found

    def stop(self) -> None:
        for node in [*self.workers, self.head]:
            node.send_signal(signal.SIGTERM)
        for node in [*self.workers, self.head]:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            self.kill(node)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    run("run", str(write_spec(tmp, "a", tmp / "out", resources=RESOURCES)))  # on the suite's local Ray
    return str(tmp / "out")


def _start_job(tmp_path, cluster, output) -> subprocess.Popen:
    spec = write_spec(tmp_path, "job", output, resources=RESOURCES)
    with open(tmp_path / "stderr.txt", "wb") as err:
        return subprocess.Popen([DDE, "run", str(spec), "--address", cluster.address, "--quiet"],
                                env=cluster.env, stdout=subprocess.DEVNULL, stderr=err)


def _wait_for_commits(output, count: int, driver) -> None:
    deadline = time.time() + 300
    markers = output / "_commits"
    while time.time() < deadline and driver.poll() is None:
        if markers.exists() and len(os.listdir(markers)) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"the job ended or stalled before {count} units were committed (exit {driver.poll()})")


def _finish(driver, tmp_path) -> None:
    assert driver.wait(timeout=600) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]


def test_a_worker_node_lost_mid_wave(tmp_path, cluster, reference):
    doomed = cluster.add_worker()
    cluster.add_worker()
    output = tmp_path / "out"
    driver = _start_job(tmp_path, cluster, output)
    _wait_for_commits(output, 3, driver)
    busy = {p.pid for p in cluster.unit_workers()}
    cluster.kill(doomed)  # its actor had a unit in flight: both actors are always given one
    assert driver.poll() is None, "the job finished before the node could be lost"
    assert busy - {p.pid for p in cluster.unit_workers()}, "no actor went down with the node"
    _finish(driver, tmp_path)
    assert_same_dataset(output, reference)


def test_an_actor_killed_mid_unit(tmp_path, cluster, reference):
    while sum(w.poll() is None for w in cluster.workers) < 2:
        cluster.add_worker()
    output = tmp_path / "out"
    driver = _start_job(tmp_path, cluster, output)
    _wait_for_commits(output, 3, driver)
    victim = cluster.unit_workers()[0]
    victim.send_signal(signal.SIGKILL)
    assert driver.poll() is None, "the job finished before an actor could be killed"
    _finish(driver, tmp_path)
    assert_same_dataset(output, reference)
    assert not victim.is_running()
