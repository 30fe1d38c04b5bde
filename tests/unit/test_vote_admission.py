"""The one set of vote admission rules (schemas/votes.py), shared by the tally's
counting and the anomaly worker's equivocation evidence check; and the flood
bounds of a ballot round (workers/consensus/ballot.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from schemas.errors import VoteRejected
from schemas.identity import AgentIdentity
from schemas.votes import VoteQuestion, admit_vote, equivocation_refusal
from tests.factories import Scenario, request
from workers.consensus.ballot import MAX_CHECKED_PER_KEY


def _other_requests(s: Scenario):  # type: ignore[no-untyped-def]
    return replace(s.ballot(), requests=(request(s.agent, b"pay 99", "r-other"), *s.raws[1:]))


# (description, second vote builder, refusal) — the first vote is always s.vote(0)
EVIDENCE = [
    ("conflicting verdicts, same question", lambda s: s.vote(0, lie=True), None),
    ("same verdicts re-signed", lambda s: s.vote(0, ts_ms=5), "VOTE_DUPLICATE"),
    (
        "another tally",
        lambda s: s.vote(0, lie=True, ballot=replace(s.ballot(), tally_id="t9")),
        "VOTE_MISMATCH",
    ),
    (
        "another ballot id",
        lambda s: s.vote(0, lie=True, ballot=s.ballot("b2")),
        "VOTE_UNKNOWN_BALLOT",
    ),
    ("another epoch", lambda s: s.vote(0, lie=True, ballot=s.ballot(epoch=8)), "VOTE_WRONG_EPOCH"),
    ("another state revision", lambda s: s.vote(0, lie=True, state_rev=9), "VOTE_STATE_MISMATCH"),
    ("other requests", lambda s: s.vote(0, lie=True, ballot=_other_requests(s)), "VOTE_MISMATCH"),
    ("another key", lambda s: s.vote(1, lie=True), "VOTE_MISMATCH"),
    (
        "bad signature",
        lambda s: replace(s.vote(0, lie=True), sig=bytes(64)),
        "VOTE_BAD_SIGNATURE",
    ),
]


@pytest.mark.parametrize(("what", "second", "refusal"), EVIDENCE, ids=[e[0] for e in EVIDENCE])
def test_equivocation_needs_two_admissible_answers_to_one_question(
    what: str, second: object, refusal: str | None
) -> None:
    s = Scenario()
    assert equivocation_refusal(s.vote(0), second(s), s.pool, network=s.network) == refusal  # type: ignore[operator]


def test_evidence_from_outside_the_pool_proves_nothing() -> None:
    s = Scenario()
    outsider = AgentIdentity.generate()
    a, b = s.vote(0, signer=outsider), s.vote(0, signer=outsider, lie=True)
    assert equivocation_refusal(a, b, s.pool, network=s.network) == "VOTE_NOT_MEMBER"


def test_admit_vote_returns_the_tree_and_checks_state_last() -> None:
    s = Scenario()
    vote = s.vote(0)
    q = VoteQuestion.of(vote, network=s.network)
    assert admit_vote(vote, q, s.pool)[-1]  # a root
    with pytest.raises(VoteRejected) as err:
        admit_vote(s.vote(0, state_rev=3), q, s.pool)
    assert err.value.code == "VOTE_STATE_MISMATCH"


def test_copies_and_resignings_cost_no_signature_check() -> None:
    s = Scenario()
    r = s.round()
    first = s.vote(0)
    r.offer(first)
    assert r.signature_checks == 1
    for vote in (first, s.vote(0, ts_ms=99), replace(first, entries=first.entries)):
        with pytest.raises(VoteRejected) as err:
            r.offer(vote)
        assert err.value.code == "VOTE_DUPLICATE"
    assert r.signature_checks == 1


def test_one_evidence_per_key_then_its_votes_are_dropped_unchecked() -> None:
    s = Scenario()
    r = s.round()
    r.offer(s.vote(0))
    codes = []
    for ts in range(2, 50):
        with pytest.raises(VoteRejected) as err:
            r.offer(s.vote(0, lie=True, ts_ms=ts))
        codes.append(err.value.code)
    assert codes[0] == "VOTE_EQUIVOCATION" and set(codes[1:]) == {"VOTE_EQUIVOCATOR"}
    assert len(r.equivocations) == 1 and r.signature_checks == 2


def test_signed_votes_under_other_states_are_checked_a_bounded_number_of_times() -> None:
    s = Scenario()
    r = s.round()
    codes = []
    for rev in range(1, 20):
        with pytest.raises(VoteRejected) as err:
            r.offer(s.vote(0, state_rev=rev))
        codes.append(err.value.code)
    assert codes[:MAX_CHECKED_PER_KEY] == ["VOTE_STATE_MISMATCH"] * MAX_CHECKED_PER_KEY
    assert set(codes[MAX_CHECKED_PER_KEY:]) == {"VOTE_FLOOD"}
    assert r.signature_checks == MAX_CHECKED_PER_KEY
    # forged votes claiming key 1 never use up key 1's budget
    for ts in range(20):
        with pytest.raises(VoteRejected):
            r.offer(replace(s.vote(1, ts_ms=ts), sig=bytes(64)))
    assert r.offer(s.vote(1)) == []
