from __future__ import annotations

import hashlib
import io
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xcore.errors import InvalidParameter, NotEnoughShares, ShareCorrupted, XcoreError
from xcore.shard.erasure import (
    MAX_SHARE_SIZE,
    Redundancy,
    decode_segment,
    segment_pieces,
    encode_segment,
    regenerate,
    segment_size,
    share_size,
    split_segments,
)


@st.composite
def redundancies(draw: st.DrawFn, max_n: int = 12) -> Redundancy:
    n = draw(st.integers(min_value=1, max_value=max_n))
    k = draw(st.integers(min_value=1, max_value=n))
    return Redundancy(k, n)


# -- Redundancy ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, k, n", [("4/8", 4, 8), ("1/3", 1, 3), (" 10 / 30 ", 10, 30), ("256/256", 256, 256)]
)
def test_parse(text: str, k: int, n: int) -> None:
    red = Redundancy.parse(text)
    assert (red.k, red.n) == (k, n)
    assert Redundancy.parse(str(red)) == red


@pytest.mark.parametrize(
    "text", ["", "4", "4/", "/8", "4-8", "0/4", "5/4", "1/257", "-1/4", "4/8/9", "a/b", "4.0/8"]
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidParameter):
        Redundancy.parse(text)


def test_validation_and_properties() -> None:
    with pytest.raises(InvalidParameter):
        Redundancy(0, 1)
    with pytest.raises(InvalidParameter):
        Redundancy(3, 2)
    with pytest.raises(InvalidParameter):
        Redundancy(1, 257)
    with pytest.raises(InvalidParameter):
        Redundancy(True, 2.0)  # type: ignore[arg-type]
    assert Redundancy(1, 3).is_mirroring and not Redundancy(4, 8).is_mirroring
    # DESIGN.md: repair threshold k + ceil((n - k) / 3)
    assert Redundancy(4, 8).repair_threshold == 6
    assert Redundancy(10, 30).repair_threshold == 17
    assert Redundancy(1, 3).repair_threshold == 2
    assert Redundancy(5, 5).repair_threshold == 5
    with pytest.raises(AttributeError):
        Redundancy(4, 8).k = 5  # type: ignore[misc]


def test_segment_size_keeps_shares_within_2_mib() -> None:
    assert segment_size(Redundancy(4, 8)) == 4 * MAX_SHARE_SIZE
    assert segment_size(Redundancy(1, 3)) == MAX_SHARE_SIZE
    red = Redundancy(2, 3)
    shares = encode_segment(bytes(segment_size(red)), red)
    assert {len(s) for s in shares} == {MAX_SHARE_SIZE}
    with pytest.raises(InvalidParameter):
        encode_segment(bytes(segment_size(red) + 1), red)


# -- encode / decode ----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data(), red=redundancies(), segment=st.binary(max_size=500))
@example(data=None, red=Redundancy(3, 5), segment=b"")
def test_any_k_shares_decode(data: st.DataObject | None, red: Redundancy, segment: bytes) -> None:
    shares = encode_segment(segment, red)
    assert len(shares) == red.n
    assert {len(s) for s in shares} == {share_size(len(segment), red)}
    if data is None:
        chosen = list(range(red.n - red.k, red.n))
    else:
        chosen = data.draw(st.permutations(range(red.n)))[: red.k]
    assert decode_segment({i: shares[i] for i in chosen}, red, len(segment)) == segment
    pieces = segment_pieces({i: shares[i] for i in chosen}, red, len(segment))
    assert b"".join(pieces) == segment and len(pieces) <= red.k
    assert all(len(p) for p in pieces)  # no empty piece (nothing written for nothing)


def test_all_k_subsets_decode_for_small_code() -> None:
    from itertools import combinations

    red = Redundancy(3, 6)
    segment = random.Random(0).randbytes(1001)
    shares = encode_segment(segment, red)
    for chosen in combinations(range(6), 3):
        assert decode_segment({i: shares[i] for i in chosen}, red, 1001) == segment


def test_shares_are_systematic() -> None:
    red = Redundancy(4, 8)
    segment = bytes(range(10))
    shares = encode_segment(segment, red)
    assert shares[:4] == [b"\x00\x01\x02", b"\x03\x04\x05", b"\x06\x07\x08", b"\x09\x00\x00"]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), red=redundancies(), segment=st.binary(max_size=400))
def test_regenerated_shares_are_bit_identical(
    data: st.DataObject, red: Redundancy, segment: bytes
) -> None:
    shares = encode_segment(segment, red)
    order = data.draw(st.permutations(range(red.n)))
    have = {i: shares[i] for i in order[: red.k]}
    wanted = order[red.k :]
    out = regenerate(have, red, wanted)
    assert out == {i: shares[i] for i in wanted}
    # The regenerated share keeps its content address.
    for i, share in out.items():
        assert hashlib.sha256(share).digest() == hashlib.sha256(shares[i]).digest()


