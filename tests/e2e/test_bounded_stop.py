"""Bounded stops (issue #11 item 3): every worker kind exits within
``drain_timeout + 2 s`` of SIGTERM, whether its NATS server is up, gone
(killed) or hung (SIGSTOPped), with exit code 0 when it drained and
EXIT_ABANDONED when it had to give up on the drain.

Each test gets its own nats-server so it can kill or freeze it; a frozen
server is always thawed and killed in teardown, even when the test fails.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.natsserver import NatsServer, start_nats_server
from bus.runtime import EXIT_ABANDONED, EXIT_OK
from tests.helpers import Cluster

pytestmark = [pytest.mark.e2e]

DRAIN_TIMEOUT_S = 1.0
#: the bound issue #11 sets: drain_timeout + 2 s from SIGTERM to exit
BOUND_S = DRAIN_TIMEOUT_S + 2.0
KINDS = ["tally", "verifier", "keys", "trust", "authority", "anomaly", "recovery"]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats_server(tmp_path / "nats")
    try:
        yield server
    finally:
        # a SIGSTOPped process ignores SIGTERM until continued: thaw, then kill
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                server.process.send_signal(signal.SIGCONT)
            server.process.kill()
            server.process.wait(5)


@pytest.fixture
def own_cluster(own_server: NatsServer, tmp_path: Path) -> Iterator[Cluster]:
    data = tmp_path / "data"
    data.mkdir()
    cluster = Cluster(nats_url=own_server.url, prefix="bstop", data_dir=data)
    try:
        yield cluster
    finally:
        for proc in cluster.processes.values():  # no orphans, whatever happened
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def wait_log(cluster: Cluster, name: str, needle: str, timeout: float = 30.0) -> None:
    """Poll the worker's log for ``needle``; fail if the worker exits first."""
    proc = cluster.processes[name]
    deadline = time.monotonic() + timeout
    while needle not in cluster.log(name):
        assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{cluster.log(name)}"
        assert time.monotonic() < deadline, f"no {needle!r} in {name}'s log:\n{cluster.log(name)}"
        time.sleep(0.05)


def start_worker(cluster: Cluster, kind: str, wait_for: str = "started") -> str:
    name = f"{kind}-w1"
    args = ["-m", "workers.cli", "worker", kind, "--id", "w1", "--heartbeat-s", "1"]
    args += ["--drain-timeout-s", str(DRAIN_TIMEOUT_S)]
    cluster._spawn(name, args)
    wait_log(cluster, name, f"{kind} w1 started" if wait_for == "started" else wait_for)
    return name


def exit_after_sigterm(proc: subprocess.Popen[bytes]) -> tuple[float, int | None]:
    """Seconds from SIGTERM to exit (capped a little past the bound) and the code."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(BOUND_S + 3.0)
    except subprocess.TimeoutExpired:
        code = None
    return time.monotonic() - sent, code


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nats", ["up", "down", "hung"])
def test_worker_stops_within_the_drain_timeout(
    own_cluster: Cluster, own_server: NatsServer, kind: str, nats: str
) -> None:
    name = start_worker(own_cluster, kind)
    proc = own_cluster.processes[name]
    if nats == "down":
        own_server.process.kill()
        own_server.process.wait(5)
        wait_log(own_cluster, name, "nats disconnected")
    elif nats == "hung":
        own_server.process.send_signal(signal.SIGSTOP)
    took, code = exit_after_sigterm(proc)
    log = own_cluster.log(name)
    assert code is not None, f"{name} still running {took:.1f}s after SIGTERM:\n{log}"
    assert took <= BOUND_S, f"{name} took {took:.2f}s to exit (bound {BOUND_S}s):\n{log}"
    expected = EXIT_OK if nats == "up" else EXIT_ABANDONED
    assert code == expected, f"{name} exited {code}, wanted {expected}:\n{log}"


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_while_connecting_to_a_hung_server_stops_at_once(
    own_cluster: Cluster, own_server: NatsServer, kind: str
) -> None:
    """The kernel accepts the TCP connection of a SIGSTOPped server, nats-py then
    waits for an INFO that never comes (connect attempts, then EXIT_CONNECT): a
    SIGTERM meanwhile must cancel the start, not wait for it."""
    own_server.process.send_signal(signal.SIGSTOP)
    name = start_worker(own_cluster, kind, wait_for="connecting to NATS at")
    took, code = exit_after_sigterm(own_cluster.processes[name])
    log = own_cluster.log(name)
    assert code is not None, f"{name} still running {took:.1f}s after SIGTERM:\n{log}"
    assert took <= BOUND_S, f"{name} took {took:.2f}s to exit (bound {BOUND_S}s):\n{log}"
    assert code == EXIT_ABANDONED, f"{name} exited {code}, wanted {EXIT_ABANDONED}:\n{log}"


WEDGED = """
import sys, time
from bus.runtime import RuntimeConfig, Worker, run_worker

class Wedged(Worker):
    kind = "wedged"

    async def teardown(self) -> None:
        time.sleep(60)  # blocks the event loop: no asyncio bound can end this

sys.exit(run_worker(lambda: Wedged(RuntimeConfig(worker_id="w1", drain_timeout_s=%r))))
"""


def test_a_wedged_event_loop_is_ended_by_the_watchdog(own_cluster: Cluster) -> None:
    """The last bound: a teardown that blocks the loop itself; the SIGTERM-armed
    watchdog thread still ends the process, with EXIT_ABANDONED."""
    own_cluster._spawn("wedged-w1", ["-c", WEDGED % DRAIN_TIMEOUT_S])
    wait_log(own_cluster, "wedged-w1", "wedged w1 started")
    took, code = exit_after_sigterm(own_cluster.processes["wedged-w1"])
    log = own_cluster.log("wedged-w1")
    assert code == EXIT_ABANDONED, f"exited {code} after {took:.1f}s:\n{log}"
    assert took <= BOUND_S, f"took {took:.2f}s (bound {BOUND_S}s):\n{log}"
    assert "stop exceeded" in log
