from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xcore.client.index import (
    INDEX_DEFAULT_TTL,
    INDEX_KIND,
    INDEX_MAX_TTL,
    MAX_POINTER_HOSTS,
    Index,
    IndexEntry,
    IndexPointer,
    best_index_record,
    index_key,
    make_index_record,
    open_index,
    read_index_record,
    seal_index,
)
from xcore.client.keys import OwnerKeys
from xcore.codec import pack
from xcore.crypto.identity import Identity
from xcore.dht.records import Record, RecordStore, kind_spec, owner_key, validate
from xcore.errors import (
    DecryptionFailed,
    InvalidParameter,
    NotFound,
    RecordRejected,
    RemoteProtocolError,
)

KEYS = OwnerKeys(bytes(range(32)))
OTHER = OwnerKeys(bytes(range(1, 33)))
NOW = 1_700_000_000.0

hash32 = st.binary(min_size=32, max_size=32)
hosts = st.lists(st.tuples(st.binary(min_size=20, max_size=20), st.text(min_size=1, max_size=30)),
                 max_size=4).map(tuple)

entries = st.builds(
    IndexEntry,
    file_id=st.binary(min_size=16, max_size=16),
    name=st.text(max_size=40),
    size=st.integers(0, 2**63 - 1),
    created=st.integers(0, 2**40),
    manifest_hash=hash32,
    manifest_hosts=hosts,
    manifest_size=st.integers(1, 2 * 1024 * 1024),
    until=st.one_of(st.just(0), st.integers(1, 2**40)),
)
indexes = st.lists(entries, max_size=6, unique_by=lambda e: e.file_id).map(
    lambda es: Index(tuple(es)))
pointers = st.builds(IndexPointer, blob_hash=hash32, blob_size=st.integers(1, 2 * 1024 * 1024),
                     hosts=hosts)


def entry(i: int, name: str = "", created: int = 0) -> IndexEntry:
    return IndexEntry(bytes([i]) * 16, name or f"file-{i}", i * 100, created, bytes([i]) * 32,
                      ((bytes([i]) * 20, f"10.0.0.{i}:4000"),), 500)


POINTER = IndexPointer(b"\x07" * 32, 1234, ((b"\x01" * 20, "10.0.0.1:4000"),
                                              (b"\x02" * 20, "10.0.0.2:4000")))


# -- the index ----------------------------------------------------------------------


@given(indexes)
@example(Index())
@settings(max_examples=150, deadline=None)
def test_index_round_trip(index: Index) -> None:
    assert Index.decode(index.encode()) == index


@given(indexes)
@settings(max_examples=50, deadline=None)
def test_sealed_index_round_trip(index: Index) -> None:
    blob = seal_index(index, KEYS)
    assert open_index(blob, KEYS) == index
    assert blob[:5] == b"xcIX\x01"


def test_add_replaces_by_file_id_and_sorts_by_name() -> None:
    empty = Index()
    one = empty.add(entry(2, "b"))
    two = one.add(entry(1, "a"))
    assert empty.entries == () and one.entries == (entry(2, "b"),)  # unchanged copies
    assert [e.name for e in two.entries] == ["a", "b"]
    renamed = two.add(entry(2, "0"))
    assert [e.name for e in renamed.entries] == ["0", "a"]
    same_name = renamed.add(entry(3, "a", created=5))
    assert same_name.find("a") == (entry(1, "a"), entry(3, "a", created=5))
    assert same_name.get(bytes([3]) * 16) == entry(3, "a", created=5)
    assert same_name.get(bytes(16)) is None
    assert len(same_name) == 3


def test_remove() -> None:
    index = Index().add(entry(1)).add(entry(2))
    assert index.remove(bytes([1]) * 16).entries == (entry(2),)
    assert len(index) == 2
    with pytest.raises(NotFound, match="no file with ID 0909"):
        index.remove(bytes([9]) * 16)


