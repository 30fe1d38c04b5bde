"""Die with the parent: nothing ``agentic-payments up`` started outlives it.

Why: ``up`` can die without running its stop path (``kill -9``, a crash, the
OOM killer). Hoping that the children notice later (a broken log pipe, a lost
NATS connection) is how nats-server and ten workers ended up running under
PID 1 holding the port (issue #11). Linux has a kernel-enforced answer:
``prctl(PR_SET_PDEATHSIG, sig)`` makes the kernel send ``sig`` to a process the
moment its parent dies. It survives ``execve`` (it is cleared only for
set-uid/set-gid binaries), so it must be armed in the child *before* the exec
of the real program; armed later (by the worker's own code, after its imports:
seconds on a busy machine), a parent killed meanwhile leaves it orphaned for
those seconds. Two ways to arm it before exec:

* ``trampoline(command, sig)``: run ``python -m bus.parentwatch SIG PPID --
  COMMAND...``, which arms ``sig`` (importing only ctypes), then execs
  ``COMMAND`` in the same process. ``up``'s supervisor starts every worker so;
  it needs no hook in the spawning code (asyncio's subprocess API).
* ``preexec(sig)``: a ``subprocess`` ``preexec_fn``, for nats-server, which
  ``bus/natsserver.py`` starts with plain ``subprocess.Popen``; it has no window
  at all.

Either way the parent may already have died before the ``prctl``; then the
signal will never come, so both check ``getppid()`` against the expected parent
right after arming and signal themselves if it changed (an orphan is reparented
to init or a subreaper).

Caveats, and why they are acceptable here:

* PDEATHSIG fires when the *thread* that forked the child exits, not the
  process. A child spawned from a short-lived thread dies with that thread.
  ``up`` spawns everything from its main thread (asyncio creates subprocesses
  on the loop's thread), which lives as long as the process.
* ``preexec_fn`` runs Python between fork and exec and is documented as unsafe
  with threads: a lock another thread held at fork stays held in the child.
  ``preexec`` resolves libc's ``prctl`` in the parent; the child then calls only
  that foreign function and ``os.getppid``/``os.kill`` (no imports, no logging),
  so there is no lock to inherit. It also forces ``fork`` over ``vfork``, which
  costs nothing for one nats-server. The trampoline has neither caveat; it costs
  one extra interpreter start (tens of ms) per worker spawn.
* Linux only. Elsewhere ``supported()`` is False and ``up`` arms nothing: the
  graceful stop on SIGINT/SIGTERM/SIGHUP still works, ``kill -9`` orphans.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_GET_PDEATHSIG = 2


def _load_prctl() -> Any | None:
    """libc's prctl, resolved once at import (never in a forked child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:  # dlopen(NULL): the interpreter's own symbols, libc's among them; no
        # find_library, which would run ldconfig in every trampoline
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def supported() -> bool:
    """Whether this platform can arm a parent-death signal (Linux)."""
    return _PRCTL is not None


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (0: never)."""
    if _PRCTL is None:
        raise OSError("PR_SET_PDEATHSIG needs Linux")
    if _PRCTL(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


def parent_death_signal() -> int:
    """The signal armed for this process (0: none); for tests and diagnostics."""
    if _PRCTL is None:
        return 0
    value = ctypes.c_int(0)
    if _PRCTL(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_GET_PDEATHSIG): {os.strerror(err)}")
    return value.value


def preexec(sig: int, parent_pid: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` arming ``sig`` in the child before it execs (module docstring).

    ``parent_pid`` defaults to the caller's pid: if it is no longer the child's
    parent when the child has armed, the parent died meanwhile and the child
    signals itself instead of exec'ing an orphan.
    """
    prctl = _PRCTL
    if prctl is None:
        raise OSError("PR_SET_PDEATHSIG needs Linux")
    expected = os.getpid() if parent_pid is None else parent_pid
    flag, value = ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(sig)

    def arm() -> None:  # runs in the forked child: only the pre-resolved call, no imports
        if prctl(flag, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != expected:
            os.kill(os.getpid(), sig)

    return arm


def trampoline(command: Sequence[str], sig: int, parent_pid: int | None = None) -> list[str]:
    """``command`` run through this module: the child arms ``sig`` for the death of
    ``parent_pid`` (default: the caller), then execs ``command`` (module docstring)."""
    parent = os.getpid() if parent_pid is None else parent_pid
    return [sys.executable, "-m", "bus.parentwatch", str(int(sig)), str(parent), "--", *command]


def _exec(argv: Sequence[str]) -> int:
    """``python -m bus.parentwatch SIG PPID -- COMMAND...``: arm, check, exec."""
    try:
        sig, parent, separator, *command = argv
        if separator != "--" or not command:
            raise ValueError("no command")
        signum, parent_pid = int(sig), int(parent)
    except ValueError:
        print("usage: python -m bus.parentwatch SIG PPID -- COMMAND...", file=sys.stderr)
        return 2
    set_parent_death_signal(signum)
    if os.getppid() != parent_pid:  # died before we armed: the signal will never come
        os.kill(os.getpid(), signum)
        return 128 + signum  # a signal this process ignores: exit instead
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"bus.parentwatch: cannot run {command[0]}: {exc}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(_exec(sys.argv[1:]))
