"""The one-stop fuzz suite: every parser of outside input, fed junk.

For each parser the property is the same (DESIGN.md principle 10, STYLE.md
"one error hierarchy"): *any byte string, and any mutation of a valid
encoding, is either accepted or rejected with one of the project's own errors
(:class:`xcore.errors.XcoreError` subclasses); never another exception, and
never unbounded memory.*

Inputs come from three generators:

* ``junk``: arbitrary bytes, and msgpack encodings of arbitrary values
  (so the structural validators are reached, not just the msgpack decoder);
* ``mutated``: a valid encoding with bytes flipped, set, inserted, deleted,
  truncated or duplicated;
* ``tweaked``: a valid document, decoded, with one nested element replaced
  by an arbitrary value, then re-encoded (gets past the byte-level checks
  and into the field validators).

Memory: :func:`check` runs each parse under ``tracemalloc`` and asserts the
peak stays within 16 MiB plus 32 bytes per input byte; a parser that trusted
a length field would blow through that at once.

Runs are derandomized (the same examples every run) and write no example
database. Known bugs found here are pinned, with exact inputs, as strict
xfails at the end of the file; the strategies above them avoid only those
exact triggers, and say so.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import random
import struct
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import msgpack
import nacl.pwhash.argon2id as argon2id
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import xcore.kinds  # noqa: F401  registers every record kind
from xcore.bootstrap import load_bootstrap, parse_address, parse_bootstrap
from xcore.client.files import parse_file_id
from xcore.client.index import (
    POINTER_PURPOSE, Index, IndexEntry, IndexPointer, best_index_record, index_key,
    make_index_record, open_index, read_index_record, seal_index,
)
from xcore.client.keys import ARGON2_FAST_INSECURE, OwnerKeys, create_keystore, load_owner_keys
from xcore.client.manifest import Manifest, SegmentRef, ShareRef, open_manifest, seal_manifest
from xcore.codec import pack, unpack_bounded
from xcore.contracts.audit import (
    Answer, Attestation, Challenge, answer_challenge, attest, make_attest_record,
    parse_attest_record,
)
from xcore.contracts.contract import (
    Contract, SignedContract,
)
from xcore.contracts.hosts import HostInfo, host_record, loc_address, loc_contract, loc_record
from xcore.contracts.repair import make_claim, parse_claim, parse_claim_value
from xcore.contracts.segments import decode_segment_record, make_segment_record, parse_segment
from xcore.control import read_frame
from xcore.crypto.identity import Identity
from xcore.dht.messages import (
    AUTH_MAC, AUTH_SIG, ContactInfo, FindNode, FindValue, Nodes, Ping, Pong, Store, Stored,
    Value, auth_bytes, decode_datagram, encode_datagram, encode_payload,
)
from xcore.dht.protocol import DHTConfig, DHTNode, new_record
from xcore.dht.records import Record, RecordStore, decode_and_validate, dht_key
from xcore.dht.routing import Contact
from xcore.errors import XcoreError
from xcore.node import load_config, parse_size
from xcore.shard.erasure import Redundancy
from xcore.shard.transfer import (
    AUDIT, DATA, DELETE, GET, HELLO, OK, PUT, FrameStream, Grant, decode_frame, encode_frame,
)

NOW = 1_750_000_000.0
MiB = 1 << 20

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])
FEW = settings(FUZZ, max_examples=60)


# -- the property ---------------------------------------------------------------------


def check(fn: Callable[..., Any], *args: Any, size: int = 0, **kw: Any) -> Any:
    """``fn(*args)``: its result, or None if it raised an XcoreError; anything
    else propagates (and fails the test). Asserts bounded memory."""
    tracemalloc.start()
    try:
        return fn(*args, **kw)
    except XcoreError:
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= 16 * MiB + 32 * size, f"{fn.__name__} peaked at {peak} bytes"


# -- generators -----------------------------------------------------------------------

_ints = st.one_of(st.integers(-3, 300), st.integers(-2**63, 2**64 - 1),
                  st.sampled_from([2**32, 2**40, 2**53, 2**62, 2**63 - 1, 2**64 - 1, -2**63]))
_leaf = st.one_of(
    st.none(), st.booleans(), _ints, st.floats(), st.text(max_size=24),
    st.binary(max_size=40), st.binary(min_size=20, max_size=20),
    st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64),
    st.sampled_from(["v", "addr", "seg", "op", "1.2.3.4:5", "[::1]:1", "127.0.0.1"]),
)
values = st.recursive(
    _leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=8),
        st.dictionaries(st.one_of(st.text(max_size=6), st.binary(max_size=6),
                                  st.sampled_from(["v", "k", "n", "addr", "seg", "shares"])),
                        kids, max_size=5)),
    max_leaves=24)


def _pack(v: Any) -> bytes:
    try:
        return msgpack.packb(v, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return b"\xc1"


junk = st.one_of(st.binary(max_size=600), values.map(_pack))


@st.composite
def mutated(draw: st.DrawFn, valid: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i:i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        elif op == "dup":
            data += data[i:i + draw(st.integers(1, 64))]
    return bytes(data)


def _positions(doc: Any, depth: int = 0) -> list[tuple[Any, Any, int]]:
    out: list[tuple[Any, Any, int]] = []
    items = (enumerate(doc) if isinstance(doc, list)
             else list(doc.items()) if isinstance(doc, dict) else [])
    for k, v in items:
        out.append((doc, k, depth + 1))
        out.extend(_positions(v, depth + 1))
    return out


@st.composite
def tweaked_docs(draw: st.DrawFn, docs: list[Any], min_depth: int = 1) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(docs)))
    spots = [(c, k) for c, k, d in _positions(doc) if d >= min_depth]
    if spots:
        container, key = draw(st.sampled_from(spots))
        container[key] = draw(values)
    return doc


def tweaked(docs: list[Any], min_depth: int = 1) -> st.SearchStrategy[bytes]:
    return tweaked_docs(docs, min_depth).map(_pack)


def _docs(blobs: list[bytes]) -> list[Any]:
    """The msgpack documents among ``blobs`` (values that are raw bytes are skipped)."""
    out = []
    for b in blobs:
        try:
            out.append(msgpack.unpackb(b, raw=False, strict_map_key=False))
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            continue
    return out


def fuzz(valid: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(junk, mutated(valid), tweaked(_docs(valid)))


# -- valid specimens ---------------------------------------------------------------------


def ident(seed: int) -> Identity:
    return Identity.generate(0, random.Random(seed).randbytes)


OWNER, HOST, AUDITOR, PEER = ident(1), ident(2), ident(3), ident(4)
KEYS = OwnerKeys(bytes(range(32)))
SHARE = random.Random(5).randbytes(5000)
SHARE_HASH = hashlib.sha256(SHARE).digest()
CONTRACT = (SignedContract(Contract.for_share(SHARE, k=2, n=3, start=int(NOW) - 10,
                                              end=int(NOW) + 86400, price=20_000,
                                              host_pubkey=HOST.pubkey,
                                              owner_pubkey=OWNER.pubkey))
            .sign_as_owner(OWNER).sign_as_host(HOST))
CHALLENGE = Challenge.fresh(CONTRACT, AUDITOR, NOW, random.Random(6), count=3)
ANSWER = answer_challenge(SHARE, CHALLENGE, HOST)
ATTESTATION = attest(AUDITOR, CONTRACT, CHALLENGE, ANSWER, NOW + 5)
ATTEST_NONE = attest(AUDITOR, CONTRACT, CHALLENGE, None, NOW + 5)
SEG_SHARES = [hashlib.sha256(bytes([i])).digest() for i in range(3)]


def _manifest() -> Manifest:
    def shares(length: int, seg: int) -> tuple[ShareRef, ...]:
        size = -(-length // 2)
        return tuple(ShareRef(j, bytes([seg, j]) * 16, size, bytes([j]) * 32, bytes([j]) * 20,
                              f"10.0.0.{j}:4000") for j in range(3))
    segs = (SegmentRef(0, 4096, shares(4096, 0)), SegmentRef(1, 904, shares(904, 1)))
    return Manifest(1, bytes(range(16)), "holiday/photo.jpg", 5000, int(NOW), 2, 3, 4096, segs)


MANIFEST = _manifest()
FILE_ID = MANIFEST.file_id
INDEX = Index((IndexEntry(FILE_ID, "holiday/photo.jpg", 5000, int(NOW), b"\x09" * 32,
                          ((b"\x01" * 20, "10.0.0.1:4000"),), 700),
               IndexEntry(b"\x02" * 16, "notes.txt", 12, int(NOW), b"\x0a" * 32, (), 90)))
POINTER = IndexPointer(b"\x07" * 32, 1234, ((b"\x01" * 20, "10.0.0.1:4000"),))

RECORDS: dict[str, Record] = {
    "text": new_record(PEER, "text", dht_key("hello"), b"world", NOW),
    "host": host_record(HOST, ("10.1.2.3", 4000), 10 * MiB, 5 * MiB, NOW - 100, NOW),
    "claim": make_claim(HOST, b"\x05" * 20, NOW, 120),
    "seg": make_segment_record(OWNER, SEG_SHARES, 2, 3, 5000, int(NOW) + 86400, 20_000, NOW),
    "loc": loc_record(HOST, CONTRACT.contract.share_hash, ("10.1.2.3", 4000), NOW, CONTRACT),
    "attest": make_attest_record(AUDITOR, ATTESTATION, NOW),
    "index": make_index_record(KEYS, POINTER, 7, NOW),
}
RECORD_BLOBS = [r.encode() for r in RECORDS.values()]


def _datagrams() -> list[bytes]:
    out = []
    bodies: list[Any] = [
        Ping(), Pong(("1.2.3.4", 5)), FindNode(b"\x01" * 20), FindValue(b"\x02" * 20),
        Nodes((ContactInfo(HOST.pubkey, "10.0.0.1", 4000),)), Store(RECORD_BLOBS[0]), Stored(0),
        Value((RECORD_BLOBS[0], RECORD_BLOBS[2]), (ContactInfo(OWNER.pubkey, "::1", 9),))]
    for i, body in enumerate(bodies):
        payload = encode_payload(body, bytes([i]) * 8, PEER.pubkey, HOST.node_id, int(NOW * 1000))
        out.append(encode_datagram(payload, AUTH_SIG, PEER.sign(auth_bytes(payload))))
        out.append(encode_datagram(payload, AUTH_MAC, bytes(16)))
    return out


DATAGRAMS = _datagrams()
GRANT = Grant.create(OWNER, SHARE_HASH, HOST.node_id, int(NOW) + 3600)
_FRAME_SPECS: list[tuple[int, list[Any]]] = [
    (HELLO, [1, PEER.pubkey, bytes(32)]), (PUT, [SHARE_HASH, 5000, GRANT.encode(),
                                               RECORDS["seg"].encode(), CONTRACT.encode()]),
    (DATA, [SHARE[:300]]), (GET, [SHARE_HASH]), (OK, [{"has": True, "size": 3}]),
    (DELETE, [SHARE_HASH, OWNER.pubkey, int(NOW), bytes(64)]), (AUDIT, [CHALLENGE.encode()]),
]
FRAMES = [encode_frame(t, *f)[4:] for t, f in _FRAME_SPECS]


# -- DHT datagrams and records --------------------------------------------------------------


@FUZZ
@given(fuzz(DATAGRAMS))
def test_decode_datagram(data: bytes) -> None:
    check(decode_datagram, data, size=len(data))


_RECEIVER = DHTNode(HOST, config=DHTConfig(difficulty=0), rng=random.Random(1), now=NOW)


@FUZZ
@given(fuzz(DATAGRAMS), st.integers(1, 65535))
def test_receive_datagram_counts_and_never_raises(data: bytes, port: int) -> None:
    before = _RECEIVER.counters.get("received", 0)
    check(_RECEIVER.receive_datagram, data, ("203.0.113.9", port), NOW, size=len(data))
    _RECEIVER.datagrams_to_send()
    assert _RECEIVER.counters["received"] == before + 1


@FUZZ
@given(fuzz(RECORD_BLOBS))
def test_record_decode_and_validate(data: bytes) -> None:
    rec = check(Record.decode, data, size=len(data))
    if rec is not None:
        assert rec.encode() == data  # only the canonical encoding decodes
    check(decode_and_validate, data, NOW, size=len(data))
    check(decode_segment_record, data, NOW, size=len(data))
    store = RecordStore(max_keys=4)
    check(store.load, [data], NOW, size=len(data))


_VALUES = [r.value for r in RECORDS.values()]
_VALUE_DOCS = _docs(_VALUES)
values_of_records = st.one_of(junk, mutated(_VALUES), tweaked(_VALUE_DOCS))


@FUZZ
@given(st.sampled_from(sorted(RECORDS)), values_of_records, st.booleans())
def test_kind_parsers_on_records_with_arbitrary_values(kind: str, value: bytes,
                                                       resign: bool) -> None:
    """parse_* on a record of every kind holding an arbitrary value: signed
    (so :func:`validate` runs the kind's value check too) or not."""
    base = RECORDS[kind]
    if resign:
        signer = KEYS.signing if kind == "index" else HOST
        rec = Record.create(signer, base.kind, base.key, value, base.seq + 1, base.expires)
        check(decode_and_validate, rec.encode(), NOW, size=len(value))
    else:
        rec = Record(base.kind, base.key, value, base.seq, base.expires, base.signer_pubkey,
                     base.signature)
    for parse in (parse_attest_record, loc_contract, parse_segment, parse_claim,
                  HostInfo.from_record, loc_address):
        check(parse, rec, size=len(value))
    check(parse_claim_value, value, size=len(value))
    check(read_index_record, rec, KEYS, size=len(value))
    check(read_index_record, rec, KEYS, now=NOW, size=len(value))
    check(best_index_record, [rec], KEYS, size=len(value))


@FUZZ
@given(st.one_of(junk, mutated([POINTER.encode()]), tweaked([POINTER.wire()])), st.booleans())
def test_index_pointer_and_index_record(body: bytes, sealed: bool) -> None:
    check(IndexPointer.decode, body, size=len(body))
    if sealed:  # an owner-signed record whose sealed pointer is garbage
        value = b"\x01" + KEYS.seal(POINTER_PURPOSE, body)
        if len(value) <= 2048:
            rec = Record.create(KEYS.signing, "index", index_key(KEYS), value, 9, int(NOW) + 60)
            check(read_index_record, rec, KEYS, now=NOW, size=len(body))


# -- share transfer ---------------------------------------------------------------------------


@FUZZ
@given(fuzz(FRAMES))
def test_decode_frame(body: bytes) -> None:
    check(decode_frame, body, size=len(body))


@FUZZ
@given(st.one_of(values, tweaked_docs([GRANT.encode()], min_depth=0)))
def test_grant_decode(value: Any) -> None:
    check(Grant.decode, value, size=len(_pack(value)))


async def _recv_frame(data: bytes) -> Any:
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(data)
    reader.feed_eof()
    return await FrameStream(reader, None, 1.0).recv()  # type: ignore[arg-type]


stream_bytes = st.one_of(
    junk, mutated([struct.pack(">I", len(f)) + f for f in FRAMES]),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=64)).map(
        lambda t: struct.pack(">I", t[0]) + t[1]))


