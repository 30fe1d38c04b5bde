"""Canonical signing bytes with domain separation.

Each signed thing is ``DOMAIN_TAG || msgpack(array)`` with a fixed field order,
so an implementation in any language produces the same bytes, and a signature
made for one purpose (a vote) can never be accepted for another (a
certificate). The tags and orders are part of the wire contract and are
spelled out in ``schemas/asyncapi.yaml``.
"""

from __future__ import annotations

import hashlib

from schemas.codec import encode

DOMAIN_VOTE = b"agentic-payments/vote/v1\x00"
DOMAIN_CERTIFICATE = b"agentic-payments/certificate/v1\x00"


def request_digest(request_bytes: bytes) -> bytes:
    """SHA-256 of the exact request bytes the tally received."""
    return hashlib.sha256(request_bytes).digest()


def entry_bytes(request_id: str, digest: bytes, valid: bool, reason: str) -> bytes:
    """One per-request verdict, the Merkle leaf content of a vote."""
    return encode([request_id, digest, valid, reason])


def vote_signing_bytes(
    *,
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
        [2, ballot_id, epoch, tally_id, verifier_key, ts_ms, count, root, state_rev]
    )