@settings(max_examples=20, deadline=None)
@given(n=st.integers(min_value=1, max_value=10), segment=st.binary(max_size=300))
def test_k1_is_mirroring(n: int, segment: bytes) -> None:
    red = Redundancy(1, n)
    shares = encode_segment(segment, red)
    assert shares == [segment] * n
    for i in range(n):
        assert decode_segment({i: shares[i]}, red, len(segment)) == segment
    assert regenerate({n - 1: segment}, red, list(range(n))) == {i: segment for i in range(n)}


def test_wide_code() -> None:
    red = Redundancy(200, 256)
    segment = random.Random(1).randbytes(4000)
    shares = encode_segment(segment, red)
    have = {i: shares[i] for i in range(56, 256)}
    assert decode_segment(have, red, len(segment)) == segment
    assert regenerate(have, red, [0, 55]) == {0: shares[0], 55: shares[55]}


def test_not_enough_shares() -> None:
    red = Redundancy(4, 8)
    shares = encode_segment(b"hello world", red)
    with pytest.raises(NotEnoughShares) as info:
        decode_segment({0: shares[0], 5: shares[5], 7: shares[7]}, red, 11)
    assert isinstance(info.value, XcoreError)
    with pytest.raises(NotEnoughShares):
        regenerate({1: shares[1]}, red, [0])
    with pytest.raises(NotEnoughShares):
        decode_segment({}, red, 11)


def test_mismatched_share_sizes() -> None:
    red = Redundancy(2, 4)
    shares = encode_segment(b"0123456789", red)
    with pytest.raises(ShareCorrupted):
        decode_segment({0: shares[0], 1: shares[1] + b"x"}, red, 10)
    with pytest.raises(ShareCorrupted):
        decode_segment({0: shares[0], 1: shares[1]}, red, 20)  # wrong segment length
    with pytest.raises(ShareCorrupted):
        regenerate({0: shares[0], 3: shares[3][:-1]}, red, [1])


@pytest.mark.parametrize("bad", [-1, 4, 100])
def test_share_numbers_out_of_range(bad: int) -> None:
    red = Redundancy(2, 4)
    shares = encode_segment(b"abcd", red)
    with pytest.raises(InvalidParameter):
        decode_segment({0: shares[0], bad: shares[1]}, red, 4)
    with pytest.raises(InvalidParameter):
        regenerate({0: shares[0], 1: shares[1]}, red, [bad])


def test_regenerate_nothing() -> None:
    red = Redundancy(2, 4)
    shares = encode_segment(b"abcd", red)
    assert regenerate({0: shares[0], 2: shares[2]}, red, []) == {}


# -- segmenting ---------------------------------------------------------------


class ShortReads(io.RawIOBase):
    def __init__(self, data: bytes, rng: random.Random) -> None:
        self._data = io.BytesIO(data)
        self._rng = rng

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._data.read(self._rng.randint(1, max(1, n)))


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=300),
    red=redundancies(max_n=5),
    max_share=st.integers(min_value=1, max_value=20),
    short=st.booleans(),
)
def test_split_segments(data: bytes, red: Redundancy, max_share: int, short: bool) -> None:
    stream = ShortReads(data, random.Random(len(data))) if short else io.BytesIO(data)
    size = segment_size(red, max_share_size=max_share)
    segments = list(split_segments(stream, red, max_share_size=max_share))  # type: ignore[arg-type]
    assert b"".join(segments) == data
    assert all(len(s) == size for s in segments[:-1])
    assert all(0 < len(s) <= size for s in segments)
    assert len(segments) == -(-len(data) // size)
    for s in segments:
        assert max(map(len, encode_segment(s, red))) <= max_share


def test_split_empty_and_exact() -> None:
    red = Redundancy(2, 3)
    assert list(split_segments(io.BytesIO(b""), red)) == []
    assert list(split_segments(io.BytesIO(b"abcd"), red, max_share_size=2)) == [b"abcd"]


def test_split_real_size() -> None:
    red = Redundancy(1, 2)
    data = bytes(MAX_SHARE_SIZE + 5)
    assert [len(s) for s in split_segments(io.BytesIO(data), red)] == [MAX_SHARE_SIZE, 5]


def test_bad_sizes() -> None:
    with pytest.raises(InvalidParameter):
        segment_size(Redundancy(1, 1), max_share_size=0)
    with pytest.raises(InvalidParameter):
        share_size(-1, Redundancy(1, 1))
