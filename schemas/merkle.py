"""A small Merkle tree so one vote signature covers a whole ballot.

A verifier signs the root over its per-request entries; a certificate for one
request carries only that request's entry and the sibling path, so it stays
small however large the ballot was and reveals nothing about the other
requests. Leaves and nodes are domain-separated (0x00 / 0x01, as RFC 6962) so a
node can never be passed off as a leaf. An unpaired last node is promoted to
the next level unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """All levels, leaves (already hashed) first, root last."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    out = [list(leaves)]
    while len(out[-1]) > 1:
        cur = out[-1]
        nxt = [node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        out.append(nxt)
    return out


def root(leaves: Sequence[bytes]) -> bytes:
    return levels(leaves)[-1][0]


def proof(tree: list[list[bytes]], index: int) -> list[bytes]:
    """Sibling hashes from leaf ``index`` up to the root."""
    path: list[bytes] = []
    for level in tree[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def root_from_proof(leaf: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes | None:
    """Recompute the root, or None if index/count/path do not fit together."""
    if not 0 <= index < count:
        return None
    h, idx, size, used = leaf, index, count, 0
    while size > 1:
        if idx % 2 == 1 or idx + 1 < size:
            if used >= len(path) or len(path[used]) != HASH_BYTES:
                return None
            h = node_hash(path[used], h) if idx % 2 == 1 else node_hash(h, path[used])
            used += 1
        idx //= 2
        size = (size + 1) // 2
    return h if used == len(path) else None
