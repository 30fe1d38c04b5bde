"""The timeout dump (tests/plugins/timeout_dump.py) names the hung ``await``.

Each case runs pytest in a subprocess on a tiny hanging test with a 2 s timeout and reads
its output, as CI would: the hung coroutine's name and the line of its ``await`` must be
there, for a hang in the test body, in an async fixture's teardown, and in a worker of
pytest-xdist; a teardown that hangs again after the timeout ends the run instead of
hanging it; a plain thread hang still shows the threads.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Each case starts a pytest (and for xdist two workers): seconds normally, far more when
# the machine is loaded; the 2 s timeouts inside are what is under test.
pytestmark = pytest.mark.timeout(150)

HANGS = """
import asyncio
import threading
import time

import pytest


async def wait_forever_for_ballot(ev):
    await ev.wait()  # HUNG-AWAIT


async def background_reader():
    await asyncio.sleep(3600)  # BACKGROUND-AWAIT


async def test_body_hangs():
    reader = asyncio.create_task(background_reader(), name="bg-reader")
    await wait_forever_for_ballot(asyncio.Event())
    reader.cancel()


@pytest.fixture
async def hangs_in_teardown():
    yield
    await wait_forever_for_ballot(asyncio.Event())


async def test_teardown_hangs(hangs_in_teardown):
    pass


@pytest.fixture
async def waits_for_the_test():
    ev = asyncio.Event()
    yield ev
    await ev.wait()  # TEARDOWN-AGAIN


async def test_body_and_teardown_hang(waits_for_the_test):
    await wait_forever_for_ballot(asyncio.Event())


def test_thread_hangs():
    threading.Thread(target=time.sleep, args=(3600,), name="sleeper", daemon=True).start()
    time.sleep(3600)  # SYNC-SLEEP


def test_after():
    pass
"""


FLAGS = ("-p", "no:cacheprovider", "--timeout=2", "-rA")


def _line(marker: str) -> int:
    return next(i for i, text in enumerate(HANGS.splitlines(), 1) if marker in text)


def run_pytest(tmp_path: Path, *args: str) -> tuple[int, str, float]:
    (tmp_path / "test_hangs.py").write_text(HANGS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.plugins.timeout_dump", *FLAGS, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def assert_names_the_await(out: str) -> None:
    assert "wait_forever_for_ballot" in out, out
    assert f'test_hangs.py", line {_line("HUNG-AWAIT")}, in wait_forever_for_ballot' in out, out
    assert "await ev.wait()  # HUNG-AWAIT" in out, out


def test_a_hung_test_body_dumps_every_task_with_its_await_line(tmp_path: Path) -> None:
    code, out, _ = run_pytest(tmp_path, "-k", "body_hangs or after")
    assert code == 1, out
    assert "Timeout dump: test_hangs.py::test_body_hangs (call)" in out, out
    assert_names_the_await(out)
    assert f"line {_line('BACKGROUND-AWAIT')}, in background_reader" in out, out
    assert "'bg-reader'" in out, "every task, not only the test's own"
    assert "Thread MainThread, interrupted by the timeout" in out, out
    assert "PASSED test_hangs.py::test_after" in out, "the run goes on after the timeout"


def test_a_hung_async_fixture_teardown_is_dumped(tmp_path: Path) -> None:
    code, out, _ = run_pytest(tmp_path, "-k", "test_teardown_hangs or after")
    assert code == 1, out
    assert "Timeout dump: test_hangs.py::test_teardown_hangs (teardown)" in out, out
    assert "in hangs_in_teardown" in out, out
    assert_names_the_await(out)
    assert "PASSED test_hangs.py::test_after" in out, out


def test_a_teardown_that_hangs_again_ends_the_run(tmp_path: Path) -> None:
    code, out, took = run_pytest(tmp_path, "-k", "body_and_teardown or after")
    assert code == 1, out
    assert "test_body_and_teardown_hang (call) timed out after 2 s" in out, out
    assert "still hung after the timeout and its grace after 4 s" in out, out
    assert f"line {_line('TEARDOWN-AGAIN')}, in waits_for_the_test" in out, out
    assert "Ending the test process (os._exit(1))." in out, out
    assert took < 110, "ended by the backstop, not by the subprocess timeout"


def test_a_thread_hang_dumps_the_threads(tmp_path: Path) -> None:
    code, out, _ = run_pytest(tmp_path, "-k", "thread_hangs")
    assert code == 1, out
    assert "no pending asyncio task" in out, out
    assert "Thread sleeper (daemon)" in out, out
    assert f"line {_line('SYNC-SLEEP')}, in test_thread_hangs" in out, out


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="pytest-xdist missing")
def test_the_dump_works_in_an_xdist_worker(tmp_path: Path) -> None:
    code, out, _ = run_pytest(tmp_path, "-n", "2", "-k", "body_hangs or teardown_hangs")
    assert code == 1, out
    assert "Timeout dump: test_hangs.py::test_body_hangs (call)" in out, out
    assert "Timeout dump: test_hangs.py::test_teardown_hangs (teardown)" in out, out
    assert_names_the_await(out)
