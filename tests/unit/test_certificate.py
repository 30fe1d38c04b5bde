"""Offline certificate verification: good ones pass, every kind of tampering fails."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest

from schemas.certificate import sign_certificate, verify_certificate
from schemas.errors import CertificateInvalid
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult
from tests.factories import Scenario


def decided(
    s: Scenario, voters: list[int], index: int = 0, liars: tuple[int, ...] = ()
) -> ConsensusResult:
    r = s.round()
    for i in voters:
        r.offer(s.vote(i, lie=i in liars))
    if r.decided[index] is None:
        r.expire()
    cert = r.certificate(index, tally_key=s.tally.public_key, decided_at_ms=5, latency_ms=1.5)
    return sign_certificate(s.tally, cert)


def test_valid_certificate_verifies_and_roundtrips() -> None:
    s = Scenario()
    cert = decided(s, [0, 1, 2])
    assert cert.decision == "VALID" and cert.votes_for == 3
    verify_certificate(cert, s.pool)
    again = ConsensusResult.decode(cert.encode())
    assert again == cert
    verify_certificate(again, s.pool, tally_keys={s.tally.public_key})


def test_invalid_and_timeout_certificates_verify() -> None:
    s = Scenario()
    verify_certificate(decided(s, [0, 1, 2], index=1), s.pool)
    timeout = decided(s, [0, 1])
    assert timeout.decision == "TIMEOUT"
    verify_certificate(timeout, s.pool)
    nq = decided(s, [0, 1, 2, 3], liars=(0, 1))
    assert nq.decision == "NO_QUORUM"
    verify_certificate(nq, s.pool)


def _resign(s: Scenario, cert: ConsensusResult) -> ConsensusResult:
    return sign_certificate(s.tally, cert)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tally_sig", "tally signature"),
        ("wrong_tally", "unexpected tally"),
        ("tampered_vote", "signature does not verify"),
        ("vote_other_request", "signature does not verify"),
        ("too_few_votes", "does not follow"),
        ("inflated_counts", "do not match"),
        ("wrong_keys", "outside the pool"),
        ("smaller_pool_claimed", "pool has"),
        ("wrong_q", "q/f"),
        ("duplicate_voter", "repeats a verifier"),
        ("bad_path", "Merkle path"),
        ("decision_flip", "does not follow"),
        ("lower_threshold", "not the expected"),
    ],
)
def test_tampering_is_caught(case: str, message: str) -> None:
    s = Scenario()
    cert = decided(s, [0, 1, 2])
    pool = s.pool
    kwargs = {}
    if case == "tally_sig":
        cert = replace(cert, latency_ms=0.1)  # changed after signing
    elif case == "wrong_tally":
        kwargs = {"tally_keys": {AgentIdentity.generate().public_key}}
    elif case == "tampered_vote":
        v = cert.votes[0]
        cert = _resign(s, replace(cert, votes=(replace(v, valid=not v.valid), *cert.votes[1:])))
    elif case == "vote_other_request":
        cert = _resign(s, replace(cert, request_id="r-bad"))
    elif case == "too_few_votes":
        cert = _resign(s, replace(cert, votes=cert.votes[:2], votes_for=2, total_votes=2))
    elif case == "inflated_counts":
        cert = _resign(s, replace(cert, votes_for=4, total_votes=3))
    elif case == "wrong_keys":
        pool = frozenset(
            [*list(pool)[:1], *(AgentIdentity.generate().public_key for _ in range(3))]
        )
    elif case == "smaller_pool_claimed":
        cert = _resign(s, replace(cert, n=3, q=2, f=0))
    elif case == "wrong_q":
        cert = _resign(s, replace(cert, q=2))
    elif case == "duplicate_voter":
        cert = _resign(s, replace(cert, votes=(cert.votes[0], cert.votes[0], cert.votes[1])))
    elif case == "bad_path":
        v = cert.votes[0]
        cert = _resign(
            s, replace(cert, votes=(replace(v, path=(*v.path, b"\0" * 32)), *cert.votes[1:]))
        )
    elif case == "decision_flip":
        cert = _resign(s, replace(cert, decision="INVALID"))
    elif case == "lower_threshold":  # one liar + "1/4" would make q=1
        cert = _resign(
            s, replace(cert, threshold="1/4", q=1, votes=cert.votes[:1], votes_for=1, total_votes=1)
        )
    with pytest.raises(CertificateInvalid, match=message):
        verify_certificate(cert, pool, **kwargs)


@pytest.mark.parametrize("threshold", ["1/4", "1/2"])
def test_unsafe_thresholds_rejected_even_when_not_pinned(threshold: str) -> None:
    s = Scenario()
    cert = decided(s, [0, 1, 2])
    forged = _resign(
        s,
        replace(
            cert,
            threshold=threshold,
            q=1 if threshold == "1/4" else 2,
            votes=cert.votes[:1],
            votes_for=1,
            total_votes=1,
        ),
    )
    with pytest.raises(CertificateInvalid, match="both form"):
        verify_certificate(forged, s.pool, threshold=None)


def test_other_safe_threshold_accepted_when_asked() -> None:
    s = Scenario(threshold=Fraction(3, 4))
    cert = decided(s, [0, 1, 2])
    verify_certificate(cert, s.pool, threshold=Fraction(3, 4))
    verify_certificate(cert, s.pool, threshold=None)
    with pytest.raises(CertificateInvalid, match="not the expected"):
        verify_certificate(cert, s.pool)
