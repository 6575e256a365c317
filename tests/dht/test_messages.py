"""DHT wire messages: round trips and the bounded, never-crashing decoder."""

from __future__ import annotations

import random

import msgpack

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xcore.codec import pack
from xcore.crypto.identity import Identity, mac
from xcore.dht.messages import (
    AUTH_MAC,
    AUTH_SIG,
    AUTH_TAG,
    FLAG_CLIENT,
    BODY_TYPES,
    MAX_CONTACTS,
    MAX_DATAGRAM,
    MAX_HOST,
    MAX_RECORDS_PER_VALUE,
    REQUEST_TYPES,
    RESPONSE_FOR,
    VERSION,
    ContactInfo,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
    Value,
    auth_bytes,
    decode_datagram,
    encode_datagram,
    encode_payload,
)
from xcore.errors import MessageTooLarge, RemoteProtocolError

ALICE = Identity.generate(2, random.Random(11).randbytes)
BOB = Identity.generate(2, random.Random(12).randbytes)
TS = 1_750_000_000_000

ids20 = st.binary(min_size=20, max_size=20)
hosts = st.text(max_size=MAX_HOST)
# contacts carry IP literals only (no names, unspecified or multicast addresses)
ip_hosts = st.ip_addresses().filter(lambda ip: not (ip.is_unspecified or ip.is_multicast)).map(str)
contacts = st.builds(ContactInfo, st.binary(min_size=32, max_size=32), ip_hosts,
                     st.integers(1, 65535))
bodies = st.one_of(
    st.just(Ping()),
    st.builds(Pong, st.tuples(hosts, st.integers(0, 65535))),
    st.builds(FindNode, ids20),
    st.builds(Nodes, st.lists(contacts, max_size=20).map(tuple)),
    st.builds(FindValue, ids20),
    st.builds(Value, st.lists(st.binary(max_size=200), max_size=8).map(tuple),
              st.lists(contacts, max_size=8).map(tuple)),
    st.builds(Store, st.binary(max_size=4000)),
    st.builds(Stored, st.integers(0, 255)),
)


def datagram(body: object, *, rid: bytes = b"r" * 8, to: bytes = b"", ts: int = TS,
             sign: bool = True) -> bytes:
    payload = encode_payload(body, rid, ALICE.pubkey, to, ts)  # type: ignore[arg-type]
    if sign:
        return encode_datagram(payload, AUTH_SIG, ALICE.sign(auth_bytes(payload)))
    return encode_datagram(payload, AUTH_MAC, mac(ALICE.mac_key(BOB.pubkey), auth_bytes(payload)))


@settings(max_examples=150, deadline=None)
@given(bodies, st.binary(min_size=8, max_size=8), st.sampled_from([b"", BOB.node_id]),
       st.integers(0, 2**53), st.booleans())
def test_round_trip_every_body_type(body: object, rid: bytes, to: bytes, ts: int,
                                    sign: bool) -> None:
    data = datagram(body, rid=rid, to=to, ts=ts, sign=sign)
    assert len(data) <= MAX_DATAGRAM
    msg = decode_datagram(data)
    assert isinstance(msg, Message)
    assert msg.body == body
    assert type(msg.body) is type(body)
    assert (msg.rid, msg.sender_pubkey, msg.to, msg.ts_ms) == (rid, ALICE.pubkey, to, ts)
    assert msg.auth_kind == (AUTH_SIG if sign else AUTH_MAC)
    assert msg.is_request == (body.TYPE in REQUEST_TYPES)  # type: ignore[attr-defined]
    # the payload is kept byte for byte, so the auth can be checked on it
    assert encode_datagram(msg.payload, msg.auth_kind, msg.auth) == data
    assert msg.payload[1:3] == bytes([VERSION, body.TYPE])  # type: ignore[attr-defined]


def test_every_body_type_is_covered() -> None:
    assert set(BODY_TYPES) == {1, 2, 3, 4, 5, 6, 7, 8}
    assert set(RESPONSE_FOR) == REQUEST_TYPES
    assert all(RESPONSE_FOR[t] not in REQUEST_TYPES for t in REQUEST_TYPES)


def test_auth_bytes_are_domain_separated() -> None:
    assert auth_bytes(b"abc") == AUTH_TAG + b"abc"