@FEW
@given(stream_bytes)
def test_frame_stream_recv(data: bytes) -> None:
    check(asyncio.run, _recv_frame(data), size=len(data))


async def _recv_data(data: bytes) -> Any:
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(data)
    reader.feed_eof()
    return await FrameStream(reader, None, 1.0).recv_data()  # type: ignore[arg-type]


@FEW
@given(st.one_of(stream_bytes, mutated([encode_frame(DATA, b"chunk" * 60),
                                        encode_frame(DATA, bytes(70_000))])))
def test_frame_stream_recv_data(data: bytes) -> None:
    """The zero-copy DATA path: any bytes give a chunk that the generic
    decoder agrees is the frame's DATA payload, or a clean error."""
    chunk = check(asyncio.run, _recv_data(data), size=len(data))
    if chunk is not None:
        (size,) = struct.unpack(">I", data[:4])
        assert decode_frame(data[4:4 + size]) == (DATA, [bytes(chunk)])


# -- contracts and audits -------------------------------------------------------------------------


@FUZZ
@given(fuzz([CONTRACT.encode(), CONTRACT.contract.encode(),
             SignedContract(CONTRACT.contract, CONTRACT.owner_sig).encode()]))
def test_contract_decode(data: bytes) -> None:
    sc = check(SignedContract.decode, data, size=len(data))
    if sc is not None:
        check(sc.verify)
    check(Contract.decode, data, size=len(data))


