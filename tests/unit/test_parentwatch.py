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
from schemas.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop(parentwatch.PARENT_ENV, None)
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


@pytest.mark.parametrize(
    ("value", "armed"),
    [
        (None, False),  # not under up: systemd / Kubernetes / tests supervise
        ("", False),
        ("  ", False),
    ],
)
def test_die_with_parent_does_nothing_without_a_parent_pid(value: str | None, armed: bool) -> None:
    env = {} if value is None else {parentwatch.PARENT_ENV: value}
    assert parentwatch.die_with_parent(env) is armed


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5"])
def test_die_with_parent_refuses_a_bad_parent_pid(value: str) -> None:
    with pytest.raises(ConfigError, match=parentwatch.PARENT_ENV):
        parentwatch.die_with_parent({parentwatch.PARENT_ENV: value})


def test_child_env_names_this_process() -> None:
    env = parentwatch.child_env({"A": "1"})
    assert env == {"A": "1", parentwatch.PARENT_ENV: str(os.getpid())}


ARM = """
    import os, sys
    from bus import parentwatch
    parentwatch.die_with_parent()
    print(parentwatch.parent_death_signal(), flush=True)
"""


@linux
@pytest.mark.parametrize(
    ("parent", "expect"),
    [
        ("ours", "armed"),  # AP_PARENT_PID is the real parent: SIGKILL armed, keeps running
        ("gone", "killed"),  # a parent that is not ours any more: it died before we armed
    ],
)
def test_a_worker_arms_sigkill_or_dies_at_once(parent: str, expect: str) -> None:
    pid = os.getpid() if parent == "ours" else os.getpid() + 1_000_000
    child = python(ARM, env={**ENV, parentwatch.PARENT_ENV: str(pid)})
    out, err = child.communicate(timeout=30)
    if expect == "armed":
        assert child.returncode == 0, err
        assert out.strip() == str(int(signal.SIGKILL))
    else:
        assert child.returncode == -signal.SIGKILL, (out, err)
        assert out == ""


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
def test_a_grandchild_dies_when_its_parent_is_killed_9() -> None:
    """The point of it all: the middle process (up) is SIGKILLed, the grandchild (a
    plain ``sleep``, armed before exec) gets SIGTERM from the kernel at once."""
    middle = python(
        """
        import subprocess, signal
        from bus import parentwatch
        child = subprocess.Popen(["sleep", "60"], preexec_fn=parentwatch.preexec(signal.SIGTERM))
        print(child.pid, flush=True)
        child.wait()
        """
    )
    try:
        assert middle.stdout is not None
        grandchild = int(middle.stdout.readline())
        assert not _gone(grandchild)
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
