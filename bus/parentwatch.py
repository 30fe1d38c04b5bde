"""Die with the parent: nothing ``agentic-payments up`` started outlives it.

Why: ``up`` can die without running its stop path (``kill -9``, a crash, the
OOM killer). Hoping that the children notice later (a broken log pipe, a lost
NATS connection) is how nats-server and ten workers ended up running under
PID 1 holding the port (issue #11). Linux has a kernel-enforced answer:
``prctl(PR_SET_PDEATHSIG, sig)`` makes the kernel send ``sig`` to a process the
moment its parent dies. Two ways to arm it, both race-free:

* **before exec** (``preexec``), for a child that is not our Python, e.g. the
  nats-server binary: the setting survives ``execve`` (it is cleared only for
  set-uid/set-gid binaries), so the Go program gets it without knowing.
* **in the child itself** (``die_with_parent``), for our own workers: the
  parent exports ``AP_PARENT_PID`` (``child_env``); the worker arms the signal
  first thing in ``run_worker``. This needs no ``preexec_fn`` in the spawning
  code (see below) and works for any spawner that sets the variable.

Either way, the parent may already have died before the ``prctl`` (between
fork and exec, or during the worker's imports); then the signal will never
come, so both check ``getppid()`` against the expected parent right after
arming and deliver the signal to themselves if it changed (an orphan is
reparented to init or a subreaper).

Caveats, and why they are acceptable here:

* PDEATHSIG fires when the *thread* that forked the child exits, not the
  process. A child spawned from a short-lived thread dies with that thread.
  ``up`` spawns everything from its main thread (asyncio runs subprocess
  creation on the loop's thread), which lives as long as the process.
* ``subprocess``'s ``preexec_fn`` runs Python between fork and exec and is
  documented as unsafe with threads: a lock another thread held at fork stays
  held in the child. ``preexec`` resolves libc's ``prctl`` in the parent and the
  child then calls only that foreign function and ``os.getppid``/``os.kill``
  (no imports, no logging, no allocation-heavy work), so there is no lock to
  inherit. It also forces ``fork`` instead of ``vfork``; that costs
  nothing for one nats-server.
* Linux only. Elsewhere ``supported()`` is False and nothing is armed: the
  graceful stop on SIGINT/SIGTERM/SIGHUP still works, ``kill -9`` orphans.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from schemas.errors import ConfigError

#: the environment variable ``up`` sets for its workers: "die when this pid is gone"
PARENT_ENV = "AP_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_GET_PDEATHSIG = 2


def _load_prctl() -> Any | None:
    """libc's prctl, resolved once at import (never in a forked child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc.prctl
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


def child_env(env: Mapping[str, str], parent_pid: int | None = None) -> dict[str, str]:
    """``env`` plus ``AP_PARENT_PID``: a worker started with it dies with that process."""
    return {**env, PARENT_ENV: str(os.getpid() if parent_pid is None else parent_pid)}


def die_with_parent(env: Mapping[str, str] | None = None, sig: int = signal.SIGKILL) -> bool:
    """Arm ``sig`` for this process if ``AP_PARENT_PID`` names its parent; True if armed.

    Unset or empty: nothing (systemd, Kubernetes and tests supervise workers
    themselves). Set but no longer our parent: the parent is already gone, so
    this process signals itself now. Not a pid: ConfigError (exit 78).
    """
    environ = os.environ if env is None else env
    raw = environ.get(PARENT_ENV, "").strip()
    if not raw:
        return False
    try:
        parent = int(raw)
    except ValueError:
        raise ConfigError(f"{PARENT_ENV} must be a process id, got {raw!r}") from None
    if parent <= 0:
        raise ConfigError(f"{PARENT_ENV} must be a process id, got {raw!r}")
    if not supported():
        return False
    set_parent_death_signal(sig)
    if os.getppid() != parent:  # died before we armed: the signal will never come
        os.kill(os.getpid(), sig)
    return True
