"""One certificate, one wire form (docs/security.md, hole 9c): any other valid
MessagePack encoding of the same values is refused by both decode paths."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from schemas.errors import SchemaViolation
from schemas.messages import ConsensusResult, decode_reply
from tests.security.test_certificate_forms import wide_msgpack

VECTOR = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas/vectors/certificate-v3.json").read_text()
)
CANONICAL = bytes.fromhex(VECTOR["certificate_hex"])


def _reordered(data: bytes) -> bytes:
    obj = msgpack.unpackb(data, raw=False)
    return msgpack.packb(dict(reversed(list(obj.items()))), use_bin_type=True)


def _wide_ints_only(data: bytes) -> bytes:
    """Same map, but the top-level ``n`` as a uint64 (the rest stays shortest)."""
    obj = msgpack.unpackb(data, raw=False)
    head = msgpack.packb({}, use_bin_type=True)
    assert head == b"\x80"
    body = b"".join(
        msgpack.packb(k, use_bin_type=True)
        + (wide_msgpack(v) if k == "n" else msgpack.packb(v, use_bin_type=True))
        for k, v in obj.items()
    )
    return (
        bytes([0x80 | len(obj)]) + body
        if len(obj) < 16
        else b"\xde" + len(obj).to_bytes(2, "big") + body
    )


def test_the_vector_certificate_decodes_in_its_canonical_form() -> None:
    cert = ConsensusResult.decode(CANONICAL)
    assert cert.encode() == CANONICAL
    assert decode_reply(CANONICAL) == cert


@pytest.mark.parametrize(
    ("name", "reencode"),
    [
        ("every-value-widest", lambda d: wide_msgpack(msgpack.unpackb(d, raw=False))),
        ("one-integer-wide", _wide_ints_only),
        ("keys-reordered", _reordered),
    ],
)
def test_other_encodings_of_the_same_values_are_refused(name: str, reencode: object) -> None:
    other = reencode(CANONICAL)  # type: ignore[operator]
    assert other != CANONICAL
    assert msgpack.unpackb(other, raw=False) == msgpack.unpackb(CANONICAL, raw=False)
    with pytest.raises(SchemaViolation, match="canonical"):
        ConsensusResult.decode(other)
    with pytest.raises(SchemaViolation, match="canonical"):
        decode_reply(other)
