"""Wire messages of the recovery worker and the local supervisor's control endpoint.

* ``RecoveryAttempt`` — one respawn attempt, the value of a key in the
  ``{prefix}_recovery`` KV bucket (key ``{kind}.{worker_id}.{dead_generation}.{attempt}``)
  and an element of a history reply.
* ``HistoryQuery`` / ``HistoryReply`` — request/reply on ``{prefix}.recovery.history``.
* ``RestartRequest`` / ``RestartReply`` — request/reply on
  ``{prefix}.supervisor.{name}.restart``: the recovery worker asks the local
  supervisor that runs a worker to (kill and) respawn it.

Times are Unix milliseconds; 0 means "not yet / unknown".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from schemas.codec import Limits
from schemas.messages import WireMessage, _bool, _enum, _header, _int, _list, _str

MAX_HISTORY = 500
#: A history reply carries up to MAX_HISTORY attempt maps.
HISTORY_LIMITS = Limits(max_bytes=1024 * 1024, max_array=MAX_HISTORY)


class Outcome(enum.StrEnum):
    PENDING = "pending"  # claimed, backend asked
    RESPAWNED = "respawned"  # the backend says it respawned; no heartbeat yet
    RECOVERED = "recovered"  # a heartbeat of a newer generation arrived
    FAILED = "failed"  # the backend failed, or no new heartbeat within the grace
    GAVE_UP = "gave_up"  # the policy is exhausted; escalated with a critical alert


class RestartCode(enum.StrEnum):
    RESTARTED = "RESTARTED"  # killed (if still running) and spawned again
    ALREADY_NEWER = "ALREADY_NEWER"  # a newer generation than the dead one already runs
    UNKNOWN_WORKER = "UNKNOWN_WORKER"
    STOPPING = "STOPPING"  # the supervisor is shutting down
    SPAWN_FAILED = "SPAWN_FAILED"
    ALIVE = "ALIVE"  # its local liveness file is fresh: not killed
    CONFIG_EXIT = "CONFIG_EXIT"  # it exited 78 (bad configuration): not restarted


@dataclass(frozen=True)
class RecoveryAttempt(WireMessage):
    """One respawn attempt of one worker, as kept in the history bucket."""

    kind: str
    worker_id: str
    attempt: int
    dead_generation: int
    outcome: str
    backend: str
    recovery_id: str
    last_seen_ms: int
    detected_ms: int
    requested_ms: int
    respawned_ms: int = 0
    first_heartbeat_ms: int = 0
    new_generation: int = 0
    detail: str = ""

    TYPE: ClassVar[str] = "recovery_attempt"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "kind",
        "worker_id",
        "attempt",
        "dead_generation",
        "outcome",
        "backend",
        "recovery_id",
        "last_seen_ms",
        "detected_ms",
        "requested_ms",
        "respawned_ms",
        "first_heartbeat_ms",
        "new_generation",
        "detail",
    )

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.worker_id}.{self.dead_generation}.{self.attempt}"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": 1, **{f: getattr(self, f) for f in self.FIELDS[2:]}}

    @classmethod
    def from_wire(cls, obj: Any) -> RecoveryAttempt:
        obj = _header(obj, cls.TYPE)
        return cls(
            kind=_str(obj, "kind", 32),
            worker_id=_str(obj, "worker_id", 64),
            attempt=_int(obj, "attempt", lo=1),
            dead_generation=_int(obj, "dead_generation"),
            outcome=_enum(obj, "outcome", Outcome).value,
            backend=_str(obj, "backend", 32),
            recovery_id=_str(obj, "recovery_id", 64),
            last_seen_ms=_int(obj, "last_seen_ms"),
            detected_ms=_int(obj, "detected_ms"),
            requested_ms=_int(obj, "requested_ms"),
            respawned_ms=_int(obj, "respawned_ms"),
            first_heartbeat_ms=_int(obj, "first_heartbeat_ms"),
            new_generation=_int(obj, "new_generation"),
            detail=_str(obj, "detail", 1024, min_len=0),
        )

    def as_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.FIELDS[2:]}
        out["detection_ms"] = self.detected_ms - self.last_seen_ms
        return out


@dataclass(frozen=True)
class HistoryQuery(WireMessage):
    """Ask for recent attempts, newest first; empty kind/worker_id match all."""

    kind: str = ""
    worker_id: str = ""
    limit: int = 100

    TYPE: ClassVar[str] = "recovery_history_query"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "kind", "worker_id", "limit")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": 1,
            "kind": self.kind,
            "worker_id": self.worker_id,
            "limit": self.limit,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> HistoryQuery:
        obj = _header(obj, cls.TYPE)
        return cls(
            kind=_str(obj, "kind", 32, min_len=0),
            worker_id=_str(obj, "worker_id", 64, min_len=0),
            limit=_int(obj, "limit", lo=1, hi=MAX_HISTORY),
        )


@dataclass(frozen=True)
class HistoryReply(WireMessage):
    """Attempts matching a HistoryQuery, newest first (by requested_ms)."""

    attempts: tuple[RecoveryAttempt, ...]

    TYPE: ClassVar[str] = "recovery_history"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "attempts")
    LIMITS: ClassVar[Limits] = HISTORY_LIMITS

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": 1, "attempts": [a.to_wire() for a in self.attempts]}

    @classmethod
    def from_wire(cls, obj: Any) -> HistoryReply:
        obj = _header(obj, cls.TYPE)
        return cls(
            attempts=tuple(
                RecoveryAttempt.from_wire(a) for a in _list(obj, "attempts", MAX_HISTORY)
            )
        )


@dataclass(frozen=True)
class RestartRequest(WireMessage):
    """Ask a supervisor to respawn ``kind``/``worker_id`` whose ``dead_generation`` went
    silent; a still-running (hung) process of that generation is killed first."""

    kind: str
    worker_id: str
    dead_generation: int
    reason: str = ""

    TYPE: ClassVar[str] = "restart_request"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "kind",
        "worker_id",
        "dead_generation",
        "reason",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": 1,
            "kind": self.kind,
            "worker_id": self.worker_id,
            "dead_generation": self.dead_generation,
            "reason": self.reason,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> RestartRequest:
        obj = _header(obj, cls.TYPE)
        return cls(
            kind=_str(obj, "kind", 32),
            worker_id=_str(obj, "worker_id", 64),
            dead_generation=_int(obj, "dead_generation"),
            reason=_str(obj, "reason", 256, min_len=0),
        )


@dataclass(frozen=True)
class RestartReply(WireMessage):
    ok: bool
    code: str
    kind: str
    worker_id: str
    pid: int = 0
    generation: int = 0
    message: str = ""

    TYPE: ClassVar[str] = "restart_reply"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "ok",
        "code",
        "kind",
        "worker_id",
        "pid",
        "generation",
        "message",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": 1,
            "ok": self.ok,
            "code": self.code,
            "kind": self.kind,
            "worker_id": self.worker_id,
            "pid": self.pid,
            "generation": self.generation,
            "message": self.message,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> RestartReply:
        obj = _header(obj, cls.TYPE)
        return cls(
            ok=_bool(obj, "ok"),
            code=_enum(obj, "code", RestartCode).value,
            kind=_str(obj, "kind", 32),
            worker_id=_str(obj, "worker_id", 64),
            pid=_int(obj, "pid"),
            generation=_int(obj, "generation"),
            message=_str(obj, "message", 1024, min_len=0),
        )


RECOVERY_MESSAGES: tuple[type[WireMessage], ...] = (
    RecoveryAttempt,
    HistoryQuery,
    HistoryReply,
    RestartRequest,
    RestartReply,
)
