"""sd_notify parsing, the liveness record and the keep-alive decision (pure logic).

Plus two small in-process checks against a real datagram socket: the
notifier delivers what systemd expects, and the keep-alive withholds its
watchdog ping while ``progress()`` says the worker is stuck.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bus import liveness
from bus.keepalive import Keepalive, making_progress, tick_interval
from bus.sdnotify import Notifier, format_message, socket_address, watchdog_period_s
from schemas.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@abstract/name", b"\0abstract/name"),
        ("relative/path", None),
        ("vsock:2:1234", None),
    ],
)
def test_socket_address(value: str | None, expected: str | bytes | None) -> None:
    assert socket_address(value) == expected


@pytest.mark.parametrize(
    ("env", "pid", "expected"),
    [
        ({}, 10, None),
        ({"WATCHDOG_USEC": "30000000"}, 10, 30.0),
        ({"WATCHDOG_USEC": "500000"}, 10, 0.5),
        ({"WATCHDOG_USEC": "0"}, 10, None),
        ({"WATCHDOG_USEC": "-5"}, 10, None),
        ({"WATCHDOG_USEC": "soon"}, 10, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "10"}, 10, 2.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "11"}, 10, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, 10, None),
    ],
)
def test_watchdog_period(env: dict[str, str], pid: int, expected: float | None) -> None:
    assert watchdog_period_s(env, pid) == expected


def test_format_message() -> None:
    assert format_message(READY=1, STATUS="serving") == b"READY=1\nSTATUS=serving"
    with pytest.raises(ValueError):
        format_message(STATUS="two\nlines")


@pytest.mark.parametrize(
    ("heartbeat", "watchdog", "expected"),
    [
        (5.0, None, 5.0),
        (5.0, 30.0, 5.0),
        (5.0, 4.0, 2.0),
        (1.0, 2.0, 1.0),
        (10.0, 1.0, 0.5),
    ],
)
def test_tick_interval(heartbeat: float, watchdog: float | None, expected: float) -> None:
    assert tick_interval(heartbeat, watchdog) == expected


@pytest.mark.parametrize(
    ("last", "now", "heartbeat", "interval", "expected"),
    [
        (None, 100.0, 5.0, 5.0, False),  # no heartbeat yet
        (100.0, 100.0, 5.0, 5.0, True),
        (90.0, 105.0, 5.0, 5.0, True),  # exactly 2 beats + 1 tick
        (89.9, 105.0, 5.0, 5.0, False),  # heartbeat loop stuck
        (100.0, 103.0, 1.0, 0.5, False),
    ],
)
def test_making_progress(
    last: float | None, now: float, heartbeat: float, interval: float, expected: bool
) -> None:
    assert making_progress(last, now, heartbeat, interval) is expected


def _record(
    ts: float = 1000.0, ttl: float = 16.0, kind: str = "verifier", wid: str = "v1"
) -> liveness.LivenessRecord:
    return liveness.LivenessRecord(kind=kind, worker_id=wid, pid=42, ts=ts, ttl_s=ttl)


@pytest.mark.parametrize(
    ("record", "now", "max_age", "alive", "reason"),
    [
        (None, 1000.0, None, False, "no liveness file"),
        (_record(), 1000.0, None, True, "alive"),
        (_record(), 1016.0, None, True, "alive"),
        (_record(), 1016.5, None, False, "stale"),
        (_record(), 1005.0, 3.0, False, "stale"),  # --max-age overrides the ttl
        (_record(), 1002.0, 3.0, True, "alive"),
        (_record(ts=2000.0), 1000.0, None, False, "future"),
        (_record(kind="tally"), 1000.0, None, False, "belongs to"),
        (_record(wid="v2"), 1000.0, None, False, "belongs to"),
    ],
)
def test_liveness_verdict(
    record: liveness.LivenessRecord | None,
    now: float,
    max_age: float | None,
    alive: bool,
    reason: str,
) -> None:
    result = liveness.verdict(record, now, max_age, kind="verifier", worker_id="v1")
    assert result.alive is alive
    assert reason in result.reason


def test_liveness_record_roundtrip() -> None:
    record = _record(ts=1234.5)
    assert liveness.LivenessRecord.parse(record.encode()) == record


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        json.dumps(
            {"v": 2, "kind": "verifier", "id": "v1", "pid": 1, "ts": 1.0, "ttl_s": 1.0}
        ).encode(),
        json.dumps(
            {"v": 1, "kind": "verifier", "id": "v1", "pid": "1", "ts": 1.0, "ttl_s": 1.0}
        ).encode(),
        json.dumps(
            {"v": 1, "kind": "verifier", "id": "v1", "pid": 1, "ts": True, "ttl_s": 1.0}
        ).encode(),
        json.dumps(
            {"v": 1, "kind": "verifier", "id": "v1", "pid": 1, "ts": 1.0, "ttl_s": 0}
        ).encode(),
        json.dumps({"v": 1, "kind": 3, "id": "v1", "pid": 1, "ts": 1.0, "ttl_s": 1.0}).encode(),
        b"{" + b" " * liveness.MAX_FILE_BYTES + b"}",
    ],
)
def test_liveness_parse_rejects(data: bytes) -> None:
    with pytest.raises(ValueError):
        liveness.LivenessRecord.parse(data)


def test_liveness_paths(tmp_path: Path) -> None:
    assert liveness.liveness_dir(tmp_path, {}) == tmp_path / "run"
    assert liveness.liveness_dir(tmp_path, {"AP_LIVENESS_DIR": "/run/x"}) == Path("/run/x")
    assert liveness.liveness_path(tmp_path, "tally", "t1") == tmp_path / "tally-t1.alive"
    with pytest.raises(ConfigError):
        liveness.liveness_path(tmp_path, "tally", "../etc")


def test_liveness_write_read_remove(tmp_path: Path) -> None:
    path = tmp_path / "run" / "verifier-v1.alive"
    assert liveness.read(path) is None
    liveness.write(path, _record())
    assert liveness.read(path) == _record()
    path.write_bytes(b"garbage")
    assert liveness.read(path) is None
    liveness.remove(path)
    liveness.remove(path)  # twice is fine
    assert not path.exists()


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"ap-unit-{uuid.uuid4().hex[:10]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def _pending(sock: socket.socket) -> list[bytes]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return out


def test_notifier_sends_and_is_noop_without_socket(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, address = notify_socket
    assert Notifier({}).enabled is False
    assert Notifier({}).ready("x") is False
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.status("warming up")
    assert sock.recv(4096) == b"STATUS=warming up"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    gone = Notifier({"NOTIFY_SOCKET": "@ap-unit-nobody-listens-" + uuid.uuid4().hex})
    assert gone.watchdog() is False  # reported, never raised


def test_notifier_never_blocks_on_a_full_queue(notify_socket: tuple[socket.socket, str]) -> None:
    """A receiver that stops reading must not stall the worker's event loop."""
    _, address = notify_socket  # bound, never read
    notifier = Notifier({"NOTIFY_SOCKET": address})
    started = time.monotonic()
    results = [notifier.watchdog() for _ in range(5000)]
    assert time.monotonic() - started < 10
    assert results[0] is True and results[-1] is False  # the queue filled, sends dropped


async def test_keepalive_withholds_pings_without_progress(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, address = notify_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    keep = Keepalive("verifier", "v1", data_dir=tmp_path, heartbeat_s=5.0, env=env)
    assert keep.interval_s == 0.1
    progress = False
    task = asyncio.create_task(keep.run(lambda: progress))

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(1000):  # up to 20 s: the machine may be loaded
            if condition():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("condition not reached in 20 s")

    try:
        await until(lambda: keep.skipped >= 3)
        assert _pending(sock) == []
        assert keep.pings == 0
        assert liveness.read(keep.path) is None
        progress = True
        await until(lambda: keep.pings >= 3)
        pings = _pending(sock)
        assert len(pings) >= 3 and set(pings) == {b"WATCHDOG=1"}
        record = liveness.read(keep.path)
        assert record is not None and record.ttl_s == pytest.approx(1.3)
        keep.stopping()
        before = keep.pings
        await asyncio.sleep(0.35)  # time is the subject: no ping after stopping
        assert _pending(sock) == [b"STOPPING=1\nSTATUS=stopping"]
        assert keep.pings == before
        assert not keep.path.exists()
    finally:
        task.cancel()
