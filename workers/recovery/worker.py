"""The recovery worker: stale detection, respawn through a backend, retry policy, history.

It reads every heartbeat from the ``{prefix}_HEARTBEATS`` stream with an
ordered consumer starting ``replay_s`` in the past (so a restarted recovery
worker catches up on who was alive), feeds them to the pure tracker
(workers/recovery/staleness.py) and, every ``tick_s``, acts on what the tracker says is
due:

* STALE    -> signed alert WORKER_STALE (high) on ``{prefix}.alert.high``;
* RESPAWN  -> claim the attempt in the ``{prefix}_recovery`` KV bucket with
  ``create`` (compare-and-set: when several recovery workers run, exactly one
  acts on each attempt), ask the backend, record the outcome;
* GIVE_UP  -> record it and raise a signed alert RECOVERY_GAVE_UP (critical).

The first heartbeat of a newer generation completes the attempt (outcome
``recovered``, with respawn and first-heartbeat times). The history answers
HistoryQuery on ``{prefix}.recovery.history`` (micro-service endpoint
``history``, queue group ``recovery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.micro.service import EndpointConfig

from bus.kv import KeyValue, subject_keys
from bus.runtime import RuntimeConfig, Worker, now_ms
from bus.service import Dispatcher, Operation
from bus.streams import ensure_stream, ensure_telemetry_streams
from bus.subjects import RECOVERY_QUEUE, telemetry_source
from bus.tail import StoredMsg, StreamFollower
from schemas.alerts import Severity, sign_alert
from schemas.errors import CodecError, RespawnFailed, WriteConflict
from schemas.identity import AgentIdentity
from schemas.messages import Heartbeat
from schemas.recovery import HistoryQuery, HistoryReply, Outcome, RecoveryAttempt
from workers.recovery.backends import Backend, Target, WorkerAlive, WorkerMisconfigured
from workers.recovery.staleness import Action, ActionKind, RetryPolicy, Seen, Tracker, WorkerKey

log = logging.getLogger("agentic_payments.recovery")
ALERTS_DAYS = 30
HISTORY_TTL_S = 7 * 86400


@dataclass(frozen=True)
class RecoveryOptions:
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: per-kind ("verifier") or per-worker ("verifier/v1") policies
    overrides: Mapping[str, RetryPolicy] = field(default_factory=dict)
    missed: int = 3
    replay_s: float = 300.0
    tick_s: float = 0.05
    only_host: str | None = None
    kinds: frozenset[str] = frozenset()  # empty: every kind


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class RecoveryWorker(Worker):
    """Recovery: respawns workers whose heartbeats stopped."""

    kind = "recovery"

    def __init__(
        self,
        runtime: RuntimeConfig,
        options: RecoveryOptions,
        backend_factory: Any,
        *,
        key_file: Path | None = None,
    ) -> None:
        super().__init__(runtime)
        self.options = options
        self.backend_factory = backend_factory
        self.backend: Backend | None = None
        self.tracker = Tracker(options.policy, missed=options.missed, overrides=options.overrides)
        self.key_file = key_file or runtime.data_dir / "keys" / f"recovery-{self.worker_id}.key"
        self.identity = AgentIdentity.load_or_create(self.key_file)
        self.kv: Any = None
        self._attempts: KeyValue[RecoveryAttempt]  # set by setup, over self.kv
        self._open: dict[WorkerKey, tuple[RecoveryAttempt, int]] = {}  # attempt, revision
        self._caught_up = asyncio.Event()
        self._hb_sub: Any = None
        self._loops_extra: list[asyncio.Task[None]] = []
        self._kv_lock = asyncio.Lock()
        # only bad input is a refusal: a history that cannot be read is INTERNAL
        self.rpc = Dispatcher(
            "recovery",
            {"history": Operation(_history_query, self._history)},
            self.stats,
            log,
            refusals=(),
        )

    def extra_metadata(self) -> dict[str, str]:
        return {"public_key": self.identity.public_key_hex}

    # ---------------------------------------------------------------- setup
    async def setup(self) -> None:
        nc = self.client
        js = nc.jetstream()
        self.backend = self.backend_factory(nc, self.subjects)
        await ensure_telemetry_streams(nc, self.subjects)
        await ensure_stream(
            nc,
            self.subjects.alerts_stream,
            [self.subjects.alerts_all],
            max_age_s=ALERTS_DAYS * 86400.0,
            description="agentic-payments alerts",
        )
        bucket = self.subjects.recovery_bucket
        try:
            self.kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                self.kv = await js.create_key_value(
                    bucket=bucket,
                    history=1,
                    ttl=HISTORY_TTL_S,
                    direct=True,
                    description="agentic-payments recovery attempt history",
                )
            except Exception:  # created concurrently by another recovery worker
                self.kv = await js.key_value(bucket)
        self._attempts = KeyValue.of(self.kv, RecoveryAttempt)
        assert self.service is not None
        await self.service.add_endpoint(
            EndpointConfig(
                name="history",
                handler=self.rpc.handler("history"),
                subject=self.subjects.recovery_history,
                queue_group=RECOVERY_QUEUE,
            )
        )
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.options.replay_s)
        # read from the stream without a consumer (bus/tail.py): no role but admin
        # may create one, since a consumer's deliver subject is not checked
        self._hb_sub = StreamFollower(
            nc,
            self.subjects.heartbeat_stream,
            [self.subjects.heartbeat_all],
            self._on_heartbeat,
            start_time=start,
            on_caught_up=self._caught_up.set,
        )
        await self._hb_sub.start()
        self._loops_extra = [asyncio.create_task(self._ticker())]

    async def wait_idle(self) -> None:
        """Stopping: act on nothing new (no ticks, no heartbeats), finish running attempts."""
        await self._stop_watching()
        await super().wait_idle()

    async def teardown(self) -> None:
        await self._stop_watching()

    async def _stop_watching(self) -> None:
        for task in self._loops_extra:
            task.cancel()
        if self._hb_sub is not None:
            sub, self._hb_sub = self._hb_sub, None
            with contextlib.suppress(Exception):
                await sub.stop()

    # ---------------------------------------------------------------- heartbeats
    async def _on_heartbeat(self, msg: StoredMsg, pending: int) -> None:
        now = time.time()
        stored_at = msg.timestamp()
        at = now if stored_at is None else min(now, stored_at)
        if pending == 0:
            self._caught_up.set()
        try:
            hb = Heartbeat.decode(msg.data)
        except CodecError as exc:
            self.stats.count("heartbeat_malformed")
            log.warning("malformed heartbeat on %s [%s]: %s", msg.subject, exc.code, exc)
            return
        if telemetry_source(self.subjects, msg.subject) != (hb.kind, hb.worker_id):
            # a worker may publish only on its own subject (permissions); a payload
            # naming another worker must not make us restart (or delete) that one
            self.stats.count("heartbeat_subject_mismatch")
            log.warning(
                "heartbeat on %s claims to be %s/%s: ignored", msg.subject, hb.kind, hb.worker_id
            )
            return
        if (
            (hb.kind == self.kind and hb.worker_id == self.worker_id)
            or (self.options.only_host and hb.host != self.options.only_host)
            or (self.options.kinds and hb.kind not in self.options.kinds)
        ):
            return
        seen = self.tracker.observe(hb, at)
        if seen == Seen.ZOMBIE:
            self.stats.count("zombie_heartbeats")
        elif seen == Seen.RECOVERED:
            self.stats.count("recovered")
            await self._close_attempt(
                (hb.kind, hb.worker_id),
                Outcome.RECOVERED,
                first_heartbeat_ms=_ms(at),
                new_generation=hb.generation,
                detail=f"heartbeat of generation {hb.generation} (pid {hb.pid})",
            )

    # ---------------------------------------------------------------- ticks
    async def _ticker(self) -> None:
        with contextlib.suppress(TimeoutError):  # replay what the stream holds first
            async with asyncio.timeout(5.0):  # not wait_for (bpo-42130)
                await self._caught_up.wait()
        last_tick = time.monotonic()
        while True:
            try:
                gap = time.monotonic() - last_tick
                if gap > max(3 * self.options.tick_s, 2.0):
                    # this process stalled (paused, starved): judge nobody on the
                    # evidence of a period we did not watch
                    self.stats.count("ticker_stalled")
                    log.warning("recovery ticker stalled %.1fs: re-arming every worker", gap)
                    self.tracker.hold(time.time())
                blind = self.tracker.blind_suspected
                for action in self.tracker.due(time.time()):
                    await self._act(action)
                if self.tracker.blind_suspected != blind:
                    self.stats.count("mass_stale_held")
                    log.warning(
                        "most workers look stale at once: holding one grace period "
                        "(a stalled bus or recovery worker is likelier than a mass "
                        "failure)"
                    )
            except Exception:
                log.exception("recovery tick failed")
                self.stats.count("tick_errors")
            last_tick = time.monotonic()
            await asyncio.sleep(self.options.tick_s)

    async def _act(self, action: Action) -> None:
        kind, worker_id = action.key
        if action.kind == ActionKind.STALE:
            self.stats.count("stale_detected")
            silent = time.time() - action.last_seen
            log.warning(
                "%s/%s is stale (generation %s, silent %.2fs)",
                kind,
                worker_id,
                action.generation,
                silent,
            )
            self.spawn(
                self._alert(
                    Severity.HIGH,
                    "WORKER_STALE",
                    action,
                    f"{kind}/{worker_id} sent no heartbeat for {silent:.1f}s",
                    {"silent_s": round(silent, 3), "host": action.host, "pid": action.pid},
                )
            )
        elif action.kind == ActionKind.RESPAWN:
            await self._close_attempt(
                action.key, Outcome.FAILED, detail="no heartbeat of a newer generation in time"
            )
            self.spawn(self._respawn(action))
        else:
            self.stats.count("gave_up")
            await self._close_attempt(
                action.key, Outcome.GAVE_UP, detail=f"gave up after {action.attempt} attempts"
            )
            log.error("%s/%s: gave up after %s attempts", kind, worker_id, action.attempt)
            self.spawn(
                self._alert(
                    Severity.CRITICAL,
                    "RECOVERY_GAVE_UP",
                    action,
                    f"recovery gave up on {kind}/{worker_id} after {action.attempt} attempts",
                    {
                        "attempts": action.attempt,
                        "host": action.host,
                        "max_retries": self.tracker.policy_for(action.key).max_retries,
                    },
                )
            )

    async def _respawn(self, action: Action) -> None:
        assert self.backend is not None and self.kv is not None
        kind, worker_id = action.key
        state = self.tracker.workers.get(action.key)
        detected = state.stale_since if state is not None else time.time()
        record = RecoveryAttempt(
            kind=kind,
            worker_id=worker_id,
            attempt=action.attempt,
            dead_generation=action.generation,
            outcome=Outcome.PENDING.value,
            backend=self.backend.name,
            recovery_id=self.worker_id,
            last_seen_ms=_ms(action.last_seen),
            detected_ms=_ms(detected),
            requested_ms=now_ms(),
        )
        try:
            revision = await self._attempts.create(record.key, record)
        except WriteConflict:
            self.stats.count("attempt_claimed_elsewhere")
            log.info("%s: claimed by another recovery worker", record.key)
            return
        except Exception as exc:  # the bus is down or slow: no claim, no respawn now
            self.stats.count("attempt_claim_failed")
            self.tracker.respawn_failed(action.key, time.time())
            log.warning(
                "cannot record attempt %s (%s): not respawning now",
                record.key,
                exc.__class__.__name__,
            )
            return
        async with self._kv_lock:
            self._open[action.key] = (record, revision)
        log.warning(
            "respawning %s/%s (attempt %s, dead generation %s) via %s",
            kind,
            worker_id,
            action.attempt,
            action.generation,
            self.backend.name,
        )
        target = Target(
            kind=kind,
            worker_id=worker_id,
            generation=action.generation,
            host=action.host,
            pid=action.pid,
            reason=f"stale; recovery {self.worker_id} attempt {action.attempt}",
        )
        began = time.perf_counter()
        try:
            result = await self.backend.respawn(target)
        except WorkerAlive as exc:
            self.stats.count("respawn_not_needed")
            self.tracker.alive_again(action.key, time.time())
            log.warning("%s/%s is alive locally (%s): not respawned", kind, worker_id, exc)
            await self._close_attempt(
                action.key, Outcome.FAILED, detail=f"not needed: {exc}"[:1024], only=record
            )
            return
        except RespawnFailed as exc:
            self.stats.record((time.perf_counter() - began) * 1000, ok=False)
            self.tracker.respawn_failed(action.key, time.time())
            if isinstance(exc, WorkerMisconfigured):  # escalate now, with the cause
                self.tracker.give_up(action.key, time.time())
            log.warning("respawn of %s/%s failed: %s", kind, worker_id, exc)
            await self._close_attempt(
                action.key, Outcome.FAILED, detail=str(exc)[:1024], only=record
            )
            return
        self.stats.record((time.perf_counter() - began) * 1000)
        self.tracker.respawned(action.key, result.new_generation)
        await self._update_attempt(
            action.key,
            record,
            outcome=Outcome.RESPAWNED.value,
            respawned_ms=now_ms(),
            new_generation=result.new_generation,
            detail=result.detail[:1024],
        )

    async def _update_attempt(
        self, key: WorkerKey, record: RecoveryAttempt, **changes: Any
    ) -> None:
        """Apply ``changes`` to the open attempt ``record`` of ``key`` (CAS on its revision)."""
        async with self._kv_lock:
            current = self._open.get(key)
            if current is None or current[0].key != record.key:
                return
            old, revision = current
            final = (Outcome.RECOVERED, Outcome.FAILED, Outcome.GAVE_UP)
            if changes.get("outcome") == Outcome.RESPAWNED.value and old.outcome in final:
                changes.pop("outcome")  # its heartbeat (or the deadline) came first
                changes.pop("detail", None)
            new = replace(old, **changes)
            try:
                revision = await self._attempts.put(new.key, new, last=revision)
            except Exception as exc:
                log.warning("cannot update %s: %s", new.key, exc)
                return
            self._open[key] = (new, revision)

    async def _close_attempt(
        self,
        key: WorkerKey,
        outcome: Outcome,
        *,
        detail: str,
        only: RecoveryAttempt | None = None,
        **changes: Any,
    ) -> None:
        current = self._open.get(key)
        if current is None or (only is not None and current[0].key != only.key):
            return
        record = current[0]
        if outcome != Outcome.GAVE_UP and record.outcome not in (
            Outcome.PENDING,
            Outcome.RESPAWNED,
        ):
            return
        await self._update_attempt(key, record, outcome=outcome.value, detail=detail, **changes)

    async def _alert(
        self, severity: Severity, code: str, action: Action, summary: str, details: dict[str, Any]
    ) -> None:
        kind, worker_id = action.key
        alert = sign_alert(
            self.identity,
            alert_id=uuid.uuid4().hex,
            severity=severity,
            code=code,
            subject_kind=kind,
            subject_id=worker_id,
            summary=summary,
            ts_ms=now_ms(),
            source_kind=self.kind,
            source_id=self.worker_id,
            details={"generation": action.generation, **details},
        )
        await self.client.publish(self.subjects.alert(severity.value), alert.encode())

    # ---------------------------------------------------------------- history
    async def _history(self, query: HistoryQuery) -> HistoryReply:
        return HistoryReply(attempts=tuple(await read_history(self.kv, query)))

    def workers_view(self) -> list[dict[str, object]]:
        return [s.as_dict() for s in self.tracker.workers.values()]


def _history_query(data: bytes) -> HistoryQuery:
    """The request of ``history``; an empty one asks for the newest attempts of every worker."""
    return HistoryQuery.decode(data) if data else HistoryQuery()


async def read_history(kv: Any, query: HistoryQuery) -> list[RecoveryAttempt]:
    """Attempts in the bucket matching ``query``, newest first, at most ``query.limit``."""
    pattern = ".".join([query.kind or "*", query.worker_id or "*", "*", "*"])
    # key listing and gets, no watch: a watch is a consumer, which no role but
    # admin may create (bus/tail.py)
    found: list[RecoveryAttempt] = []
    for key in await subject_keys(kv, pattern):
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # deleted or expired meanwhile
            continue
        if entry.value:
            with contextlib.suppress(CodecError):
                found.append(RecoveryAttempt.decode(entry.value))
    found.sort(key=lambda a: (a.requested_ms, a.attempt), reverse=True)
    return found[: query.limit]
