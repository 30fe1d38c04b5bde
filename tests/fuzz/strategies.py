"""Hostile inputs for the decoders, shared by the decoder suite and the wire fuzz.

Three families, because each reaches a different depth of a decoder:

* ``hostile_bytes``: arbitrary bytes plus hand-made MessagePack headers that lie
  (huge lengths, ext types, deep nesting, reserved bytes) — the codec's job;
* ``encoded_values``: any MessagePack value (maps with int or str keys, lists,
  ints at the 64-bit edges, floats, bin, str, None, bool, ext) — well-formed,
  so the schema layer must refuse it;
* ``mutations(sample)``: a valid encoding with one thing wrong (a byte flipped,
  truncated, one field's type swapped, a field added or dropped, a huge int, a
  deeply nested value) — reaches the deepest checks, past the ``type``/``v`` header.

Hypothesis profiles (``HYPOTHESIS_PROFILE``): ``fuzz-ci`` (the default; few
examples, derandomized so CI sees the same inputs every run) and ``fuzz-long``
(many examples, random, for local runs: ``HYPOTHESIS_PROFILE=fuzz-long``);
``AP_FUZZ_EXAMPLES`` overrides either profile's example count.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "fuzz-ci",
    deadline=None,
    max_examples=int(os.environ.get("AP_FUZZ_EXAMPLES", "40")),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz-long",
    deadline=None,
    max_examples=int(os.environ.get("AP_FUZZ_EXAMPLES", "3000")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-ci")
#: The settings every fuzz test runs under (``HYPOTHESIS_PROFILE`` picks another).
FUZZ = settings.get_profile(_PROFILE if _PROFILE.startswith("fuzz-") else "fuzz-ci")

#: Integers where codecs and range checks break.
EDGE_INTS = (
    0,
    -1,
    1,
    2**7,
    2**8,
    2**15,
    2**16,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**31),
    -(2**63),
)

#: Strings that break a value used as a KV key or a subject token (an id, a name, a
#: kind): dots, wildcards, whitespace, an empty token, control characters, too long.
TOKENS = (
    "a.b",
    "a b",
    ">",
    "*",
    "a.*",
    "agent-.",
    ".x",
    "a..b",
    "",
    "\t",
    "\x00",
    "\u00e4",
    "x" * 65,
    "$KV.x.y",
    "_INBOX.x",
)

ints = st.integers(-(2**63), 2**64 - 1) | st.sampled_from(EDGE_INTS)
scalars = (
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(TOKENS)
    | st.binary(max_size=80)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
#: Any MessagePack value: maps with str or int keys, nested lists.
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=12), inner, max_size=6)
        | st.dictionaries(st.integers(-5, 5), inner, max_size=3)
    ),
    max_leaves=24,
)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


encoded_values = values.map(pack)


def _deep(depth: int, opener: bytes, leaf: bytes) -> bytes:
    return opener * depth + leaf


#: Hand-made headers that lie: lengths far beyond the data, ext types, nesting,
#: the reserved byte 0xc1, and a valid prefix with trailing garbage.
LIARS = (
    b"\xc1",
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 billion
    b"\xdf\xff\xff\xff\xff",  # map32 of 4 billion
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
    b"\xc9\xff\xff\xff\xff\x01",  # ext32
    b"\xd4\x01\x00",  # fixext1
    b"\xd6\xff\x00\x00\x00\x00",  # timestamp32 ext
    b"\x81\x01\x02",  # map with an int key
    b"\x82\xa1a\x01\xa1a\x02",  # duplicate key
    b"\x81\xc4\x01a\x01",  # map with a bin key
    b"\x81\x90\x01",  # map with an array key (unhashable)
    b"\x81\x80\x01",  # map with a map key (unhashable)
    b"\xa2\xff\xfe",  # str with invalid UTF-8
    b"\xa3\xed\xa0\x80",  # a UTF-8 encoded surrogate
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # uint64 max
    b"\xc0\xc0",  # extra data
)
hostile_bytes = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(LIARS),
    st.builds(
        _deep,
        st.sampled_from([2, 8, 9, 64, 600, 1100, 3000, 4090, 5000, 100_000])
        | st.integers(1, 100_000),
        st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01", b"[", b'{"a":']),
        st.sampled_from([b"\xc0", b"\x80", b""]),
    ),
    st.tuples(st.sampled_from(LIARS), st.binary(max_size=40)).map(lambda t: t[0] + t[1]),
)


# ------------------------------------------------------------------ mutations
def _paths(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position inside ``obj`` (map keys and list indexes), depth first."""
    out = [path]
    if isinstance(obj, dict):
        for key in sorted(obj, key=repr):
            out += _paths(obj[key], (*path, key))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            out += _paths(item, (*path, i))
    return out


