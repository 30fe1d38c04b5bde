"""Canonical signing bytes with domain separation.

Each signed thing is ``DOMAIN_TAG || msgpack(array)`` with a fixed field order,
so an implementation in any language produces the same bytes, and a signature
made for one purpose (a vote) can never be accepted for another (a
certificate). Every array starts with the same four items::

    [signing version, message type, message v, network id, ...fields]

so the ``type`` and ``v`` of the message are signed, and the *network id* — the
deployment's subject prefix (``Subjects.prefix``) — is signed: a vote, ballot
or certificate of one deployment never verifies in another that shares keys.
The arrays hold only integers, strings, booleans, bin and arrays (no maps, no
floats), and MessagePack encodes each of those in exactly one (the shortest)
form, so the bytes are canonical. The tags, orders and versions are part of
the wire contract and are spelled out in ``schemas/asyncapi.yaml`` (a test
recomputes them from that prose).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from schemas.codec import encode
from schemas.identity import AgentIdentity, verify_signature
from schemas.messages import VERSION, Ballot

DOMAIN_VOTE = b"agentic-payments/vote/v1\x00"
DOMAIN_CERTIFICATE = b"agentic-payments/certificate/v1\x00"
DOMAIN_BALLOT = b"agentic-payments/ballot/v1\x00"

#: Leading integer of each signed array; bumped whenever the bytes change
#: (vote v3 and certificate v3 added type, v and the network id; the
#: certificate body became arrays only with an integer latency).
VOTE_SIGNING_VERSION = 3
CERTIFICATE_SIGNING_VERSION = 3
BALLOT_SIGNING_VERSION = 1


def request_digest(request_bytes: bytes) -> bytes:
    """SHA-256 of the exact request bytes the tally received."""
    return hashlib.sha256(request_bytes).digest()


def entry_bytes(request_id: str, digest: bytes, valid: bool, reason: str) -> bytes:
    """One per-request verdict, the Merkle leaf content of a vote."""
    return encode([request_id, digest, valid, reason])


def vote_signing_bytes(
    *,
    network: str,
    ballot_id: str,
    epoch: int,
    tally_id: str,
    verifier_key: bytes,
    ts_ms: int,
    count: int,
    root: bytes,
    state_rev: int,
) -> bytes:
    return DOMAIN_VOTE + encode(
        [
            VOTE_SIGNING_VERSION,
            "vote",
            VERSION,
            network,
            ballot_id,
            epoch,
            tally_id,
            verifier_key,
            ts_ms,
            count,
            root,
            state_rev,
        ]
    )


def ballot_signing_bytes(
    *,
    network: str,
    ballot_id: str,
    epoch: int,
    tally_id: str,
    tally_key: bytes,
    deadline_ms: int,
    state_rev: int,
    issued_ms: int,
    requests: Sequence[bytes],
) -> bytes:
    """What a tally signs for a ballot: every field but ``sig``, the requests by
    their SHA-256 (in ballot order), so a verifier checks one signature over a
    short array however large the requests are."""
    return DOMAIN_BALLOT + encode(
        [
            BALLOT_SIGNING_VERSION,
            "ballot",
            VERSION,
            network,
            ballot_id,
            epoch,
            tally_id,
            tally_key,
            deadline_ms,
            state_rev,
            issued_ms,
            [request_digest(r) for r in requests],
        ]
    )


def ballot_bytes_to_sign(ballot: Ballot, *, network: str) -> bytes:
    return ballot_signing_bytes(
        network=network,
        ballot_id=ballot.ballot_id,
        epoch=ballot.epoch,
        tally_id=ballot.tally_id,
        tally_key=ballot.tally_key,
        deadline_ms=ballot.deadline_ms,
        state_rev=ballot.state_rev,
        issued_ms=ballot.issued_ms,
        requests=ballot.requests,
    )


def sign_ballot(identity: AgentIdentity, ballot: Ballot, *, network: str) -> Ballot:
    """``ballot`` with ``tally_key`` set to the identity's key and signed by it."""
    unsigned = replace(ballot, tally_key=identity.public_key, sig=b"")
    return replace(unsigned, sig=identity.sign(ballot_bytes_to_sign(unsigned, network=network)))


def ballot_signature_ok(ballot: Ballot, *, network: str) -> bool:
    """Whether ``ballot.sig`` is ``ballot.tally_key``'s signature over this ballot
    in ``network`` (whether that key may ballot is the verifier's pool rule)."""
    return verify_signature(
        ballot.tally_key, ballot_bytes_to_sign(ballot, network=network), ballot.sig
    )
