"""What a verifier decides about one raw request: pure, deterministic, no I/O.

Every honest verifier runs exactly this on the exact request bytes of the
ballot, so honest votes agree on every entry. Malformed requests (which an
honest tally never ballots, but a Byzantine one might) are judged invalid with
a reason rather than crashing the verifier.
"""

from __future__ import annotations

from schemas.codec import REQUEST_LIMITS, decode
from schemas.errors import CodecError
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, verify_signature
from schemas.messages import MAX_REQUEST_ID, VerdictReason, VerificationRequest, VoteEntry
from schemas.signing import request_digest


def judge(raw: bytes) -> VoteEntry:
    """Verdict for one raw request: valid only for a strict-verifying signature."""
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
    ok = verify_signature(request.public_key, request.message, request.signature)
    reason = VerdictReason.OK if ok else VerdictReason.BAD_SIGNATURE
    return VoteEntry(request.request_id, digest, ok, reason.value)


def _malformed_reason(obj: object) -> VerdictReason:
    if isinstance(obj, dict):
        key, sig = obj.get("public_key"), obj.get("signature")
        if isinstance(key, bytes) and len(key) != PUBLIC_KEY_BYTES:
            return VerdictReason.BAD_KEY_LENGTH
        if isinstance(sig, bytes) and len(sig) != SIGNATURE_BYTES:
            return VerdictReason.BAD_SIGNATURE_LENGTH
    return VerdictReason.MALFORMED_REQUEST
