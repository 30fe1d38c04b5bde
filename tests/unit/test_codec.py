"""The codec only ever raises its own errors, whatever bytes arrive."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import REQUEST_LIMITS, Limits, decode, encode
from schemas.errors import CodecError, MalformedPayload, PayloadTooLarge
from schemas.messages import ALL_MESSAGES, decode_reply


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_any_message_decoder(data: bytes) -> None:
    for kind in ALL_MESSAGES:
        with contextlib.suppress(CodecError):
            kind.decode(data)
    with contextlib.suppress(CodecError):
        decode_reply(data)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_structured_garbage_never_crashes_message_decoders(obj: object) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    for kind in ALL_MESSAGES:
        with contextlib.suppress(CodecError):
            kind.decode(data)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", MalformedPayload),
        (b"\xc1", MalformedPayload),
        (b"\x92\x01", MalformedPayload),  # truncated array
        (encode({"a": 1}) + b"\x00", MalformedPayload),  # trailing bytes
        (msgpack.packb(msgpack.ExtType(5, b"x")), MalformedPayload),
        (msgpack.packb(msgpack.Timestamp(1)), MalformedPayload),
        (msgpack.packb({1: 2}), MalformedPayload),  # non-string key
        (b"\x82\xa1a\x01\xa1a\x02", MalformedPayload),  # key "a" twice
        (b"\x91" * 40 + b"\x00", MalformedPayload),  # too deep
        (b"\x00" * (REQUEST_LIMITS.max_bytes + 1), PayloadTooLarge),
        (msgpack.packb("x" * 70000), MalformedPayload),  # string over max_str
        (msgpack.packb(list(range(5000))), MalformedPayload),  # array over max_array
    ],
)
def test_bad_payloads(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode(payload)


def test_limits_are_configurable() -> None:
    with pytest.raises(PayloadTooLarge):
        decode(encode("x" * 100), Limits(max_bytes=50))
    assert decode(encode({"k": [1, 2, {"z": b"q"}]})) == {"k": [1, 2, {"z": b"q"}]}
