"""The file manifest: what an owner needs to find and rebuild one upload.

DESIGN.md principle 7: the manifest (name, size, segment list) is encrypted
with the owner's key before it leaves the machine and is stored in the
network like any other blob, named by the SHA-256 of its sealed bytes. The
file's AES-256-CTR key is not in it: it is derived again from the master
secret and the ``file_id`` (:meth:`xcore.client.keys.OwnerKeys.file_key`).

A file of ``size`` bytes is one CTR ciphertext stream of ``size`` bytes, cut
into segments of ``segment_size`` bytes (the last one shorter); each segment
is erasure-coded k-of-n into shares of ``ceil(length / k)`` bytes
(:mod:`xcore.shard.erasure`). The manifest lists, per segment, the shares that
were placed: their index in 0..n-1, SHA-256 name, size, Merkle root and the
host they went to. ``decode`` checks all of that arithmetic, so a download
never has to.

Manifest wire layout (msgpack array, version first after the tag)::

    ["manifest", 1, file_id:bin16, name:str, size:uint, created:uint (unix s),
     k:uint, n:uint, segment_size:uint, [segment, ...]]
    segment = [index:uint, length:uint, [share, ...]]
    share   = [index:uint, hash:bin32, size:uint, merkle_root:bin32,
               host_id:bin20, host_addr:str]

Sealed manifest layout (what is stored in the network)::

    offset  size  field
    0       4     magic b"xcMF"
    4       1     version = 1
    5       16    file_id
    21      ...   OwnerKeys.seal(b"manifest-v1" || file_id, encoded manifest)
                  = nonce (24) || Poly1305 tag (16) || ciphertext

The box key depends on ``file_id``, so a blob cannot be passed off as the
manifest of another file; a blob that is not byte-for-byte what the owner
sealed fails the Poly1305 check.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xcore.client.keys import BOX_OVERHEAD, OwnerKeys
from xcore.codec import as_bytes, as_int, as_list, as_str, expect, pack, unpack_bounded
from xcore.crypto.identity import ID_BYTES
from xcore.errors import DecryptionFailed, InvalidParameter, RemoteProtocolError
from xcore.shard.erasure import MAX_N, MAX_SHARE_SIZE

MANIFEST_TAG = "manifest"
MANIFEST_VERSION = 1
FILE_ID_SIZE = 16
HASH_SIZE = 32
MAX_NAME = 4096  # characters
MAX_ADDR = 128  # "host:port" characters
MAX_TIME = 2**40
MAX_FILE_SIZE = 2**63 - 1
MAX_SEGMENTS = 1 << 16

SEALED_MAGIC = b"xcMF"
SEALED_VERSION = 1
_SEALED_HEADER = struct.Struct(">4sB16s")
SEALED_HEADER_SIZE = _SEALED_HEADER.size  # 21
MANIFEST_PURPOSE = b"manifest-v1"
# A sealed manifest is stored like a share, so it is at most one share's size.
MAX_SEALED_MANIFEST = MAX_SHARE_SIZE
MAX_MANIFEST_BYTES = MAX_SEALED_MANIFEST - SEALED_HEADER_SIZE - BOX_OVERHEAD

Host = tuple[bytes, str]  # (host node ID, "host:port")


def decode_host(v: Any, what: str) -> Host:
    """``[host_id:bin20, host_addr:str]`` -> ``(host_id, host_addr)``; RemoteProtocolError."""
    v = as_list(v, what, 2)
    expect(len(v) == 2, f"{what}: expected 2 fields")
    host_id = as_bytes(v[0], f"{what} ID", size=ID_BYTES)
    addr = as_str(v[1], f"{what} address", MAX_ADDR)
    expect(bool(addr), f"{what} address: empty")
    return (host_id, addr)


def check_local(wire: Any, parse: Callable[[Any], object], what: str) -> bytes:
    """Run the decoder's checks on our own ``wire`` form and pack it.

    Whatever we encode, every peer can decode: a violation is the caller's
    mistake and raises :class:`InvalidParameter`.
    """
    try:
        parse(wire)
        return pack(wire)
    except RemoteProtocolError as exc:
        raise InvalidParameter(f"invalid {what}: {exc}") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. unencodable str
        raise InvalidParameter(f"invalid {what}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ShareRef:
    """One placed share of a segment: erasure index, SHA-256 name, size, Merkle root, host."""

    index: int
    hash: bytes
    size: int
    merkle_root: bytes
    host_id: bytes
    host_addr: str

    def wire(self) -> list[Any]:
        return [self.index, self.hash, self.size, self.merkle_root, self.host_id, self.host_addr]

    @classmethod
    def from_wire(cls, v: Any, n: int, share_size: int) -> ShareRef:
        v = as_list(v, "share", 6)
        expect(len(v) == 6, "share: expected 6 fields")
        return cls(
            index=as_int(v[0], "share index", 0, n - 1),
            hash=as_bytes(v[1], "share hash", size=HASH_SIZE),
            size=as_int(v[2], "share size", share_size, share_size),
            merkle_root=as_bytes(v[3], "share Merkle root", size=HASH_SIZE),
            host_id=as_bytes(v[4], "share host ID", size=ID_BYTES),
            host_addr=_addr(v[5], "share host address"),
        )


def _addr(v: Any, what: str) -> str:
    addr = as_str(v, what, MAX_ADDR)
    expect(bool(addr), f"{what}: empty")
    return addr


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """Segment ``index``: ``length`` bytes of ciphertext and the shares that hold it."""

    index: int
    length: int
    shares: tuple[ShareRef, ...]

    def wire(self) -> list[Any]:
        return [self.index, self.length, [s.wire() for s in self.shares]]


@dataclass(frozen=True, slots=True)
class Manifest:
    """The manifest of one upload (see the module docstring for the rules ``decode`` checks)."""

    version: int
    file_id: bytes
    name: str
    size: int
    created: int
    k: int
    n: int
    segment_size: int
    segments: tuple[SegmentRef, ...]

    def segment_offset(self, index: int) -> int:
        """Offset of segment ``index`` in the ciphertext stream."""
        return index * self.segment_size

    def wire(self) -> list[Any]:
        return [MANIFEST_TAG, self.version, self.file_id, self.name, self.size, self.created,
                self.k, self.n, self.segment_size, [s.wire() for s in self.segments]]

    def encode(self) -> bytes:
        """msgpack bytes; raises :class:`InvalidParameter` if ``decode`` would refuse them."""
        data = check_local(self.wire(), Manifest.from_wire, "manifest")
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidParameter(
                f"the manifest is {len(data)} bytes, more than {MAX_MANIFEST_BYTES}: "
                "too many segments or shares for one manifest")
        return data

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse and check; raises :class:`RemoteProtocolError` (or a subclass), nothing else."""
        return cls.from_wire(unpack_bounded(data, MAX_MANIFEST_BYTES, MAX_SEGMENTS))

    @classmethod
    def from_wire(cls, doc: Any) -> Manifest:
        doc = as_list(doc, "manifest", 10)
        expect(len(doc) == 10, "manifest: expected 10 fields")
        expect(isinstance(doc[0], str) and doc[0] == MANIFEST_TAG, "not a manifest")
        version = as_int(doc[1], "manifest version", 0, 2**32)
        expect(version == MANIFEST_VERSION, f"unsupported manifest version {version}")
        k = as_int(doc[6], "k", 1, MAX_N)
        n = as_int(doc[7], "n", k, MAX_N)
        segment_size = as_int(doc[8], "segment size", 1, k * MAX_SHARE_SIZE)
        size = as_int(doc[4], "file size", 0, MAX_FILE_SIZE)
        raw_segments = as_list(doc[9], "segments", MAX_SEGMENTS)
        segments: list[SegmentRef] = []
        total = 0
        last = len(raw_segments) - 1
        for i, raw in enumerate(raw_segments):
            seg = as_list(raw, "segment", 3)
            expect(len(seg) == 3, "segment: expected 3 fields")
            expect(as_int(seg[0], "segment index", 0, MAX_SEGMENTS) == i,
                   "segments out of order")
            # split_segments: every segment but the last is full
            lo = 1 if i == last else segment_size
            length = as_int(seg[1], "segment length", lo, segment_size)
            share_size = -(-length // k)
            raw_shares = as_list(seg[2], "shares", n)
            expect(len(raw_shares) >= k, f"segment {i}: fewer than k={k} shares")
            shares = tuple(ShareRef.from_wire(s, n, share_size) for s in raw_shares)
            expect(len({s.index for s in shares}) == len(shares),
                   f"segment {i}: duplicate share index")
            segments.append(SegmentRef(i, length, shares))
            total += length
        expect(total == size, "segment lengths do not add up to the file size")
        return cls(
            version=version,
            file_id=as_bytes(doc[2], "file ID", size=FILE_ID_SIZE),
            name=as_str(doc[3], "file name", MAX_NAME),
            size=size,
            created=as_int(doc[5], "created", 0, MAX_TIME),
            k=k,
            n=n,
            segment_size=segment_size,
            segments=tuple(segments),
        )


def _purpose(file_id: bytes) -> bytes:
    return MANIFEST_PURPOSE + file_id


def seal_manifest(manifest: Manifest, keys: OwnerKeys) -> bytes:
    """Encrypt ``manifest`` for storage in the network (layout in the module docstring).

    Deterministic: sealing the same manifest twice gives the same blob, so
    its SHA-256 name is stable.
    """
    body = manifest.encode()
    header = _SEALED_HEADER.pack(SEALED_MAGIC, SEALED_VERSION, manifest.file_id)
    return header + keys.seal(_purpose(manifest.file_id), body)


def open_manifest(blob: bytes, keys: OwnerKeys, file_id: bytes) -> Manifest:
    """Decrypt and decode the sealed manifest of ``file_id``.

    Raises :class:`DecryptionFailed` when the blob was not sealed by this
    owner for this file, or was changed in any byte.
    """
    if not isinstance(file_id, bytes) or len(file_id) != FILE_ID_SIZE:
        raise InvalidParameter(f"a file ID is {FILE_ID_SIZE} bytes")
    if len(blob) < SEALED_HEADER_SIZE + BOX_OVERHEAD:
        raise DecryptionFailed(f"sealed manifest is truncated ({len(blob)} bytes)")
    if len(blob) > MAX_SEALED_MANIFEST:
        raise DecryptionFailed(f"sealed manifest is too large ({len(blob)} bytes)")
    magic, version, blob_file_id = _SEALED_HEADER.unpack_from(blob)
    if magic != SEALED_MAGIC:
        raise DecryptionFailed("not a sealed xcore manifest (bad magic)")
    if version != SEALED_VERSION:
        raise DecryptionFailed(
            f"sealed manifest has unsupported format version {version} (a newer xcore?)")
    if blob_file_id != file_id:
        raise DecryptionFailed("this sealed manifest belongs to another file")
    try:
        body = keys.open(_purpose(file_id), blob[SEALED_HEADER_SIZE:])
    except DecryptionFailed as exc:
        raise DecryptionFailed(
            "the manifest does not open with this owner's key: another owner's file, "
            "or it was tampered with") from exc
    manifest = Manifest.decode(body)
    if manifest.file_id != file_id:
        raise RemoteProtocolError("manifest file ID does not match its sealed header")
    return manifest
