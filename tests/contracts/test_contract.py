"""Storage contracts: Merkle roots over 1 KiB blocks, signatures, codec, and the ``loc``
records that carry them."""

from __future__ import annotations

import dataclasses
import io
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xcore.contracts.contract import (
    AUDIT_BLOCK,
    CONTRACT_TAG,
    Contract,
    SignedContract,
    share_merkle_root,
    share_tree,
)
from xcore.codec import pack
from xcore.contracts.hosts import loc_address, loc_contract, loc_key, loc_record
from xcore.crypto.identity import Identity, node_id_of, verify
from xcore.crypto.merkle import MerkleTree, merkle_root, iter_blocks
from xcore.dht.records import Record, RecordStore, validate
from xcore.errors import (
    BadIdentity, BadSignature, LocalProtocolError, RecordRejected, RemoteProtocolError,
)
from xcore.shard.erasure import MAX_SHARE_SIZE
from xcore.shard.transfer import delete_signing_bytes

NOW = 1_750_000_000
OWNER, HOST, OTHER = (Identity(random.Random(100 + i).randbytes(32)) for i in range(3))
DATA = random.Random(7).randbytes(5 * AUDIT_BLOCK + 123)


def make_contract(data: bytes = DATA, /, **kw: int) -> Contract:
    terms = {"k": 4, "n": 8, "start": NOW - 3600, "end": NOW + 30 * 86400, "price": 20_000}
    terms.update(kw)
    return Contract.for_share(data, host_pubkey=HOST.pubkey, owner_pubkey=OWNER.pubkey, **terms)


def signed(c: Contract | None = None) -> SignedContract:
    return SignedContract(c or make_contract()).sign_as_owner(OWNER).sign_as_host(HOST)


