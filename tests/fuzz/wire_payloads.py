"""Seeded hostile payloads for the wire fuzz: the families of tests/fuzz/strategies.py
(arbitrary bytes, lying headers, arbitrary MessagePack values, mutations of valid
encodings: byte flips, truncations, one field's type swapped, extra or dropped
fields, huge ints, deep nesting), drawn with ``random.Random(seed)``.

Hypothesis itself draws ~50 examples a second on a loaded 2-core box; the wire
fuzz needs 20,000 in well under a minute, and the same ones every run, so it
uses the same mutation helpers with a plain seeded generator.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack

from tests.fuzz.strategies import EDGE_INTS, LIARS, TOKENS, _at, _nested, _paths, _replace, pack


def value(rng: random.Random, depth: int = 0) -> Any:
    """One arbitrary MessagePack value (containers down to depth 3)."""
    kind = rng.randrange(12 if depth < 3 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(EDGE_INTS)
    if kind == 3:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 4:
        return rng.choice([0.0, -0.0, 1.5, float("nan"), float("inf"), float("-inf"), 1e308])
    if kind == 5:
        return "".join(
            chr(rng.choice([rng.randint(32, 126), rng.randint(0, 0xD7FF)]))
            for _ in range(rng.randint(0, 40))
        )
    if kind == 6:
        return rng.randbytes(rng.randint(0, 80))
    if kind == 7:
        return msgpack.ExtType(rng.randint(0, 127), rng.randbytes(rng.randint(0, 8)))
    if kind == 8:
        return rng.choice(["type", "v", "verification_request", "x" * 200, *TOKENS])
    if kind in (9, 10):
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    if rng.random() < 0.2:
        return {rng.randint(-5, 5): value(rng, depth + 1) for _ in range(rng.randint(1, 3))}
    return {value_key(rng): value(rng, depth + 1) for _ in range(rng.randint(0, 6))}


def value_key(rng: random.Random) -> str:
    return rng.choice(["type", "v", "request_id", "message", "sig", "name", "", "k" * 70, "x"])


def hostile_bytes(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 300))
    if kind == 1:
        return rng.choice(LIARS)
    if kind == 2:
        opener = rng.choice([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01"])
        return opener * rng.randint(1, 20_000) + rng.choice([b"\xc0", b"\x80", b""])
    return rng.choice(LIARS) + rng.randbytes(rng.randint(0, 40))


def byte_level(rng: random.Random, sample: bytes) -> bytes:
    data = bytearray(sample)
    i = rng.randrange(max(len(data), 1))
    kind = rng.randrange(5)
    if kind == 0 and data:
        data[i] ^= rng.randint(1, 255)
    elif kind == 1:
        del data[i:]
    elif kind == 2:
        chunk = rng.randbytes(rng.randint(1, 9))
        data[i : i + len(chunk)] = chunk
    elif kind == 3:
        data[i:i] = rng.randbytes(rng.randint(1, 9))
    else:
        data += rng.randbytes(rng.randint(1, 9))
    return bytes(data)


def structural(rng: random.Random, sample: bytes) -> bytes:
    try:
        obj = msgpack.unpackb(sample, raw=False, strict_map_key=False)
    except ValueError:  # not MessagePack (a JetStream API request is JSON)
        return byte_level(rng, sample)
    paths = _paths(obj)
    path = rng.choice(paths)
    here = _at(obj, path)
    kind = rng.randrange(7)
    if kind == 0:
        new = _replace(obj, path, value(rng))
    elif kind == 1:
        new = _replace(obj, path, rng.choice(EDGE_INTS))
    elif kind == 2:
        new = _replace(obj, path, _nested(rng.randint(2, 300), here))
    elif kind == 3:
        containers = [p for p in paths if isinstance(_at(obj, p), dict)]
        if not containers:
            return byte_level(rng, sample)
        where = rng.choice(containers)
        new = _replace(obj, where, {**_at(obj, where), value_key(rng): value(rng)})
    elif kind == 4 and path and isinstance(_at(obj, path[:-1]), dict):
        parent = dict(_at(obj, path[:-1]))
        parent.pop(path[-1])
        new = _replace(obj, path[:-1], parent)
    elif kind == 5:
        new = _replace(obj, path, [here] * rng.choice([2, 3, 65, 1025]))
    elif isinstance(here, str):
        new = _replace(obj, path, here.encode())
    elif isinstance(here, bytes):
        new = _replace(obj, path, here.decode("latin-1"))
    else:
        new = _replace(obj, path, str(here))
    try:
        return pack(new)
    except (ValueError, OverflowError):  # too deep for the packer: send bytes instead
        return byte_level(rng, sample)


def payload(rng: random.Random, samples: list[bytes]) -> bytes:
    """Half mutations of a valid sample (one or two stacked), a quarter arbitrary
    MessagePack values, a quarter hostile bytes."""
    roll = rng.random()
    if roll < 0.5:
        sample = rng.choice(samples)
        out = structural(rng, sample) if rng.random() < 0.6 else byte_level(rng, sample)
        return byte_level(rng, out) if rng.random() < 0.2 else out
    if roll < 0.75:
        try:
            return pack(value(rng))
        except (ValueError, OverflowError):
            return hostile_bytes(rng)
    return hostile_bytes(rng)


def token_swaps(sample: bytes) -> list[bytes]:
    """``sample`` with each of its string fields replaced by each of TOKENS in turn
    (systematic: a random swap rarely puts a '.' or a space into a name that becomes
    a KV key or a subject token)."""
    try:
        obj = msgpack.unpackb(sample, raw=False, strict_map_key=False)
    except ValueError:
        return []
    out = []
    for path in _paths(obj):
        if path and path[-1] not in ("type",) and isinstance(_at(obj, path), str):
            out += [pack(_replace(obj, path, token)) for token in TOKENS]
    return out
