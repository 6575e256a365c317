from __future__ import annotations

import copy
import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xcore.client.keys import OwnerKeys
from xcore.client.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_NAME,
    Manifest,
    SegmentRef,
    ShareRef,
    open_manifest,
    seal_manifest,
)
from xcore.codec import pack
from xcore.errors import (
    DecryptionFailed,
    InvalidParameter,
    MessageTooLarge,
    RemoteProtocolError,
)
from xcore.shard.erasure import MAX_SHARE_SIZE

KEYS = OwnerKeys(bytes(range(32)))
OTHER = OwnerKeys(bytes(range(1, 33)))
FILE_ID = bytes(range(16))

hash32 = st.binary(min_size=32, max_size=32)
id20 = st.binary(min_size=20, max_size=20)
addrs = st.text(min_size=1, max_size=40)


@st.composite
def manifests(draw: st.DrawFn, max_segments: int = 4) -> Manifest:
    n = draw(st.integers(1, 8))
    k = draw(st.integers(1, n))
    segment_size = draw(st.integers(1, 64))
    count = draw(st.integers(0, max_segments))
    lengths = [segment_size] * (count - 1) + [draw(st.integers(1, segment_size))] if count else []
    segments = []
    for i, length in enumerate(lengths):
        indices = draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=n, unique=True))
        shares = tuple(ShareRef(j, draw(hash32), -(-length // k), draw(hash32), draw(id20),
                                draw(addrs)) for j in indices)
        segments.append(SegmentRef(i, length, shares))
    return Manifest(1, draw(st.binary(min_size=16, max_size=16)), draw(st.text(max_size=60)),
                    sum(lengths), draw(st.integers(0, 2**40)), k, n, segment_size,
                    tuple(segments))


def share(i: int, size: int, host: int = 0) -> ShareRef:
    return ShareRef(i, bytes([i]) * 32, size, bytes([i + 1]) * 32, bytes([host]) * 20,
                    f"10.0.0.{host}:4000")


def sample(**changes: Any) -> Manifest:
    """4/8, 2 MiB shares: two full segments and a 10-byte one, 5 shares each."""
    seg = 4 * MAX_SHARE_SIZE
    segments = (
        SegmentRef(0, seg, tuple(share(i, MAX_SHARE_SIZE) for i in range(5))),
        SegmentRef(1, seg, tuple(share(i, MAX_SHARE_SIZE) for i in (7, 1, 2, 5, 3))),
        SegmentRef(2, 10, tuple(share(i, 3) for i in range(4))),
    )
    m = Manifest(1, FILE_ID, "photos/été.jpg", 2 * seg + 10, 1_700_000_000, 4, 8, seg, segments)
    return dataclasses.replace(m, **changes)


# -- round trips ------------------------------------------------------------------


@given(manifests())
@example(sample())
@example(sample(segments=(), size=0))
@settings(max_examples=150, deadline=None)
def test_decode_encode_round_trip(m: Manifest) -> None:
    assert Manifest.decode(m.encode()) == m


@given(manifests(max_segments=2))
@settings(max_examples=50, deadline=None)
def test_sealed_round_trip(m: Manifest) -> None:
    blob = seal_manifest(m, KEYS)
    assert open_manifest(blob, KEYS, m.file_id) == m
    assert seal_manifest(m, KEYS) == blob  # deterministic: a stable content address


def test_limits_round_trip() -> None:
    n = 256
    shares = tuple(ShareRef(i, bytes(32), 1, bytes(32), bytes(20), "h" * 128) for i in range(n))
    m = Manifest(1, FILE_ID, "é" * MAX_NAME, 100, 2**40, 100, n, 100,
                 (SegmentRef(0, 100, shares),))
    assert Manifest.decode(m.encode()) == m
    assert open_manifest(seal_manifest(m, KEYS), KEYS, FILE_ID) == m


def test_mirroring_share_is_the_whole_segment() -> None:
    m = Manifest(1, FILE_ID, "a", 5, 0, 1, 3, 8, (SegmentRef(0, 5, (share(0, 5), share(2, 5))),))
    assert Manifest.decode(m.encode()) == m
    with pytest.raises(InvalidParameter, match="share size"):
        Manifest(1, FILE_ID, "a", 5, 0, 1, 3, 8, (SegmentRef(0, 5, (share(0, 4),)),)).encode()


def test_sealed_layout() -> None:
    m = sample()
    blob = seal_manifest(m, KEYS)
    assert blob[:5] == b"xcMF\x01"
    assert blob[5:21] == FILE_ID
    assert len(blob) == 21 + 24 + 16 + len(m.encode())
    assert "photos".encode() not in blob and bytes([0]) * 20 not in blob


# -- the rules, on encode (local mistake) and decode (peer's mistake) -----------------


BAD = [
    (dict(k=9), "n: out of range"),
    (dict(k=0), "k: out of range"),
    (dict(n=300), "n: out of range"),
    (dict(file_id=bytes(15)), "file ID"),
    (dict(name="x" * (MAX_NAME + 1)), "file name"),
    (dict(size=5), "do not add up"),
    (dict(created=-1), "created"),
    (dict(version=2), "unsupported manifest version 2"),
    (dict(segment_size=4 * MAX_SHARE_SIZE + 1), "segment size"),
    (dict(segments=(SegmentRef(0, 10, tuple(share(i, 3) for i in range(4))),), size=10,
          segment_size=20), None),  # a single short segment is fine
    (dict(segments=(SegmentRef(1, 10, tuple(share(i, 3) for i in range(4))),), size=10),
     "out of order"),
    (dict(segments=(SegmentRef(0, 10, tuple(share(i, 3) for i in range(3))),), size=10),
     "fewer than k=4"),
    (dict(segments=(SegmentRef(0, 10, tuple(share(i, 3) for i in (0, 1, 2, 2))),), size=10),
     "duplicate share index"),
    (dict(segments=(SegmentRef(0, 10, tuple(share(i, 3) for i in (0, 1, 2, 8))),), size=10),
     "share index"),
    (dict(segments=(SegmentRef(0, 10, tuple(share(i, 4) for i in range(4))),), size=10),
     "share size"),
    (dict(segments=(SegmentRef(0, 10, tuple(share(i, 3) for i in range(9))),), size=10),
     "more than 8"),
    (dict(segments=(SegmentRef(0, 0, tuple(share(i, 0) for i in range(4))),), size=0),
     "segment length"),
    (dict(segments=(SegmentRef(0, 10, tuple(share(i, 3) for i in range(4))),
                    SegmentRef(1, 10, tuple(share(i, 3) for i in range(4)))), size=20),
     "segment length"),  # only the last segment may be short
    (dict(segments=(SegmentRef(0, 10, (ShareRef(0, bytes(31), 3, bytes(32), bytes(20), "a"),)
                               + tuple(share(i, 3) for i in (1, 2, 3))),), size=10),
     "share hash"),
    (dict(segments=(SegmentRef(0, 10, (ShareRef(0, bytes(32), 3, bytes(32), bytes(20), ""),)
                               + tuple(share(i, 3) for i in (1, 2, 3))),), size=10),
     "host address"),
    (dict(segments=(SegmentRef(0, 10, (ShareRef(0, bytes(32), 3, bytes(32), bytes(19), "a"),)
                               + tuple(share(i, 3) for i in (1, 2, 3))),), size=10),
     "host ID"),
]


@pytest.mark.parametrize("changes, match", BAD)
def test_encode_refuses_what_decode_would(changes: dict[str, Any], match: str | None) -> None:
    m = sample(**changes)
    if match is None:
        assert Manifest.decode(m.encode()) == m
        return
    with pytest.raises(InvalidParameter, match=match):
        m.encode()


@pytest.mark.parametrize("changes, match", [b for b in BAD if b[1] is not None])
def test_decode_refuses_bad_manifests(changes: dict[str, Any], match: str) -> None:
    data = pack(sample(**changes).wire())
    with pytest.raises(RemoteProtocolError, match=match):
        Manifest.decode(data)


def test_encode_refuses_unencodable_values() -> None:
    with pytest.raises(InvalidParameter):
        sample(name="\ud800").encode()  # a lone surrogate is not UTF-8
    with pytest.raises(InvalidParameter):
        sample(file_id=bytearray(16)).encode()


def test_too_large_manifest_is_refused() -> None:
    shares = tuple(ShareRef(i, bytes(32), 1, bytes(32), bytes(20), "h" * 100) for i in range(256))
    count = MAX_MANIFEST_BYTES // (256 * 150) + 2
    segs = tuple(SegmentRef(i, 1, shares) for i in range(count))
    m = Manifest(1, FILE_ID, "big", count, 0, 1, 256, 1, segs)
    with pytest.raises(InvalidParameter, match="too many segments"):
        m.encode()
    with pytest.raises(MessageTooLarge):
        Manifest.decode(pack(m.wire()))


def test_decode_rejects_other_documents() -> None:
    for doc in (None, [], ["index", 1, []], ["manifest"], {"manifest": 1},
                ["manifest", True, FILE_ID, "", 0, 0, 1, 1, 1, []]):
        with pytest.raises(RemoteProtocolError):
            Manifest.decode(pack(doc))


# -- fuzz -------------------------------------------------------------------------


@given(st.binary(max_size=512))
@example(b"")
@example(b"\xc1")
@example(b"\x9a\xa8manifest\x01")
@settings(max_examples=300, deadline=None)
def test_decode_any_bytes_raises_only_protocol_errors(data: bytes) -> None:
    try:
        Manifest.decode(data)
    except RemoteProtocolError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=4),
    max_leaves=20,
)


