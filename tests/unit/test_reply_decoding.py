"""schemas.messages.decode_reply: the one reply decoder, for the expected classes only."""

from __future__ import annotations

import pytest

from schemas.codec import BALLOT_LIMITS, REQUEST_LIMITS, encode
from schemas.errors import MalformedPayload, PayloadTooLarge, SchemaViolation, UnsupportedVersion
from schemas.keys import KeyList, KeySweep
from schemas.messages import ErrorReply, decode_reply, reply_limits
from schemas.trust import LISTING_LIMITS, ChainReply, TrustAck, TrustListing

ACK = TrustAck("add-anchor", "anchor.ab", True, 3, "anchor added")
SWEEP = KeySweep(rotated=("a",), destroyed=(), statuses_written=2)


def test_the_expected_class_and_an_error_reply_are_accepted() -> None:
    assert decode_reply(ACK.encode(), TrustAck) == ACK
    assert decode_reply(SWEEP.encode(), KeyList, KeySweep) == SWEEP
    error = ErrorReply("TRUST_NOT_FOUND", "no such anchor")
    assert decode_reply(error.encode(), TrustAck) == error
    assert decode_reply(error.encode(), ErrorReply) == error  # naming it changes nothing


def test_any_other_class_is_a_schema_violation() -> None:
    with pytest.raises(SchemaViolation, match="trust_ack"):
        decode_reply(ACK.encode(), ChainReply, TrustListing)
    with pytest.raises(SchemaViolation):
        decode_reply(SWEEP.encode(), KeyList)
    with pytest.raises(SchemaViolation):
        decode_reply(encode(["not", "a", "map"]), TrustAck)
    with pytest.raises(SchemaViolation):
        decode_reply(encode({"v": 1}), TrustAck)  # no type at all


def test_codec_errors_are_the_codecs() -> None:
    with pytest.raises(MalformedPayload):
        decode_reply(b"\xc1", TrustAck)
    with pytest.raises(UnsupportedVersion):
        decode_reply(encode({**ACK.to_wire(), "v": 9}), TrustAck)


def test_limits_are_the_widest_of_the_expected_classes() -> None:
    assert reply_limits((ErrorReply, TrustAck)) == REQUEST_LIMITS
    widest = reply_limits((ErrorReply, TrustAck, TrustListing))
    assert widest.max_bytes == LISTING_LIMITS.max_bytes > REQUEST_LIMITS.max_bytes
    assert widest.max_array == max(LISTING_LIMITS.max_array, REQUEST_LIMITS.max_array)
    assert reply_limits((ErrorReply, KeyList)) == BALLOT_LIMITS
    big = encode({**ACK.to_wire(), "detail": ["x" * 1000] * 300})  # 300 kB of small strings
    with pytest.raises(PayloadTooLarge):
        decode_reply(big, TrustAck)
    with pytest.raises(SchemaViolation):  # let through by the listing's limits, refused by TrustAck
        decode_reply(big, TrustAck, TrustListing)
