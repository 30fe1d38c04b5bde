"""Vote admission and early decision in one ballot round (pure, no NATS)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from schemas.errors import VoteRejected
from schemas.identity import AgentIdentity
from schemas.messages import VoteEntry
from schemas.quorum import Decision
from tests.factories import Scenario, request


def test_honest_pool_decides_at_q_and_early() -> None:
    s = Scenario()
    r = s.round()
    assert r.offer(s.vote(0)) == []
    assert r.offer(s.vote(1)) == []
    assert sorted(r.offer(s.vote(2))) == [0, 1]  # q = 3 of 4: decided before the 4th vote
    assert r.decided == [Decision.VALID, Decision.INVALID]
    assert r.open_count == 0


def test_one_liar_cannot_change_outcome() -> None:
    s = Scenario()
    r = s.round()
    r.offer(s.vote(0, lie=True))
    r.offer(s.vote(1))
    r.offer(s.vote(2))
    assert r.decided == [None, None]
    r.offer(s.vote(3))
    assert r.decided == [Decision.VALID, Decision.INVALID]


def test_two_liars_give_no_quorum_never_wrong_valid() -> None:
    s = Scenario()
    r = s.round()
    r.offer(s.vote(0, lie=True))
    r.offer(s.vote(1, lie=True))
    r.offer(s.vote(2))
    r.offer(s.vote(3))
    assert r.decided == [Decision.NO_QUORUM, Decision.NO_QUORUM]


def test_timeout_keeps_partial_tally() -> None:
    s = Scenario()
    r = s.round()
    r.offer(s.vote(0))
    assert r.expire() == [0, 1]
    assert r.decided == [Decision.TIMEOUT, Decision.TIMEOUT]
    assert (r.valid[0], r.invalid[1]) == (1, 1)


def test_exact_duplicate_is_ignored() -> None:
    s = Scenario()
    r = s.round()
    v = s.vote(0)
    r.offer(v)
    with pytest.raises(VoteRejected) as err:
        r.offer(v)
    assert err.value.code == "VOTE_DUPLICATE"
    assert r.valid[0] == 1 and not r.equivocations


def test_equivocation_rejected_and_recorded() -> None:
    s = Scenario()
    r = s.round()
    first = s.vote(0)
    r.offer(first)
    with pytest.raises(VoteRejected) as err:
        r.offer(s.vote(0, lie=True))
    assert err.value.code == "VOTE_EQUIVOCATION"
    assert r.valid[0] == 1 and r.invalid[0] == 0  # the second vote did not count
    assert len(r.equivocations) == 1 and r.equivocations[0].first == first


def test_same_verdicts_resigned_are_a_duplicate_not_equivocation() -> None:
    # anyone can republish a ballot; the verifier's second signature over the same
    # verdicts (new timestamp) must not frame it as an equivocator
    s = Scenario()
    r = s.round()
    r.offer(s.vote(0, ts_ms=1000))
    with pytest.raises(VoteRejected) as err:
        r.offer(s.vote(0, ts_ms=2000))
    assert err.value.code == "VOTE_DUPLICATE"
    assert not r.equivocations and r.valid[0] == 1


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        ("other_ballot", "VOTE_UNKNOWN_BALLOT"),
        ("other_epoch", "VOTE_WRONG_EPOCH"),
        ("other_tally", "VOTE_MISMATCH"),
        ("non_member", "VOTE_NOT_MEMBER"),
        ("other_request", "VOTE_MISMATCH"),
        ("other_digest", "VOTE_MISMATCH"),
        ("missing_entry", "VOTE_MISMATCH"),
        ("forged_key", "VOTE_BAD_SIGNATURE"),
        ("flipped_after_signing", "VOTE_BAD_SIGNATURE"),
    ],
)
def test_replayed_forged_and_foreign_votes(mutate: str, code: str) -> None:
    s = Scenario()
    r = s.round()
    honest = s.vote(0)
    if mutate == "other_ballot":  # a vote replayed from another ballot
        vote = s.vote(0, ballot=s.ballot("b0"))
    elif mutate == "other_epoch":  # replayed from an earlier pool epoch
        vote = s.vote(0, ballot=s.ballot(epoch=s.epoch - 1))
    elif mutate == "other_tally":
        vote = replace(honest, tally_id="t9")
    elif mutate == "non_member":
        vote = s.vote(0, signer=AgentIdentity.generate())
    elif mutate == "other_request":  # a valid vote for a different request set
        other = Scenario(n=4)
        other.verifiers = s.verifiers
        other.raws = [request(s.agent, b"pay 10", "r-other"), s.raws[1]]
        vote = other.vote(0)
    elif mutate == "other_digest":  # same request id, different payload bytes
        other = Scenario(n=4)
        other.verifiers = s.verifiers
        other.raws = [request(s.agent, b"pay 11", "r-good"), s.raws[1]]
        vote = other.vote(0)
    elif mutate == "missing_entry":
        vote = replace(honest, entries=honest.entries[:1])
    elif mutate == "forged_key":  # signed by a stranger, claiming a member's key
        stolen = s.vote(0, signer=AgentIdentity.generate())
        vote = replace(stolen, verifier_key=s.verifiers[1].public_key)
    else:
        e = honest.entries[0]
        vote = replace(
            honest,
            entries=(VoteEntry(e.request_id, e.digest, not e.valid, e.reason), *honest.entries[1:]),
        )
    with pytest.raises(VoteRejected) as err:
        r.offer(vote)
    assert err.value.code == code
    assert r.valid == [0, 0] and r.invalid == [0, 0]
    assert r.offer(honest) == []  # the round is unharmed: honest votes still count
    assert r.valid[0] == 1


def test_certificate_requires_decision() -> None:
    s = Scenario()
    r = s.round()
    with pytest.raises(ValueError):
        r.certificate(0, tally_key=s.tally.public_key, decided_at_ms=1, latency_us=1000)