@pytest.mark.parametrize("doc, match", [
    (["index", 1, [entry(1).wire(), entry(1).wire()]], "duplicate file ID"),
    (["index", 2, []], "unsupported index version 2"),
    (["manifest", 1, []], "not an index"),
    (["index", 1, [entry(1).wire()[:6]]], "expected 7 or 8 fields"),
    (["index", 1, [entry(1).wire() + [0]]], "until"),  # 0 is written as no field
    (["index", 1, [entry(1).wire() + [5, 6]]], "more than 8"),
    (["index", 1, [[bytes(15)] + entry(1).wire()[1:]]], "file ID"),
    (["index", 1, [entry(1).wire()[:6] + [0]]], "manifest size"),
    (["index", 1, [entry(1).wire()[:5] + [[[bytes(20), ""]]] + [1]]], "address: empty"),
    (["index", 1, [entry(1).wire()[:5] + [[[bytes(20), "a"]] * 17] + [1]]], "more than 16"),
    (["index", 1, [entry(1).wire()[:1] + ["x" * 4097] + entry(1).wire()[2:]]], "file name"),
    (None, "expected list"),
])
def test_decode_refuses_bad_indexes(doc: object, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        Index.decode(pack(doc))


def test_entries_from_before_renewals_still_decode() -> None:
    old = ["index", 1, [entry(1).wire()[:7]]]
    assert Index.decode(pack(old)).entries[0].until == 0
    renewed = dataclasses.replace(entry(1), until=1_800_000_000)
    assert len(renewed.wire()) == 8 and Index.decode(Index((renewed,)).encode()) == Index((renewed,))


def test_encode_refuses_what_decode_would() -> None:
    bad = Index((entry(1), entry(1)))
    with pytest.raises(InvalidParameter, match="duplicate file ID"):
        bad.encode()
    with pytest.raises(InvalidParameter, match="manifest hash"):
        Index((dataclasses.replace(entry(1), manifest_hash=b"short"),)).encode()


def test_index_too_large_for_one_blob() -> None:
    big = Index(tuple(dataclasses.replace(entry(0), file_id=i.to_bytes(16, "big"), name="n" * 4000)
                      for i in range(600)))
    with pytest.raises(InvalidParameter, match="remove some files"):
        big.encode()


@given(st.binary(max_size=512))
@example(b"\x93\xa5index\x01\x90")
@settings(max_examples=300, deadline=None)
def test_index_decode_any_bytes_raises_only_protocol_errors(data: bytes) -> None:
    try:
        Index.decode(data)
    except RemoteProtocolError:
        pass


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_pointer_decode_any_bytes_raises_only_protocol_errors(data: bytes) -> None:
    try:
        IndexPointer.decode(data)
    except RemoteProtocolError:
        pass


_SEALED = seal_index(Index().add(entry(1)).add(entry(2)), KEYS)


@given(st.integers(0, len(_SEALED) - 1), st.integers(1, 255))
@example(0, 1)
@example(4, 1)
@settings(max_examples=200, deadline=None)
def test_tampered_sealed_index_is_decryption_failed(i: int, x: int) -> None:
    blob = bytearray(_SEALED)
    blob[i] ^= x
    with pytest.raises(DecryptionFailed):
        open_index(bytes(blob), KEYS)


def test_sealed_index_of_another_owner_fails() -> None:
    with pytest.raises(DecryptionFailed, match="another owner's index"):
        open_index(_SEALED, OTHER)
    for blob in (b"", _SEALED[:44], _SEALED + b"\x00"):
        with pytest.raises(DecryptionFailed):
            open_index(blob, KEYS)


def test_sealed_index_hides_names() -> None:
    assert b"file-1" not in _SEALED


# -- the pointer record ----------------------------------------------------------------


@given(pointers)
@settings(max_examples=100, deadline=None)
def test_pointer_round_trip(pointer: IndexPointer) -> None:
    assert IndexPointer.decode(pointer.encode()) == pointer
    record = make_index_record(KEYS, pointer, 1, NOW)
    assert read_index_record(record, KEYS) == pointer


def test_pointer_for_blob() -> None:
    p = IndexPointer.for_blob(_SEALED, [(b"\x01" * 20, "h:1")])
    assert p == IndexPointer(hashlib.sha256(_SEALED).digest(), len(_SEALED),
                             ((b"\x01" * 20, "h:1"),))


def test_index_record_is_valid_for_a_node_and_opaque() -> None:
    record = make_index_record(KEYS, POINTER, 5, NOW)
    assert record.kind == INDEX_KIND == "index"
    assert record.key == index_key(KEYS) == owner_key("index", KEYS.pubkey)
    assert record.signer_pubkey == KEYS.pubkey
    assert record.expires == int(NOW) + INDEX_DEFAULT_TTL
    validate(record, NOW)
    store = RecordStore()
    assert store.put(Record.decode(record.encode()), NOW) == "stored"
    assert read_index_record(store.get(record.key, NOW)[0], KEYS, now=NOW) == POINTER
    # the DHT sees neither the hash nor the hosts
    for secret in (POINTER.blob_hash, b"10.0.0.1", POINTER.hosts[0][0]):
        assert secret not in record.value


def test_largest_pointer_fits_the_record_kind() -> None:
    spec = kind_spec("index")
    assert spec is not None and spec.owner_only and spec.max_value == 2048
    hosts = tuple((bytes([i]) * 20, "h" * 128) for i in range(MAX_POINTER_HOSTS))
    record = make_index_record(KEYS, IndexPointer(bytes(32), 2 * 1024 * 1024, hosts), 2**63 - 1,
                               NOW, INDEX_MAX_TTL)
    validate(record, NOW)
    too_many = hosts + ((bytes(20), "x"),)
    with pytest.raises(InvalidParameter, match="index pointer"):
        make_index_record(KEYS, IndexPointer(bytes(32), 1, too_many), 1, NOW)


def test_make_index_record_bounds() -> None:
    with pytest.raises(InvalidParameter, match="TTL"):
        make_index_record(KEYS, POINTER, 1, NOW, INDEX_MAX_TTL + 1)
    with pytest.raises(InvalidParameter, match="TTL"):
        make_index_record(KEYS, POINTER, 1, NOW, 0)
    with pytest.raises(InvalidParameter, match="seq"):
        make_index_record(KEYS, POINTER, -1, NOW)


def test_index_record_signed_by_another_owner_is_rejected() -> None:
    theirs = make_index_record(OTHER, POINTER, 9, NOW)
    validate(theirs, NOW)  # a fine record, for its own owner
    with pytest.raises(RecordRejected, match="signed by another key"):
        read_index_record(theirs, KEYS)


def test_forged_record_under_the_owners_key_is_rejected() -> None:
    mallory = Identity(bytes(range(2, 34)), 0)
    value = make_index_record(KEYS, POINTER, 1, NOW).value
    forged = Record.create(mallory, "index", index_key(KEYS), value, 99, int(NOW) + 60)
    with pytest.raises(RecordRejected, match="not owned by its signer"):
        validate(forged, NOW)
    with pytest.raises(RecordRejected, match="signed by another key"):
        read_index_record(forged, KEYS)
    # claiming the owner's public key does not help without the signature
    claimed = dataclasses.replace(forged, signer_pubkey=KEYS.pubkey)
    with pytest.raises(RecordRejected, match="signature"):
        read_index_record(claimed, KEYS)
    with pytest.raises(RecordRejected):
        validate(claimed, NOW)


def test_record_checks() -> None:
    good = make_index_record(KEYS, POINTER, 1, NOW)
    with pytest.raises(RecordRejected, match="not an index record"):
        read_index_record(dataclasses.replace(good, kind="text"), KEYS)
    with pytest.raises(RecordRejected, match="another key"):
        read_index_record(dataclasses.replace(good, key=bytes(20)), KEYS)
    with pytest.raises(RecordRejected, match="expired"):
        read_index_record(good, KEYS, now=NOW + INDEX_DEFAULT_TTL + 1)
    tampered = dataclasses.replace(good, value=good.value[:-1] + bytes([good.value[-1] ^ 1]))
    with pytest.raises(RecordRejected, match="signature"):
        read_index_record(tampered, KEYS)


def test_owner_signed_garbage_value() -> None:
    garbage = Record.create(KEYS.signing, "index", index_key(KEYS), b"\x01" + bytes(60), 1,
                            int(NOW) + 60)
    with pytest.raises(DecryptionFailed, match="does not open"):
        read_index_record(garbage, KEYS)
    bad_version = Record.create(KEYS.signing, "index", index_key(KEYS), b"\x02" + bytes(60), 1,
                                int(NOW) + 60)
    with pytest.raises(RecordRejected, match="version-1"):
        validate(bad_version, NOW)
    with pytest.raises(RecordRejected, match="version-1"):
        read_index_record(bad_version, KEYS)
    with pytest.raises(RecordRejected, match="version-1"):
        RecordStore().put(Record.create(KEYS.signing, "index", index_key(KEYS), b"\x01", 1,
                                        int(NOW) + 60), NOW)
    sealed_junk = b"\x01" + KEYS.seal(b"index-pointer-v1", b"\xc1")
    junk = Record.create(KEYS.signing, "index", index_key(KEYS), sealed_junk, 1, int(NOW) + 60)
    with pytest.raises(RecordRejected, match="malformed pointer"):
        read_index_record(junk, KEYS)


def test_best_index_record_picks_the_owners_highest_seq() -> None:
    mine = [make_index_record(KEYS, POINTER, seq, NOW) for seq in (3, 7, 5)]
    theirs = make_index_record(OTHER, POINTER, 100, NOW)
    top = make_index_record(KEYS, POINTER, 50, NOW)
    broken = dataclasses.replace(top, signature=bytes(64))
    wrong_kind = Record.create(KEYS.signing, "text", index_key(KEYS), b"hi", 200, int(NOW) + 60)
    records = [*mine, theirs, broken, wrong_kind]
    best = best_index_record(records, KEYS)
    assert best is not None and best.seq == 7
    assert best_index_record([], KEYS) is None
    assert best_index_record([theirs, broken], KEYS) is None
    longer = make_index_record(KEYS, POINTER, 7, NOW + 10)
    assert best_index_record([*records, longer], KEYS) == longer
    # with ``now``, expired records do not count
    old = make_index_record(KEYS, POINTER, 9, NOW - INDEX_DEFAULT_TTL - 5)
    assert best_index_record([*records, old], KEYS) == old
    chosen = best_index_record([*records, old], KEYS, now=NOW)
    assert chosen is not None and chosen.seq == 7
