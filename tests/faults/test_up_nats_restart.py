"""Fault (issue #11 item 5a): the single nats-server of ``agentic-payments up`` is
killed -9 under load. ``up`` must say so, start it again on the same port with the
same JetStream store, the workers it started must reconnect (the same processes,
none restarted), and deciding must resume with 0 lost and 0 wrong decisions.

Unlike tests/faults/test_nats_restart.py (a test cluster whose server the test
restarts itself), here nobody but ``up`` can bring the server back: the real
``up`` runs on a free port with its own data dir, started and watched as
tests/e2e/test_up_orphans.py does (its /proc helpers are reused).

The outage is measured from the kill to the first final decision of a request
*sent* after the kill: such a request cannot have been answered by the old server
(a reply read from the socket just after the kill would be), and it is decided only
once the new server is up and the workers and the client have reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bus.client import VerifyClient
from bus.config import NatsConfig
from bus.connection import close_quickly, connect
from tests.e2e.test_up_orphans import (
    WORKERS,
    Up,
    alive,
    assert_clean_exit,
    descendants,
    describe,
    free_port,
    up_command,
    up_env,
    wait_gone,
    wait_ready,
)
from tests.faults.load import Load, report
from workers.cli.restarts import SERVER_RESTARTS, restart_delay
from workers.cli.up import EXIT_NATS_GONE

pytestmark = [
    pytest.mark.faults,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG"),
]

#: up's line for each nats-server it starts (the first one and every restart)
SERVER_LINE = re.compile(r"^nats-server\s+(nats://\S+)\s+\(.*pid (\d+)\)", re.MULTILINE)
#: how long up may take to notice the death and have the new server ready
RESTART_WITHIN_S = 20.0


def servers(up: Up) -> list[tuple[str, int]]:
    """(url, pid) of every nats-server up reported starting, in order."""
    return [(url, int(pid)) for url, pid in SERVER_LINE.findall(up.stdout())]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def wait_restarted(up: Up, old_pid: int) -> tuple[str, int]:
    """Until up reports a second nats-server; its (url, pid)."""
    deadline = time.monotonic() + RESTART_WITHIN_S
    while True:
        started = servers(up)
        if len(started) > 1:
            return started[-1]
        if up.proc.poll() is not None:
            pytest.fail(f"up exited {up.proc.returncode}:\n{up.stdout()}\n{up.stderr()}")
        if time.monotonic() > deadline:
            left = [pid for pid, _ in descendants(up.proc.pid) if "nats-server" in cmdline(pid)]
            pytest.fail(
                f"up did not restart its nats-server (pid {old_pid}) within "
                f"{RESTART_WITHIN_S} s of kill -9 (nats-server processes under up: {left})\n"
                f"up stdout:\n{up.stdout()[-2000:]}\nup stderr:\n{up.stderr()[-2000:]}"
            )
        await asyncio.sleep(0.05)


async def first_decision_sent_after(load: Load, t: float, timeout: float) -> float:
    """The monotonic time of the first final decision of a request sent after ``t``."""
    deadline = time.monotonic() + timeout
    while True:
        times = [o.decided_at for o in load.decided() if o.sent_at > t and o.decided_at]
        if times:
            return min(times)
        if time.monotonic() > deadline:
            raise AssertionError(f"no request sent after the kill decided within {timeout}s")
        await asyncio.sleep(0.02)


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[[], Up]]:
    """Start the real ``up`` on a free port, its own data dir, stdout and stderr to
    files; teardown SIGKILLs whatever of it is left (a failed test must not leak)."""
    started: list[Up] = []

    def start() -> Up:
        port, mark = free_port(), uuid.uuid4().hex
        data_dir = tmp_path / "data"
        stdout_path, stderr_path = tmp_path / "up.stdout", tmp_path / "up.stderr"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                up_command(data_dir), cwd=tmp_path, env=up_env(port, mark), stdout=out, stderr=err
            )
        started.append(Up(proc, port, mark, data_dir, stdout_path, stderr_path))
        return started[-1]

    yield start
    for up in started:
        with contextlib.suppress(ProcessLookupError):
            up.proc.kill()
        for pid, _ in up.others():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            up.proc.wait(10)


@pytest.mark.timeout(180)
async def test_up_restarts_its_killed_nats_server_under_load(start_up: Callable[[], Up]) -> None:
    up = start_up()
    port, data_dir = up.port, up.data_dir
    client: VerifyClient | None = None
    try:
        await asyncio.to_thread(wait_ready, up)
        before = up.collect()
        (url, old_pid), *_ = servers(up)
        assert url == f"nats://127.0.0.1:{port}", url
        assert (old_pid, _start(old_pid)) in before, describe(before)
        workers = {i for i in before if i[0] != old_pid}
        assert len(workers) >= len(WORKERS), describe(before)

        config = NatsConfig(url=url, prefix="ap")
        client = await VerifyClient.connect(config, timeout=4.0, retries=0)
        # closed hard (finally): after a failure its server may be gone for good
        async with Load(client, "up-restart") as load:
            await load.wait_decided(20, timeout=60)
            killed = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            new_url, new_pid = await wait_restarted(up, old_pid)
            seen = time.monotonic()
            first = await first_decision_sent_after(load, killed, timeout=40)
            # deciding has resumed, not just one answer: 40 requests sent after it
            await load.wait_decided(40, sent_after=first, timeout=40)
            await load.stop(drain_s=30)
            nc = await connect(config, name="fault-audit")
            try:
                result = await load.audit(nc, "ap")
            finally:
                await close_quickly(nc)
        report(
            "up_nats_restart",
            outage_ms=round((first - killed) * 1000),
            restart_reported_ms=round((seen - killed) * 1000),
            max_gap_ms=round(load.max_gap_ms(killed)),
            **result,
        )
        assert new_url == url, (new_url, url)
        assert new_pid != old_pid
        assert f"-p {port} " in cmdline(new_pid), cmdline(new_pid)
        assert str(data_dir / "nats") in cmdline(new_pid), cmdline(new_pid)
        assert new_pid in {pid for pid, _ in descendants(up.proc.pid)}, "not up's child"
        assert re.search(rf"nats-server \(pid {old_pid}\) .*SIGKILL", up.stderr()), up.stderr()
        gone = [describe({i}) for i in workers if not alive(i)]
        assert not gone, f"workers did not survive the restart (reconnect): {gone}"
        assert result["lost"] == 0, result
        assert result["wrong"] == 0, result

        # and up still stops everything, the new server included, within its bound
        up.collect()
        t0 = time.monotonic()
        up.proc.send_signal(signal.SIGINT)
        wait_gone(up, t0)
        assert_clean_exit(up)
    finally:
        if client is not None:
            await close_quickly(client.nc)


def _start(pid: int) -> int:
    """The start time of ``pid`` (clock ticks), as tests/e2e/test_up_orphans.py keys processes."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def break_store(up: Up) -> None:
    """Make every later start of up's nats-server fail at once: a file where the store
    directory's ``jetstream`` directory was (nats-server: "[FTL] Can't start
    JetStream: storage directory is not a directory"). The running server keeps the
    files it has open in the store moved aside."""
    store = up.data_dir / "nats"
    store.rename(up.data_dir / "nats.moved")
    store.mkdir()
    (store / "jetstream").write_text("not a directory\n")


