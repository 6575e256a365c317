"""Signed DHT records: the envelope, per-kind validation and the record store.

Every piece of state that more than one node needs is a record (DESIGN.md
principle 3)::

    Record = {kind, key, value, seq, expires, signer_pubkey, signature}

Wire layout (msgpack array, version first)::

    [1, kind:str, key:bin20, value:bin, seq:uint, expires:uint (unix s),
     signer_pubkey:bin32, signature:bin64]

The signature is Ed25519 over ``b"xcore-record-v1" || canonical([kind, key,
value, seq, expires, signer_pubkey])``.

Rules a node applies before it stores a record (and a client before it
believes one):

* the signature verifies and the kind is known;
* value and whole-record sizes are within the kind's bounds;
* it has not expired and does not expire further ahead than the kind's TTL
  (plus a little clock skew);
* it is not older than what is held from the same signer: records are ordered
  by ``(seq, expires)`` per (key, signer), highest wins, as in BEP 44;
* every key is multi-writer: one entry per signer, at most
  ``max_entries`` signers per key. Kinds that must have a single owner derive
  the key from the signer (``owner_key``), so only that owner can write it.
  A full key first drops its expired entries; then a kind with
  ``evict_oldest`` (host announcements, which every host renews) makes room
  for a record that expires later than the entry expiring first, which is
  dropped; any other kind refuses the newcomer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from xcore.codec import as_bytes, as_int, as_list, as_str, canonical, expect, pack, unpack_bounded
from xcore.crypto.identity import ID_BYTES, PUBKEY_BYTES, SIG_BYTES, Identity, node_id_of, verify
from xcore.errors import BadSignature, RecordRejected, RemoteProtocolError

RECORD_VERSION = 1
RECORD_TAG = b"xcore-record-v1"
KEY_TAG = b"xcore-key-v1"
MAX_RECORD_BYTES = 6 * 1024  # a record must fit in one datagram (<= 8 KiB) with headers
MAX_SEQ = 2**63 - 1
MAX_TIME = 2**40
CLOCK_SKEW = 600  # seconds of expiry a record may run ahead of the TTL
DEFAULT_TTL = 24 * 3600


def dht_key(name: bytes | str, namespace: bytes = b"") -> bytes:
    """The 160-bit DHT key for a name (SHA-256, domain-separated)."""
    if isinstance(name, str):
        name = name.encode()
    return hashlib.sha256(KEY_TAG + namespace + b"\x00" + name).digest()[:ID_BYTES]


def owner_key(kind: str, signer_pubkey: bytes, name: bytes = b"") -> bytes:
    """Key of a single-owner record: only ``signer_pubkey`` may write it."""
    return dht_key(signer_pubkey + name, namespace=b"owner:" + kind.encode())


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    key: bytes
    value: bytes
    seq: int
    expires: int
    signer_pubkey: bytes
    signature: bytes

    @staticmethod
    def signing_bytes(kind: str, key: bytes, value: bytes, seq: int, expires: int,
                      signer_pubkey: bytes) -> bytes:
        return RECORD_TAG + canonical([kind, key, value, seq, expires, signer_pubkey])

    @classmethod
    def create(cls, identity: Identity, kind: str, key: bytes, value: bytes, seq: int,
               expires: int) -> "Record":
        msg = cls.signing_bytes(kind, key, value, seq, expires, identity.pubkey)
        return cls(kind, key, value, seq, expires, identity.pubkey, identity.sign(msg))

    @property
    def signer_id(self) -> bytes:
        return node_id_of(self.signer_pubkey)

    @property
    def order(self) -> tuple[int, int]:
        return (self.seq, self.expires)

    def verify_signature(self) -> None:
        verify(self.signer_pubkey,
               self.signing_bytes(self.kind, self.key, self.value, self.seq, self.expires,
                                  self.signer_pubkey),
               self.signature)

    def encode(self) -> bytes:
        return pack([RECORD_VERSION, self.kind, self.key, self.value, self.seq, self.expires,
                     self.signer_pubkey, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> "Record":
        """Structural decode; raises :class:`RemoteProtocolError`. Does not verify."""
        doc = as_list(unpack_bounded(data, MAX_RECORD_BYTES, 16), "record", 8)
        expect(len(doc) == 8, "record: expected 8 fields")
        expect(type(doc[0]) is int and doc[0] == RECORD_VERSION, "record: unknown version")
        rec = cls(
            kind=as_str(doc[1], "record kind", 32),
            key=as_bytes(doc[2], "record key", size=ID_BYTES),
            value=as_bytes(doc[3], "record value", max_size=MAX_RECORD_BYTES),
            seq=as_int(doc[4], "record seq", 0, MAX_SEQ),
            expires=as_int(doc[5], "record expires", 0, MAX_TIME),
            signer_pubkey=as_bytes(doc[6], "record signer", size=PUBKEY_BYTES),
            signature=as_bytes(doc[7], "record signature", size=SIG_BYTES),
        )
        # one signed record, one byte string: refuse other msgpack spellings
        expect(rec.encode() == bytes(data), "record: non-canonical encoding")
        return rec


@dataclass(frozen=True)
class KindSpec:
    """What a node accepts for one record kind."""

    name: str
    max_value: int = 1024
    max_ttl: int = DEFAULT_TTL
    max_entries: int = 64
    owner_only: bool = False  # key must be owner_key(kind, signer, name) for some name
    evict_oldest: bool = False  # a full key drops its first-expiring entry for a later one
    owner_name: Callable[[Record], bytes] | None = None
    validate_value: Callable[[Record], None] | None = None  # raises RecordRejected


_KINDS: dict[str, KindSpec] = {}


def register_kind(spec: KindSpec) -> None:
    _KINDS[spec.name] = spec


def kind_spec(kind: str) -> KindSpec | None:
    return _KINDS.get(kind)


def known_kinds() -> list[str]:
    return sorted(_KINDS)


# "text": a short public note under a named key, one entry per signer.
# Used by `xcore dht put/get` and by tests.
register_kind(KindSpec("text", max_value=1024))


def validate(record: Record, now: float) -> KindSpec:
    """Check everything a node checks before storing ``record``.

    Raises :class:`RecordRejected` with the reason.
    """
    spec = _KINDS.get(record.kind)
    if spec is None:
        raise RecordRejected(f"unknown record kind {record.kind!r}")
    if len(record.value) > spec.max_value:
        raise RecordRejected(f"{record.kind} value too large ({len(record.value)} > {spec.max_value})")
    if record.expires <= now:
        raise RecordRejected("record has expired")
    if record.expires > now + spec.max_ttl + CLOCK_SKEW:
        raise RecordRejected("record expires too far ahead")
    if spec.owner_only:
        name = spec.owner_name(record) if spec.owner_name else b""
        if record.key != owner_key(record.kind, record.signer_pubkey, name):
            raise RecordRejected("record key is not owned by its signer")
    try:
        record.verify_signature()
    except BadSignature as exc:
        raise RecordRejected("record signature does not verify") from exc
    if spec.validate_value is not None:
        spec.validate_value(record)
    return spec


def decode_and_validate(data: bytes, now: float) -> Record:
    try:
        record = Record.decode(data)
    except RemoteProtocolError as exc:
        raise RecordRejected(f"malformed record: {exc}") from exc
    validate(record, now)
    return record


@dataclass
class StoreCounters:
    accepted: int = 0
    refreshed: int = 0
    stale: int = 0
    rejected: int = 0
    full: int = 0
    expired: int = 0
    evicted: int = 0  # entries dropped to make room (kinds with evict_oldest)


@dataclass
class RecordStore:
    """Records held by one node: key -> signer_id -> best record.

    ``received[key, signer]`` remembers when a record last arrived from the
    network, so republishing can skip records somebody else just republished
    (Kademlia paper, section 2.5).
    """

    max_keys: int = 100_000
    entries: dict[bytes, dict[bytes, Record]] = field(default_factory=dict)
    received: dict[tuple[bytes, bytes], float] = field(default_factory=dict)
    counters: StoreCounters = field(default_factory=StoreCounters)

    def put(self, record: Record, now: float) -> str:
        """Validate and store. Returns "stored", "refreshed" or "same";
        raises :class:`RecordRejected` (and counts it) otherwise."""
        try:
            spec = validate(record, now)
        except RecordRejected:
            self.counters.rejected += 1
            raise
        slot = self.entries.get(record.key)
        signer = record.signer_id
        if slot is None:
            if len(self.entries) >= self.max_keys:
                self.counters.full += 1
                raise RecordRejected("record store is full")
            slot = self.entries[record.key] = {}
        held = slot.get(signer)
        if held is not None:
            if held.order > record.order:
                self.counters.stale += 1
                raise RecordRejected("stale record: a newer one is held")
            if held.order == record.order:
                if held != record:
                    # same (seq, expires), different content: the first one wins
                    self.counters.stale += 1
                    raise RecordRejected("conflicting record with the same seq")
                self.received[(record.key, signer)] = now
                return "same"
        elif len(slot) >= spec.max_entries and not self._make_room(record, slot, spec, now):
            self.counters.full += 1
            raise RecordRejected("too many signers for this key")
        slot[signer] = record
        self.received[(record.key, signer)] = now
        if held is None:
            self.counters.accepted += 1
            return "stored"
        self.counters.refreshed += 1
        return "refreshed"

    def _make_room(self, record: Record, slot: dict[bytes, Record], spec: KindSpec,
                   now: float) -> bool:
        """Free one entry of the full ``slot`` for ``record``: an expired one,
        else (``spec.evict_oldest``) the one expiring first, if ``record``
        expires later. False if nothing may go."""
        self.counters.expired += self._drop_expired(record.key, slot, now)
        if len(slot) < spec.max_entries:
            return True
        if not spec.evict_oldest:
            return False
        victim = min(slot.values(), key=lambda r: (r.expires, r.seq, r.signer_pubkey))
        if victim.expires >= record.expires:
            return False
        del slot[victim.signer_id]
        self.received.pop((record.key, victim.signer_id), None)
        self.counters.evicted += 1
        return True

    def get(self, key: bytes, now: float) -> list[Record]:
        slot = self.entries.get(key)
        if not slot:
            return []
        return sorted((r for r in slot.values() if r.expires > now),
                      key=lambda r: (-r.seq, -r.expires, r.signer_pubkey))

    def _drop_expired(self, key: bytes, slot: dict[bytes, Record], now: float) -> int:
        gone = [s for s, r in slot.items() if r.expires <= now]
        for signer in gone:
            del slot[signer]
            self.received.pop((key, signer), None)
        return len(gone)

    def expire(self, now: float) -> int:
        dropped = 0
        for key in list(self.entries):
            slot = self.entries[key]
            dropped += self._drop_expired(key, slot, now)
            if not slot:
                del self.entries[key]
        self.counters.expired += dropped
        return dropped

    def __iter__(self) -> Iterator[Record]:
        for slot in self.entries.values():
            yield from slot.values()

    def __len__(self) -> int:
        return sum(len(s) for s in self.entries.values())

    def keys(self) -> Iterable[bytes]:
        return self.entries.keys()

    # -- persistence (msgpack, never pickle) ------------------------------

    def dump(self) -> list[bytes]:
        return [r.encode() for r in self]

    def load(self, blobs: list[bytes], now: float) -> int:
        """Re-validate and load records saved by :meth:`dump`; bad ones are dropped."""
        loaded = 0
        for blob in blobs:
            try:
                self.put(Record.decode(blob), now)
                loaded += 1
            except (RecordRejected, RemoteProtocolError):
                continue
        return loaded


def best_per_signer(records: Iterable[Record]) -> dict[bytes, Record]:
    best: dict[bytes, Record] = {}
    for r in records:
        cur = best.get(r.signer_id)
        if cur is None or r.order > cur.order:
            best[r.signer_id] = r
    return best
