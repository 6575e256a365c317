"""The owner's bucket index and the DHT record that points to it.

DESIGN.md principle 7: ``xcore ls`` works from any machine that has the
recovery phrase. The index (one entry per uploaded file: name, size, where
its sealed manifest is) is sealed with the owner's key and stored in the
network as a blob named by its SHA-256 (mirrored, and repaired without the
owner like data: ``Client.store_blob``). A small signed DHT record of kind
``"index"`` points to the newest blob. Its key is derived from the owner's
public signing key (``owner_key("index", pubkey)``), so only the owner can
write it, and everyone with the phrase can find it. Its value is encrypted,
so the DHT learns nothing but an opaque blob and a sequence number; the
highest valid ``seq`` wins, as for every record (BEP 44).

Index wire layout (msgpack)::

    ["index", 1, [entry, ...]]
    entry = [file_id:bin16, name:str, size:uint, created:uint,
             manifest_hash:bin32, [[host_id:bin20, host_addr:str], ...], manifest_size:uint
             (, until:uint)]

``until``: the file's grants run at least that long (the put's or the last
renew's term); absent in entries written before it existed.

Sealed index layout::

    offset  size  field
    0       4     magic b"xcIX"
    4       1     version = 1
    5       ...   OwnerKeys.seal(b"index-v1", encoded index)  (nonce 24 || tag 16 || ciphertext)

Index record value (kind "index", at most 2048 bytes)::

    offset  size  field
    0       1     version = 1
    1       ...   OwnerKeys.seal(b"index-pointer-v1", encoded pointer)
    pointer = [1, blob_hash:bin32, blob_size:uint, [[host_id:bin20, host_addr:str], ...]]

Importing this module registers the ``"index"`` record kind; a node must
import it to store index records for others.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from xcore.client.keys import BOX_OVERHEAD, OwnerKeys
from xcore.client.manifest import (
    FILE_ID_SIZE,
    HASH_SIZE,
    MAX_FILE_SIZE,
    MAX_NAME,
    MAX_TIME,
    Host,
    check_local,
    decode_host,
)
from xcore.codec import as_bytes, as_int, as_list, as_str, expect, unpack_bounded
from xcore.dht.records import (
    MAX_SEQ,
    KindSpec,
    Record,
    owner_key,
    register_kind,
    validate,
)
from xcore.errors import (
    BadSignature,
    DecryptionFailed,
    InvalidParameter,
    NotFound,
    RecordRejected,
    RemoteProtocolError,
)
from xcore.shard.erasure import MAX_SHARE_SIZE

INDEX_TAG = "index"
INDEX_VERSION = 1
MAX_ENTRIES = 1 << 16
MAX_MANIFEST_HOSTS = 16

SEALED_MAGIC = b"xcIX"
SEALED_VERSION = 1
_SEALED_HEADER = struct.Struct(">4sB")
SEALED_HEADER_SIZE = _SEALED_HEADER.size  # 5
INDEX_PURPOSE = b"index-v1"
# The sealed index is stored like a share, so it is at most one share's size.
MAX_SEALED_INDEX = MAX_SHARE_SIZE
MAX_INDEX_BYTES = MAX_SEALED_INDEX - SEALED_HEADER_SIZE - BOX_OVERHEAD

INDEX_KIND = "index"
POINTER_PURPOSE = b"index-pointer-v1"
POINTER_VERSION = 1
RECORD_VALUE_VERSION = 1
MAX_RECORD_VALUE = 2048
MAX_POINTER_HOSTS = 8
MAX_POINTER_BYTES = MAX_RECORD_VALUE - 1 - BOX_OVERHEAD
# Only the owner can renew an index record, so it must outlive the owner's
# absence: an expired pointer makes `xcore ls` on a new machine see an empty
# bucket, and the next upload there would start a fresh index. The record may
# live as long as the storage grants of the blobs it points to.
INDEX_DEFAULT_TTL = 30 * 24 * 3600
INDEX_MAX_TTL = 365 * 24 * 3600


def _check_record_value(record: Record) -> None:
    """What any node can check of an index record: the envelope of the opaque value."""
    if len(record.value) < 1 + BOX_OVERHEAD or record.value[0] != RECORD_VALUE_VERSION:
        raise RecordRejected("index record value is not a version-1 sealed pointer")


INDEX_KIND_SPEC = KindSpec(name=INDEX_KIND, max_value=MAX_RECORD_VALUE, max_ttl=INDEX_MAX_TTL,
                           owner_only=True, validate_value=_check_record_value)
register_kind(INDEX_KIND_SPEC)


def _hosts(v: Any, what: str, max_hosts: int) -> tuple[Host, ...]:
    return tuple(decode_host(h, what) for h in as_list(v, f"{what}s", max_hosts))


def _hosts_wire(hosts: tuple[Host, ...]) -> list[list[Any]]:
    return [[host_id, addr] for host_id, addr in hosts]


# -- the index -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One file in the bucket: where its sealed manifest is and what ``ls`` shows."""

    file_id: bytes
    name: str
    size: int
    created: int
    manifest_hash: bytes
    manifest_hosts: tuple[Host, ...]
    manifest_size: int
    until: int = 0  # 0: not recorded (an entry from before renewals)

    def wire(self) -> list[Any]:
        out = [self.file_id, self.name, self.size, self.created, self.manifest_hash,
               _hosts_wire(self.manifest_hosts), self.manifest_size]
        return out + [self.until] if self.until else out

    @classmethod
    def from_wire(cls, v: Any) -> IndexEntry:
        v = as_list(v, "index entry", 8)
        expect(len(v) in (7, 8), "index entry: expected 7 or 8 fields")
        return cls(
            file_id=as_bytes(v[0], "file ID", size=FILE_ID_SIZE),
            name=as_str(v[1], "file name", MAX_NAME),
            size=as_int(v[2], "file size", 0, MAX_FILE_SIZE),
            created=as_int(v[3], "created", 0, MAX_TIME),
            manifest_hash=as_bytes(v[4], "manifest hash", size=HASH_SIZE),
            manifest_hosts=_hosts(v[5], "manifest host", MAX_MANIFEST_HOSTS),
            manifest_size=as_int(v[6], "manifest size", 1, MAX_SHARE_SIZE),
            until=as_int(v[7], "until", 1, MAX_TIME) if len(v) == 8 else 0,
        )


