"""Tracker tables: stale after N missed, zombies ignored, backoff with bounded jitter, give-up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from schemas.errors import ConfigError
from schemas.messages import Heartbeat
from workers.recovery.staleness import (
    ActionKind,
    RetryPolicy,
    Seen,
    Status,
    Tracker,
    parse_policy_override,
)

KEY = ("verifier", "v1")


def hb(
    gen: int = 1,
    seq: int = 1,
    *,
    interval: float = 1.0,
    health: str = "Healthy",
    instance: str | None = None,
) -> Heartbeat:
    return Heartbeat(
        kind="verifier",
        worker_id="v1",
        instance=instance or f"i{gen}",
        seq=seq,
        ts_ms=0,
        interval_s=interval,
        health=health,
        pid=100 + gen,
        host="h",
        generation=gen,
    )


def fixed(value: float) -> Iterator[float]:
    while True:
        yield value


def tracker(missed: int = 3, rand: float = 0.5, **policy: float) -> Tracker:
    gen = fixed(rand)
    return Tracker(RetryPolicy(**policy), missed=missed, rand=lambda: next(gen))  # type: ignore[arg-type]


# ---------------------------------------------------------------- stale after N missed
@pytest.mark.parametrize(
    ("missed", "interval", "quiet", "stale"),
    [
        (3, 1.0, 2.9, False),
        (3, 1.0, 3.0, False),  # exactly N intervals: not yet
        (3, 1.0, 3.01, True),
        (1, 1.0, 1.01, True),
        (5, 0.2, 0.99, False),
        (5, 0.2, 1.01, True),
        (3, 5.0, 14.9, False),
        (3, 5.0, 15.1, True),
    ],
)
def test_stale_after_n_missed_intervals(
    missed: int, interval: float, quiet: float, stale: bool
) -> None:
    t = tracker(missed=missed)
    assert t.observe(hb(interval=interval), 100.0) == Seen.NEW
    actions = t.due(100.0 + quiet)
    kinds = [a.kind for a in actions]
    if stale:
        assert kinds == [ActionKind.STALE, ActionKind.RESPAWN]  # attempt 1 is immediate
        assert actions[1].attempt == 1 and actions[1].generation == 1
        assert t.workers[KEY].status == Status.RECOVERING
    else:
        assert kinds == []
        assert t.workers[KEY].status == Status.ALIVE


def test_heartbeats_keep_it_alive() -> None:
    t = tracker()
    for i in range(20):
        t.observe(hb(seq=i + 1), float(i))
        assert t.due(float(i) + 0.5) == []


# ---------------------------------------------------------------- generations
@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        ([1, 1], [Seen.NEW, Seen.OK]),
        ([1, 2], [Seen.NEW, Seen.NEW_GENERATION]),
        ([2, 1], [Seen.NEW, Seen.ZOMBIE]),
        ([1, 3, 2], [Seen.NEW, Seen.NEW_GENERATION, Seen.ZOMBIE]),
        ([5, 5, 4, 6, 5], [Seen.NEW, Seen.OK, Seen.ZOMBIE, Seen.NEW_GENERATION, Seen.ZOMBIE]),
    ],
)
def test_older_generations_are_zombies(sequence: list[int], expected: list[Seen]) -> None:
    t = tracker()
    got = [t.observe(hb(gen, seq=i + 1), float(i)) for i, gen in enumerate(sequence)]
    assert got == expected
    assert t.workers[KEY].generation == max(sequence)


def test_zombie_heartbeats_do_not_keep_a_dead_worker_alive() -> None:
    t = tracker()
    t.observe(hb(1), 0.0)
    t.observe(hb(2), 1.0)  # the replacement
    for i in range(10):  # the zombie keeps talking, the replacement is silent
        assert t.observe(hb(1, seq=i + 2), 2.0 + i) == Seen.ZOMBIE
    kinds = [a.kind for a in t.due(5.0)]
    assert ActionKind.STALE in kinds


def test_respawned_generation_raises_the_floor() -> None:
    t = tracker()
    t.observe(hb(1), 0.0)
    assert [a.kind for a in t.due(4.0)] == [ActionKind.STALE, ActionKind.RESPAWN]
    t.respawned(KEY, 7)
    assert t.observe(hb(1, seq=2), 4.1) == Seen.ZOMBIE  # the hung process woke up
    assert t.workers[KEY].status == Status.RECOVERING
    assert t.observe(hb(7), 4.5) == Seen.RECOVERED
    assert t.workers[KEY].status == Status.ALIVE


def test_a_silent_respawned_generation_is_named_dead_by_the_next_attempt() -> None:
    t = tracker(startup_grace_s=2.0)
    t.observe(hb(1), 0.0)
    first = [a for a in t.due(3.5) if a.kind == ActionKind.RESPAWN]
    assert [(a.attempt, a.generation) for a in first] == [(1, 1)]
    t.respawned(KEY, 7)  # generation 7 was spawned but never said a word
    second = [a for a in t.due(6.1) if a.kind == ActionKind.RESPAWN]
    assert [(a.attempt, a.generation) for a in second] == [(2, 7)]


def test_shutting_down_is_not_respawned() -> None:
    t = tracker()
    t.observe(hb(1), 0.0)
    assert t.observe(hb(1, seq=2, health="ShuttingDown"), 1.0) == Seen.STOPPING
    assert t.due(100.0) == []
    assert t.workers[KEY].status == Status.STOPPED
    assert t.observe(hb(2), 101.0) == Seen.NEW_GENERATION  # started again by someone
    assert t.workers[KEY].status == Status.ALIVE


# ---------------------------------------------------------------- backoff
@pytest.mark.parametrize(
    ("failed", "rand", "expected"),
    [
        (0, 0.5, 0.0),
        (1, 0.5, 0.5),
        (2, 0.5, 1.0),
        (3, 0.5, 2.0),
        (4, 0.5, 4.0),
        (10, 0.5, 30.0),  # capped
        (1, 0.0, 0.4),  # jitter -20 %
        (1, 0.999999, 0.6),  # jitter +20 % (bound)
        (10, 0.0, 24.0),
    ],
)
def test_backoff_grows_with_bounded_jitter(failed: int, rand: float, expected: float) -> None:
    assert RetryPolicy().backoff(failed, rand) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("failed", range(1, 12))
def test_jitter_stays_in_bounds(failed: int) -> None:
    policy = RetryPolicy(jitter=0.3)
    raw = min(policy.max_backoff_s, policy.base_s * policy.factor ** (failed - 1))
    values = [policy.backoff(failed, r / 100) for r in range(100)]
    assert min(values) >= raw * 0.7 - 1e-9 and max(values) <= raw * 1.3 + 1e-9
    assert len(set(values)) > 50  # jitter really varies


@pytest.mark.parametrize(
    "bad",
    [
        {"max_retries": 0},
        {"base_s": -1.0},
        {"factor": 0.5},
        {"jitter": 1.0},
        {"startup_grace_s": 0.0},
        {"max_backoff_s": 0.1, "base_s": 1.0},
    ],
)
def test_bad_policy_is_a_config_error(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the retry schedule
def run_until_give_up(
    t: Tracker, start: float, step: float = 0.01, limit: float = 500.0
) -> list[tuple[float, ActionKind, int]]:
    events: list[tuple[float, ActionKind, int]] = []
    for i in range(int((limit - start) / step)):
        now = start + i * step
        for action in t.due(now):
            events.append((round(now, 2), action.kind, action.attempt))
            if action.kind == ActionKind.GIVE_UP:
                return events
    return events


@pytest.mark.parametrize(
    ("max_retries", "grace", "times"),
    [
        # attempt n+1 at: failure (attempt time + grace) + backoff(n) with rand 0.5 (no jitter)
        (1, 1.0, [3.01, 4.01]),
        (3, 1.0, [3.01, 4.51, 6.51, 7.51]),
        (4, 2.0, [3.01, 5.51, 8.51, 12.51, 14.51]),
    ],
)
def test_crash_loop_is_bounded_then_given_up(
    max_retries: int, grace: float, times: list[float]
) -> None:
    t = tracker(max_retries=max_retries, startup_grace_s=grace)
    t.observe(hb(1), 0.0)
    events = run_until_give_up(t, 0.0)
    respawns = [e for e in events if e[1] == ActionKind.RESPAWN]
    assert [e[2] for e in respawns] == list(range(1, max_retries + 1))
    assert events[-1][1] == ActionKind.GIVE_UP and events[-1][2] == max_retries
    assert [e[0] for e in events if e[1] != ActionKind.STALE] == pytest.approx(times, abs=0.02)
    assert t.workers[KEY].status == Status.GAVE_UP
    assert t.due(1000.0) == []  # gave up: nothing more


def test_backend_failure_fails_the_attempt_at_once() -> None:
    t = tracker(startup_grace_s=100.0)
    t.observe(hb(1), 0.0)
    assert [a.kind for a in t.due(3.5)] == [ActionKind.STALE, ActionKind.RESPAWN]
    t.respawn_failed(KEY, 3.6)
    assert t.due(3.7) == []  # backoff(1) = 0.5 s
    actions = t.due(4.11)
    assert [(a.kind, a.attempt) for a in actions] == [(ActionKind.RESPAWN, 2)]


def test_short_recoveries_do_not_reset_the_budget() -> None:
    """A worker that dies soon after each respawn exhausts the policy."""
    t = tracker(max_retries=2, reset_after_s=60.0, startup_grace_s=5.0)
    now, gen = 0.0, 1
    t.observe(hb(gen), now)
    kinds: list[ActionKind] = []
    for _ in range(4):
        now += 3.5
        kinds += [a.kind for a in t.due(now)]
        if kinds[-1] == ActionKind.GIVE_UP:
            break
        gen += 1
        assert t.observe(hb(gen), now + 0.5) == Seen.RECOVERED
        now += 0.5
    assert kinds == [
        ActionKind.STALE,
        ActionKind.RESPAWN,
        ActionKind.STALE,
        ActionKind.RESPAWN,
        ActionKind.STALE,
        ActionKind.GIVE_UP,
    ]


def test_a_lasting_recovery_resets_the_budget() -> None:
    t = tracker(max_retries=1, reset_after_s=10.0)
    t.observe(hb(1), 0.0)
    t.due(3.5)
    t.observe(hb(2), 4.0)
    for i in range(15):  # up for 15 s > reset_after_s
        t.observe(hb(2, seq=i + 2), 5.0 + i)
    actions = t.due(25.0)
    assert [(a.kind, a.attempt) for a in actions] == [
        (ActionKind.STALE, 0),
        (ActionKind.RESPAWN, 1),
    ]


def test_new_generation_after_give_up_is_tracked_afresh() -> None:
    t = tracker(max_retries=1, startup_grace_s=1.0)
    t.observe(hb(1), 0.0)
    run_until_give_up(t, 0.0)
    assert t.observe(hb(9), 50.0) == Seen.NEW_GENERATION
    assert t.workers[KEY].status == Status.ALIVE and t.workers[KEY].attempts == 0


def test_workers_are_independent() -> None:
    t = tracker()
    other = Heartbeat(
        kind="tally",
        worker_id="t1",
        instance="x",
        seq=1,
        ts_ms=0,
        interval_s=10.0,
        health="Healthy",
        pid=1,
        host="h",
        generation=1,
    )
    t.observe(hb(1), 0.0)
    t.observe(other, 0.0)
    assert {a.key for a in t.due(4.0)} == {KEY}


@pytest.mark.parametrize("missed", [0, -1])
def test_missed_must_be_positive(missed: int) -> None:
    with pytest.raises(ConfigError):
        Tracker(missed=missed)


# ---------------------------------------------------------------- per-worker policies
@pytest.mark.parametrize(
    ("text", "target", "changed"),
    [
        ("tally:max_retries=10", "tally", {"max_retries": 10}),
        ("verifier/v1:base_s=2,jitter=0", "verifier/v1", {"base_s": 2.0, "jitter": 0.0}),
        (
            "keys:startup_grace_s=20, reset_after_s=5",
            "keys",
            {"startup_grace_s": 20.0, "reset_after_s": 5.0},
        ),
    ],
)
def test_parse_policy_override(text: str, target: str, changed: dict[str, float]) -> None:
    base = RetryPolicy()
    got_target, policy = parse_policy_override(text, base)
    assert got_target == target
    for name in (
        "max_retries",
        "base_s",
        "factor",
        "max_backoff_s",
        "jitter",
        "startup_grace_s",
        "reset_after_s",
    ):
        assert getattr(policy, name) == changed.get(name, getattr(base, name))


@pytest.mark.parametrize(
    "text",
    [
        "tally",
        "tally:",
        ":max_retries=1",
        "tally:max_retries",
        "tally:retries=3",
        "tally:max_retries=x",
        "tally:max_retries=0",
        "tally:jitter=1.5",
        "tally:base_s=nan",
        "tally:max_backoff_s=inf",
    ],
)
def test_bad_policy_override(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_policy_override(text, RetryPolicy())


@pytest.mark.parametrize(
    ("key", "max_retries"),
    [
        (("verifier", "v1"), 1),  # its own policy
        (("verifier", "v2"), 2),  # the kind's policy
        (("tally", "t1"), 3),  # the default
    ],
)
def test_policy_lookup_order(key: tuple[str, str], max_retries: int) -> None:
    t = Tracker(
        RetryPolicy(max_retries=3),
        overrides={
            "verifier": RetryPolicy(max_retries=2),
            "verifier/v1": RetryPolicy(max_retries=1),
        },
    )
    assert t.policy_for(key).max_retries == max_retries


def test_each_worker_is_bounded_by_its_own_policy() -> None:
    t = Tracker(
        RetryPolicy(max_retries=3, startup_grace_s=1.0),
        rand=lambda: 0.5,
        overrides={"verifier/v1": RetryPolicy(max_retries=1, startup_grace_s=1.0)},
    )
    other = Heartbeat(
        kind="verifier",
        worker_id="v2",
        instance="x",
        seq=1,
        ts_ms=0,
        interval_s=1.0,
        health="Healthy",
        pid=1,
        host="h",
        generation=1,
    )
    t.observe(hb(1), 0.0)
    t.observe(other, 0.0)
    respawns: dict[tuple[str, str], int] = {}
    for i in range(2000):
        for action in t.due(i * 0.01):
            if action.kind == ActionKind.RESPAWN:
                respawns[action.key] = respawns.get(action.key, 0) + 1
    assert respawns == {("verifier", "v1"): 1, ("verifier", "v2"): 3}
    assert t.workers[KEY].status == t.workers[("verifier", "v2")].status == Status.GAVE_UP


# ---------------------------------------------------------------- review findings
def _hb(kind: str, wid: str, gen: int, seq: int, interval: float = 1.0) -> Heartbeat:
    return Heartbeat(
        kind=kind,
        worker_id=wid,
        instance=f"i{gen}",
        seq=seq,
        ts_ms=0,
        interval_s=interval,
        health="Healthy",
        pid=gen,
        host="h",
        generation=gen,
    )


def test_a_backlogged_heartbeat_of_the_dead_generation_does_not_cancel_recovery() -> None:
    t = Tracker(missed=3)
    t.observe(_hb("verifier", "v1", 1000, 1), 0.0)
    for w in ("a", "b", "c"):  # others stay alive, so this is not a mass stall
        t.observe(_hb("tally", w, 1, 1), 0.0)
    for now in (1.0, 2.0, 3.0):
        for w in ("a", "b", "c"):
            t.observe(_hb("tally", w, 1, int(now) + 1), now)
    kinds = [a.kind.value for a in t.due(3.5)]
    assert kinds == ["stale", "respawn"]
    assert t.observe(_hb("verifier", "v1", 1000, 1), 0.2) == Seen.OK  # late, stamped before
    assert t.workers[("verifier", "v1")].status == Status.RECOVERING
    assert [a.kind.value for a in t.due(3.6)] == []  # no second respawn
    assert t.observe(_hb("verifier", "v1", 2000, 1), 4.0) == Seen.RECOVERED


def test_mass_stale_is_held_once_then_proceeds() -> None:
    t = Tracker(missed=3)
    for w in ("v1", "v2", "v3", "v4"):
        t.observe(_hb("verifier", w, 1, 1), 0.0)
    assert t.due(10.0) == []  # all four at once: a stalled bus is likelier
    assert t.blind_suspected == 1
    assert all(s.status == Status.ALIVE for s in t.workers.values())
    actions = t.due(13.5)  # still silent one grace later: a real mass failure
    assert sorted(a.kind.value for a in actions) == ["respawn"] * 4 + ["stale"] * 4


def test_mass_stale_held_and_heartbeats_resume_means_no_restart() -> None:
    t = Tracker(missed=3)
    for w in ("v1", "v2", "v3"):
        t.observe(_hb("verifier", w, 1, 1), 0.0)
    assert t.due(10.0) == []
    for w in ("v1", "v2", "v3"):
        t.observe(_hb("verifier", w, 1, 2), 10.5)
    assert t.due(13.0) == []


def test_hold_re_arms_alive_workers() -> None:
    t = Tracker(missed=3)
    t.observe(_hb("verifier", "v1", 1, 1), 0.0)
    t.hold(20.0)
    assert t.due(22.0) == []
    assert [a.kind.value for a in t.due(23.5)] == ["stale", "respawn"]
