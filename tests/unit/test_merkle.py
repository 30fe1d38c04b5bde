from __future__ import annotations

import hashlib

import pytest

from schemas import merkle


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 33, 64, 100])
def test_every_leaf_proves_to_the_root(count: int) -> None:
    leaves = [merkle.leaf_hash(bytes([i % 256, i // 256])) for i in range(count)]
    tree = merkle.levels(leaves)
    root = merkle.root(leaves)
    for i, leaf in enumerate(leaves):
        assert merkle.root_from_proof(leaf, i, count, merkle.proof(tree, i)) == root
        # a proof does not work at another index or for another leaf
        if count > 1:
            other = (i + 1) % count
            assert merkle.root_from_proof(leaf, other, count, merkle.proof(tree, i)) != root
        assert (
            merkle.root_from_proof(merkle.leaf_hash(b"x"), i, count, merkle.proof(tree, i)) != root
        )


def test_known_root_for_three_leaves() -> None:
    a, b, c = (merkle.leaf_hash(x) for x in (b"a", b"b", b"c"))
    ab = hashlib.sha256(b"\x01" + a + b).digest()
    assert merkle.root([a, b, c]) == hashlib.sha256(b"\x01" + ab + c).digest()


@pytest.mark.parametrize(
    ("index", "count", "path_len"), [(-1, 4, 2), (4, 4, 2), (0, 4, 1), (0, 4, 3), (0, 0, 0)]
)
def test_malformed_proofs_are_none(index: int, count: int, path_len: int) -> None:
    assert merkle.root_from_proof(b"\0" * 32, index, count, [b"\1" * 32] * path_len) is None


def test_empty_tree_rejected() -> None:
    with pytest.raises(ValueError):
        merkle.levels([])