@dataclass(frozen=True, slots=True)
class Index:
    """The owner's bucket: entries with unique file IDs. Immutable: ``add``/``remove`` copy."""

    entries: tuple[IndexEntry, ...] = ()
    version: int = INDEX_VERSION  # format version

    def get(self, file_id: bytes) -> IndexEntry | None:
        for e in self.entries:
            if e.file_id == file_id:
                return e
        return None

    def find(self, name: str) -> tuple[IndexEntry, ...]:
        """Entries named ``name`` (a name may have been uploaded more than once)."""
        return tuple(e for e in self.entries if e.name == name)

    def add(self, entry: IndexEntry) -> Index:
        """A new index with ``entry`` (replacing one with the same file ID), sorted by name."""
        others = [e for e in self.entries if e.file_id != entry.file_id]
        entries = sorted([*others, entry], key=lambda e: (e.name, e.created, e.file_id))
        return Index(tuple(entries), self.version)

    def remove(self, file_id: bytes) -> Index:
        """A new index without ``file_id``; raises :class:`NotFound` if it is not there."""
        if self.get(file_id) is None:
            raise NotFound(f"no file with ID {file_id.hex()} in the index")
        return Index(tuple(e for e in self.entries if e.file_id != file_id), self.version)

    def __len__(self) -> int:
        return len(self.entries)

    def wire(self) -> list[Any]:
        return [INDEX_TAG, self.version, [e.wire() for e in self.entries]]

    def encode(self) -> bytes:
        """msgpack bytes; raises :class:`InvalidParameter` if ``decode`` would refuse them."""
        data = check_local(self.wire(), Index.from_wire, "index")
        if len(data) > MAX_INDEX_BYTES:
            raise InvalidParameter(
                f"the bucket index would be {len(data)} bytes, more than {MAX_INDEX_BYTES}: "
                "remove some files")
        return data

    @classmethod
    def decode(cls, data: bytes) -> Index:
        """Parse and check; raises :class:`RemoteProtocolError` (or a subclass), nothing else."""
        return cls.from_wire(unpack_bounded(data, MAX_INDEX_BYTES, MAX_ENTRIES))

    @classmethod
    def from_wire(cls, doc: Any) -> Index:
        doc = as_list(doc, "index", 3)
        expect(len(doc) == 3, "index: expected 3 fields")
        expect(isinstance(doc[0], str) and doc[0] == INDEX_TAG, "not an index")
        version = as_int(doc[1], "index version", 0, 2**32)
        expect(version == INDEX_VERSION, f"unsupported index version {version}")
        entries = tuple(IndexEntry.from_wire(e)
                        for e in as_list(doc[2], "index entries", MAX_ENTRIES))
        expect(len({e.file_id for e in entries}) == len(entries), "index: duplicate file ID")
        return cls(entries, version)


def seal_index(index: Index, keys: OwnerKeys) -> bytes:
    """Encrypt the index for storage in the network (deterministic; layout above)."""
    return (_SEALED_HEADER.pack(SEALED_MAGIC, SEALED_VERSION)
            + keys.seal(INDEX_PURPOSE, index.encode()))


def open_index(blob: bytes, keys: OwnerKeys) -> Index:
    """Decrypt and decode a sealed index.

    Raises :class:`DecryptionFailed` if it is not this owner's or any byte changed.
    """
    if len(blob) < SEALED_HEADER_SIZE + BOX_OVERHEAD:
        raise DecryptionFailed(f"sealed index is truncated ({len(blob)} bytes)")
    if len(blob) > MAX_SEALED_INDEX:
        raise DecryptionFailed(f"sealed index is too large ({len(blob)} bytes)")
    magic, version = _SEALED_HEADER.unpack_from(blob)
    if magic != SEALED_MAGIC:
        raise DecryptionFailed("not a sealed xcore index (bad magic)")
    if version != SEALED_VERSION:
        raise DecryptionFailed(
            f"sealed index has unsupported format version {version} (a newer xcore?)")
    try:
        body = keys.open(INDEX_PURPOSE, blob[SEALED_HEADER_SIZE:])
    except DecryptionFailed as exc:
        raise DecryptionFailed(
            "the bucket index does not open with this owner's key: another owner's index, "
            "or it was tampered with") from exc
    return Index.decode(body)


