"""Liveness tracking and the retry policy of the recovery worker — pure logic, no I/O.

The tracker is fed heartbeats (``observe``) and asked, on every tick, what to
do (``due``). Time is a float in seconds passed in by the caller (the worker
uses wall-clock seconds, tests a fake clock); jitter comes from an injectable
``rand() -> [0, 1)``.

Per worker ``(kind, worker_id)``:

* **generation** — the highest generation seen. A heartbeat of a lower
  generation is a zombie's and is ignored (``Seen.ZOMBIE``): a zombie and its
  replacement are never both counted. A respawn reported by a backend with a
  known new generation raises the floor at once.
* **stale** — no heartbeat of the current generation for more than
  ``missed`` heartbeat intervals (the interval the worker announces).
* **retry policy** — attempt 1 is immediate; attempt n+1 is due
  ``backoff(n)`` after attempt n failed: ``base × factor^(n-1)`` capped at
  ``max_backoff_s``, times a jitter factor in ``[1 - jitter, 1 + jitter]``.
  An attempt fails when no heartbeat of a newer generation arrives within
  ``startup_grace_s`` (or the backend reports failure). After
  ``max_retries`` attempts without a recovery that lasted ``reset_after_s``,
  the tracker gives up as soon as the last one fails (``Action.GIVE_UP``:
  escalate). A worker that comes back (new generation) after a give-up is
  tracked afresh.
* a worker that says it is stopping (health ShuttingDown) stopped on purpose
  and is not respawned.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

from schemas.errors import ConfigError
from schemas.messages import Health, Heartbeat

WorkerKey = tuple[str, str]  # (kind, worker_id)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_s: float = 0.5
    factor: float = 2.0
    max_backoff_s: float = 30.0
    jitter: float = 0.2
    startup_grace_s: float = 10.0
    reset_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 1:
            raise ConfigError("max retries must be at least 1")
        if self.base_s < 0 or self.max_backoff_s < self.base_s or self.factor < 1:
            raise ConfigError("backoff needs 0 <= base <= max and factor >= 1")
        if not 0 <= self.jitter < 1:
            raise ConfigError("jitter must be in [0, 1)")
        if self.startup_grace_s <= 0 or self.reset_after_s < 0:
            raise ConfigError("startup grace must be positive, reset-after non-negative")

    def backoff(self, failed_attempts: int, rand: float) -> float:
        """Delay before the next attempt after ``failed_attempts`` (>= 1) failed ones."""
        if failed_attempts < 1:
            return 0.0
        raw = min(self.max_backoff_s, self.base_s * self.factor ** (failed_attempts - 1))
        return raw * (1.0 + self.jitter * (2.0 * rand - 1.0))


_POLICY_KEYS = {f.name: f.type for f in fields(RetryPolicy)}


def parse_policy_override(text: str, base: RetryPolicy) -> tuple[str, RetryPolicy]:
    """``KIND[/ID]:key=value[,key=value...]`` -> (``KIND`` or ``KIND/ID``, policy).

    Keys are RetryPolicy fields (max_retries, base_s, factor, max_backoff_s,
    jitter, startup_grace_s, reset_after_s); unspecified ones come from ``base``.
    """
    target, sep, spec = text.partition(":")
    if not sep or not target or not spec:
        raise ConfigError(f"policy override {text!r} must look like KIND[/ID]:key=value,...")
    changes: dict[str, float | int] = {}
    for item in spec.split(","):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in _POLICY_KEYS:
            raise ConfigError(
                f"policy override {text!r}: unknown setting {key!r} "
                f"(known: {', '.join(_POLICY_KEYS)})"
            )
        try:
            changes[key] = int(raw) if key == "max_retries" else float(raw)
            if not math.isfinite(changes[key]):
                raise ValueError
        except ValueError:
            raise ConfigError(f"policy override {text!r}: {key} needs a number") from None
    return target, replace(base, **changes)  # type: ignore[arg-type]


#: The mass-stale guard applies from this many workers going stale in one tick.
MASS_STALE_MIN = 3


class Status(enum.StrEnum):
    ALIVE = "alive"
    STALE = "stale"  # detected, an attempt is due (now or after backoff)
    RECOVERING = "recovering"  # an attempt was made; waiting for a newer generation
    GAVE_UP = "gave_up"
    STOPPED = "stopped"  # said ShuttingDown: stopped on purpose


class Seen(enum.StrEnum):
    NEW = "new"  # first heartbeat of this worker
    OK = "ok"
    NEW_GENERATION = "new_generation"
    RECOVERED = "recovered"  # new generation while an attempt was pending
    ZOMBIE = "zombie"  # older generation than one already seen: ignored
    STOPPING = "stopping"


class ActionKind(enum.StrEnum):
    STALE = "stale"  # just detected: alert (high)
    RESPAWN = "respawn"  # ask the backend to respawn
    GIVE_UP = "give_up"  # policy exhausted: escalate (critical)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    key: WorkerKey
    attempt: int  # the attempt number this action is about (0 for STALE)
    generation: int  # the dead generation
    last_seen: float
    host: str
    pid: int


@dataclass
class WorkerState:
    kind: str
    worker_id: str
    generation: int
    instance: str
    seq: int
    interval_s: float
    last_seen: float
    host: str
    pid: int
    status: Status = Status.ALIVE
    alive_since: float = 0.0
    attempts: int = 0  # attempts since the last lasting recovery
    next_attempt_at: float = 0.0
    attempt_deadline: float = 0.0  # the pending attempt fails if nothing newer by then
    min_generation: int = 0  # heartbeats below this are zombies
    stale_since: float = 0.0
    history: list[str] = field(default_factory=list)

    @property
    def key(self) -> WorkerKey:
        return (self.kind, self.worker_id)

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "worker_id": self.worker_id,
            "generation": self.generation,
            "status": self.status.value,
            "attempts": self.attempts,
            "host": self.host,
            "pid": self.pid,
            "interval_s": self.interval_s,
            "last_seen": self.last_seen,
        }


class Tracker:
    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        missed: int = 3,
        rand: Callable[[], float] = random.random,
        overrides: Mapping[str, RetryPolicy] | None = None,
    ) -> None:
        if missed < 1:
            raise ConfigError("missed heartbeats before stale must be at least 1")
        self.policy = policy or RetryPolicy()
        self.overrides = dict(overrides or {})
        self.missed = missed
        self.rand = rand
        self.workers: dict[WorkerKey, WorkerState] = {}
        self.blind_at = float("-inf")  # when the mass-stale guard last held everyone
        self.blind_suspected = 0

    def policy_for(self, key: WorkerKey) -> RetryPolicy:
        """The policy of ``kind/id`` if given, else of ``kind``, else the default."""
        kind, worker_id = key
        return self.overrides.get(f"{kind}/{worker_id}") or self.overrides.get(kind) or self.policy

    def stale_after(self, state: WorkerState) -> float:
        return state.last_seen + self.missed * state.interval_s

    # ---------------------------------------------------------------- input
    def observe(self, hb: Heartbeat, now: float) -> Seen:
        key = (hb.kind, hb.worker_id)
        state = self.workers.get(key)
        if state is None:
            self.workers[key] = WorkerState(
                kind=hb.kind,
                worker_id=hb.worker_id,
                generation=hb.generation,
                instance=hb.instance,
                seq=hb.seq,
                interval_s=hb.interval_s,
                last_seen=now,
                host=hb.host,
                pid=hb.pid,
                alive_since=now,
                status=Status.STOPPED if hb.health == Health.SHUTTING_DOWN else Status.ALIVE,
            )
            return Seen.STOPPING if hb.health == Health.SHUTTING_DOWN else Seen.NEW
        if hb.generation < max(state.generation, state.min_generation):
            return Seen.ZOMBIE
        newer = hb.generation > state.generation or (
            hb.generation == state.generation
            and hb.instance != state.instance
            and state.status in (Status.STALE, Status.RECOVERING, Status.GAVE_UP)
        )
        if (
            not newer
            and state.status in (Status.STALE, Status.RECOVERING)
            and (now <= state.stale_since or hb.seq <= state.seq)
        ):
            # a backlogged heartbeat of the dead generation, stamped before we judged it
            # stale (or a repeat): it must not cancel the pending recovery
            return Seen.OK
        was = state.status
        state.generation, state.instance, state.seq = hb.generation, hb.instance, hb.seq
        state.interval_s, state.host, state.pid = hb.interval_s, hb.host, hb.pid
        state.last_seen = max(state.last_seen, now)
        if hb.health == Health.SHUTTING_DOWN:
            state.status = Status.STOPPED
            return Seen.STOPPING
        state.status = Status.ALIVE
        if newer or was == Status.STOPPED:
            state.alive_since = now
        if was == Status.GAVE_UP and newer:
            state.attempts = 0  # an operator brought it back: track it afresh
        if not newer:
            return Seen.OK  # includes a hung process of the same generation waking up
        return Seen.RECOVERED if was in (Status.STALE, Status.RECOVERING) else Seen.NEW_GENERATION

    def respawned(self, key: WorkerKey, new_generation: int) -> None:
        """The backend respawned the worker as ``new_generation`` (0: unknown)."""
        state = self.workers.get(key)
        if state is not None and new_generation > 0:
            state.min_generation = max(state.min_generation, new_generation)

    def respawn_failed(self, key: WorkerKey, now: float) -> None:
        """The backend could not respawn: the pending attempt failed now."""
        state = self.workers.get(key)
        if state is not None and state.status == Status.RECOVERING:
            state.attempt_deadline = now

    def alive_again(self, key: WorkerKey, now: float) -> None:
        """The backend found the worker alive (its silence was the bus's): back to
        ALIVE with a fresh grace, and the attempt does not count."""
        state = self.workers.get(key)
        if state is not None and state.status == Status.RECOVERING:
            state.status = Status.ALIVE
            state.attempts = max(0, state.attempts - 1)
            state.last_seen = max(state.last_seen, now)

    def give_up(self, key: WorkerKey, now: float) -> None:
        """Retrying cannot help (e.g. a configuration error): give up at the next tick."""
        state = self.workers.get(key)
        if state is not None and state.status == Status.RECOVERING:
            state.attempts = max(state.attempts, self.policy_for(key).max_retries)
            state.attempt_deadline = now

    def forget(self, key: WorkerKey) -> None:
        self.workers.pop(key, None)

    # ---------------------------------------------------------------- ticks
    def hold(self, now: float) -> None:
        """We were blind (this process stalled, or the bus did): everything alive
        gets a fresh grace from ``now`` instead of being judged on stale evidence."""
        for state in self.workers.values():
            if state.status == Status.ALIVE:
                state.last_seen = max(state.last_seen, now)

    def due(self, now: float) -> list[Action]:
        """Actions due at ``now``.

        Mass-stale guard: when at least MASS_STALE_MIN workers and more than half
        of those alive would go stale in one tick, the likelier cause is that we
        (or the bus) stalled, not that they all died: they get one more grace
        period (``blind_suspected`` counts it). If they are still silent after it,
        the next detection proceeds — a real mass failure is respawned one grace
        later, a stall costs no restarts at all.
        """
        alive = [s for s in self.workers.values() if s.status == Status.ALIVE]
        would = [s for s in alive if now > self.stale_after(s)]
        if (
            len(would) >= MASS_STALE_MIN
            and 2 * len(would) > len(alive)
            and now - self.blind_at > 2 * max(self.stale_after(s) - s.last_seen for s in would)
        ):
            self.blind_at = now
            self.blind_suspected += 1
            for state in would:
                state.last_seen = now
        actions: list[Action] = []
        for state in self.workers.values():
            actions.extend(self._step(state, now))
        return actions

    def _action(self, kind: ActionKind, state: WorkerState, attempt: int) -> Action:
        # A respawned generation that stayed silent through its grace is dead too: the next
        # attempt names it, so the backend replaces it (kills it if it hangs at startup).
        generation = max(state.generation, state.min_generation)
        return Action(kind, state.key, attempt, generation, state.last_seen, state.host, state.pid)

    def _step(self, state: WorkerState, now: float) -> list[Action]:
        out: list[Action] = []
        policy = self.policy_for(state.key)
        if state.status == Status.ALIVE:
            if now <= self.stale_after(state):
                return out
            if state.last_seen - state.alive_since >= policy.reset_after_s:
                state.attempts = 0  # it had stayed up long enough: a fresh failure
            state.status = Status.STALE
            state.stale_since = now
            state.next_attempt_at = now
            out.append(self._action(ActionKind.STALE, state, 0))
        if state.status == Status.RECOVERING:
            if now < state.attempt_deadline:
                return out
            if state.attempts >= policy.max_retries:  # the last attempt failed
                state.status = Status.GAVE_UP
                out.append(self._action(ActionKind.GIVE_UP, state, state.attempts))
                return out
            state.status = Status.STALE
            state.next_attempt_at = max(
                now, state.attempt_deadline + policy.backoff(state.attempts, self.rand())
            )
        if state.status == Status.STALE and now >= state.next_attempt_at:
            if state.attempts >= policy.max_retries:
                state.status = Status.GAVE_UP
                out.append(self._action(ActionKind.GIVE_UP, state, state.attempts))
                return out
            state.attempts += 1
            state.status = Status.RECOVERING
            state.attempt_deadline = now + policy.startup_grace_s
            out.append(self._action(ActionKind.RESPAWN, state, state.attempts))
        return out
