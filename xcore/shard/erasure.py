"""Segments and k-of-n erasure coding (zfec), DESIGN.md principles 5 and 9.

The client's ciphertext stream is cut into segments of at most
``k * 2 MiB`` bytes (:func:`split_segments`). Each segment is zero-padded to
a multiple of ``k``, split into ``k`` primary blocks of
``ceil(len / k)`` bytes, and zfec (a systematic Reed-Solomon code over
GF(2^8)) turns them into ``n`` shares of that size: shares ``0..k-1`` are the
primary blocks themselves, ``k..n-1`` are parity. Any ``k`` distinct shares
rebuild the segment; the segment length (kept in the manifest) removes the
padding.

The encoding is deterministic, so any holder of ``k`` shares regenerates a
missing share bit for bit (:func:`regenerate`): it has the same SHA-256 name
as the lost one and repair needs neither the owner nor the key.

``k = 1`` is mirroring: the ``n`` shares are identical copies of the segment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import zfec

from xcore.errors import InvalidParameter, NotEnoughShares, ShareCorrupted

MAX_SHARE_SIZE = 2 * 1024 * 1024
MAX_N = 256  # zfec works in GF(2^8)
_RATIO = re.compile(r"\s*(\d{1,3})\s*/\s*(\d{1,3})\s*")


@dataclass(frozen=True, slots=True)
class Redundancy:
    """Erasure parameters: any ``k`` of ``n`` shares rebuild a segment."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.k, self.n)):
            raise InvalidParameter("k and n must be integers")
        if not 1 <= self.k <= self.n <= MAX_N:
            raise InvalidParameter(f"redundancy needs 1 <= k <= n <= {MAX_N}, got {self.k}/{self.n}")

    @classmethod
    def parse(cls, text: str) -> Redundancy:
        """Parse ``"k/n"``, e.g. ``"4/8"`` or ``"1/3"`` (three mirrors)."""
        m = _RATIO.fullmatch(text)
        if m is None:
            raise InvalidParameter(f"redundancy must look like 'k/n' (e.g. 4/8), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    @property
    def is_mirroring(self) -> bool:
        return self.k == 1

    @property
    def repair_threshold(self) -> int:
        """Healthy shares below which a segment is repaired: k + ceil((n - k) / 3)."""
        return self.k + -(-(self.n - self.k) // 3)


def segment_size(red: Redundancy, *, max_share_size: int = MAX_SHARE_SIZE) -> int:
    """The largest segment whose shares fit in ``max_share_size``: ``k * max_share_size``."""
    if max_share_size <= 0:
        raise InvalidParameter(f"share size must be positive, got {max_share_size}")
    return red.k * max_share_size


def share_size(segment_len: int, red: Redundancy) -> int:
    """The size of each share of a ``segment_len``-byte segment: ceil(segment_len / k)."""
    if segment_len < 0:
        raise InvalidParameter(f"segment length must be >= 0, got {segment_len}")
    return -(-segment_len // red.k)


def split_segments(
    stream: BinaryIO, red: Redundancy, *, max_share_size: int = MAX_SHARE_SIZE
) -> Iterator[bytes]:
    """Yield the segments of ``stream``: full ``segment_size`` pieces, the last shorter.

    Holds one segment in memory. Short reads are completed, so the cut points
    depend only on the bytes. An empty stream yields no segments.
    """
    size = segment_size(red, max_share_size=max_share_size)
    while True:
        parts: list[bytes] = []
        have = 0
        while have < size:
            data = stream.read(size - have)
            if not data:
                break
            parts.append(bytes(data))
            have += len(data)
        if have:
            yield b"".join(parts)
        if have < size:
            return


def _primary_blocks(data: bytes, red: Redundancy) -> list[bytes]:
    size = share_size(len(data), red)
    padded = bytes(data) + bytes(size * red.k - len(data))
    return [padded[i * size : (i + 1) * size] for i in range(red.k)]


def encode_segment(data: bytes, red: Redundancy) -> list[bytes]:
    """The ``n`` shares of ``data``, each ``ceil(len(data) / k)`` bytes."""
    if len(data) > red.k * MAX_SHARE_SIZE:
        raise InvalidParameter(f"segment of {len(data)} bytes is larger than {red.k} * 2 MiB")
    if red.k == 1 or not data:
        return [bytes(data)] * red.n
    blocks = _primary_blocks(data, red)
    try:
        return [bytes(s) for s in zfec.Encoder(red.k, red.n).encode(blocks)]
    except zfec.Error as e:
        raise InvalidParameter(f"zfec could not encode: {e}") from e


def _pick_k(shares: Mapping[int, bytes], red: Redundancy) -> tuple[list[int], list[bytes]]:
    """Choose k shares (primaries first: cheapest to decode) after checking them."""
    size = None
    for num, share in shares.items():
        if not isinstance(num, int) or not 0 <= num < red.n:
            raise InvalidParameter(f"share number {num!r} out of range for {red}")
        if size is None:
            size = len(share)
        elif len(share) != size:
            raise ShareCorrupted(
                f"share {num} is {len(share)} bytes, the others {size}: shares do not match"
            )
    if len(shares) < red.k:
        raise NotEnoughShares(f"have {len(shares)} distinct shares, need {red.k} of {red.n}")
    nums = sorted(shares)[: red.k]
    return nums, [bytes(shares[i]) for i in nums]


def _decode_primaries(shares: Mapping[int, bytes], red: Redundancy) -> list[bytes]:
    nums, blocks = _pick_k(shares, red)
    if not blocks[0]:
        return [b""] * red.k  # the empty segment
    if red.k == 1 or nums == list(range(red.k)):
        return blocks  # mirrors, or all primaries: nothing to solve
    try:
        return [bytes(b) for b in zfec.Decoder(red.k, red.n).decode(blocks, nums)]
    except zfec.Error as e:
        raise ShareCorrupted(f"zfec could not decode: {e}") from e


def decode_segment(shares: Mapping[int, bytes], red: Redundancy, segment_len: int) -> bytes:
    """Rebuild a ``segment_len``-byte segment from any ``k`` distinct shares.

    ``shares`` maps share number (0..n-1) to bytes; extra shares are ignored.
    Raises :class:`~xcore.errors.NotEnoughShares` with fewer than ``k``, and
    :class:`~xcore.errors.ShareCorrupted` if the share sizes do not fit
    ``segment_len``. Shares must already be verified against their hashes:
    erasure decoding cannot detect a wrong byte.
    """
    return b"".join(segment_pieces(shares, red, segment_len))


def segment_pieces(shares: Mapping[int, bytes], red: Redundancy, segment_len: int
                   ) -> list[bytes | memoryview]:
    """:func:`decode_segment` without joining: pieces (the primary blocks, the
    last cut to length) whose concatenation is the segment, so a reader that
    streams them on saves a copy of the whole segment. Same checks and errors."""
    expected = share_size(segment_len, red)
    if segment_len > red.k * MAX_SHARE_SIZE:
        raise InvalidParameter(f"segment of {segment_len} bytes is larger than {red.k} * 2 MiB")
    for num, share in shares.items():
        if len(share) != expected:
            raise ShareCorrupted(
                f"share {num} is {len(share)} bytes, a {segment_len}-byte segment "
                f"has {expected}-byte shares"
            )
    pieces: list[bytes | memoryview] = []
    left = segment_len
    for block in _decode_primaries(shares, red):
        if left <= 0:
            break
        pieces.append(block if len(block) <= left else memoryview(block)[:left])
        left -= len(block)
    return pieces


def regenerate(
    shares: Mapping[int, bytes], red: Redundancy, wanted: Sequence[int]
) -> dict[int, bytes]:
    """Rebuild shares ``wanted`` bit for bit from any ``k`` of the others.

    Needs no segment length and no key: the padded primary blocks are
    recovered and re-encoded. Used for owner-less repair.
    """
    for num in wanted:
        if not isinstance(num, int) or not 0 <= num < red.n:
            raise InvalidParameter(f"wanted share number {num!r} out of range for {red}")
    primaries = _decode_primaries(shares, red)
    if not wanted:
        return {}
    if red.k == 1 or not primaries[0]:
        return {num: primaries[0] for num in wanted}
    want = tuple(sorted(set(wanted)))
    try:
        out = zfec.Encoder(red.k, red.n).encode(primaries, want)
    except zfec.Error as e:
        raise ShareCorrupted(f"zfec could not re-encode: {e}") from e
    return {num: bytes(share) for num, share in zip(want, out)}
