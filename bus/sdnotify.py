"""The systemd ``sd_notify`` protocol, without libsystemd.

A service started with ``Type=notify`` finds ``$NOTIFY_SOCKET`` in its
environment: the path of an ``AF_UNIX`` datagram socket (or, when it starts
with ``@``, a name in the Linux abstract namespace). Each datagram is a set of
newline-separated ``KEY=VALUE`` assignments: ``READY=1`` once the service is
serving, ``STATUS=...`` free text for ``systemctl status``, ``STOPPING=1`` when
it begins to shut down, ``WATCHDOG=1`` keep-alive pings (with ``WatchdogSec=``
systemd kills a service whose pings stop for that long; it passes the period
as ``$WATCHDOG_USEC`` and, optionally, the pid meant to ping as
``$WATCHDOG_PID``).

Everything is a no-op when ``NOTIFY_SOCKET`` is unset (a terminal, a test,
Kubernetes). Sends never block (``MSG_DONTWAIT``: the caller is the worker's
event loop; a full receive queue drops the datagram). A send failure is logged
once and reported as ``False`` — a worker must never die or stall because its
supervisor's socket went away or stopped reading.

The parsing functions are pure (they take the environment as a mapping) and
have table-driven tests in ``tests/unit/test_sdnotify.py``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("agentic_payments.sdnotify")


def socket_address(value: str | None) -> str | bytes | None:
    """The address to ``sendto`` for a ``$NOTIFY_SOCKET`` value, or None.

    ``@name`` is an abstract socket (a leading NUL byte on the wire); a path
    must be absolute. Anything else is ignored, as libsystemd does.
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_period_s(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog period systemd expects pings within, in seconds, or None.

    None when ``WATCHDOG_USEC`` is unset, not a positive integer, or when
    ``WATCHDOG_PID`` names another process (the pings are meant for it).
    """
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    wanted_pid = env.get("WATCHDOG_PID", "")
    if wanted_pid:
        try:
            if int(wanted_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def format_message(**fields: str | int) -> bytes:
    """``READY=1\\nSTATUS=...`` — newlines in values would start a new field: refused."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        if "\n" in text:
            raise ValueError(f"sd_notify field {key} must not contain a newline")
        parts.append(f"{key}={text}")
    return "\n".join(parts).encode()


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET`` (a no-op when it is unset)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = socket_address(env.get("NOTIFY_SOCKET"))
        self.watchdog_s = watchdog_period_s(env)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one datagram; True when it was handed to the socket."""
        if self.address is None:
            return False
        data = format_message(**fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # never block the event loop: if the receiver's queue is full the
                # datagram is dropped (a missed ping is what a stuck supervisor gets)
                sock.sendto(data, socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            return False
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        # no MAINPID=: systemd knows the sender from SCM_CREDENTIALS, and a worker
        # started by another supervisor that leaks NOTIFY_SOCKET must not claim to
        # be the main process
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)
