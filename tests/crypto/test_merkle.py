from __future__ import annotations

import hashlib
import io
import math
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xcore.crypto.merkle import (
    BLOCK_SIZE,
    MerkleTree,
    buffer_root,
    block_count,
    iter_blocks,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_leaf_proof,
    verify_proof,
)
from xcore.errors import InvalidParameter


def rfc6962_root(blocks: list[bytes]) -> bytes:
    """MTH of RFC 6962 section 2.1, written from the RFC as an independent reference."""
    if len(blocks) == 1:
        return hashlib.sha256(b"\x00" + blocks[0]).digest()
    k = 1 << (len(blocks) - 1).bit_length() - 1  # largest power of two < n
    return hashlib.sha256(b"\x01" + rfc6962_root(blocks[:k]) + rfc6962_root(blocks[k:])).digest()


def make_blocks(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(1, 9)) for _ in range(n)]


class TrickleReader(io.RawIOBase):
    """Returns at most 3 bytes per read: short reads must not move block boundaries."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._data.read(min(n, 3) if n >= 0 else 3)


def test_hash_prefixes() -> None:
    assert leaf_hash(b"ab") == hashlib.sha256(b"\x00ab").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


@pytest.mark.parametrize("n", [*range(1, 20), 31, 32, 33, 64, 100])
def test_roots_agree_with_rfc6962(n: int) -> None:
    blocks = make_blocks(n, seed=n)
    expected = rfc6962_root(blocks)
    assert merkle_root(blocks) == expected
    assert merkle_root(iter(blocks)) == expected
    tree = MerkleTree.from_blocks(blocks)
    assert tree.root == expected and tree.leaf_count == n
    assert tree.size == sum(map(len, blocks))


def test_odd_node_is_promoted_not_duplicated() -> None:
    a, b, c = b"a", b"b", b"c"
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])


def test_empty_share_is_one_empty_block() -> None:
    empty = leaf_hash(b"")
    assert merkle_root([]) == merkle_root([b""]) == empty
    tree = MerkleTree.from_stream(io.BytesIO(b""))
    assert tree.root == empty and tree.leaf_count == 1 and tree.size == 0
    assert verify_proof(tree.root, 0, 1, b"", tree.proof(0))
    assert block_count(0) == 1


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=200), block_size=st.integers(min_value=1, max_value=40))
@example(data=b"x" * 80, block_size=40)  # exact multiple: no empty trailing block
def test_from_stream_matches_blocks(data: bytes, block_size: int) -> None:
    blocks = [data[i : i + block_size] for i in range(0, len(data), block_size)]
    assert list(iter_blocks(io.BytesIO(data), block_size)) == blocks
    tree = MerkleTree.from_stream(io.BytesIO(data), block_size)
    assert tree.root == merkle_root(blocks)
    assert tree.leaf_count == block_count(len(data), block_size)
    assert MerkleTree.from_stream(TrickleReader(data), block_size).root == tree.root  # type: ignore[arg-type]
    # the in-memory path (put and the host's contract check) agrees
    assert buffer_root(data, block_size) == tree.root
    assert buffer_root(bytearray(data), block_size) == tree.root
    mem = MerkleTree.from_buffer(memoryview(data), block_size)
    assert mem.root == tree.root and mem.leaf_count == tree.leaf_count
    assert all(mem.proof(i) == tree.proof(i) for i in range(tree.leaf_count))


def test_tree_holds_hashes_not_blocks() -> None:
    # 64 blocks of 64 KiB generated on the fly: the tree keeps only 32-byte hashes.
    class Zeros(io.RawIOBase):
        left = 64 * BLOCK_SIZE

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(n, self.left)
            self.left -= n
            return bytes(n)

    tree = MerkleTree.from_stream(Zeros())  # type: ignore[arg-type]
    assert tree.leaf_count == 64
    assert all(len(h) == 32 for h in tree.leaves)
    assert tree.leaves[0] == leaf_hash(bytes(BLOCK_SIZE))


@pytest.mark.parametrize("n", [*range(1, 18), 33, 64, 65])
def test_every_proof_verifies(n: int) -> None:
    blocks = make_blocks(n, seed=100 + n)
    tree = MerkleTree.from_blocks(blocks)
    for i, block in enumerate(blocks):
        proof = tree.proof(i)
        assert len(proof) <= math.ceil(math.log2(n)) if n > 1 else proof == []
        assert verify_proof(tree.root, i, n, block, proof)
        assert verify_leaf_proof(tree.root, i, n, leaf_hash(block), proof)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    index=st.integers(min_value=0, max_value=39),
    rnd=st.randoms(use_true_random=False),
)
def test_tampering_breaks_proofs(n: int, index: int, rnd: random.Random) -> None:
    index %= n
    blocks = make_blocks(n, seed=n)
    tree = MerkleTree.from_blocks(blocks)
    root, proof, block = tree.root, tree.proof(index), blocks[index]
    assert verify_proof(root, index, n, block, proof)
    assert not verify_proof(root, index, n, block + b"x", proof)
    if n > 1:
        other = (index + 1 + rnd.randrange(n - 1)) % n
        if blocks[other] != block:
            assert not verify_proof(root, other, n, block, proof)
        assert not verify_proof(root, index, n, block, proof[:-1])
        bad = list(proof)
        j = rnd.randrange(len(bad))
        flipped = bytearray(bad[j])
        flipped[rnd.randrange(32)] ^= 1 << rnd.randrange(8)
        bad[j] = bytes(flipped)
        assert not verify_proof(root, index, n, block, bad)
    assert not verify_proof(root, index, n, block, proof + [bytes(32)])
    assert not verify_proof(bytes(32), index, n, block, proof)


def test_leaf_count_matters() -> None:
    blocks = make_blocks(5)
    tree = MerkleTree.from_blocks(blocks)
    # Leaf 4 of 5 is promoted twice; claiming 6 or 8 leaves changes the path.
    assert verify_proof(tree.root, 4, 5, blocks[4], tree.proof(4))
    for wrong in (4, 6, 7, 8):
        assert not verify_proof(tree.root, 4, wrong, blocks[4], tree.proof(4))


def test_inner_node_cannot_pose_as_a_block() -> None:
    blocks = [b"left", b"right"]
    root = merkle_root(blocks)
    fake_block = leaf_hash(blocks[0]) + leaf_hash(blocks[1])
    assert not verify_proof(root, 0, 1, fake_block, [])
    # With the leaf count from the contract, no shorter path reaches the root.
    assert not verify_leaf_proof(root, 0, 2, root, [])
    assert not verify_leaf_proof(root, 0, 2, leaf_hash(blocks[0]), [])


@pytest.mark.parametrize(
    "root, index, count, leaf, proof",
    [
        (bytes(31), 0, 1, bytes(32), []),
        (bytes(32), -1, 1, bytes(32), []),
        (bytes(32), 1, 1, bytes(32), []),
        (bytes(32), 0, 0, bytes(32), []),
        (bytes(32), 0, 2, bytes(31), [bytes(32)]),
        (bytes(32), 0, 2, bytes(32), [bytes(33)]),
        (bytes(32), 0, 2, bytes(32), []),
        (bytes(32), 0, 1 << 60, bytes(32), []),
    ],
)
def test_malformed_proofs_are_false_not_errors(
    root: bytes, index: int, count: int, leaf: bytes, proof: list[bytes]
) -> None:
    assert verify_leaf_proof(root, index, count, leaf, proof) is False


def test_proof_index_out_of_range() -> None:
    tree = MerkleTree.from_blocks(make_blocks(3))
    for bad in (-1, 3):
        with pytest.raises(InvalidParameter):
            tree.proof(bad)


def test_bad_sizes() -> None:
    with pytest.raises(InvalidParameter):
        block_count(-1)
    with pytest.raises(InvalidParameter):
        list(iter_blocks(io.BytesIO(b"x"), 0))
    with pytest.raises(InvalidParameter):
        MerkleTree([b"short"])
    assert block_count(BLOCK_SIZE) == 1 and block_count(BLOCK_SIZE + 1) == 2