# -- Merkle root over audit blocks ----------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, AUDIT_BLOCK - 1, AUDIT_BLOCK, AUDIT_BLOCK + 1, 10 * AUDIT_BLOCK + 5])
def test_share_merkle_root_is_the_1k_block_tree(size: int) -> None:
    data = random.Random(size).randbytes(size)
    root = share_merkle_root(data)
    assert root == merkle_root(iter_blocks(io.BytesIO(data), AUDIT_BLOCK))
    assert root == MerkleTree.from_stream(io.BytesIO(data), AUDIT_BLOCK).root
    assert share_tree(data).leaf_count == max(1, -(-size // AUDIT_BLOCK))


def test_for_share_fills_in_hash_size_root_and_host_id() -> None:
    c = make_contract()
    assert c.size == len(DATA) and c.block_size == AUDIT_BLOCK
    assert c.host_id == node_id_of(HOST.pubkey)
    assert c.leaf_count == 6
    assert c.matches(DATA)
    assert not c.matches(DATA[:-1] + bytes([DATA[-1] ^ 1]))
    assert not c.matches(DATA + b"x")


@pytest.mark.parametrize("terms", [{"k": 5, "n": 4}, {"start": 10, "end": 10}, {"price": -1}])
def test_for_share_refuses_bad_terms(terms: dict[str, int]) -> None:
    with pytest.raises(LocalProtocolError):
        make_contract(**terms)


def test_for_share_refuses_oversized_share() -> None:
    with pytest.raises(LocalProtocolError):
        make_contract(bytes(MAX_SHARE_SIZE + 1))


# -- signatures -----------------------------------------------------------------------------


def test_signing_bytes_are_tagged() -> None:
    assert make_contract().signing_bytes().startswith(CONTRACT_TAG)


def test_both_signatures_verify() -> None:
    sc = signed()
    sc.verify()
    assert sc.complete


def test_only_the_parties_can_sign() -> None:
    sc = SignedContract(make_contract())
    with pytest.raises(LocalProtocolError):
        sc.sign_as_owner(HOST)
    with pytest.raises(LocalProtocolError):
        sc.sign_as_host(OTHER)


def test_one_signature_is_not_a_contract() -> None:
    half = SignedContract(make_contract()).sign_as_owner(OWNER)
    half.verify_owner()
    with pytest.raises(BadSignature):
        half.verify()
    with pytest.raises(BadSignature):
        SignedContract(make_contract()).sign_as_host(HOST).verify()


@pytest.mark.parametrize("field,value", [
    ("price", 1), ("end", NOW + 31 * 86400), ("size", len(DATA) - 1), ("merkle_root", b"\x00" * 32),
    ("k", 3), ("share_hash", b"\x11" * 32),
])
def test_any_changed_field_breaks_the_signatures(field: str, value: object) -> None:
    sc = signed()
    changed = dataclasses.replace(sc.contract, **{field: value})  # type: ignore[arg-type]
    forged = dataclasses.replace(sc, contract=changed)
    with pytest.raises(BadSignature):
        forged.verify()


def test_host_id_must_belong_to_host_key() -> None:
    c = dataclasses.replace(make_contract(), host_id=node_id_of(OTHER.pubkey))
    with pytest.raises(LocalProtocolError):
        SignedContract(c).sign_as_owner(OWNER)
    sc = dataclasses.replace(signed(), contract=c)
    with pytest.raises(BadIdentity):
        sc.verify()


def test_a_host_cannot_contract_with_itself() -> None:
    c = Contract.for_share(DATA, k=1, n=1, start=0, end=NOW, price=0,
                           host_pubkey=HOST.pubkey, owner_pubkey=HOST.pubkey)
    sc = SignedContract(c).sign_as_owner(HOST).sign_as_host(HOST)
    with pytest.raises(BadIdentity):
        sc.verify()


# -- codec ----------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    for sc in (signed(), SignedContract(make_contract()), SignedContract(make_contract()).sign_as_owner(OWNER)):
        assert SignedContract.decode(sc.encode()) == sc
    c = make_contract()
    assert Contract.decode(c.encode()) == c


def test_decode_refuses_other_block_sizes() -> None:
    body = make_contract().body()
    body[4] = 4096
    from xcore.codec import pack
    with pytest.raises(RemoteProtocolError):
        Contract.decode(pack(body))


hashes = st.binary(min_size=32, max_size=32)
keys = st.binary(min_size=32, max_size=32)


@st.composite
def signed_contracts(draw: st.DrawFn) -> SignedContract:
    n = draw(st.integers(1, 256))
    start = draw(st.integers(0, 2**40 - 1))
    host_pubkey = draw(keys)
    c = Contract(
        share_hash=draw(hashes), size=draw(st.integers(0, MAX_SHARE_SIZE)), merkle_root=draw(hashes),
        block_size=AUDIT_BLOCK, k=draw(st.integers(1, n)), n=n, start=start,
        end=draw(st.integers(start + 1, 2**40)), price=draw(st.integers(0, 2**62)),
        host_id=node_id_of(host_pubkey), host_pubkey=host_pubkey, owner_pubkey=draw(keys))
    sig = st.one_of(st.just(b""), st.binary(min_size=64, max_size=64))
    sc = SignedContract(c, draw(sig), draw(sig))
    if draw(st.booleans()):  # ended early by the owner's DELETE
        sc = dataclasses.replace(sc, ended=draw(st.integers(0, 2**40)),
                                 delete_sig=draw(st.binary(min_size=64, max_size=64)))
    return sc


@settings(max_examples=80, deadline=None)
@given(signed_contracts())
def test_property_decode_encode_round_trip(sc: SignedContract) -> None:
    assert SignedContract.decode(sc.encode()) == sc
    assert Contract.decode(sc.contract.encode()) == sc.contract


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
@example(b"")
@example(b"\x94\x01\x90\xa0\xa0")
@example(signed().encode()[:-1])
@example(signed().encode() + b"\x00")
def test_property_arbitrary_bytes_fail_only_with_protocol_errors(data: bytes) -> None:
    for decode in (SignedContract.decode, Contract.decode):
        try:
            decode(data)
        except RemoteProtocolError:
            pass


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_property_any_flipped_byte_is_rejected_or_unsigned(data: st.DataObject) -> None:
    blob = bytearray(signed().encode())
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    try:
        SignedContract.decode(bytes(blob)).verify()
    except RemoteProtocolError:
        return
    raise AssertionError("a tampered contract verified")


# -- ending early: the owner's signed DELETE ---------------------------------------------------


def deleted_at(ts: int, sc: SignedContract | None = None, by: Identity = OWNER) -> bytes:
    c = (sc or signed()).contract
    return by.sign(delete_signing_bytes(c.share_hash, c.host_id, ts, by.pubkey))


def test_an_owners_delete_ends_the_contract_early() -> None:
    sc = signed()
    assert sc.until == sc.contract.end
    ended = sc.ended_by(NOW, deleted_at(NOW))
    ended.verify()
    assert ended.until == NOW < sc.contract.end and ended.contract == sc.contract
    back = SignedContract.decode(ended.encode())
    assert back == ended and back.until == NOW
    assert len(ended.encode()) <= 512
    # a delete after the term changes nothing
    late = sc.contract.end + 10
    assert sc.ended_by(late, deleted_at(late)).until == sc.contract.end


@pytest.mark.parametrize("case", ["host", "other", "wrong time", "before start", "other share"])
def test_only_the_owners_delete_of_that_share_ends_a_contract(case: str) -> None:
    sc = signed()
    ts, sig = NOW, deleted_at(NOW)
    if case == "host":
        sig = deleted_at(NOW, by=HOST)  # the host cannot end it on its own
    elif case == "other":
        sig = deleted_at(NOW, by=OTHER)
    elif case == "wrong time":
        ts = NOW - 60  # the signature is for NOW
    elif case == "before start":
        ts = sc.contract.start - 1
        sig = deleted_at(ts)
    else:
        sig = deleted_at(NOW, signed(make_contract(b"another share")))
    with pytest.raises(BadSignature):
        sc.ended_by(ts, sig)
    forged = dataclasses.replace(sc, ended=ts, delete_sig=sig)
    with pytest.raises(BadSignature):
        SignedContract.decode(forged.encode()).verify()
    with pytest.raises(RecordRejected):
        loc_contract(loc_record(HOST, forged.contract.share_hash, ADDR, NOW, forged))


def test_a_tombstone_with_the_ended_contract_replaces_the_hosts_loc_record() -> None:
    sc = signed()
    share = sc.contract.share_hash
    store = RecordStore()
    store.put(loc_record(HOST, share, ADDR, NOW - 60, sc), NOW)
    store.put(loc_record(HOST, share, None, NOW, sc.ended_by(NOW, deleted_at(NOW))), NOW)
    [rec] = store.get(loc_key(share), NOW)
    ended = loc_contract(rec)
    assert ended is not None and ended.until == NOW
    with pytest.raises(RemoteProtocolError, match="deleted"):
        loc_address(rec)  # readers looking for holders skip it


# -- DHT records: contracts travel in their host's loc record ------------------------------------

ADDR = ("10.1.2.3", 4000)


def test_loc_records_with_and_without_a_contract_validate() -> None:
    sc = signed()
    share = sc.contract.share_hash
    for contract in (sc, None):
        rec = loc_record(HOST, share, ADDR, NOW, contract)
        assert rec.key == loc_key(share)
        validate(rec, NOW)
        assert loc_contract(rec) == contract
        assert loc_address(rec) == ADDR


def test_make_loc_record_refuses_other_hosts_contracts_incomplete_ones_and_bare_tombstones() -> None:
    sc = signed()
    share = sc.contract.share_hash
    with pytest.raises(LocalProtocolError):
        loc_record(OWNER, share, ADDR, NOW, sc)  # the owner is not the contract's host
    with pytest.raises(LocalProtocolError):
        loc_record(HOST, share, ADDR, NOW, SignedContract(sc.contract).sign_as_owner(OWNER))
    with pytest.raises(LocalProtocolError):
        loc_record(HOST, b"\x00" * 32, ADDR, NOW, sc)  # another share's contract
    with pytest.raises(LocalProtocolError):
        loc_record(HOST, share, None, NOW)


def _raw_record(signer: Identity, value: bytes, key: bytes | None = None) -> Record:
    doc = {"v": 1, "addr": "10.1.2.3:4000", "c": value}
    return Record.create(signer, "loc", key or loc_key(signed().contract.share_hash),
                         pack(doc), 1, NOW + 3600)


def test_contracts_published_by_anyone_but_their_host_are_rejected() -> None:
    for who in (OWNER, OTHER):
        with pytest.raises(RecordRejected, match="another host"):
            validate(_raw_record(who, signed().encode()), NOW)


def test_one_signature_contracts_are_rejected() -> None:
    half = SignedContract(make_contract()).sign_as_owner(OWNER)
    with pytest.raises(RecordRejected):
        validate(_raw_record(HOST, half.encode()), NOW)


def test_changed_fields_are_rejected() -> None:
    sc = signed()
    forged = dataclasses.replace(sc, contract=dataclasses.replace(sc.contract, price=1))
    with pytest.raises(RecordRejected):
        validate(_raw_record(HOST, forged.encode()), NOW)


def test_wrong_key_and_garbage_are_rejected() -> None:
    with pytest.raises(RecordRejected, match="another share"):
        validate(_raw_record(HOST, signed().encode(), key=loc_key(b"\x00" * 32)), NOW)
    with pytest.raises(RecordRejected):
        validate(_raw_record(HOST, b"\x93\x01\x02\x03"), NOW)


def test_tombstones_need_a_contract_its_owner_ended() -> None:
    sc = signed()
    key = loc_key(sc.contract.share_hash)
    for doc in ({"v": 1}, {"v": 1, "c": sc.encode()}):
        with pytest.raises(RecordRejected, match="no address"):
            validate(Record.create(HOST, "loc", key, pack(doc), 1, NOW + 3600), NOW)
    ended = sc.ended_by(NOW, deleted_at(NOW))
    validate(Record.create(HOST, "loc", key, pack({"v": 1, "c": ended.encode()}), 1, NOW + 3600),
             NOW)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_property_tampered_record_bytes_are_rejected(data: st.DataObject) -> None:
    sc = signed()
    blob = bytearray(loc_record(HOST, sc.contract.share_hash, ADDR, NOW, sc).encode())
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    from xcore.dht.records import decode_and_validate
    with pytest.raises(RecordRejected):
        decode_and_validate(bytes(blob), NOW)


def test_signatures_are_verified_once_and_failures_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes meet the same loc record from every node a lookup asks, at every
    republication and every audit round: each distinct signature is checked
    once (xcore.crypto.identity.verify); a bad one is refused every time,
    never remembered as good."""
    import nacl.signing
    sc = signed(make_contract(b"verified once"))
    rec = loc_record(HOST, sc.contract.share_hash, ADDR, NOW, sc)
    calls: list[int] = []
    real = nacl.signing.VerifyKey.verify
    monkeypatch.setattr(nacl.signing.VerifyKey, "verify",
                        lambda self, *a: (calls.append(1), real(self, *a))[1])
    validate(rec, NOW)
    first = len(calls)
    assert first == 3  # the record's signature, the owner's and the host's
    assert loc_contract(rec) == sc == loc_contract(rec)
    validate(rec, NOW)
    assert len(calls) == first
    forged = dataclasses.replace(sc, contract=dataclasses.replace(sc.contract, price=1))
    bad = _raw_record(HOST, forged.encode(), key=loc_key(forged.contract.share_hash))
    for _ in range(2):
        with pytest.raises(RecordRejected):
            loc_contract(bad)
    assert len(calls) == first + 2
    # the same bytes under another key are checked afresh, and fail
    with pytest.raises(BadSignature):
        verify(OTHER.pubkey, b"message", HOST.sign(b"message"))
    with pytest.raises(BadSignature):
        verify(OTHER.pubkey, b"message", HOST.sign(b"message"))
    assert len(calls) == first + 4