def _leaf_paths(doc: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [path]
    if isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(_leaf_paths(v, path + (i,)))
    return out


@given(manifests(max_segments=2), st.data())
@settings(max_examples=300, deadline=None)
def test_any_mutated_field_is_rejected_or_valid(m: Manifest, data: st.DataObject) -> None:
    wire: Any = copy.deepcopy(m.wire())
    paths = _leaf_paths(wire)
    path = data.draw(st.sampled_from(paths[1:] or paths))
    junk = data.draw(msgpack_values)
    if path:
        parent = wire
        for i in path[:-1]:
            parent = parent[i]
        parent[path[-1]] = junk
    else:
        wire = junk
    raw = msgpack.packb(wire, use_bin_type=True)
    try:
        decoded = Manifest.decode(raw)
    except RemoteProtocolError:
        return
    assert Manifest.decode(decoded.encode()) == decoded


# -- sealing ------------------------------------------------------------------------


def test_open_with_another_owners_key_fails() -> None:
    blob = seal_manifest(sample(), KEYS)
    with pytest.raises(DecryptionFailed, match="another owner's file, or it was tampered"):
        open_manifest(blob, OTHER, FILE_ID)


def test_open_as_another_file_fails() -> None:
    blob = seal_manifest(sample(), KEYS)
    with pytest.raises(DecryptionFailed, match="belongs to another file"):
        open_manifest(blob, KEYS, bytes(16))
    # rewriting the header's file ID does not help: the box key depends on it
    forged = blob[:5] + bytes(16) + blob[21:]
    with pytest.raises(DecryptionFailed):
        open_manifest(forged, KEYS, bytes(16))


_BLOB = seal_manifest(sample(segments=(SegmentRef(0, 10, tuple(share(i, 3) for i in range(4))),),
                             size=10), KEYS)


@given(st.integers(0, len(_BLOB) - 1), st.integers(1, 255))
@example(0, 1)
@example(4, 1)
@example(5, 1)
@example(len(_BLOB) - 1, 1)
@settings(max_examples=300, deadline=None)
def test_any_tampered_byte_is_decryption_failed(i: int, x: int) -> None:
    blob = bytearray(_BLOB)
    blob[i] ^= x
    with pytest.raises(DecryptionFailed):
        open_manifest(bytes(blob), KEYS, FILE_ID)


def test_truncated_extended_and_oversized_blobs_fail() -> None:
    for blob in (b"", _BLOB[:60], _BLOB[:-1], _BLOB + b"\x00", bytes(MAX_SHARE_SIZE + 1)):
        with pytest.raises(DecryptionFailed):
            open_manifest(blob, KEYS, FILE_ID)


def test_unknown_sealed_version_message() -> None:
    blob = _BLOB[:4] + b"\x02" + _BLOB[5:]
    with pytest.raises(DecryptionFailed, match="unsupported format version 2"):
        open_manifest(blob, KEYS, FILE_ID)


def test_open_needs_a_16_byte_file_id() -> None:
    with pytest.raises(InvalidParameter):
        open_manifest(_BLOB, KEYS, bytes(15))
