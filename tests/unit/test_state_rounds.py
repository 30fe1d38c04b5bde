"""One decision, one verdict state: revision pinning in rounds and certificates (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from schemas.certificate import sign_certificate, verify_certificate
from schemas.errors import CertificateInvalid, VoteRejected
from schemas.identity import AgentIdentity
from schemas.messages import VerificationRequest
from schemas.quorum import Decision
from tests.factories import Scenario
from workers.consensus.judge import NO_STATE, judge


def test_vote_at_another_revision_is_not_counted() -> None:
    s = Scenario()
    r = s.round()  # state_rev 0
    with pytest.raises(VoteRejected) as err:
        r.offer(s.vote(0, state_rev=5))
    assert err.value.code == "VOTE_STATE_MISMATCH"
    assert (r.valid[0], r.invalid[1]) == (0, 0)
    assert r.newer_state == {s.verifiers[0].public_key: 5}


def test_older_revision_is_rejected_but_not_remembered_as_newer() -> None:
    s = Scenario()
    r = replace(s.round(), state_rev=9)
    with pytest.raises(VoteRejected):
        r.offer(s.vote(0, state_rev=8))
    assert r.newer_state == {}


def test_forged_newer_revision_is_not_remembered() -> None:
    s = Scenario()
    r = s.round()
    forged = replace(s.vote(0, state_rev=5), state_rev=6)  # signature covers state_rev
    with pytest.raises(VoteRejected) as err:
        r.offer(forged)
    assert err.value.code == "VOTE_BAD_SIGNATURE"
    assert r.newer_state == {}


@pytest.mark.parametrize(("newer", "stale"), [(0, False), (1, False), (2, True), (3, True)])
def test_stale_when_too_few_verifiers_remain_at_the_round_revision(newer: int, stale: bool) -> None:
    s = Scenario()  # n=4, q=3: two verifiers ahead leave only 2 < q
    r = s.round()
    for i in range(newer):
        with pytest.raises(VoteRejected):
            r.offer(s.vote(i, state_rev=3))
    assert r.stale_state is stale


def test_abandoned_requests_are_neither_counted_nor_expired() -> None:
    s = Scenario()
    r = s.round()
    r.abandon([0])
    assert r.open_indexes() == [1]
    for i in range(3):
        r.offer(s.vote(i))
    assert r.decided == [None, Decision.INVALID]
    assert r.expire() == []
    assert r.open_count == 0


def _certificate(s: Scenario, rev: int) -> tuple[object, frozenset[bytes]]:
    r = replace(s.round(), state_rev=rev)
    ballot = replace(s.ballot(), state_rev=rev)
    for i in range(3):
        r.offer(s.vote(i, ballot=ballot))
    cert = sign_certificate(
        s.tally,
        r.certificate(0, tally_key=s.tally.public_key, decided_at_ms=1, latency_us=1000),
        network=s.network,
    )
    return cert, s.pool


def test_certificate_carries_the_revision_and_verifies() -> None:
    s = Scenario()
    cert, pool = _certificate(s, 12)
    assert cert.state_rev == 12  # type: ignore[attr-defined]
    verify_certificate(cert, pool, network=s.network)  # type: ignore[arg-type]


def test_certificate_claiming_another_revision_fails() -> None:
    s = Scenario()
    cert, pool = _certificate(s, 12)
    moved = sign_certificate(s.tally, replace(cert, state_rev=13), network=s.network)  # type: ignore[type-var]
    with pytest.raises(CertificateInvalid, match="vote 0 signature"):
        verify_certificate(moved, pool, network=s.network)


# ------------------------------------------------------------------ judge


class FakeState:
    def __init__(
        self, key: str | None = None, chain: str | None = None, policy: str | None = None
    ) -> None:
        self.answers = {"key": key, "chain": chain, "policy": policy}
        self.asked: list[str] = []

    def key_refusal(self, public_key: bytes, now_ms: int) -> str | None:
        self.asked.append("key")
        return self.answers["key"]

    def chain_refusal(self, leaf_key: bytes, chain: Sequence[bytes], now_ms: int) -> str | None:
        self.asked.append("chain")
        return self.answers["chain"]

    def policy_refusal(
        self,
        category: str,
        message: bytes,
        endorsements: Sequence[tuple[bytes, bytes]],
        now_ms: int,
    ) -> str | None:
        self.asked.append("policy")
        return self.answers["policy"]


AGENT = AgentIdentity.generate()


def _raw(*, chain: bool = False, category: bool = False, tamper: bool = False) -> bytes:
    message = b"pay 5"
    return VerificationRequest(
        request_id="r1",
        message=message + (b"!" if tamper else b""),
        signature=AGENT.sign(message),
        public_key=AGENT.public_key,
        chain=(b"cert",) if chain else (),
        category="travel" if category else "",
    ).encode()


@pytest.mark.parametrize(
    ("raw", "state", "valid", "reason", "asked"),
    [
        (_raw(), FakeState(), True, "OK", ["key"]),
        (_raw(tamper=True), FakeState(key="KEY_REVOKED"), False, "BAD_SIGNATURE", []),
        (_raw(), FakeState(key="KEY_REVOKED"), False, "KEY_REVOKED", ["key"]),
        (
            _raw(chain=True),
            FakeState(chain="CHAIN_EXPIRED"),
            False,
            "CHAIN_EXPIRED",
            ["key", "chain"],
        ),
        (
            _raw(chain=True, category=True),
            FakeState(key="KEY_EXPIRED", chain="CHAIN_EXPIRED"),
            False,
            "KEY_EXPIRED",
            ["key"],
        ),
        (
            _raw(category=True),
            FakeState(chain="CHAIN_EXPIRED", policy="POLICY_NOT_MET"),
            False,
            "POLICY_NOT_MET",
            ["key", "policy"],
        ),
        (_raw(chain=True, category=True), FakeState(), True, "OK", ["key", "chain", "policy"]),
        (_raw(), FakeState(key="X" * 100), False, "X" * 64, ["key"]),
    ],
)
def test_judge_checks_in_order_and_first_refusal_wins(
    raw: bytes, state: FakeState, valid: bool, reason: str, asked: list[str]
) -> None:
    entry = judge(raw, state, 1)
    assert (entry.valid, entry.reason) == (valid, reason)
    assert state.asked == asked


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_raw(), "OK"),
        (_raw(chain=True), "CHAIN_NO_ANCHOR"),
        (_raw(category=True), "POLICY_MISSING"),
    ],
)
def test_without_state_chains_and_categories_cannot_pass(raw: bytes, reason: str) -> None:
    assert judge(raw, NO_STATE).reason == reason


class BrokenState(FakeState):
    def policy_refusal(
        self,
        category: str,
        message: bytes,
        endorsements: Sequence[tuple[bytes, bytes]],
        now_ms: int,
    ) -> str | None:
        raise ValueError("boom")


def test_a_failing_state_check_refuses_one_request_not_the_ballot() -> None:
    entry = judge(_raw(category=True), BrokenState(), 1)
    assert (entry.valid, entry.reason) == (False, "STATE_ERROR")


@pytest.mark.parametrize("category", ["a.b", "café", "x٣", "a b", "x" * 65])
def test_categories_outside_the_authority_alphabet_are_malformed(category: str) -> None:
    from schemas.errors import SchemaViolation

    wire = VerificationRequest("r", b"m", bytes(64), bytes(32)).to_wire()
    with pytest.raises(SchemaViolation):
        VerificationRequest.from_wire({**wire, "category": category})