@FUZZ
@given(fuzz([CHALLENGE.encode(), ANSWER.encode(), ATTESTATION.encode(), ATTEST_NONE.encode()]))
def test_audit_decoders(data: bytes) -> None:
    for decode in (Challenge.decode, Answer.decode, Attestation.decode):
        check(decode, data, size=len(data))
    att = check(Attestation.decode, data, size=len(data))
    if att is not None:
        check(att.verify_signature)


# -- manifests, indexes, owner keys ----------------------------------------------------------------


@FUZZ
@given(fuzz([MANIFEST.encode()]), st.sampled_from(["plain", "sealed", "blob"]))
def test_manifest(body: bytes, how: str) -> None:
    if how == "plain":
        check(Manifest.decode, body, size=len(body))
    elif how == "sealed":  # sealed with the right key: garbage reaches the decoder
        blob = b"xcMF\x01" + FILE_ID + KEYS.seal(b"manifest-v1" + FILE_ID, body)
        check(open_manifest, blob, KEYS, FILE_ID, size=len(blob))
    else:
        check(open_manifest, body, KEYS, FILE_ID, size=len(body))


_SEALED_MANIFEST = seal_manifest(MANIFEST, KEYS)
_SEALED_INDEX = seal_index(INDEX, KEYS)


@FEW
@given(mutated([_SEALED_MANIFEST, _SEALED_INDEX]))
def test_sealed_blobs_tampered(blob: bytes) -> None:
    check(open_manifest, blob, KEYS, FILE_ID, size=len(blob))
    check(open_index, blob, KEYS, size=len(blob))


