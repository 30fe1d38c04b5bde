"""Offline certificate verification: good ones pass, every kind of tampering fails."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any

import pytest

from schemas.certificate import sign_certificate, verify_certificate
from schemas.errors import CertificateInvalid, SchemaViolation
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
    cert = r.certificate(index, tally_key=s.tally.public_key, decided_at_ms=5, latency_us=1500)
    return sign_certificate(s.tally, cert, network=s.network)


def test_valid_certificate_verifies_and_roundtrips() -> None:
    s = Scenario()
    cert = decided(s, [0, 1, 2])
    assert cert.decision == "VALID" and cert.votes_for == 3
    verify_certificate(cert, s.pool, network=s.network)
    again = ConsensusResult.decode(cert.encode())
    assert again == cert
    verify_certificate(again, s.pool, tally_keys={s.tally.public_key}, network=s.network)


def test_invalid_and_timeout_certificates_verify() -> None:
    s = Scenario()
    verify_certificate(decided(s, [0, 1, 2], index=1), s.pool, network=s.network)
    timeout = decided(s, [0, 1])
    assert timeout.decision == "TIMEOUT"
    verify_certificate(timeout, s.pool, network=s.network)
    nq = decided(s, [0, 1, 2, 3], liars=(0, 1))
    assert nq.decision == "NO_QUORUM"
    verify_certificate(nq, s.pool, network=s.network)


def _resign(s: Scenario, cert: ConsensusResult) -> ConsensusResult:
    return sign_certificate(s.tally, cert, network=s.network)


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
        ("other_network", "tally signature"),
        ("other_request_id", "for request"),
        ("other_digest", "digest differs"),
        ("below_floor", "below the minimum 5"),
    ],
)
def test_tampering_is_caught(case: str, message: str) -> None:
    s = Scenario()
    cert = decided(s, [0, 1, 2])
    pool = s.pool
    kwargs: dict[str, Any] = {}
    if case == "tally_sig":
        cert = replace(cert, latency_us=100)  # changed after signing
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
    elif case == "other_network":  # the same keys, another deployment (prefix)
        kwargs = {"network": "other"}
    elif case == "other_request_id":
        kwargs = {"request_id": "r-other"}
    elif case == "other_digest":
        kwargs = {"request_digest": bytes(32)}
    elif case == "below_floor":  # a pool shrunk to 4 when the caller pinned 5
        kwargs = {"min_pool": 5}
    kwargs.setdefault("network", s.network)
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
        verify_certificate(forged, s.pool, threshold=None, network=s.network)


def test_other_safe_threshold_accepted_when_asked() -> None:
    s = Scenario(threshold=Fraction(3, 4))
    cert = decided(s, [0, 1, 2])
    verify_certificate(cert, s.pool, threshold=Fraction(3, 4), network=s.network)
    verify_certificate(cert, s.pool, threshold=None, network=s.network)
    with pytest.raises(CertificateInvalid, match="not the expected"):
        verify_certificate(cert, s.pool, network=s.network)


def test_pins_that_match_pass() -> None:
    s = Scenario()
    cert = decided(s, [0, 1, 2])
    verify_certificate(
        cert,
        s.pool,
        network=s.network,
        min_pool=4,
        request_id=cert.request_id,
        request_digest=cert.request_digest,
        tally_keys={s.tally.public_key},
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("x_extra", 1, "unknown field 'x_extra'"),
        ("latency_us", 1.5, "latency_us must be an integer"),
        ("threshold", "4/6", "lowest terms"),
        ("threshold", "1", "lowest terms"),
        ("threshold", "02/3", "lowest terms"),
        ("threshold", " 2/3", "lowest terms"),
        ("threshold", "0.67", "lowest terms"),
    ],
)
def test_one_wire_form(field: str, value: object, message: str) -> None:
    """Strict decoding: no unknown keys, no float for an int, one threshold spelling."""
    s = Scenario()
    wire = decided(s, [0, 1, 2]).to_wire()
    wire[field] = value
    with pytest.raises(SchemaViolation, match=message):
        ConsensusResult.from_wire(wire)


def test_signing_body_is_arrays_and_covers_type_and_version() -> None:
    from schemas.certificate import certificate_signing_bytes
    from schemas.codec import decode
    from schemas.signing import DOMAIN_CERTIFICATE

    s = Scenario()
    cert = decided(s, [0, 1, 2])
    body = certificate_signing_bytes(cert, network="ap")
    assert body.startswith(DOMAIN_CERTIFICATE)
    items = decode(body[len(DOMAIN_CERTIFICATE) :], ConsensusResult.LIMITS)
    assert items[:4] == [3, "certificate", 1, "ap"]

    def no_maps_or_floats(x: object) -> bool:
        if isinstance(x, list):
            return all(no_maps_or_floats(i) for i in x)
        return not isinstance(x, (dict, float))

    assert no_maps_or_floats(items)
