"""Strict schema validation with stable codes; round trips for every message."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.codec import encode
from schemas.errors import SchemaViolation, UnsupportedVersion
from schemas.messages import (
    ErrorReply,
    Heartbeat,
    MetricsSnapshot,
    VerificationRequest,
    decode_reply,
)


def good() -> dict[str, Any]:
    return {
        "type": "verification_request",
        "v": 1,
        "request_id": "r1",
        "message": b"m",
        "signature": b"s" * 64,
        "public_key": b"k" * 32,
    }


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        ({"v": 2}, UnsupportedVersion, "version 2"),
        ({"v": None}, SchemaViolation, "'v'"),
        ({"type": "vote"}, SchemaViolation, "expected type"),
        ({"request_id": ""}, SchemaViolation, "request_id"),
        ({"request_id": "x" * 129}, SchemaViolation, "request_id"),
        ({"request_id": "a\nb"}, SchemaViolation, "control"),
        ({"request_id": 5}, SchemaViolation, "request_id"),
        ({"signature": b"s" * 63}, SchemaViolation, "signature must be 64 bytes, got 63"),
        ({"signature": "s" * 64}, SchemaViolation, "bin"),
        ({"public_key": b"k" * 33}, SchemaViolation, "public_key must be 32 bytes"),
        ({"message": b"m" * (64 * 1024 + 1)}, SchemaViolation, "message"),
        ({"message": 7}, SchemaViolation, "message"),
        ({"metadata": {"k": [1]}}, SchemaViolation, "metadata"),
        ({"metadata": [1]}, SchemaViolation, "metadata"),
    ],
)
def test_request_validation(change: dict[str, Any], error: type[Exception], needle: str) -> None:
    obj = good()
    obj.update(change)
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(error, match=needle):
        VerificationRequest.decode(encode(obj))


def test_request_without_type_and_with_text_message_is_accepted() -> None:
    obj = good()
    del obj["type"]
    obj["message"] = "Payment authorization"
    obj["metadata"] = {"amount": 10, "currency": "EUR"}
    req = VerificationRequest.decode(encode(obj))
    assert req.message == b"Payment authorization"
    assert req.metadata == {"amount": 10, "currency": "EUR"}
    assert VerificationRequest.decode(req.encode()) == req


def test_error_reply_and_dispatch() -> None:
    err = ErrorReply("MALFORMED_PAYLOAD", "bad", "r1")
    assert decode_reply(err.encode()) == err
    with pytest.raises(SchemaViolation):
        decode_reply(encode({"type": "certificate", "v": 1}))


def test_heartbeat_and_metrics_roundtrip() -> None:
    hb = Heartbeat("verifier", "v1", "abc", 3, 10, 5.0, "Healthy", 42, "host")
    assert Heartbeat.decode(hb.encode()) == hb
    m = MetricsSnapshot("tally", "t1", "abc", 10, 5, 4, 1, 1.5, 3.0, "Degraded", {"x": 2})
    assert MetricsSnapshot.decode(m.encode()) == m
    with pytest.raises(SchemaViolation, match="health"):
        Heartbeat.decode(encode({**hb.to_wire(), "health": "Fine"}))
