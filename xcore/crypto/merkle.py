"""Merkle trees over the fixed-size blocks of a share, for storage audits.

A storage contract names the Merkle root of its share's blocks (DESIGN.md
principle 8). An auditor challenges random block indices with a fresh nonce;
the host answers with those blocks (or values bound to them and the nonce)
and the Merkle proofs that tie each block to the root in the contract.

Tree shape (the same as RFC 6962 section 2.1, with its domain-separation
prefixes, so a leaf can never be passed off as an inner node)::

    blocks   the share cut into block_size pieces; the last may be short;
             an empty share is one empty block, so every tree has a leaf
    leaf     = SHA-256(0x00 || block)
    node     = SHA-256(0x01 || left || right)
    odd node at the end of a level is PROMOTED unchanged to the next level
             (never duplicated: duplication lets two different leaf lists
             share a root, as in Bitcoin's CVE-2012-2459)

    5 leaves:  a b c d e  ->  ab cd e  ->  abcd e  ->  abcde

A proof for leaf ``i`` lists the sibling hashes from the leaf level upwards,
skipping levels where the node on the path is promoted. The verifier needs
the leaf count to know where those levels are; it is part of the contract
(``ceil(share_size / block_size)``, at least 1).

Memory: :func:`merkle_root` keeps O(log n) hashes; :class:`MerkleTree` keeps
leaf hashes and inner levels (about 64 bytes per block), never blocks.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from xcore.errors import InvalidParameter

BLOCK_SIZE = 64 * 1024
HASH_SIZE = 32
MAX_LEAVES = 1 << 48
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(block: bytes) -> bytes:
    """SHA-256(0x00 || block)."""
    return hashlib.sha256(_LEAF + block).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE + left + right).digest()


_LEAF_STATE = hashlib.sha256(_LEAF)


def leaf_hashes(data: bytes | bytearray | memoryview, block_size: int = BLOCK_SIZE) -> list[bytes]:
    """The leaf hashes of ``data`` cut into ``block_size`` blocks (an empty
    buffer is one empty block): the same as ``[leaf_hash(b) for b in blocks]``,
    without copying the blocks (the 0x00 prefix is hashed once and the hash
    state copied), about 1.6x faster for 1 KiB blocks."""
    if block_size <= 0:
        raise InvalidParameter(f"block size must be positive, got {block_size}")
    mv = memoryview(data).cast("B")
    if not len(mv):
        return [leaf_hash(b"")]
    out: list[bytes] = []
    add, fresh = out.append, _LEAF_STATE.copy
    for i in range(0, len(mv), block_size):  # (one loop: the per-leaf calls dominate)
        h = fresh()
        h.update(mv[i:i + block_size])
        add(h.digest())
    return out


_NODE_STATE = hashlib.sha256(_NODE)


def _levels_above(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [leaves]
    fresh = _NODE_STATE.copy
    while len(levels[-1]) > 1:
        level = levels[-1]
        it = iter(level)
        up: list[bytes] = []
        add = up.append
        for a, b in zip(it, it):  # SHA-256(0x01 || a || b), without the concatenation
            h = fresh()
            h.update(a)
            h.update(b)
            add(h.digest())
        if len(level) % 2:
            up.append(level[-1])
        levels.append(up)
    return levels


def buffer_root(data: bytes | bytearray | memoryview, block_size: int = BLOCK_SIZE) -> bytes:
    """The Merkle root of an in-memory buffer cut into ``block_size`` blocks
    (equal to :func:`merkle_root` over those blocks)."""
    return _levels_above(leaf_hashes(data, block_size))[-1][0]


def block_count(size: int, block_size: int = BLOCK_SIZE) -> int:
    """The number of leaves of a ``size``-byte share: ceil(size / block_size), at least 1."""
    if size < 0 or block_size <= 0:
        raise InvalidParameter(f"bad share size {size} or block size {block_size}")
    return max(1, -(-size // block_size))


def iter_blocks(f: BinaryIO, block_size: int = BLOCK_SIZE) -> Iterator[bytes]:
    """Read ``f`` in full blocks of ``block_size`` (the last may be short).

    Short reads are completed, so block boundaries depend only on the bytes.
    Yields nothing for an empty stream.
    """
    if block_size <= 0:
        raise InvalidParameter(f"block size must be positive, got {block_size}")
    while True:
        block = f.read(block_size)
        if not block:
            return
        while len(block) < block_size:
            more = f.read(block_size - len(block))
            if not more:
                break
            block += more
        yield bytes(block)
        if len(block) < block_size:
            return


def _root_of_leaves(leaves: Iterable[bytes]) -> bytes:
    # Keep the roots of the complete subtrees seen so far (sizes strictly
    # decreasing powers of two, at most log2(n) of them). Folding them from the
    # right at the end is exactly "promote the odd node" level by level.
    stack: list[tuple[int, bytes]] = []
    for leaf in leaves:
        size, h = 1, leaf
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, h = left_size + size, node_hash(left, h)
        stack.append((size, h))
    if not stack:
        return leaf_hash(b"")
    _, acc = stack.pop()
    while stack:
        _, left = stack.pop()
        acc = node_hash(left, acc)
    return acc


def merkle_root(blocks: Iterable[bytes]) -> bytes:
    """The root over ``blocks`` (an empty iterable means one empty block), O(log n) memory."""
    return _root_of_leaves(leaf_hash(b) for b in blocks)


class MerkleTree:
    """All levels of a tree, from leaf hashes; gives proofs for any leaf."""

    __slots__ = ("_levels", "size")

    def __init__(self, leaves: Sequence[bytes], size: int | None = None) -> None:
        """Build from leaf hashes. ``size`` is the share's byte length, if known."""
        if not leaves:
            leaves = [leaf_hash(b"")]
        if len(leaves) > MAX_LEAVES or any(len(h) != HASH_SIZE for h in leaves):
            raise InvalidParameter("leaf hashes must be 32 bytes each")
        self._levels = _levels_above(list(leaves))
        self.size = size

    @classmethod
    def from_blocks(cls, blocks: Iterable[bytes]) -> MerkleTree:
        """Build from the blocks themselves (each is hashed and dropped)."""
        size = 0
        leaves = []
        for block in blocks:
            size += len(block)
            leaves.append(leaf_hash(block))
        return cls(leaves, size)

    @classmethod
    def from_buffer(cls, data: bytes | bytearray | memoryview,
                    block_size: int = BLOCK_SIZE) -> MerkleTree:
        """Build from an in-memory buffer cut into ``block_size`` blocks."""
        return cls(leaf_hashes(data, block_size), len(memoryview(data).cast("B")))

    @classmethod
    def from_stream(cls, f: BinaryIO, block_size: int = BLOCK_SIZE) -> MerkleTree:
        """Build from a readable binary stream, one block in memory at a time."""
        return cls.from_blocks(iter_blocks(f, block_size))

    @property
    def root(self) -> bytes:
        return self._levels[-1][0]

    @property
    def leaf_count(self) -> int:
        return len(self._levels[0])

    @property
    def leaves(self) -> tuple[bytes, ...]:
        return tuple(self._levels[0])

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf ``index`` up to the root (promoted levels skipped)."""
        if not 0 <= index < self.leaf_count:
            raise InvalidParameter(f"leaf index {index} out of range 0..{self.leaf_count - 1}")
        path = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path


def verify_leaf_proof(
    root: bytes, index: int, leaf_count: int, leaf: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff ``proof`` ties leaf hash ``leaf`` at ``index`` to ``root``.

    Never raises on malformed input (proofs come from peers): wrong sizes, an
    index out of range or a proof of the wrong length all give False.
    """
    if not 1 <= leaf_count <= MAX_LEAVES or not 0 <= index < leaf_count:
        return False
    if len(root) != HASH_SIZE or len(leaf) != HASH_SIZE:
        return False
    if any(len(p) != HASH_SIZE for p in proof):
        return False
    h, used, width = bytes(leaf), 0, leaf_count
    while width > 1:
        if index % 2 == 1 or index + 1 < width:
            if used >= len(proof):
                return False
            sibling = bytes(proof[used])
            used += 1
            h = node_hash(sibling, h) if index % 2 == 1 else node_hash(h, sibling)
        index //= 2
        width = (width + 1) // 2
    return used == len(proof) and hmac.compare_digest(h, bytes(root))


def verify_proof(
    root: bytes, index: int, leaf_count: int, block: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff ``block`` is block ``index`` of the share whose tree has ``root``."""
    return verify_leaf_proof(root, index, leaf_count, leaf_hash(block), proof)
