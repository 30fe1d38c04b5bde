"""The runtime's keep-alive wiring against a real nats-server.

A worker whose event loop still runs but whose heartbeat loop is stuck is not
making progress: its watchdog pings and liveness beats must stop, so systemd
or Kubernetes restarts it. When the heartbeat loop moves again, they resume.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bus import liveness
from bus.config import NatsConfig
from bus.runtime import RuntimeConfig
from workers.consensus.verifier import VerifierWorker

pytestmark = pytest.mark.integration


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"ap-int-{uuid.uuid4().hex[:10]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[bytes]:
    out = []
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_pings_stop_while_the_heartbeat_loop_is_stuck(
    nats_config: NatsConfig, tmp_path: Path, notify: socket.socket
) -> None:
    runtime = RuntimeConfig(
        worker_id="v1",
        nats=nats_config,
        heartbeat_s=0.2,
        metrics_s=1,
        drain_timeout_s=2,
        data_dir=tmp_path,
    )
    worker = VerifierWorker(runtime)
    stuck = asyncio.Event()
    release = asyncio.Event()
    publish = worker._publish_heartbeat

    async def heartbeat_that_can_hang() -> None:
        if stuck.is_set():
            await release.wait()
        await publish()

    worker._publish_heartbeat = heartbeat_that_can_hang  # type: ignore[method-assign]
    path = liveness.liveness_path(tmp_path / "run", "verifier", "v1")
    async with worker:
        try:
            messages = received(notify)
            assert any(m.startswith(b"READY=1\n") for m in messages), messages
            assert liveness.read(path) is not None
            await until(lambda: worker.keepalive.pings >= 5)
            assert b"WATCHDOG=1" in received(notify)

            stuck.set()  # the next heartbeat hangs; the event loop itself keeps running
            await until(lambda: worker.keepalive.skipped >= 3)
            pings_when_stuck = worker.keepalive.pings
            received(notify)
            await asyncio.sleep(0.6)  # time is the subject: no ping while stuck
            assert worker.keepalive.pings == pings_when_stuck
            assert b"WATCHDOG=1" not in received(notify)
            record = liveness.read(path)
            assert record is not None
            await until(lambda: not liveness.verdict(liveness.read(path), time.time()).alive)

            release.set()
            await until(lambda: worker.keepalive.pings > pings_when_stuck + 2)
            assert b"WATCHDOG=1" in received(notify)
            assert liveness.verdict(liveness.read(path), time.time()).alive
        finally:
            release.set()  # a failed assertion must not leave stop() hanging
    assert any(m.startswith(b"STOPPING=1") for m in received(notify))
    assert liveness.read(path) is None