def test_oversize_datagram_rejected() -> None:
    big = encode_datagram(encode_payload(Store(b"x" * MAX_DATAGRAM), b"r" * 8, ALICE.pubkey,
                                         b"", TS), AUTH_SIG, b"s" * 64)
    assert len(big) > MAX_DATAGRAM
    with pytest.raises(MessageTooLarge):
        decode_datagram(big)
    with pytest.raises(MessageTooLarge):
        decode_datagram(b"\x00" * (MAX_DATAGRAM + 1))


def test_largest_allowed_datagram_decodes() -> None:
    base = datagram(Store(b""))
    room = MAX_DATAGRAM - len(base) - 4
    # Store bodies are capped at the record size, not the datagram size
    record = b"y" * min(room, 6 * 1024)
    data = datagram(Store(record))
    assert len(data) <= MAX_DATAGRAM
    assert decode_datagram(data).body == Store(record)
    with pytest.raises(RemoteProtocolError):
        decode_datagram(datagram(Store(b"y" * (6 * 1024 + 1))))


def _payload(*fields: object) -> bytes:
    return pack(list(fields))


GOOD = [VERSION, Ping.TYPE, b"r" * 8, ALICE.pubkey, b"", TS, []]


def _with(i: int, v: object) -> list[object]:
    doc = list(GOOD)
    doc[i] = v
    return doc