# -- the DHT pointer record ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexPointer:
    """Where the newest sealed index blob is: its SHA-256, size and hosts."""

    blob_hash: bytes
    blob_size: int
    hosts: tuple[Host, ...]

    @classmethod
    def for_blob(cls, blob: bytes, hosts: Iterable[Host]) -> IndexPointer:
        return cls(hashlib.sha256(blob).digest(), len(blob), tuple(hosts))

    def wire(self) -> list[Any]:
        return [POINTER_VERSION, self.blob_hash, self.blob_size, _hosts_wire(self.hosts)]

    def encode(self) -> bytes:
        data = check_local(self.wire(), IndexPointer.from_wire, "index pointer")
        if len(data) > MAX_POINTER_BYTES:
            raise InvalidParameter(f"index pointer is {len(data)} bytes, more than "
                                   f"{MAX_POINTER_BYTES}: name fewer hosts")
        return data

    @classmethod
    def decode(cls, data: bytes) -> IndexPointer:
        """Parse and check; raises :class:`RemoteProtocolError` (or a subclass), nothing else."""
        return cls.from_wire(unpack_bounded(data, MAX_POINTER_BYTES, 16))

    @classmethod
    def from_wire(cls, doc: Any) -> IndexPointer:
        doc = as_list(doc, "index pointer", 4)
        expect(len(doc) == 4, "index pointer: expected 4 fields")
        version = as_int(doc[0], "index pointer version", 0, 2**32)
        expect(version == POINTER_VERSION, f"unsupported index pointer version {version}")
        return cls(
            blob_hash=as_bytes(doc[1], "index blob hash", size=HASH_SIZE),
            blob_size=as_int(doc[2], "index blob size", 1, MAX_SEALED_INDEX),
            hosts=_hosts(doc[3], "index host", MAX_POINTER_HOSTS),
        )


def index_key(keys: OwnerKeys) -> bytes:
    """The 20-byte DHT key of the owner's index record (same on every machine)."""
    return owner_key(INDEX_KIND, keys.pubkey)


def make_index_record(keys: OwnerKeys, pointer: IndexPointer, seq: int, now: float,
                      ttl: int = INDEX_DEFAULT_TTL) -> Record:
    """The signed record pointing at ``pointer``; ``seq`` must grow with every update."""
    if not 1 <= ttl <= INDEX_KIND_SPEC.max_ttl:
        raise InvalidParameter(f"index record TTL must be 1..{INDEX_KIND_SPEC.max_ttl} s")
    if not 0 <= seq <= MAX_SEQ:
        raise InvalidParameter(f"index record seq must be 0..{MAX_SEQ}")
    value = bytes([RECORD_VALUE_VERSION]) + keys.seal(POINTER_PURPOSE, pointer.encode())
    return Record.create(keys.signing, INDEX_KIND, index_key(keys), value, seq,
                         int(now) + ttl)


def _check_record(record: Record, keys: OwnerKeys, now: float | None) -> None:
    if record.kind != INDEX_KIND:
        raise RecordRejected(f"not an index record (kind {record.kind!r})")
    if record.signer_pubkey != keys.pubkey:
        raise RecordRejected("index record is signed by another key, not this owner")
    if record.key != index_key(keys):
        raise RecordRejected("index record is under another key")
    if now is not None:
        validate(record, now)
        return
    try:
        record.verify_signature()
    except BadSignature as exc:
        raise RecordRejected("index record signature does not verify") from exc
    _check_record_value(record)


def read_index_record(record: Record, keys: OwnerKeys, *, now: float | None = None) -> IndexPointer:
    """The pointer in ``record``, after checking it was signed by this owner.

    Raises :class:`RecordRejected` for a record of another kind, key or
    signer, a bad signature or (when ``now`` is given) an expired record;
    :class:`DecryptionFailed` if the value does not open with the owner's key.
    """
    _check_record(record, keys, now)
    try:
        body = keys.open(POINTER_PURPOSE, record.value[1:])
    except DecryptionFailed as exc:
        raise DecryptionFailed("the index record does not open with this owner's key") from exc
    try:
        return IndexPointer.decode(body)
    except RemoteProtocolError as exc:
        raise RecordRejected(f"index record holds a malformed pointer: {exc}") from exc


def best_index_record(records: Iterable[Record], keys: OwnerKeys, *,
                      now: float | None = None) -> Record | None:
    """The highest-``seq`` record signed by this owner (ties: later expiry), or None."""
    best: Record | None = None
    for record in records:
        try:
            _check_record(record, keys, now)
        except RecordRejected:
            continue
        if best is None or (record.order, record.value) > (best.order, best.value):
            best = record
    return best