@pytest.mark.timeout(120)
def test_up_gives_up_on_a_nats_server_that_cannot_come_back(start_up: Callable[[], Up]) -> None:
    """A server that cannot start again (``break_store``) is retried ``max_retries``
    times with backoff, then up stops everything and exits 69."""
    up = start_up()
    wait_ready(up)
    up.collect()
    (_, old_pid), *_ = servers(up)
    break_store(up)
    killed = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    try:
        code = up.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"up still running 60 s after the kill:\n{up.stderr()[-3000:]}")
    exited = time.monotonic()
    err = up.stderr()
    assert code == EXIT_NATS_GONE, (code, err)
    assert "Traceback" not in err, err
    assert f"nats-server (pid {old_pid}) was killed by SIGKILL" in err, err
    assert err.count("up: restarting nats-server") == SERVER_RESTARTS.max_retries, err
    assert err.count("up: nats-server did not start") == SERVER_RESTARTS.max_retries, err
    assert "giving up: stopping everything (exit 69)" in err, err
    # the backoff was waited: 0 + 0.5 + 1 + 2 + 4 s between the attempts
    waits = sum(
        restart_delay(n, SERVER_RESTARTS) or 0 for n in range(1, SERVER_RESTARTS.max_retries + 1)
    )
    assert exited - killed >= waits, (exited - killed, waits)
    wait_gone(up, exited)


@pytest.mark.timeout(120)
def test_the_restarted_nats_server_still_dies_with_up(start_up: Callable[[], Up]) -> None:
    """The new server is armed with the same parent-death signal as the first: kill -9
    of up after the restart leaves nothing running and the port free within 3 s."""
    up = start_up()
    wait_ready(up)
    (_, old_pid), *_ = servers(up)
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + RESTART_WITHIN_S
    while len(servers(up)) < 2:
        assert up.proc.poll() is None and time.monotonic() < deadline, up.stderr()
        time.sleep(0.05)
    _, new_pid = servers(up)[-1]
    assert new_pid in {pid for pid, _ in up.collect()}, "the new server is not up's child"
    t0 = time.monotonic()
    up.proc.kill()
    up.proc.wait(5)
    wait_gone(up, t0)


@pytest.mark.timeout(120)
def test_a_signal_during_the_restart_backoff_stops_everything(start_up: Callable[[], Up]) -> None:
    """SIGTERM during the backoff between two failed restarts: the usual stop, within
    3 s, exit 0 (the budget had not run out), no restart after it."""
    up = start_up()
    wait_ready(up)
    up.collect()
    (_, old_pid), *_ = servers(up)
    break_store(up)
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "restarting nats-server" not in up.stderr() or " in 1.0 s" not in up.stderr():
        assert up.proc.poll() is None and time.monotonic() < deadline, up.stderr()
        time.sleep(0.02)
    t0 = time.monotonic()
    up.proc.send_signal(signal.SIGTERM)
    wait_gone(up, t0)
    assert_clean_exit(up)
    assert up.stderr().count("up: restarting nats-server") == 3, up.stderr()