def _replace(obj: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _replace(obj[head], rest, new)}
    copy = list(obj)
    copy[head] = _replace(obj[head], rest, new)
    return copy


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def _nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@st.composite
def structural(draw: st.DrawFn, sample: bytes) -> bytes:
    """Decode ``sample`` leniently, change one position, encode again."""
    try:
        obj = msgpack.unpackb(sample, raw=False, strict_map_key=False)
    except ValueError:  # not MessagePack (the JSON liveness record): bytes only
        return draw(byte_level(sample))
    paths = _paths(obj)
    path = draw(st.sampled_from(paths))
    kind = draw(
        st.sampled_from(["swap", "huge", "deep", "extra", "drop", "empty", "dup-list", "str-bin"])
    )
    here = _at(obj, path)
    if kind == "swap":
        new = _replace(obj, path, draw(values))
    elif kind == "huge":
        new = _replace(obj, path, draw(st.sampled_from(EDGE_INTS)))
    elif kind == "deep":
        new = _replace(obj, path, _nested(draw(st.integers(2, 300)), here))
    elif kind == "extra":
        containers = [p for p in paths if isinstance(_at(obj, p), dict)] or [()]
        where = draw(st.sampled_from(containers))
        target = _at(obj, where)
        key = draw(st.text(max_size=12) | st.sampled_from(["type", "v", "sig", "x" * 70]))
        extra = {**target, key: draw(values)} if isinstance(target, dict) else target
        new = _replace(obj, where, extra)
    elif kind == "drop":
        if path and isinstance(_at(obj, path[:-1]), dict):
            parent = dict(_at(obj, path[:-1]))
            parent.pop(path[-1])
            new = _replace(obj, path[:-1], parent)
        elif path:
            parent_list = list(_at(obj, path[:-1]))
            del parent_list[path[-1]]
            new = _replace(obj, path[:-1], parent_list)
        else:
            new = {}
    elif kind == "empty":
        new = _replace(
            obj, path, type(here)() if isinstance(here, (str, bytes, list, dict)) else None
        )
    elif kind == "dup-list":
        new = _replace(obj, path, [here] * draw(st.sampled_from([2, 3, 65, 1025, 4097])))
    else:  # str <-> bin, the commonest cross-language mistake
        if isinstance(here, str):
            new = _replace(obj, path, here.encode())
        elif isinstance(here, bytes):
            new = _replace(obj, path, here.decode("latin-1"))
        else:
            new = _replace(obj, path, str(here))
    return pack(new)


@st.composite
def byte_level(draw: st.DrawFn, sample: bytes) -> bytes:
    """Flip, truncate, overwrite, insert or append bytes of ``sample``."""
    data = bytearray(sample)
    kind = draw(st.sampled_from(["flip", "truncate", "overwrite", "insert", "append"]))
    i = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "flip" and data:
        data[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[i:]
    elif kind == "overwrite":
        chunk = draw(st.binary(min_size=1, max_size=9))
        data[i : i + len(chunk)] = chunk
    elif kind == "insert":
        data[i:i] = draw(st.binary(min_size=1, max_size=9))
    else:
        data += draw(st.binary(min_size=1, max_size=9))
    return bytes(data)


def mutations(samples: list[bytes]) -> st.SearchStrategy[bytes]:
    """A valid encoding from ``samples`` with one thing wrong (or two, stacked)."""
    one = st.sampled_from(samples).flatmap(lambda s: structural(s) | byte_level(s))
    return one | one.flatmap(lambda s: byte_level(s))


def hostile(samples: list[bytes]) -> st.SearchStrategy[bytes]:
    """Everything at once, weighted towards mutations of valid encodings."""
    mutated = mutations(samples)
    return st.one_of(mutated, mutated, encoded_values, hostile_bytes)
