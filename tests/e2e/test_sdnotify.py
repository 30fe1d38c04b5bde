"""A real worker process under a fake systemd: NOTIFY_SOCKET bound by the test.

READY=1 must arrive after the worker started (its status endpoint answers),
WATCHDOG=1 pings at half of WATCHDOG_USEC, none while the process is
SIGSTOPped (a wedged worker must get killed), STOPPING=1 on SIGTERM. The
NATS-free liveness probe (``check --liveness``) answers 0 while the worker
beats and 1 once it is stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines() if "=" in line)


class FakeSystemd:
    """Receives notify datagrams like systemd: with the sender's pid (SCM_CREDENTIALS)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.senders: set[int] = set()

    def _recv(self) -> dict[str, str]:
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", payload[:12])
                self.senders.add(pid)
        return _fields(data)

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append((time.monotonic(), self._recv()))
        except BlockingIOError:
            pass

    def wait_for(self, key: str, timeout: float, count: int = 1, since: float = 0.0) -> list[float]:
        """Times of messages carrying ``key``; waits until ``count`` of them arrived."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            times = [t for t, f in self.messages if key in f and t >= since]
            if len(times) >= count or time.monotonic() > deadline:
                return times
            self.sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError, BlockingIOError):
                self.messages.append((time.monotonic(), self._recv()))

    def close(self) -> None:
        self.sock.close()


def _spawn(
    cluster: Cluster, notify_socket: str, extra_env: dict[str, str], worker_id: str
) -> subprocess.Popen[bytes]:
    env = cluster.env()
    env.update(NOTIFY_SOCKET=notify_socket, **extra_env)
    log = (cluster.data_dir / f"verifier-{worker_id}.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "worker",
            "verifier",
            "--id",
            worker_id,
            "--heartbeat-s",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    log.close()
    cluster.processes[f"verifier-{worker_id}"] = proc
    return proc


def _check(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", "check", *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = f"/tmp/ap-notify-{uuid.uuid4().hex[:10]}.sock"  # AF_UNIX paths are short
    fake = FakeSystemd(path)
    try:
        yield fake, path
    finally:
        fake.close()
        Path(path).unlink(missing_ok=True)


@pytest.mark.timeout(120)  # waits out liveness TTLs; 47 s under load
def test_ready_watchdog_stopping_and_liveness(
    cluster: Cluster, systemd: tuple[FakeSystemd, str]
) -> None:
    fake, path = systemd
    proc = _spawn(cluster, path, {"WATCHDOG_USEC": "2000000"}, "v1")
    ready = fake.wait_for("READY", timeout=60)
    assert ready, f"no READY=1:\n{cluster.log('verifier-v1')}"
    first = next(f for _, f in fake.messages if "READY" in f)
    assert first["READY"] == "1"
    assert fake.senders == {proc.pid}  # the main process itself, as NotifyAccess=main wants
    assert "verifier v1" in first["STATUS"]
    # READY means started: the status endpoint answers right away
    assert _check(cluster, "--kind", "verifier", "--id", "v1", "--timeout", "10").returncode == 0

    # WATCHDOG_USEC=2s -> a ping about every second
    pings = fake.wait_for("WATCHDOG", timeout=30, count=3, since=ready[0])
    assert len(pings) >= 3, f"pings: {pings}"
    assert all(f["WATCHDOG"] == "1" for _, f in fake.messages if "WATCHDOG" in f)

    live = _check(cluster, "--liveness", "--kind", "verifier", "--id", "v1", "--json")
    assert live.returncode == 0, live.stdout + live.stderr
    assert '"alive": true' in live.stdout

    # wedged: no pings while stopped, liveness goes stale (ttl = 3 ticks + 1 s = 4 s)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        time.sleep(0.3)  # time is the subject: pings sent before SIGSTOP land
        fake.drain()
        stopped_at = time.monotonic()
        deadline = stopped_at + 30
        stale = None
        while time.monotonic() < deadline:
            stale = _check(cluster, "--liveness", "--kind", "verifier", "--id", "v1")
            if stale.returncode != 0:
                break
            time.sleep(0.5)
        assert stale is not None and stale.returncode == 1, stale
        assert "stale" in stale.stdout
        fake.drain()
        assert not [t for t, f in fake.messages if "WATCHDOG" in f and t > stopped_at]
    finally:
        os.kill(proc.pid, signal.SIGCONT)

    resumed = time.monotonic()
    assert fake.wait_for("WATCHDOG", timeout=30, since=resumed), "pings did not resume"
    assert _check(cluster, "--liveness", "--kind", "verifier", "--id", "v1").returncode == 0

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    stopping = fake.wait_for("STOPPING", timeout=5)
    assert stopping, "no STOPPING=1"
    fake.drain()
    assert not [t for t, f in fake.messages if "WATCHDOG" in f and t > stopping[0] + 0.5]
    assert fake.senders == {proc.pid}
    gone = _check(cluster, "--liveness", "--kind", "verifier", "--id", "v1")
    assert gone.returncode == 1 and "no liveness file" in gone.stdout


def test_abstract_socket_and_no_watchdog_without_usec(cluster: Cluster) -> None:
    name = f"ap-notify-{uuid.uuid4().hex[:10]}"
    fake = FakeSystemd(b"\0" + name.encode())
    try:
        proc = _spawn(cluster, "@" + name, {}, "v2")
        assert fake.wait_for("READY", timeout=60), cluster.log("verifier-v2")
        time.sleep(2.5)  # more than two keep-alive ticks
        fake.drain()
        assert not [f for _, f in fake.messages if "WATCHDOG" in f]
        # the liveness file is still kept fresh without a systemd watchdog
        assert _check(cluster, "--liveness", "--kind", "verifier", "--id", "v2").returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert fake.wait_for("STOPPING", timeout=5)
    finally:
        fake.close()
