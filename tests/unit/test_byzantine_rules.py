"""Table-driven tests of the vote ledger and the quarantine policy
(workers/anomaly/byzantine_rules.py)."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from schemas.signing import request_digest
from tests.factories import Scenario
from workers.anomaly.byzantine_rules import (
    Action,
    QuarantineMode,
    QuarantinePolicy,
    VoteLedger,
    decide_quarantine,
)

GOOD, BAD = "r-good", "r-bad"  # Scenario's requests: r-good VALID, r-bad INVALID


def decide_all(
    ledger: VoteLedger,
    sc: Scenario,
    ballot_id: str = "b1",
    decisions: tuple[str, str] = ("VALID", "INVALID"),
) -> list[tuple[int, str]]:
    out = []
    for raw, rid, decision in zip(sc.raws, (GOOD, BAD), decisions, strict=True):
        for d in ledger.add_decision(ballot_id, rid, request_digest(raw), decision):
            out.append(
                (
                    sc.verifiers.index(
                        next(v for v in sc.verifiers if v.public_key == d.verifier_key)
                    ),
                    d.request_id,
                )
            )
    return out


@pytest.mark.parametrize(
    ("liars", "votes_first"), [((), True), ((), False), ((3,), True), ((3,), False), ((2, 3), True)]
)
def test_disagreement_found_whether_vote_or_decision_comes_first(
    liars: tuple[int, ...], votes_first: bool
) -> None:
    sc = Scenario()
    ledger = VoteLedger()
    found: list[tuple[int, str]] = []
    votes = [sc.vote(i, lie=i in liars) for i in range(4)]
    if votes_first:
        for v in votes:
            assert ledger.add_vote(v) == ([], None)
        found = decide_all(ledger, sc)
    else:
        assert decide_all(ledger, sc) == []
        for i, v in enumerate(votes):
            disagreements, equivocation = ledger.add_vote(v)
            assert equivocation is None
            found += [(i, d.request_id) for d in disagreements]
    assert sorted(found) == sorted((i, rid) for i in liars for rid in (GOOD, BAD))


@pytest.mark.parametrize("decision", ["TIMEOUT", "NO_QUORUM"])
def test_undecided_outcomes_blame_nobody(decision: str) -> None:
    sc = Scenario()
    ledger = VoteLedger()
    ledger.add_vote(sc.vote(0, lie=True))
    assert decide_all(ledger, sc, decisions=(decision, decision)) == []


def test_a_decision_for_other_bytes_blames_nobody() -> None:
    sc = Scenario()
    ledger = VoteLedger()
    ledger.add_vote(sc.vote(0, lie=True))
    assert ledger.add_decision("b1", GOOD, b"\x00" * 32, "VALID") == []
    assert ledger.add_decision("b2", GOOD, request_digest(sc.raws[0]), "VALID") == []


def test_each_disagreement_is_reported_once() -> None:
    sc = Scenario()
    ledger = VoteLedger()
    ledger.add_vote(sc.vote(1, lie=True))
    assert len(decide_all(ledger, sc)) == 2
    assert decide_all(ledger, sc) == []
    assert ledger.add_vote(sc.vote(1, lie=True)) == ([], None)  # same verdicts: duplicate


@pytest.mark.parametrize(
    ("first_lies", "second_lies", "equivocates"),
    [(False, False, False), (True, True, False), (False, True, True), (True, False, True)],
)
def test_equivocation(first_lies: bool, second_lies: bool, equivocates: bool) -> None:
    sc = Scenario()
    ledger = VoteLedger()
    ledger.add_vote(sc.vote(2, lie=first_lies, ts_ms=1))
    _, ev = ledger.add_vote(sc.vote(2, lie=second_lies, ts_ms=2))
    assert (ev is not None) is equivocates
    if ev is not None:
        assert ev.verifier_key == sc.verifiers[2].public_key and ev.ballot_id == "b1"


def test_agreements_and_bounded_memory() -> None:
    sc = Scenario()
    ledger = VoteLedger(max_ballots=2)
    for i in range(4):
        ledger.add_vote(sc.vote(i, lie=i == 3))
    decide_all(ledger, sc)
    agree = ledger.agreements("b1", GOOD)
    assert agree == {v.public_key: i != 3 for i, v in enumerate(sc.verifiers)}
    assert ledger.agreements("b1", "unknown") == {}
    for b in ("b2", "b3"):
        ledger.add_vote(sc.vote(0, ballot=sc.ballot(b)))
    assert len(ledger) == 2
    assert ledger.agreements("b1", GOOD) == {}  # oldest ballot forgotten


Q = QuarantineMode


@pytest.mark.parametrize(
    ("mode", "active", "is_member", "now", "recent", "action", "why"),
    [
        (Q.OFF, 7, True, 1000.0, (), Action.IGNORE, "off"),
        (Q.ALERT_ONLY, 7, True, 1000.0, (), Action.ALERT, "alert-only"),
        (Q.QUARANTINE, 4, True, 1000.0, (), Action.QUARANTINE, "allows"),
        (Q.QUARANTINE, 3, True, 1000.0, (), Action.ALERT, "below the minimum"),
        (Q.QUARANTINE, 7, False, 1000.0, (), Action.ALERT, "not an active member"),
        (Q.QUARANTINE, 7, True, 1000.0, (970.0,), Action.ALERT, "rate limit"),
        (Q.QUARANTINE, 7, True, 1000.0, (940.0,), Action.QUARANTINE, "allows"),
        (Q.QUARANTINE, 9, True, 4000.0, (1000.0, 2000.0, 3000.0), Action.ALERT, "last hour"),
        (Q.QUARANTINE, 9, True, 4700.0, (1000.0, 2000.0, 3000.0), Action.QUARANTINE, "allows"),
    ],
)
def test_quarantine_policy(
    mode: QuarantineMode,
    active: int,
    is_member: bool,
    now: float,
    recent: tuple[float, ...],
    action: Action,
    why: str,
) -> None:
    policy = QuarantinePolicy(mode=mode, min_pool=3, min_interval_s=60, max_per_hour=3)
    verdict = decide_quarantine(policy, active=active, is_member=is_member, now=now, recent=recent)
    assert verdict.action is action
    assert why in verdict.reason


def test_min_pool_is_configurable_upwards() -> None:
    policy = QuarantinePolicy(min_pool=5)
    assert (
        decide_quarantine(policy, active=5, is_member=True, now=0, recent=()).action is Action.ALERT
    )
    assert (
        decide_quarantine(policy, active=6, is_member=True, now=0, recent=()).action
        is Action.QUARANTINE
    )


@pytest.mark.parametrize("kwargs", [{"min_pool": 2}, {"min_interval_s": -1}, {"max_per_hour": 0}])
def test_bad_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        QuarantinePolicy(**kwargs)  # type: ignore[arg-type]


def test_ledger_needs_room() -> None:
    with pytest.raises(ConfigError):
        VoteLedger(max_ballots=0)


def _other_question(s: Scenario, kind: str):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from tests.factories import request

    if kind == "other requests":  # same ballot id, other contents (a rogue publisher)
        ballot = replace(s.ballot(), requests=(request(s.agent, b"pay 99", "r-other"),))
        return s.vote(0, ballot=ballot)
    return s.vote(0, lie=True, state_rev=9)  # another verdict state


@pytest.mark.parametrize("kind", ["other requests", "other state"])
def test_answers_to_different_questions_are_not_equivocation(kind: str) -> None:
    s = Scenario()
    ledger = VoteLedger()
    ledger.add_vote(s.vote(0))
    _, equivocation = ledger.add_vote(_other_question(s, kind))
    assert equivocation is None


def test_conflicting_verdicts_on_the_same_question_are_equivocation() -> None:
    s = Scenario()
    ledger = VoteLedger()
    ledger.add_vote(s.vote(0))
    _, equivocation = ledger.add_vote(s.vote(0, lie=True))
    assert equivocation is not None


def test_a_vote_judged_under_another_state_is_not_a_disagreement() -> None:
    s = Scenario()
    ledger = VoteLedger()
    ledger.add_vote(s.vote(0, lie=True, state_rev=9))  # judged under a newer state
    ledger.add_vote(s.vote(1, lie=True))  # same state as the certificate, lying
    found = ledger.add_decision("b1", "r-good", request_digest(s.raws[0]), "VALID", 0)
    assert [d.verifier_key for d in found] == [s.verifiers[1].public_key]


def test_ledger_is_bounded_by_bytes_and_keeps_requests_once_per_question() -> None:
    sc = Scenario()
    ledger = VoteLedger(max_bytes=4_000)
    for i in range(4):
        ledger.add_vote(sc.vote(i))
    one_ballot = ledger.bytes
    assert 0 < one_ballot < 4_000
    for b in range(20):
        ledger.add_vote(sc.vote(0, ballot=sc.ballot(f"x{b}")))
        assert ledger.bytes <= 4_000
    assert len(ledger) < 21
    assert ledger.agreements("b1", GOOD) == {}  # the oldest went first


def test_equivocation_evidence_is_rebuilt_from_the_compact_record() -> None:
    sc = Scenario()
    ledger = VoteLedger()
    first = sc.vote(2, ts_ms=1)
    ledger.add_vote(first)
    _, ev = ledger.add_vote(sc.vote(2, lie=True, ts_ms=2))
    assert ev is not None and ev.first == first  # the same signed vote, verifiable


def test_only_votes_that_can_teach_something_are_worth_a_signature_check() -> None:
    sc = Scenario()
    ledger = VoteLedger()
    first = sc.vote(0)
    assert ledger.worth_checking(first)  # nothing known yet
    ledger.add_vote(first)
    assert not ledger.worth_checking(first)  # a copy
    assert not ledger.worth_checking(sc.vote(0, ts_ms=7))  # the same verdicts re-signed
    assert not ledger.worth_checking(sc.vote(0, lie=True, state_rev=9))  # another question
    flipped = sc.vote(0, lie=True, ts_ms=8)
    assert ledger.worth_checking(flipped)  # possible equivocation
    assert ledger.add_vote(flipped)[1] is not None
    assert not ledger.worth_checking(sc.vote(0, lie=True, ts_ms=9))  # already found
    assert ledger.add_vote(sc.vote(0, lie=True, ts_ms=9)) == ([], None)  # once per key
    assert ledger.worth_checking(sc.vote(1))


@pytest.mark.parametrize(
    ("seats", "quarantined", "action"),
    [
        (4, 0, Action.QUARANTINE),  # f = 1
        (5, 1, Action.ALERT),  # f = 1 (4 still active)
        (7, 1, Action.QUARANTINE),  # f = 2
        (7, 2, Action.ALERT),
        (10, 2, Action.QUARANTINE),  # f = 3
        (10, 3, Action.ALERT),
    ],
)
def test_quarantines_beyond_f_need_an_operator(
    seats: int, quarantined: int, action: Action
) -> None:
    """The pool honours at most f quarantine records (schemas/pool.py): beyond that the
    worker only alerts, whatever the rate limits would allow."""
    policy = QuarantinePolicy(min_pool=3, min_interval_s=0, max_per_hour=100)
    verdict = decide_quarantine(
        policy,
        active=seats - quarantined,
        is_member=True,
        now=0,
        recent=(),
        seats=seats,
        quarantined=quarantined,
    )
    assert verdict.action is action, verdict
    if action is Action.ALERT:
        assert "operator needed" in verdict.reason
