"""Strict MessagePack decoding with hard limits.

Anything that arrives from the network goes through :func:`decode` before a
single field is read. Limits are enforced by the C unpacker where it can
(container and string sizes) and by one walk afterwards for what it cannot
(depth, types). Whatever goes wrong surfaces as a :class:`CodecError`
subclass, never as a msgpack/ValueError/RecursionError, so a worker can
answer with a stable error code and keep serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from schemas.errors import MalformedPayload, PayloadTooLarge


@dataclass(frozen=True)
class Limits:
    """Hard limits for one decode; defaults fit a request, ballots get larger."""

    max_bytes: int = 256 * 1024
    max_depth: int = 8
    max_str: int = 64 * 1024
    max_bin: int = 128 * 1024
    max_array: int = 4096
    max_map: int = 64


REQUEST_LIMITS = Limits()
#: A ballot carries up to ``max_array`` raw requests as bin entries.
BALLOT_LIMITS = Limits(max_bytes=4 * 1024 * 1024, max_bin=256 * 1024, max_array=4096)

_SCALARS = (type(None), bool, int, float, str, bytes)


def _no_ext(code: int, data: bytes) -> Any:
    raise MalformedPayload(f"extension type {code} is not allowed")


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Reject duplicate keys: decoders in other languages disagree on which one wins."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MalformedPayload("duplicate map key")
    return out


def _check(obj: Any, depth: int, limits: Limits) -> None:
    if depth > limits.max_depth:
        raise MalformedPayload(f"nesting deeper than {limits.max_depth}")
    if isinstance(obj, _SCALARS):
        return
    if isinstance(obj, list):
        for item in obj:
            _check(item, depth + 1, limits)
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise MalformedPayload("map keys must be strings")
            _check(value, depth + 1, limits)
        return
    raise MalformedPayload(f"type {type(obj).__name__} is not allowed")


def decode(data: bytes, limits: Limits = REQUEST_LIMITS) -> Any:
    """Decode one MessagePack object from ``data`` or raise a CodecError."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"payload is {len(data)} bytes, limit {limits.max_bytes}")
    if not data:
        raise MalformedPayload("empty payload")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_no_ext,
            object_pairs_hook=_unique_map,
            timestamp=0,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bin,
            max_array_len=limits.max_array,
            max_map_len=limits.max_map,
            max_ext_len=0,
        )
    except MalformedPayload:
        raise
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        RecursionError,
        UnicodeDecodeError,
        OverflowError,
    ) as exc:
        raise MalformedPayload(f"not valid MessagePack: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # the C unpacker raises a few undocumented types
        raise MalformedPayload(f"not valid MessagePack: {type(exc).__name__}") from None
    _check(obj, 0, limits)
    return obj


def encode(obj: Any) -> bytes:
    """Encode deterministically: bin for bytes, str for text, no floats as keys."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Unreadable:
    """A stored record that could not be decoded, kept in place of it so that
    readers fail closed: an unreadable revocation must not read as "no record"."""

    key: str
    reason: str


@dataclass(frozen=True)
class Deleted:
    """A key whose last record is a delete or purge marker, kept in place of the
    record by mirrors that fail closed: for the verdict state a deleted key status
    must not read as "the key manager does not manage this key, so allowed".
    ``previous`` is the record it replaced (None if there was none)."""

    key: str
    revision: int
    previous: object = None
