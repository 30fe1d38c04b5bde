"""A small local supervisor for ``agentic-payments up``.

Starts each worker as its own process (env ``AP_GENERATION`` = a generation
number strictly increasing per worker: the spawn time in Unix ms, bumped if
needed) and on stop sends SIGTERM to all, waits, then SIGKILLs stragglers.

Who restarts a worker that died:

* **delegated mode** (``up`` when it runs a recovery worker): the recovery
  worker. The supervisor answers ``{prefix}.supervisor.{name}.restart``
  (``name``: env AP_SUPERVISOR, else the host name's first label as a token —
  what the recovery worker's local backend derives from heartbeats)
  (RestartRequest -> RestartReply): it SIGKILLs the process group if the
  process is still running (a hung worker sends no heartbeats but is alive),
  then spawns it again with a new generation. It does not restart workers by
  itself — **fallback**: while no recovery worker process is running
  (crashed, bad config; or the only recovery worker itself died) it restarts
  exited workers itself as in self mode.
* **self mode** (no recovery worker): restarts a process that exits
  unexpectedly with backoff (0.5 s doubling to 10 s, reset after 30 s of
  uptime), not one that exited with EXIT_CONFIG (restarting cannot fix bad
  configuration). Hung processes are not detected in this mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus import liveness
from bus.config import NatsConfig
from bus.connection import barrier, connect
from bus.runtime import EXIT_CONFIG, now_ms
from bus.service import Dispatcher, operation
from bus.stats import ProcessingStats
from bus.subjects import Subjects
from schemas.recovery import RestartCode, RestartReply, RestartRequest
from workers.recovery.backends import host_token

log = logging.getLogger("agentic_payments.supervisor")
RECOVERY_KIND = "recovery"


@dataclass
class ProcSpec:
    name: str
    args: list[str]
    kind: str = ""
    worker_id: str = ""
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff: float = 0.5
    generation: int = 0
    spawns: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    respawned: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # ``worker KIND --id ID ...``: the identity a RestartRequest names.
        if not self.kind and len(self.args) >= 2 and self.args[0] == "worker":
            self.kind = self.args[1]
        if not self.worker_id and "--id" in self.args[:-1]:
            self.worker_id = self.args[self.args.index("--id") + 1]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class LocalSupervisor:
    def __init__(
        self,
        specs: list[ProcSpec],
        *,
        env: dict[str, str],
        log_dir: Path,
        delegate_restarts: bool | None = None,
        name: str | None = None,
    ) -> None:
        self.specs = specs
        self.env = env
        self.log_dir = log_dir
        has_recovery = any(s.kind == RECOVERY_KIND for s in specs)
        self.delegate_restarts = has_recovery if delegate_restarts is None else delegate_restarts
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []
        self._control: Subscription | None = None
        self._nc: Client | None = None
        self.name = name or env.get("AP_SUPERVISOR") or host_token(socket.gethostname())
        self.control_subject = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = ProcessingStats()
        self._rpc = Dispatcher(
            "supervisor",
            {"restart": operation(RestartRequest, self.restart)},
            self.stats,
            log,
            refusals=(),
        )

    def command(self, spec: ProcSpec) -> list[str]:
        return [sys.executable, "-m", "workers.cli", *spec.args]

    def find(self, kind: str, worker_id: str) -> ProcSpec | None:
        return next((s for s in self.specs if s.kind == kind and s.worker_id == worker_id), None)

    async def _spawn(self, spec: ProcSpec) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        spec.generation = max(now_ms(), spec.generation + 1)
        env = dict(self.env, AP_GENERATION=str(spec.generation))
        logfile = (self.log_dir / f"{spec.name}.log").open("ab")
        try:
            spec.process = await asyncio.create_subprocess_exec(
                *self.command(spec), env=env, stdout=logfile, stderr=logfile, start_new_session=True
            )
        finally:
            logfile.close()
        spec.started_at = time.monotonic()
        spec.spawns += 1
        spec.respawned.set()

    async def start(self) -> None:
        """Spawn every worker; in delegated mode first open the control endpoint on the
        NATS server and prefix of ``env`` (NATS_URL, AP_PREFIX)."""
        if self.delegate_restarts and self._nc is None:
            config = NatsConfig.from_env(
                url=self.env.get("NATS_URL"), prefix=self.env.get("AP_PREFIX")
            )
            self._nc = await connect(config, name=f"supervisor-{self.name}")
            self.control_subject = await self.serve(self._nc, Subjects(config.prefix), self.name)
        for spec in self.specs:
            await self._spawn(spec)
            self._watchers.append(asyncio.create_task(self._watch(spec)))

    # ---------------------------------------------------------------- control endpoint
    async def serve(self, nc: Client, subjects: Subjects, name: str) -> str:
        """Answer RestartRequests on ``{prefix}.supervisor.{name}.restart``."""
        subject = subjects.supervisor_restart(name)
        self._control = await nc.subscribe(subject, cb=self._on_restart)
        await barrier(nc)
        return subject

    async def _on_restart(self, msg: Msg) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        """Through the one service dispatcher: bad input answers its code, a crash
        answers INTERNAL instead of leaving the recovery worker to time out."""
        await self._rpc.serve("restart", msg)

    async def restart(self, request: RestartRequest) -> RestartReply:
        def answer(
            code: RestartCode, spec: ProcSpec | None = None, message: str = ""
        ) -> RestartReply:
            ok = code in (RestartCode.RESTARTED, RestartCode.ALREADY_NEWER)
            pid = spec.process.pid if spec is not None and spec.process is not None else 0
            return RestartReply(
                ok=ok,
                code=code.value,
                kind=request.kind,
                worker_id=request.worker_id,
                pid=pid,
                generation=spec.generation if spec else 0,
                message=message,
            )

        spec = self.find(request.kind, request.worker_id)
        if spec is None:
            return answer(
                RestartCode.UNKNOWN_WORKER,
                message=f"this supervisor does not run {request.kind}/{request.worker_id}",
            )
        async with spec.lock:
            if self._stopping:
                return answer(RestartCode.STOPPING, spec, "supervisor is stopping")
            if spec.generation > request.dead_generation and spec.running:
                return answer(
                    RestartCode.ALREADY_NEWER, spec, f"generation {spec.generation} already runs"
                )
            old = spec.process
            if old is not None and old.returncode == EXIT_CONFIG:
                # restarting cannot fix a bad configuration: say so, do not loop
                return answer(
                    RestartCode.CONFIG_EXIT,
                    spec,
                    f"it exited {EXIT_CONFIG} (bad configuration); fix it, see "
                    f"{self.log_dir / f'{spec.name}.log'}",
                )
            if old is not None and old.returncode is None and self._alive_locally(spec):
                # its event loop still makes progress (liveness file, written without
                # NATS): the silence is the bus's, and killing it would not help
                return answer(
                    RestartCode.ALIVE,
                    spec,
                    "its liveness file is fresh; not killing a working process",
                )
            if old is not None and old.returncode is None:  # hung: alive but silent
                log.warning(
                    "%s: killing silent process %s (generation %s) on request",
                    spec.name,
                    old.pid,
                    spec.generation,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(old.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):  # not wait_for (bpo-42130)
                        await old.wait()
            try:
                await self._spawn(spec)
            except (OSError, ValueError) as exc:
                return answer(RestartCode.SPAWN_FAILED, spec, str(exc))
            log.warning(
                "%s restarted on request (%s): pid %s generation %s",
                spec.name,
                request.reason or "no reason given",
                spec.process.pid if spec.process else 0,
                spec.generation,
            )
            return answer(RestartCode.RESTARTED, spec)

    def _alive_locally(self, spec: ProcSpec) -> bool:
        """Whether ``spec``'s liveness file says its loop made progress recently."""
        if not spec.kind or not spec.worker_id:
            return False
        data_dir = Path(self.env.get("AP_DATA_DIR", ".agentic-payments"))
        try:
            path = liveness.liveness_path(
                liveness.liveness_dir(data_dir, self.env), spec.kind, spec.worker_id
            )
            record = liveness.read(path)
        except Exception:
            return False
        if record is None or spec.process is None or record.pid != spec.process.pid:
            return False
        return liveness.verdict(record, time.time()).alive

    # ---------------------------------------------------------------- watching
    def recovery_running(self) -> bool:
        """A recovery worker process exists *and* its loop makes progress (a hung one
        does not count: the supervisor then restarts exited workers itself)."""
        return any(
            s.kind == RECOVERY_KIND
            and s.running
            and (self._alive_locally(s) or time.monotonic() - s.started_at < 30)
            for s in self.specs
        )

    async def _watch(self, spec: ProcSpec) -> None:
        while not self._stopping:
            proc = spec.process
            assert proc is not None
            spec.respawned.clear()
            code = await proc.wait()
            if self._stopping:
                return
            if spec.process is not proc:  # restarted on request meanwhile
                continue
            if self.delegate_restarts:  # a dead recovery worker too, if another one runs
                if code == EXIT_CONFIG:
                    log.error(
                        "%s exited with a configuration error (78); restart requests "
                        "will be refused (CONFIG_EXIT). See %s",
                        spec.name,
                        self.log_dir / f"{spec.name}.log",
                    )
                    return
                log.warning("%s exited with %s; the recovery worker restarts it", spec.name, code)
                while not self._stopping and spec.process is proc and self.recovery_running():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):  # not wait_for (bpo-42130)
                            await spec.respawned.wait()
                if self._stopping or spec.process is not proc:
                    continue
                log.warning(
                    "%s: no recovery worker is running; restarting it myself (fallback)", spec.name
                )
            if code == EXIT_CONFIG:
                log.error(
                    "%s exited with a configuration error (78); not restarting. See %s",
                    spec.name,
                    self.log_dir / f"{spec.name}.log",
                )
                return
            if time.monotonic() - spec.started_at > 30:
                spec.backoff = 0.5
            log.warning("%s exited with %s; restarting in %.1fs", spec.name, code, spec.backoff)
            await asyncio.sleep(spec.backoff)
            spec.backoff = min(10.0, spec.backoff * 2)
            async with spec.lock:
                if self._stopping:
                    return
                if spec.process is proc:
                    await self._spawn(spec)

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every worker, wait up to ``timeout``, SIGKILL the rest. Safe twice."""
        if self._stopping:
            return
        self._stopping = True
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.unsubscribe()
        running = [
            s.process for s in self.specs if s.process is not None and s.process.returncode is None
        ]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):  # not wait_for (bpo-42130)
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
        for task in [*self._watchers, *self._tasks]:
            task.cancel()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()
