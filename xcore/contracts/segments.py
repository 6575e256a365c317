"""Segment records: what the hosts of a segment need to repair it without its owner.

When a client uploads a segment it publishes, signed with the owner's key, a
``seg`` record under the segment ID (DESIGN.md principle 9)::

    segment_id = SHA-256(b"xcore-seg-v1" || share_hash_0 || ... || share_hash_{n-1})[:20]

    value (msgpack map) = {"v": 1, "k": k, "n": n, "len": ciphertext bytes,
                           "shares": [share_hash_0, ...],
                           "until": unix time the repair authorisation ends,
                           "price": the highest price per GB-month a repair may agree}

Everything in it is public and reveals nothing of the plaintext: the shares
are ciphertext and named by hash. Because the share list is bound into the
key, nobody can publish a different list under the same segment ID.

The record is also the owner's *repair authorisation*: a host that receives
a regenerated share together with this record (signed by the owner, not
expired, listing that share hash) may keep it until ``until`` for that owner,
exactly as if the owner had granted it directly.

Metadata blobs (sealed manifests, the owner's sealed index) are segments
too: mirrored, ``k = 1`` and ``n`` copies, so ``shares`` lists the blob's
hash ``n`` times (:attr:`SegmentInfo.groups`). They are watched and
repaired like data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from xcore.codec import as_bytes, as_int, as_list, expect, pack, unpack_bounded
from xcore.crypto.identity import ID_BYTES, Identity
from xcore.dht.records import KindSpec, Record, register_kind
from xcore.errors import RecordRejected, RemoteProtocolError

SEG_TAG = b"xcore-seg-v1"
SEG_MAX_TTL = 400 * 24 * 3600
MAX_N = 256


def segment_id(share_hashes: list[bytes] | tuple[bytes, ...]) -> bytes:
    return hashlib.sha256(SEG_TAG + b"".join(share_hashes)).digest()[:ID_BYTES]


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    segment_id: bytes
    k: int
    n: int
    length: int
    shares: tuple[bytes, ...]
    until: int
    price: int
    owner_pubkey: bytes

    @property
    def threshold(self) -> int:
        """Repair when fewer shares than this are healthy: k + ceil((n-k)/3)."""
        return self.k + -(-(self.n - self.k) // 3)

    def index_of(self, share_hash: bytes) -> int:
        return self.shares.index(share_hash)

    @property
    def groups(self) -> list[list[int]]:
        """Share indices grouped by share hash, in index order: ``[[0], [1],
        ...]`` when every share differs (erasure coding), one group of all
        ``n`` for mirrors (``k = 1``: the n shares are the same bytes, so every
        holder of the hash holds one copy, and n copies need n holders)."""
        by_hash: dict[bytes, list[int]] = {}
        for i, h in enumerate(self.shares):
            by_hash.setdefault(h, []).append(i)
        return list(by_hash.values())


def parse_segment(rec: Record) -> SegmentInfo:
    """Decode and check a ``seg`` record's value; raises RemoteProtocolError."""
    doc = unpack_bounded(rec.value, 16 * 1024, 300)
    expect(isinstance(doc, dict) and doc.get("v") == 1, "seg record: bad version")
    n = as_int(doc.get("n"), "n", 1, MAX_N)
    k = as_int(doc.get("k"), "k", 1, n)
    shares = tuple(as_bytes(h, "share hash", size=32) for h in as_list(doc.get("shares"), "shares", MAX_N))
    expect(len(shares) == n, "seg record: expected n share hashes")
    expect(segment_id(shares) == rec.key, "seg record: key does not match its shares")
    return SegmentInfo(rec.key, k, n, as_int(doc.get("len"), "len", 0, 1 << 40), shares,
                       as_int(doc.get("until"), "until", 0, 1 << 40),
                       as_int(doc.get("price"), "price", 0, 1 << 62), rec.signer_pubkey)


def _check(rec: Record) -> None:
    try:
        parse_segment(rec)
    except RemoteProtocolError as exc:
        raise RecordRejected(f"bad seg record: {exc}") from exc


register_kind(KindSpec("seg", max_value=5 * 1024, max_ttl=SEG_MAX_TTL, max_entries=8,
                       validate_value=_check))


def make_segment_record(owner: Identity, share_hashes: list[bytes], k: int, n: int, length: int,
                        until: int, price: int, now: float) -> Record:
    value = pack({"v": 1, "k": k, "n": n, "len": length, "shares": list(share_hashes),
                  "until": until, "price": price})
    return Record.create(owner, "seg", segment_id(share_hashes), value, int(now * 1000),
                         min(until, int(now) + SEG_MAX_TTL))


def decode_segment_record(blob: bytes, now: float) -> tuple[Record, SegmentInfo]:
    """Parse a seg record received outside the DHT (in a PUT); fully validated."""
    from xcore.dht.records import decode_and_validate
    rec = decode_and_validate(blob, now)
    if rec.kind != "seg":
        raise RecordRejected("not a seg record")
    return rec, parse_segment(rec)
