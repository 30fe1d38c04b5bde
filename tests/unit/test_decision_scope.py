"""Request ids scoped to their signer (bus/decisions.py): which decisions hold the
(public key, request id) scope, and the scope strings."""

from __future__ import annotations

import pytest

from bus.decisions import claims_scope, decision_key, scope_id
from schemas.messages import ConsensusResult, VoteProof


def cert(decision: str, votes: list[tuple[bool, str]]) -> ConsensusResult:
    return ConsensusResult(
        request_id="r",
        request_digest=b"d" * 32,
        decision=decision,
        votes_for=sum(v for v, _ in votes),
        votes_against=sum(not v for v, _ in votes),
        total_votes=len(votes),
        n=4,
        q=3,
        f=1,
        threshold="2/3",
        epoch=1,
        ballot_id="b",
        votes=tuple(
            VoteProof(bytes([i]) * 32, 1, 1, 0, valid, reason, (), b"s" * 64)
            for i, (valid, reason) in enumerate(votes)
        ),
        tally_id="t1",
        tally_key=b"t" * 32,
        decided_at_ms=1,
        latency_us=1000,
    )


BAD = (False, "BAD_SIGNATURE")
CLAIMS = [
    ("VALID", [(True, "OK")] * 3, True),
    ("INVALID for a bad signature", [BAD] * 3, False),
    ("INVALID, bad signature and lengths", [BAD, (False, "BAD_SIGNATURE_LENGTH"), BAD], False),
    ("INVALID, one liar says valid", [(True, "OK"), BAD, BAD, BAD], False),
    ("INVALID for a revoked key", [(False, "KEY_REVOKED")] * 3, True),
    ("INVALID, mixed reasons", [BAD, BAD, (False, "KEY_REVOKED")], True),
    ("NO_QUORUM", [BAD, BAD, (True, "OK"), (True, "OK")], True),
]


@pytest.mark.parametrize(("what", "votes", "claims"), CLAIMS, ids=[c[0] for c in CLAIMS])
def test_only_a_request_its_key_signed_holds_the_id(
    what: str, votes: list[tuple[bool, str]], claims: bool
) -> None:
    decision = what.split(" ")[0].rstrip(",")
    assert claims_scope(cert(decision, votes)) is claims


def test_scopes_are_per_key_and_unambiguous() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    assert scope_id(a, "id") != scope_id(b, "id")
    assert scope_id(a, "id") != scope_id(a, "id", b"\x00" * 32)
    assert scope_id(a, "x.y") != scope_id(a, "y", b"x")  # ids may hold dots
    assert decision_key(scope_id(a, "id")) != decision_key(scope_id(b, "id"))
    assert scope_id(a, "a.b.c").split(".", 2)[2] == "a.b.c"