@pytest.mark.parametrize("outer", [
    pack([]),
    pack([pack(GOOD), AUTH_SIG]),
    pack([pack(GOOD), AUTH_SIG, b"s" * 64, b"extra"]),
    pack([pack(GOOD), 2, b"s" * 16]),                       # unknown auth kind
    pack([pack(GOOD), AUTH_SIG, b"s" * 16]),                # sig of MAC length
    pack([pack(GOOD), AUTH_MAC, b"s" * 64]),                # MAC of sig length
    pack([pack(GOOD), True, b"s" * 16]),                    # bool auth kind
    pack(["payload", AUTH_SIG, b"s" * 64]),                 # payload not bytes
    pack([pack(GOOD[:6]), AUTH_SIG, b"s" * 64]),            # 6 fields
    pack([pack(GOOD + [1, 0]), AUTH_SIG, b"s" * 64]),       # 9 fields
    pack([pack(GOOD + [256]), AUTH_SIG, b"s" * 64]),        # flags out of range
    pack([pack(GOOD + [-1]), AUTH_SIG, b"s" * 64]),
    pack([pack(GOOD + ["client"]), AUTH_SIG, b"s" * 64]),   # flags not an int
    pack([pack(_with(0, 2)), AUTH_SIG, b"s" * 64]),         # version
    pack([pack(_with(1, 99)), AUTH_SIG, b"s" * 64]),        # unknown type
    pack([pack(_with(1, 0)), AUTH_SIG, b"s" * 64]),         # type 0
    pack([pack(_with(2, b"r" * 7)), AUTH_SIG, b"s" * 64]),  # short rid
    pack([pack(_with(3, b"k" * 31)), AUTH_SIG, b"s" * 64]), # short key
    pack([pack(_with(4, b"t" * 10)), AUTH_SIG, b"s" * 64]), # bad `to`
    pack([pack(_with(5, -1)), AUTH_SIG, b"s" * 64]),        # negative ts
    pack([pack(_with(5, 2**53 + 1)), AUTH_SIG, b"s" * 64]), # ts too large
    pack([pack(_with(6, [1])), AUTH_SIG, b"s" * 64]),       # PING with a body
    pack([pack(_with(6, {})), AUTH_SIG, b"s" * 64]),        # body not a list
    pack([b"\xc1", AUTH_SIG, b"s" * 64]),                   # payload not msgpack
    pack({"a": 1}),
])
def test_decode_rejects_malformed(outer: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_datagram(outer)


@pytest.mark.parametrize("body", [
    [Pong.TYPE, ["h"]],
    [Pong.TYPE, ["h", 70000]],
    [Pong.TYPE, ["h" * (MAX_HOST + 1), 1]],
    [FindNode.TYPE, [b"x" * 19]],
    [FindValue.TYPE, [b"x" * 21]],
    [Nodes.TYPE, [[[b"k" * 32, "h", 0]]]],                 # port 0 in a contact
    [Nodes.TYPE, [[[b"k" * 32, "h"]]]],
    [Nodes.TYPE, [[[b"k" * 32, "h", 1]] * (MAX_CONTACTS + 1)]],
    [Value.TYPE, [[b"r"] * (MAX_RECORDS_PER_VALUE + 1), []]],
    [Value.TYPE, [["r"], []]],
    [Store.TYPE, [b"r" * (6 * 1024 + 1)]],
    [Stored.TYPE, [256]],
    [Stored.TYPE, [-1]],
])
def test_decode_rejects_bad_bodies(body: list[object]) -> None:
    mtype, fields = body
    payload = _payload(VERSION, mtype, b"r" * 8, ALICE.pubkey, b"", TS, fields)
    with pytest.raises(RemoteProtocolError):
        decode_datagram(pack([payload, AUTH_SIG, b"s" * 64]))


def test_empty_value_is_valid() -> None:
    payload = _payload(VERSION, Value.TYPE, b"r" * 8, ALICE.pubkey, b"", TS, [[], []])
    assert decode_datagram(pack([payload, AUTH_SIG, b"s" * 64])).body == Value((), ())


VALID = [datagram(b) for b in (Ping(), FindNode(b"t" * 20),
                               Value((b"rec" * 10,), (ContactInfo(BOB.pubkey, "10.0.0.1", 4000),)),
                               Store(b"z" * 300))]


def _mutated() -> st.SearchStrategy[bytes]:
    def flip(t: tuple[bytes, int, int]) -> bytes:
        blob, i, x = t
        i %= len(blob)
        return blob[:i] + bytes([blob[i] ^ x]) + blob[i + 1:]
    pick = st.sampled_from(VALID)
    return st.one_of(
        st.tuples(pick, st.integers(0, 10_000), st.integers(1, 255)).map(flip),
        st.tuples(pick, st.integers(0, 10_000)).map(lambda t: t[0][: t[1] % len(t[0])]),
        st.tuples(pick, st.binary(min_size=1, max_size=8)).map(lambda t: t[0] + t[1]),
    )


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=MAX_DATAGRAM + 16), _mutated()))
@example(b"")
@example(b"\x93\xc4\x00\x00\xc4\x00")
@example(b"\x91" * 5000)
@example(b"\xdf\xff\xff\xff\xff")
@example(b"\x93\xc4\x05\x97\x01\x01\xc0\xc0\x00\xc4\x40" + b"\x00" * 64)
def test_decode_any_bytes_returns_message_or_remote_protocol_error(data: bytes) -> None:
    try:
        msg = decode_datagram(data)
    except RemoteProtocolError:
        return
    assert isinstance(msg, Message)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_datagram("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["evil.example", "", "a" * 64, "localhost"])
def test_contact_host_must_be_an_ip_literal(host: str) -> None:
    payload = _payload(VERSION, Nodes.TYPE, b"r" * 8, ALICE.pubkey, b"", TS,
                       [[[BOB.pubkey, host, 4000]]])
    with pytest.raises(RemoteProtocolError):
        decode_datagram(pack([payload, AUTH_SIG, b"s" * 64]))


@pytest.mark.parametrize("host", ["10.0.0.1", "2001:db8::1", "127.0.0.1"])
def test_contact_with_ip_literal_decodes(host: str) -> None:
    payload = _payload(VERSION, Nodes.TYPE, b"r" * 8, ALICE.pubkey, b"", TS,
                       [[[BOB.pubkey, host, 4000]]])
    msg = decode_datagram(pack([payload, AUTH_SIG, b"s" * 64]))
    assert msg.body == Nodes((ContactInfo(BOB.pubkey, host, 4000),))


@given(st.integers(0, 255))
def test_flags_round_trip_and_only_clients_send_them(flags: int) -> None:
    payload = encode_payload(Ping(), b"r" * 8, ALICE.pubkey, b"", TS, flags)
    msg = decode_datagram(encode_datagram(payload, AUTH_SIG, ALICE.sign(auth_bytes(payload))))
    assert msg.flags == flags and msg.from_client == bool(flags & FLAG_CLIENT)
    # without flags the payload is the 7-field one every node understands
    assert (len(msgpack.unpackb(payload)) == 7) == (flags == 0)
