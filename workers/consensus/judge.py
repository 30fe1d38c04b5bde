"""What a verifier decides about one raw request: pure, deterministic, no I/O.

Every honest verifier runs exactly this on the exact request bytes of the
ballot and the same verdict state, so honest votes agree on every entry.
Malformed requests (which an honest tally never ballots, but a Byzantine one
might) are judged invalid with a reason rather than crashing the verifier.

The whole verdict is under consensus, in this order (first failure wins, its
stable code is the vote's reason):

  1. the signature verifies strictly            BAD_SIGNATURE, BAD_*_LENGTH
  2. the signing key's status allows it          KEY_* (key manager)
  3. if the request carries a chain: a chain
     from the key to a trust anchor              CHAIN_* (trust-chain validator)
  4. if the request names a category: the
     category's authority quorum policy is met   POLICY_* (authority coordinator)

``VerdictState`` is what steps 2-4 consult: a snapshot of the verdict-state
bucket at one revision (bus/state.py), so "judged under revision R" means
the same thing on every verifier.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from schemas.codec import REQUEST_LIMITS, decode
from schemas.errors import CodecError
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, verify_signature
from schemas.messages import MAX_REQUEST_ID, VerdictReason, VerificationRequest, VoteEntry
from schemas.signing import request_digest

log = logging.getLogger("agentic_payments.judge")


class VerdictState(Protocol):
    """The verdict state a verifier judges under (one revision of ``{prefix}_state``).

    Each method returns None when the check passes, else a stable reason code
    (at most 64 printable characters).
    """

    def key_refusal(self, public_key: bytes, now_ms: int) -> str | None: ...

    def chain_refusal(self, leaf_key: bytes, chain: Sequence[bytes], now_ms: int) -> str | None: ...

    def policy_refusal(
        self,
        category: str,
        message: bytes,
        endorsements: Sequence[tuple[bytes, bytes]],
        now_ms: int,
    ) -> str | None: ...


class NoState:
    """No verdict state at all: unmanaged keys pass; chains and categories cannot."""

    def key_refusal(self, public_key: bytes, now_ms: int) -> str | None:
        return None

    def chain_refusal(self, leaf_key: bytes, chain: Sequence[bytes], now_ms: int) -> str | None:
        return "CHAIN_NO_ANCHOR"

    def policy_refusal(
        self,
        category: str,
        message: bytes,
        endorsements: Sequence[tuple[bytes, bytes]],
        now_ms: int,
    ) -> str | None:
        return "POLICY_MISSING"


NO_STATE = NoState()


def judge(raw: bytes, state: VerdictState = NO_STATE, now_ms: int = 0) -> VoteEntry:
    """Verdict for one raw request under ``state`` at time ``now_ms`` (for a ballot:
    its ``issued_ms``, the one judging time; the verifier refuses ballots whose
    ``issued_ms`` is outside its skew window, workers/consensus/ballot.py)."""
    digest = request_digest(raw)
    try:
        obj = decode(raw, REQUEST_LIMITS)
    except CodecError:
        return VoteEntry("", digest, False, VerdictReason.MALFORMED_REQUEST.value)
    try:
        request = VerificationRequest.from_wire(obj)
    except CodecError:
        rid = obj.get("request_id") if isinstance(obj, dict) else None
        rid = rid if isinstance(rid, str) and len(rid) <= MAX_REQUEST_ID else ""
        return VoteEntry(rid, digest, False, _malformed_reason(obj).value)
    if not verify_signature(request.public_key, request.message, request.signature):
        return VoteEntry(request.request_id, digest, False, VerdictReason.BAD_SIGNATURE.value)
    try:
        refusal = _state_refusal(request, state, now_ms)
    except Exception:  # a state check must never stop the whole ballot's vote
        log.exception("verdict-state check failed for %r", request.request_id)
        refusal = "STATE_ERROR"
    if refusal is not None:
        return VoteEntry(request.request_id, digest, False, _reason(refusal))
    return VoteEntry(request.request_id, digest, True, VerdictReason.OK.value)


def _state_refusal(request: VerificationRequest, state: VerdictState, now_ms: int) -> str | None:
    refusal = state.key_refusal(request.public_key, now_ms)
    if refusal is None and request.chain:
        refusal = state.chain_refusal(request.public_key, request.chain, now_ms)
    if refusal is None and request.category:
        refusal = state.policy_refusal(
            request.category, request.message, request.endorsements, now_ms
        )
    return refusal


def _reason(code: str) -> str:
    """A refusal code as a vote reason: 1..64 printable characters, never empty."""
    code = "".join(ch for ch in code if ch.isprintable())[:64]
    return code or "REFUSED"


def _malformed_reason(obj: object) -> VerdictReason:
    if isinstance(obj, dict):
        key, sig = obj.get("public_key"), obj.get("signature")
        if isinstance(key, bytes) and len(key) != PUBLIC_KEY_BYTES:
            return VerdictReason.BAD_KEY_LENGTH
        if isinstance(sig, bytes) and len(sig) != SIGNATURE_BYTES:
            return VerdictReason.BAD_SIGNATURE_LENGTH
    return VerdictReason.MALFORMED_REQUEST
