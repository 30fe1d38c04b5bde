"""The worker runtime: lifecycle, signals, heartbeat, metrics, health, micro service.

A worker is an async context manager. ``start`` connects, registers a NATS
micro service (so ``$SRV.PING/INFO/STATS`` finds it, with a ``status``
endpoint that answers its MetricsSnapshot), runs the subclass ``setup`` and
starts the heartbeat and metrics loops. ``stop`` is staged and safe to call
twice:

  1. health becomes ShuttingDown and intake subscriptions are drained
     (no new work; messages already delivered are still handled);
  2. ``wait_idle`` — the worker finishes what it holds, bounded by
     ``drain_timeout_s``;
  3. the remaining subscriptions and the service stop, a last heartbeat is
     sent, and the connection is drained and closed.

The whole stop is bounded (issue #11, "bounded stops"): stages 1-2 share
``drain_timeout_s``, stage 3 gets ``STOP_SLACK_S`` more, then the connection
is closed hard, whether NATS is up, gone (nats-py is reconnecting: a flush or
drain would wait for a PONG that never comes) or hung (connected but silent:
nats-py cannot tell for minutes). A stage that runs out of time is abandoned
and the stop carries on; ``Worker.drained`` says whether every stage finished
and the connection drained. A SIGTERM during ``start`` (connecting, or
re-reading state while NATS is away) cancels the start and stops at once.

``run_worker`` wires SIGTERM/SIGINT to ``request_stop`` and turns failures
into distinct exit codes: 0 clean, 75 stopped but had to abandon work (held
work unfinished, or a drain NATS did not let finish), 78 bad configuration,
69 cannot connect, 70 crash. Should the event loop itself wedge, a watchdog
thread armed by SIGTERM ends the process with 75 at ``drain_timeout_s +
HARD_EXIT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, cast

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadSubscriptionError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from bus.config import NatsConfig
from bus.connection import close_quickly, connect
from bus.keepalive import Keepalive, making_progress
from bus.nats_errors import map_jetstream_errors
from bus.otelmetrics import WorkerInstruments
from bus.replies import GuardedClient, ReplyGuard
from bus.stats import ProcessingStats
from bus.subjects import Subjects, check_token, service_name
from bus.tracing import SHUTDOWN_TIMEOUT_S, setup_metrics, setup_tracing, shutdown_telemetry
from schemas.errors import ConfigError, IdentityError, NotConnected
from schemas.messages import Health, Heartbeat, MetricsSnapshot

EXIT_OK = 0
EXIT_CONNECT = 69  # sysexits EX_UNAVAILABLE
EXIT_CRASH = 70  # sysexits EX_SOFTWARE
EXIT_CONFIG = 78  # sysexits EX_CONFIG
#: stopped within its bound, but gave up on work: held work unfinished after
#: drain_timeout_s, or NATS (gone or hung) did not let the connection drain.
#: sysexits EX_TEMPFAIL: what was dropped is the kind a retry recovers
#: (callers retry with the same request id; nothing acknowledged is lost).
EXIT_ABANDONED = 75

#: beyond drain_timeout_s, the time stage 3 (subscriptions, teardown, service,
#: connection drain) may take before the connection is closed hard
STOP_SLACK_S = 0.75
#: a subclass teardown always gets at least this long, even when the stages
#: before it used up the budget (it releases local resources, e.g. key material)
TEARDOWN_MIN_S = 0.25
#: closing the connection hard: nats-py's close() still writes what is pending
CLOSE_S = 0.25
#: the watchdog's bound beyond drain_timeout_s: past it the process ends with
#: EXIT_ABANDONED even if the event loop is wedged (issue #11: exit within
#: drain_timeout + 2 s of SIGTERM)
HARD_EXIT_S = 1.8

try:
    VERSION = importlib.metadata.version("agentic-payments")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"
log = logging.getLogger("agentic_payments.runtime")
MsgHandler = Callable[[Msg], Awaitable[None]]


def default_data_dir() -> Path:
    return Path(os.environ.get("AP_DATA_DIR", ".agentic-payments"))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_generation() -> int:
    """This process's generation: env AP_GENERATION (set by the local supervisor on each
    spawn), else the process start time in Unix ms — strictly increasing across restarts of
    one worker under systemd or Kubernetes too, as long as the clock does not step back."""
    raw = os.environ.get("AP_GENERATION", "").strip()
    if not raw:
        return _START_MS
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"AP_GENERATION must be a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"AP_GENERATION must be a non-negative integer, got {raw!r}")
    return value


_START_MS = now_ms()


@dataclass(frozen=True)
class RuntimeConfig:
    worker_id: str
    nats: NatsConfig = field(default_factory=NatsConfig.from_env)
    heartbeat_s: float = 5.0
    metrics_s: float = 10.0
    drain_timeout_s: float = 10.0
    data_dir: Path = field(default_factory=default_data_dir)
    generation: int = field(default_factory=default_generation)

    def __post_init__(self) -> None:
        check_token(self.worker_id, "worker id")
        if self.heartbeat_s <= 0 or self.metrics_s <= 0:
            raise ConfigError("heartbeat and metrics intervals must be positive")
        if self.drain_timeout_s < 0:
            raise ConfigError("drain timeout cannot be negative")


class Worker:
    """Base of every worker process; subclasses set ``kind`` and implement ``setup``."""

    kind: ClassVar[str] = "worker"

    def __init__(self, runtime: RuntimeConfig) -> None:
        self.runtime = runtime
        self.worker_id = runtime.worker_id
        self.subjects = Subjects(runtime.nats.prefix)
        self.stats = ProcessingStats()
        #: answers only go to _INBOX replies (bus/replies.py, issue #10 hole 1)
        self.replies = ReplyGuard(self.stats, log)
        self.instance = uuid.uuid4().hex[:12]
        self.nc: Client | None = None
        self.service: Service | None = None
        self._intake: list[Subscription] = []
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        # created here, not in start(): a SIGTERM while connecting must count
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._stop_done = asyncio.Event()
        #: after stop(): True when every stage finished in time and the connection
        #: drained; False when work or the drain had to be abandoned (EXIT_ABANDONED)
        self.drained: bool | None = None
        self._hb_seq = 0
        self.otel_metrics: WorkerInstruments | None = None
        # systemd READY/STOPPING/WATCHDOG and the local liveness file (bus/keepalive.py)
        self.keepalive = Keepalive(
            self.kind, self.worker_id, data_dir=runtime.data_dir, heartbeat_s=runtime.heartbeat_s
        )
        self._beat_at: float | None = None

    # ------------------------------------------------------------ subclass API
    async def setup(self) -> None:
        """Subscribe to work subjects (``subscribe_intake``) and other state."""

    async def wait_idle(self) -> None:
        """Wait until the work this worker holds is finished (default: its tasks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def teardown(self) -> None:
        """Release subclass resources after work has stopped."""

    @property
    def client(self) -> Client:
        if self.nc is None:
            raise NotConnected("worker is not started")
        return self.nc

    async def subscribe_intake(
        self, subject: str, cb: MsgHandler, queue: str = "", *, replies: bool = False
    ) -> None:
        """A work subscription: drained first at shutdown (stop taking work).

        ``replies=True`` for request/reply intake: a message whose reply subject is
        outside ``_INBOX.`` never reaches ``cb`` (bus/replies.py). Leave it False for
        plain pub/sub, whose reply (if any) the handler does not answer.
        """
        if replies:
            cb = self.replies.wrap(cb)
        self._intake.append(await self._subscribe(subject, cb, queue))

    async def subscribe(
        self, subject: str, cb: MsgHandler, queue: str = "", *, replies: bool = False
    ) -> None:
        """A subscription kept until the held work is finished (e.g. vote replies);
        ``replies`` as in ``subscribe_intake``."""
        if replies:
            cb = self.replies.wrap(cb)
        self._subs.append(await self._subscribe(subject, cb, queue))

    async def _subscribe(self, subject: str, cb: MsgHandler, queue: str) -> Subscription:
        """NotConnected or TransportError (a bad subject), never a nats-py class."""
        with map_jetstream_errors(f"subscribing to {subject}"):
            return await self.client.subscribe(
                subject, queue=queue, cb=cb, pending_msgs_limit=65536
            )

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.count("task_errors")
            log.error("%s task failed", self.kind, exc_info=task.exception())

    def extra_metadata(self) -> dict[str, str]:
        return {}

    def gauges(self) -> dict[str, float]:
        """Current levels exported as OTel gauges ``ap.{kind}.{name}`` (bus/otelmetrics)."""
        return {"tasks_in_flight": len(self._tasks)}

    # ------------------------------------------------------------ health/metrics
    def health(self) -> Health:
        return Health.SHUTTING_DOWN if self._stopping else self.stats.health()

    def heartbeat(self) -> Heartbeat:
        self._hb_seq += 1
        return Heartbeat(
            kind=self.kind,
            worker_id=self.worker_id,
            instance=self.instance,
            seq=self._hb_seq,
            ts_ms=now_ms(),
            interval_s=self.runtime.heartbeat_s,
            health=self.health().value,
            pid=os.getpid(),
            host=socket.gethostname()[:255],
            generation=self.runtime.generation,
        )

    def metrics(self) -> MetricsSnapshot:
        s = self.stats
        return MetricsSnapshot(
            kind=self.kind,
            worker_id=self.worker_id,
            instance=self.instance,
            ts_ms=now_ms(),
            tasks=s.tasks,
            successes=s.successes,
            failures=s.failures,
            avg_ms=round(s.avg_ms, 3),
            p99_ms=round(s.p99_ms, 3),
            health=self.health().value,
            counters=dict(s.counters),
        )

    async def _publish_heartbeat(self) -> None:
        self._beat_at = time.monotonic()  # progress evidence for the keep-alive
        if self.nc is not None and self.nc.is_connected:
            await self.nc.publish(
                self.subjects.heartbeat(self.kind, self.worker_id), self.heartbeat().encode()
            )

    async def _publish_metrics(self) -> None:
        if self.nc is not None and self.nc.is_connected:
            await self.nc.publish(
                self.subjects.metrics(self.kind, self.worker_id), self.metrics().encode()
            )

    async def _every(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await action()
            except Exception:  # a publish failure must not kill the loop
                log.warning(
                    "periodic %s failed", getattr(action, "__name__", action), exc_info=True
                )
            await asyncio.sleep(seconds)

    async def _status(self, request: Request) -> None:
        await request.respond(self.metrics().encode())

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        resource = {
            "service.instance.id": f"{self.worker_id}-{self.instance}",
            "agentic_payments.worker_id": self.worker_id,
            "agentic_payments.prefix": self.subjects.prefix,
        }
        setup_tracing(service_name(self.kind), resource)
        metrics_on = setup_metrics(service_name(self.kind), resource)
        self.nc = await connect(self.runtime.nats, name=f"{self.kind}-{self.worker_id}")
        try:
            # bus/ raises the project's errors already; this maps what a worker's own
            # setup gets from nats-py directly (e.g. a bucket it opens itself)
            with map_jetstream_errors(f"starting {self.kind} {self.worker_id}"):
                await self._serve(self.nc)
        except NotConnected as exc:  # no JetStream, or the connection went: EXIT_CONNECT
            raise NotConnected(f"{exc} (NATS at {self.runtime.nats.url})") from exc
        await self._subscriptions_barrier()
        if metrics_on and self.otel_metrics is None:  # after setup: gauges() may need its state
            self.otel_metrics = WorkerInstruments(self.kind, self.stats, self.health, self.gauges)
        self._loops = [
            asyncio.create_task(self._every(self.runtime.heartbeat_s, self._publish_heartbeat)),
            asyncio.create_task(self._every(self.runtime.metrics_s, self._publish_metrics)),
            asyncio.create_task(self.keepalive.run(self._making_progress)),
        ]
        self.keepalive.ready(f"serving as {self.kind} {self.worker_id} on {self.subjects.prefix}")
        log.info(
            "%s %s started (instance %s, prefix %s)",
            self.kind,
            self.worker_id,
            self.instance,
            self.subjects.prefix,
        )

    async def _serve(self, nc: Client) -> None:
        """Register the micro service and its status endpoint, then the subclass ``setup``."""
        metadata = {
            "worker_id": self.worker_id,
            "kind": self.kind,
            "instance": self.instance,
            "prefix": self.subjects.prefix,
            **self.extra_metadata(),
        }
        # through GuardedClient: nats-py's own PING/INFO/STATS handlers and every
        # endpoint answer only _INBOX replies (bus/replies.py)
        self.service = await add_service(
            cast(Client, GuardedClient(nc, self.replies)),
            name=service_name(self.kind),
            version=VERSION,
            description=(self.__class__.__doc__ or self.kind).strip().splitlines()[0],
            metadata=metadata,
        )
        await self.service.add_endpoint(
            EndpointConfig(
                name="status",
                handler=self._status,
                subject=self.subjects.status(self.kind, self.worker_id),
                queue_group=f"status-{self.instance}",
            )
        )
        await self.setup()
        await nc.flush()

    async def _subscriptions_barrier(self) -> None:
        """Return only once the server has every subscription made so far.

        nats-py 2.16's ``flush()`` can see its PONG before SUB commands still in
        the client's write buffer reach the server, so a request sent right after
        ``start()`` could get "no responders". A request to our own status
        endpoint travels behind those SUBs on the same connection; its reply
        proves the server processed them (``bus.connection.barrier`` is the same
        barrier for a connection with no endpoint of its own).
        """
        try:
            await self.client.request(
                self.subjects.status(self.kind, self.worker_id), b"", timeout=5.0
            )
        except Exception as exc:  # never fatal: the worker still works, just maybe later
            log.warning(
                "%s %s: subscription barrier failed (%s)",
                self.kind,
                self.worker_id,
                exc.__class__.__name__,
            )

    def _making_progress(self) -> bool:
        return making_progress(
            self._beat_at, time.monotonic(), self.runtime.heartbeat_s, self.keepalive.interval_s
        )

    def request_stop(self) -> None:
        """Signal handler: ask ``run`` to stop (safe from a signal, safe twice)."""
        self._stop_requested.set()

    async def stop(self) -> None:
        """Staged stop; a second call waits for the first one to finish."""
        if self._stopping:
            await self._stop_done.wait()
            return
        self._stopping = True
        try:
            await self._stop_stages()
        finally:
            self._stop_done.set()

    async def _stop_stages(self) -> None:
        loop = asyncio.get_running_loop()
        drain_end = loop.time() + self.runtime.drain_timeout_s
        end = drain_end + STOP_SLACK_S
        log.info("%s %s stopping: no new work", self.kind, self.worker_id)
        self.keepalive.stopping()
        with contextlib.suppress(Exception):
            await self._publish_heartbeat()
        # a drain that ran out of time means NATS is not answering (hung, or gone
        # unnoticed): later round trips would only wait the same way, so skip them
        answering = await self._bounded("draining intake", self._drain_all(self._intake), drain_end)
        ok = await self._bounded("finishing held work", self.wait_idle(), drain_end) and answering
        if answering:
            answering = await self._bounded(
                "draining subscriptions", self._drain_all(self._subs), end
            )
            ok = ok and answering
        for task in list(self._tasks):
            task.cancel()
        # at least TEARDOWN_MIN_S for local resources; no more if NATS is not answering
        grace = loop.time() + TEARDOWN_MIN_S
        ok = (
            await self._bounded(
                "teardown", self.teardown(), max(end, grace) if answering else grace
            )
            and ok
        )
        for loop_task in self._loops:
            loop_task.cancel()
        if answering:
            ok = await self._bounded("closing the connection", self._drain_connection(), end) and ok
        await self._close_hard()
        # telemetry flushes in what is left before the watchdog (HARD_EXIT_S), at most
        # its own bound; unexported spans are lost with a warning, not a failed stop
        left = drain_end + HARD_EXIT_S - 0.3 - loop.time()
        shutdown_telemetry(max(0.1, min(SHUTDOWN_TIMEOUT_S, left)))
        self.drained = ok and answering
        if ok:
            log.info("%s %s stopped", self.kind, self.worker_id)
        else:
            log.warning("%s %s stopped, abandoning work (see above)", self.kind, self.worker_id)

    async def _bounded(self, what: str, coro: Coroutine[Any, Any, Any], deadline: float) -> bool:
        """Run one stop stage until ``deadline`` (event-loop time); True if it finished.

        Run as its own task and waited on, not cancelled-and-awaited: a stage that
        swallows the cancellation (``suppress(BaseException)`` around an await) must
        not hold the stop past its bound. One that has not ended is cancelled and
        left behind; the hard close then takes its connection away.
        """
        task = asyncio.ensure_future(coro)
        # past the deadline a stage still gets one turn of the loop: one with nothing
        # to do (an idle wait_idle) then finishes instead of counting as abandoned
        timeout = max(0.01, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            log.warning(
                "%s %s: %s did not finish in time; abandoning it (NATS %s)",
                self.kind,
                self.worker_id,
                what,
                self._nats_state(),
            )
            return False
        if task.cancelled():
            return False
        exc = task.exception()
        if exc is not None:
            log.warning("%s %s: %s failed: %r", self.kind, self.worker_id, what, exc)
            return False
        return True

    def _nats_state(self) -> str:
        if self.nc is None:
            return "not connected yet"
        if self.nc.is_connected:
            return "connected"
        if self.nc.is_reconnecting:
            return "reconnecting"
        return "closed" if self.nc.is_closed else "not connected"

    async def _drain_all(self, subs: list[Subscription]) -> None:
        """Drain ``subs`` side by side: each drain is a PING round trip, and one at a
        time against a silent server would cost nats-py's flush timeout per subscription."""
        if not subs:
            return
        if self.nc is None or not self.nc.is_connected:
            # no round trip can finish; what is queued is still handled until the
            # hard close (nothing new arrives while disconnected)
            raise NotConnected(f"cannot drain {len(subs)} subscriptions: NATS {self._nats_state()}")
        drains = (sub.drain() for sub in subs)  # type: ignore[no-untyped-call]
        results = await asyncio.gather(*drains, return_exceptions=True)
        # a subscription already closed (e.g. unsubscribed by its owner) has nothing to drain
        failed = [r for r in results if isinstance(r, Exception) and not _already_closed(r)]
        if failed:
            raise failed[0]

    async def _drain_connection(self) -> None:
        """Stop the service, send the last metrics, drain and close the connection."""
        if self.nc is None or self.nc.is_closed:
            return
        if not self.nc.is_connected:
            raise NotConnected(f"cannot drain the connection: NATS {self._nats_state()}")
        if self.service is not None:
            await self.service.stop()
        with contextlib.suppress(Exception):
            await self._publish_metrics()
        await self.nc.drain()
        if not self.nc.is_closed:
            raise NotConnected("the connection did not close after its drain")

    async def _close_hard(self) -> None:
        """Close the connection whatever state it is in, within ``CLOSE_S``."""
        if self.nc is not None:
            await close_quickly(self.nc, CLOSE_S)

    async def run(self) -> None:
        """Start, serve until ``request_stop``, stop; a stop requested while starting
        cancels the start (connect attempts, setup reads waiting on NATS)."""
        starting = asyncio.ensure_future(self.start())
        stop_wait = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("%s %s: stop requested while starting", self.kind, self.worker_id)
                starting.cancel()
                await asyncio.wait({starting}, timeout=CLOSE_S)
            else:
                starting.result()  # start's failure (EXIT_CONNECT, EXIT_CONFIG...)
                await stop_wait
        finally:
            stop_wait.cancel()
            await self.stop()
            if not starting.done() or starting.cancelled():
                self.drained = False  # the start was abandoned half-way

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _already_closed(exc: BaseException) -> bool:
    return isinstance(exc, BadSubscriptionError)


def configure_logging(kind: str, worker_id: str) -> None:
    level = os.environ.get("AP_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {kind}/{worker_id} %(name)s: %(message)s",
    )


def _hard_exit_watchdog(bound_s: float, kind: str, worker_id: str) -> threading.Timer:
    """The last bound on a stop: a thread that ends the process with EXIT_ABANDONED
    ``bound_s`` after SIGTERM even if the event loop never gets there (a wedged
    callback, asyncio.run waiting on a task that swallows its cancellation, an
    executor thread that does not return)."""

    def expire() -> None:
        # straight to fd 2, not through logging: the wedged main thread may hold a
        # handler's lock, and this thread must not wait for it
        with contextlib.suppress(Exception):
            note = f"{kind} {worker_id}: stop exceeded {bound_s:.1f}s; exiting {EXIT_ABANDONED}\n"
            os.write(2, note.encode())
        os._exit(EXIT_ABANDONED)

    timer = threading.Timer(bound_s, expire)
    timer.daemon = True
    timer.start()
    return timer


def run_worker(factory: Callable[[], Worker]) -> int:
    """Run a worker until SIGTERM/SIGINT; return the process exit code."""
    try:
        worker = factory()
    except (ConfigError, IdentityError) as exc:
        print(f"configuration error [{exc.code}]: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:  # unusable data dir or key file
        print(f"configuration error [CONFIG_INVALID]: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    watchdog: list[threading.Timer] = []

    def on_signal() -> None:
        if not watchdog:
            bound = worker.runtime.drain_timeout_s + HARD_EXIT_S
            watchdog.append(_hard_exit_watchdog(bound, worker.kind, worker.worker_id))
        worker.request_stop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await worker.run()

    configure_logging(worker.kind, worker.worker_id)
    try:
        asyncio.run(main())
    except ConfigError as exc:
        log.error("configuration error [%s]: %s", exc.code, exc)
        return EXIT_CONFIG
    except NotConnected as exc:
        log.error("%s", exc)
        return EXIT_CONNECT
    except Exception:
        log.exception("%s %s crashed", worker.kind, worker.worker_id)
        return EXIT_CRASH
    finally:
        for timer in watchdog:
            timer.cancel()
    return EXIT_OK if worker.drained is not False else EXIT_ABANDONED