@FUZZ
@given(fuzz([INDEX.encode()]), st.sampled_from(["plain", "sealed", "blob"]))
def test_index(body: bytes, how: str) -> None:
    if how == "plain":
        check(Index.decode, body, size=len(body))
    elif how == "sealed":
        blob = b"xcIX\x01" + KEYS.seal(b"index-v1", body)
        check(open_index, blob, KEYS, size=len(blob))
    else:
        check(open_index, body, KEYS, size=len(body))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


class FakeArgon2:
    """Stands in for Argon2id so hostile parameters cost nothing: records
    what it was asked for (and asserts it is bounded), returns a keyed hash."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, size: int, password: bytes, salt: bytes, *, opslimit: int,
                 memlimit: int, **_: Any) -> bytes:
        assert opslimit <= argon2id.OPSLIMIT_SENSITIVE and memlimit <= argon2id.MEMLIMIT_SENSITIVE
        self.calls.append((opslimit, memlimit))
        return hashlib.blake2b(password + salt + struct.pack(">QQ", opslimit, memlimit),
                               digest_size=size).digest()


def test_owner_keystore_files(scratch: Path) -> None:
    """load_owner_keys on arbitrary file contents and on every mutation of a
    real keystore (Argon2id faked, see :class:`FakeArgon2`)."""
    fake = FakeArgon2()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argon2id, "kdf", fake)
        good = scratch / "good"
        good.mkdir()
        create_keystore(good, "pass", token_bytes=random.Random(1).randbytes,
                        params=ARGON2_FAST_INSECURE)
        valid = (good / "owner.key").read_bytes()
        assert isinstance(load_owner_keys(good, "pass"), OwnerKeys)
        d = scratch / "ks"
        d.mkdir()

        @FUZZ
        @given(st.one_of(junk, mutated([valid]), st.binary(min_size=4000, max_size=5000)))
        def one(content: bytes) -> None:
            write_private(d / "owner.key", content)
            check(load_owner_keys, d, "pass", size=len(content))
            check(load_owner_keys, d, "wrong", size=len(content))
        one()


@FUZZ
@given(st.one_of(junk, mutated([pack({"v": 1, "seed": bytes(32), "difficulty": 0})]),
                 tweaked([{"v": 1, "seed": bytes(32), "difficulty": 0}])))
def test_identity_key_files(scratch: Path, content: bytes) -> None:
    path = scratch / "identity.key"
    write_private(path, content)
    check(Identity.load, path, size=len(content))


# -- local configuration: bootstrap lists, config.json ---------------------------------------------

# Port digit runs stay under 4300 characters here: longer ones raise a bare
# ValueError (see test_bootstrap_line_with_a_huge_port_number below).
_SEED_LINES = ["127.0.0.1:4000 " + "ab" * 20, "[::1]:9", "# comment", "host.example:1",
               "1.2.3.4:65536", "", "1.2.3.4:0"]
bootstrap_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(_SEED_LINES), st.text(max_size=40)), max_size=12).map(
        "\n".join))


@FUZZ
@given(st.one_of(bootstrap_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
                 st.binary(max_size=400)))
def test_bootstrap_files(scratch: Path, raw: bytes) -> None:
    path = scratch / "bootstrap_nodes.txt"
    path.write_bytes(raw)
    check(load_bootstrap, path, size=len(raw))
    text = raw.decode("utf-8", "replace")
    check(parse_bootstrap, text, size=len(raw))
    for line in text.splitlines():
        check(parse_address, line, size=len(line))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=20)),
    lambda kids: st.one_of(st.lists(kids, max_size=5),
                           st.dictionaries(st.text(max_size=12), kids, max_size=6)),
    max_leaves=20)
_CONFIG = {"version": 1, "host": "127.0.0.1", "port": 4000, "capacity": 1 << 30,
           "bootstrap": ["127.0.0.1:4001"], "difficulty": 12, "diversity": True}


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    doc = dict(_CONFIG)
    for key in draw(st.lists(st.sampled_from(sorted(_CONFIG) + ["fault", "x"]), max_size=3)):
        doc[key] = draw(json_values)
    return json.dumps(doc)


# Nesting stays shallow here: deep nesting raises RecursionError (see
# test_config_json_nested_too_deeply below).
@FUZZ
@given(st.one_of(config_texts(), json_values.map(json.dumps),
                 mutated([json.dumps(_CONFIG).encode()]).map(
                     lambda b: b.decode("utf-8", "replace")),
                 st.text(max_size=200)))
def test_node_config_json(scratch: Path, text: str) -> None:
    d = scratch / "node"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(text, errors="surrogatepass")
    check(load_config, d, size=len(text))


# -- the control socket ----------------------------------------------------------------------------


async def _read_control(data: bytes) -> Any:
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(data)
    reader.feed_eof()
    try:
        return await read_frame(reader)
    except asyncio.IncompleteReadError:
        return None  # the peer hung up mid-frame: the server just closes


_CONTROL = [struct.pack(">I", len(b)) + b for b in
            (pack({"op": "status", "args": {}}), pack({"op": "dht_get", "args": {"key": "k"}}))]


@FEW
@given(st.one_of(junk, mutated(_CONTROL),
                 st.tuples(st.integers(0, 2**32 - 1), junk).map(
                     lambda t: struct.pack(">I", t[0]) + t[1]),
                 junk.map(lambda b: struct.pack(">I", len(b)) + b)))
def test_control_frames(data: bytes) -> None:
    check(asyncio.run, _read_control(data), size=len(data))


# -- the DHT snapshot (dht.state) --------------------------------------------------------------------


def _snapshot() -> dict[str, Any]:
    node = DHTNode(PEER, config=DHTConfig(difficulty=0), rng=random.Random(2), now=NOW)
    for i, who in enumerate((OWNER, HOST, AUDITOR)):
        node.routing.add(Contact(who.node_id, f"10.0.{i}.1", 4000, who.pubkey), NOW)
    for rec in RECORDS.values():
        node.store.put(rec, NOW)
    node.published[("text", RECORDS["text"].key)] = RECORDS["text"]
    return node.snapshot()


SNAPSHOT = _snapshot()


def _unpack_or_none(data: bytes) -> Any:
    try:
        return unpack_bounded(data, 1 << 20)
    except XcoreError:
        return None


# Section values stay lists (min_depth=2 keeps the top-level sections in
# place): a non-list section raises TypeError (see test_restore_of_a_snapshot_
# whose_sections_are_not_lists below).
@FUZZ
@given(st.one_of(values, tweaked_docs([SNAPSHOT], min_depth=2),
                 junk.map(_unpack_or_none)))
def test_dht_restore(snap: Any) -> None:
    node = DHTNode(OWNER, config=DHTConfig(difficulty=0), rng=random.Random(3), now=NOW)
    check(node.restore, snap, NOW, size=len(_pack(snap)))
    assert len(node.routing) <= 3 and len(node.store) <= len(RECORDS)


# -- command-line values ----------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=40))
@example("1e999GiB")
@example("٣/٤")
def test_cli_value_parsers(text: str) -> None:
    check(parse_size, text)
    check(Redundancy.parse, text)
    check(parse_file_id, text)


# -- known bugs, pinned ------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["contacts", "records", "published"])
def test_restore_of_a_snapshot_whose_sections_are_not_lists(section: str) -> None:
    node = DHTNode(OWNER, config=DHTConfig(difficulty=0), rng=random.Random(3), now=NOW)
    check(node.restore, {"v": 1, section: 5}, NOW)


def test_bootstrap_line_with_a_huge_port_number(scratch: Path) -> None:
    path = scratch / "long-port.txt"
    path.write_text("1.2.3.4:" + "1" * 5000 + "\n")
    check(load_bootstrap, path)


def test_config_json_nested_too_deeply(scratch: Path) -> None:
    d = scratch / "deep"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    check(load_config, d)
