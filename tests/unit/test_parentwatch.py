"""bus/parentwatch.py (the kernel's parent-death signal) and up's Console (a closed
stdout stops ``up`` instead of crashing it). Each case runs in a child process:
what is under test is what the kernel does to a process, and Console repoints
the real stdout fd, which must not be pytest's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bus import parentwatch

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
linux = pytest.mark.skipif(not parentwatch.supported(), reason="PR_SET_PDEATHSIG is Linux only")


def python(code: str, env: dict[str, str] = ENV, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        text=True,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


SHOW = "from bus import parentwatch; print(parentwatch.parent_death_signal())"


@linux
@pytest.mark.parametrize(
    ("sig", "parent", "expect"),
    [
        # the real parent: armed, then the command runs (and sees the signal armed)
        (signal.SIGKILL, "ours", str(int(signal.SIGKILL))),
        (signal.SIGTERM, "ours", str(int(signal.SIGTERM))),
        # a parent that is not ours any more died before we armed: never start
        (signal.SIGKILL, "gone", -signal.SIGKILL),
        (signal.SIGTERM, "gone", -signal.SIGTERM),
    ],
)
def test_the_trampoline_arms_then_execs_or_dies_at_once(
    sig: signal.Signals, parent: str, expect: str | int
) -> None:
    pid = os.getpid() if parent == "ours" else os.getpid() + 1_000_000
    command = parentwatch.trampoline([sys.executable, "-c", SHOW], sig, pid)
    child = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=30)
    if isinstance(expect, str):
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == expect
    else:
        assert child.returncode == expect, (child.stdout, child.stderr)
        assert child.stdout == ""


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        ([], 2),
        (["9", "1"], 2),
        (["9", "1", "--"], 2),
        (["x", "1", "--", "true"], 2),
        (["9", "1", "true"], 2),
    ],
)
def test_the_trampoline_refuses_bad_usage(argv: list[str], code: int) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "bus.parentwatch", *argv],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == code and "usage" in child.stderr, child.stderr


@linux
def test_the_trampoline_reports_a_command_it_cannot_run() -> None:
    command = parentwatch.trampoline(["/nonexistent/agentic-payments"], signal.SIGKILL)
    child = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=30)
    assert child.returncode == 127 and "cannot run" in child.stderr, child.stderr


@linux
def test_preexec_arms_the_signal_before_exec() -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from bus import parentwatch; print(parentwatch.parent_death_signal())",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=parentwatch.preexec(signal.SIGTERM),
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == str(int(signal.SIGTERM))


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@linux
@pytest.mark.parametrize(
    "spawn",
    [
        'subprocess.Popen(["sleep", "60"], preexec_fn=parentwatch.preexec(signal.SIGTERM))',
        'subprocess.Popen(parentwatch.trampoline(["sleep", "60"], signal.SIGKILL))',
    ],
    ids=["preexec-SIGTERM", "trampoline-SIGKILL"],
)
def test_a_grandchild_dies_when_its_parent_is_killed_9(spawn: str) -> None:
    """The point of it all: the middle process (up) is SIGKILLed, the grandchild (a
    plain ``sleep``, armed before exec) gets its signal from the kernel at once."""
    middle = python(
        f"""
        import subprocess, signal
        from bus import parentwatch
        child = {spawn}
        print(child.pid, flush=True)
        child.wait()
        """
    )
    try:
        assert middle.stdout is not None
        grandchild = int(middle.stdout.readline())
        deadline = time.monotonic() + 20
        while not Path(f"/proc/{grandchild}/cmdline").read_bytes().startswith(b"sleep"):
            assert time.monotonic() < deadline, "the grandchild never exec'd sleep"
            time.sleep(0.01)  # armed and exec'd: from here on only the kernel can kill it
        middle.kill()
        middle.wait(10)
        deadline = time.monotonic() + 3
        while not _gone(grandchild):
            assert time.monotonic() < deadline, "the grandchild outlived its parent by 3 s"
            time.sleep(0.02)
    finally:
        middle.kill()


CONSOLE = """
    import asyncio, os, sys
    from workers.cli.up import Console
    console = Console()
    console.on_close = lambda: print("on_close", file=sys.stderr, flush=True)
    sys.stdin.readline()  # the test closed its end of our stdout by now
    {body}
    console.say("dropped")
    print("survived", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize(
    "body",
    [
        'console.say("first line")',  # a write fails with EPIPE
        # no write at all: the kernel reports the pipe's reader gone (EPOLLERR)
        textwrap.dedent(
            """
            async def main():
                loop = asyncio.get_running_loop()
                closed = asyncio.Event()
                console.on_close = closed.set
                console.watch(loop)
                await asyncio.wait_for(closed.wait(), 10)
                print("on_close", file=sys.stderr, flush=True)
            asyncio.run(main())
            """
        ).replace("\n", "\n    "),
    ],
    ids=["failed-write", "reader-gone-without-a-write"],
)
def test_a_closed_stdout_calls_on_close_and_never_raises(body: str) -> None:
    child = python(CONSOLE.format(body=body), stdin=subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    child.stdout.close()
    child.stdin.write("go\n")
    child.stdin.flush()
    child.stdin.close()
    assert child.wait(30) == 0
    err = child.stderr.read() if child.stderr else ""
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.count("on_close") == 1 and "survived" in err, err
    assert "stdout closed" in err, err
