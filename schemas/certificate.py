"""Certificates: built and signed by the tally, re-checked offline by anyone.

``verify_certificate`` trusts nothing the tally says that it can recompute:
it rebuilds each vote's Merkle root from the entry and path, checks every
verifier signature against the pool keys the caller supplies, recounts,
recomputes q and f from n and the threshold, and checks that the decision
follows from the counts. It raises ``CertificateInvalid`` saying which check
failed. The checks run in a fixed order (the first failing one is reported);
``schemas/asyncapi.yaml`` lists it, and what the caller must pin: the network
id, the threshold, a pool floor, the request id and digest it sent.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from fractions import Fraction

from schemas import merkle
from schemas.codec import encode
from schemas.errors import CertificateInvalid, ConfigError
from schemas.identity import AgentIdentity, verify_signature
from schemas.messages import VERSION, ConsensusResult
from schemas.quorum import DEFAULT_THRESHOLD, MIN_POOL, Decision, QuorumRule, parse_threshold
from schemas.signing import (
    CERTIFICATE_SIGNING_VERSION,
    DOMAIN_CERTIFICATE,
    entry_bytes,
    vote_signing_bytes,
)


def certificate_signing_bytes(result: ConsensusResult, *, network: str) -> bytes:
    """``DOMAIN_CERTIFICATE || msgpack([3, "certificate", v, network, ...fields])``:
    arrays, integers, strings, booleans and bin only, so one encoding."""
    return DOMAIN_CERTIFICATE + encode(
        [CERTIFICATE_SIGNING_VERSION, result.TYPE, VERSION, network, *result.signing_fields()]
    )


def sign_certificate(
    identity: AgentIdentity, result: ConsensusResult, *, network: str
) -> ConsensusResult:
    unsigned = replace(result, tally_key=identity.public_key, sig=b"")
    return replace(
        unsigned, sig=identity.sign(certificate_signing_bytes(unsigned, network=network))
    )


def certificate_signed_by(result: ConsensusResult, tally_key: bytes, *, network: str) -> bool:
    """Whether ``result`` carries a valid signature by ``tally_key`` (nothing else checked)."""
    return result.tally_key == tally_key and verify_signature(
        tally_key, certificate_signing_bytes(result, network=network), result.sig
    )


def verify_certificate(
    result: ConsensusResult,
    verifier_keys: Collection[bytes],
    *,
    network: str,
    threshold: Fraction | None = DEFAULT_THRESHOLD,
    tally_keys: Collection[bytes] | None = None,
    min_pool: int = MIN_POOL,
    request_id: str | None = None,
    request_digest: bytes | None = None,
) -> None:
    """Re-check ``result`` against the pool ``verifier_keys`` of its epoch.

    Returns None when the certificate holds; raises ``CertificateInvalid``
    with the reason otherwise. ``network`` is the deployment's network id (its
    subject prefix): a certificate signed for another deployment fails. The
    threshold is the *verifier's* policy, not the certificate's say-so: by
    default it must be exactly 2/3 (pass ``threshold=None`` to accept any
    threshold that still makes VALID and INVALID quorums intersect).
    ``min_pool`` is the smallest pool the caller accepts a decision from (never
    below MIN_POOL). Pass ``tally_keys`` to pin which tallies may have signed
    it, and ``request_id`` / ``request_digest`` (SHA-256 of the exact request
    bytes sent) to pin what it must be about.
    """
    pool = set(verifier_keys)
    if request_id is not None and result.request_id != request_id:
        raise CertificateInvalid(f"certificate is for request {result.request_id!r}")
    if request_digest is not None and result.request_digest != request_digest:
        raise CertificateInvalid("certificate is for other request bytes (digest differs)")
    if tally_keys is not None and result.tally_key not in set(tally_keys):
        raise CertificateInvalid("signed by an unexpected tally key")
    body = certificate_signing_bytes(result, network=network)
    if not verify_signature(result.tally_key, body, result.sig):
        raise CertificateInvalid("tally signature does not verify")
    if result.n != len(pool):
        raise CertificateInvalid(f"certificate says n={result.n} but the pool has {len(pool)} keys")
    floor = max(MIN_POOL, min_pool)
    if result.n < floor:
        raise CertificateInvalid(f"pool of {result.n} is below the minimum {floor}")
    try:
        stated = parse_threshold(result.threshold)
    except ConfigError:
        raise CertificateInvalid(f"threshold {result.threshold!r} is not valid") from None
    if threshold is not None and stated != threshold:
        raise CertificateInvalid(f"threshold {stated} is not the expected {threshold}")
    rule = QuorumRule(result.n, stated)
    if not rule.safe or stated <= Fraction(1, 2):
        raise CertificateInvalid(f"threshold {stated} lets VALID and INVALID quorums both form")
    if (result.q, result.f) != (rule.q, rule.f):
        raise CertificateInvalid(f"q/f are {result.q}/{result.f}, expected {rule.q}/{rule.f}")

    leaf_counts = {"valid": 0, "invalid": 0}
    seen: set[bytes] = set()
    for i, vote in enumerate(result.votes):
        if vote.verifier_key not in pool:
            raise CertificateInvalid(f"vote {i} is from a key outside the pool")
        if vote.verifier_key in seen:
            raise CertificateInvalid(f"vote {i} repeats a verifier")
        seen.add(vote.verifier_key)
        leaf = merkle.leaf_hash(
            entry_bytes(result.request_id, result.request_digest, vote.valid, vote.reason)
        )
        root = merkle.root_from_proof(leaf, vote.index, vote.count, vote.path)
        if root is None:
            raise CertificateInvalid(f"vote {i} has a malformed Merkle path")
        body = vote_signing_bytes(
            network=network,
            ballot_id=result.ballot_id,
            epoch=result.epoch,
            tally_id=result.tally_id,
            verifier_key=vote.verifier_key,
            ts_ms=vote.ts_ms,
            count=vote.count,
            root=root,
            state_rev=result.state_rev,
        )
        if not verify_signature(vote.verifier_key, body, vote.sig):
            raise CertificateInvalid(f"vote {i} signature does not verify for this request")
        leaf_counts["valid" if vote.valid else "invalid"] += 1

    if (result.votes_for, result.votes_against) != (leaf_counts["valid"], leaf_counts["invalid"]):
        raise CertificateInvalid(
            f"counts {result.votes_for}/{result.votes_against} do not match the signed votes "
            f"{leaf_counts['valid']}/{leaf_counts['invalid']}"
        )
    if result.total_votes != len(result.votes):
        raise CertificateInvalid("total_votes does not match the number of votes")
    try:
        decision = Decision(result.decision)
    except ValueError:
        raise CertificateInvalid(f"unknown decision {result.decision!r}") from None
    if not rule.consistent(decision, result.votes_for, result.votes_against):
        raise CertificateInvalid(
            f"decision {decision} does not follow from {result.votes_for} for, "
            f"{result.votes_against} against with n={rule.n}, q={rule.q}"
        )
