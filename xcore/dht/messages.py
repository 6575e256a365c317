"""DHT wire messages: authenticated datagrams of at most 8 KiB.

Datagram layout (msgpack)::

    [payload:bin, auth_kind:uint, auth:bin]
    payload = msgpack [version=1, type:uint, rid:bin8, sender_pubkey:bin32,
                       to:bin0|bin20, ts_ms:uint, body:array (, flags:uint)]

``auth`` covers ``b"xcore-dht-v1" || payload`` exactly as sent, and is either
an Ed25519 signature by ``sender_pubkey`` (auth_kind 0: first contact, when the
sender does not know the receiver's key) or a 16-byte keyed BLAKE2b MAC under
the key both peers derive from their static keys (auth_kind 1). ``to`` is the
receiver's node ID when the sender knows it, so a captured message cannot be
replayed to another node; ``rid`` and ``ts_ms`` let the receiver refuse
replays and match responses to requests.

``flags`` is optional (absent means 0). Bit 0, :data:`FLAG_CLIENT`, marks a
*client-mode* sender: a short-lived process (an ``xcore put`` run without a
node) that asks but does not serve. Receivers answer it but never put it in
their routing tables, so nobody routes lookups through it or stores records
at it after it has gone (libp2p's DHT client mode does the same). Nodes send
7-field payloads; only clients send the 8th field.

Bodies by type (a table, not names from the network):

=========== ====================================================
PING        []
PONG        [observed_host:str, observed_port:uint]
FIND_NODE   [target:bin20]
NODES       [[contact, ...]]            contact = [pubkey:bin32, host:str, port:uint]
FIND_VALUE  [key:bin20]
VALUE       [[record:bin, ...], [contact, ...]]
STORE       [record:bin]
STORED      [status:uint]               0 ok, 1 rejected
=========== ====================================================
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

from xcore.codec import as_bytes, as_int, as_list, as_str, expect, pack, unpack_bounded
from xcore.crypto.identity import ID_BYTES, MAC_BYTES, PUBKEY_BYTES, SIG_BYTES
from xcore.dht.records import MAX_RECORD_BYTES
from xcore.errors import RemoteProtocolError

VERSION = 1
MAX_DATAGRAM = 8 * 1024
AUTH_TAG = b"xcore-dht-v1"
RID_BYTES = 8
AUTH_SIG = 0
AUTH_MAC = 1
MAX_CONTACTS = 32
MAX_RECORDS_PER_VALUE = 64
MAX_HOST = 64
FLAG_CLIENT = 1

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ContactInfo:
    pubkey: bytes
    host: str
    port: int

    def encode(self) -> list[Any]:
        return [self.pubkey, self.host, self.port]

    @classmethod
    def decode(cls, v: Any) -> "ContactInfo":
        # Fast path for the well-formed contact (a lookup reply carries 20):
        # exact types as msgpack produces them, the same bounds as below.
        if type(v) is list and len(v) == 3:
            pubkey, host, port = v
            if (type(pubkey) is bytes and len(pubkey) == PUBKEY_BYTES
                    and type(host) is str and len(host) <= MAX_HOST
                    and type(port) is int and 1 <= port <= 65535 and _is_ip_literal(host)):
                return cls(pubkey, host, port)
        v = as_list(v, "contact", 3)
        expect(len(v) == 3, "contact: expected 3 fields")
        host = as_str(v[1], "contact host", MAX_HOST)
        expect(_is_ip_literal(host), "contact host: expected an IP address")
        return cls(as_bytes(v[0], "contact key", size=PUBKEY_BYTES), host,
                   as_int(v[2], "contact port", 1, 65535))


@functools.lru_cache(maxsize=65536)
def _is_ip_literal(host: str) -> bool:
    """Peers hand out IP addresses only: no names (a blocking DNS lookup in
    the event loop), no unspecified or multicast addresses."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast)


def _contacts(v: Any) -> tuple[ContactInfo, ...]:
    return tuple(ContactInfo.decode(c) for c in as_list(v, "contacts", MAX_CONTACTS))


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[int] = 1

    def body(self) -> list[Any]:
        return []

    @classmethod
    def from_body(cls, b: list[Any]) -> "Ping":
        expect(len(b) == 0, "PING: unexpected body")
        return cls()


@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[int] = 2
    observed: Address

    def body(self) -> list[Any]:
        return [self.observed[0], self.observed[1]]

    @classmethod
    def from_body(cls, b: list[Any]) -> "Pong":
        expect(len(b) == 2, "PONG: expected 2 fields")
        return cls((as_str(b[0], "observed host", MAX_HOST), as_int(b[1], "observed port", 0, 65535)))


@dataclass(frozen=True, slots=True)
class FindNode:
    TYPE: ClassVar[int] = 3
    target: bytes

    def body(self) -> list[Any]:
        return [self.target]

    @classmethod
    def from_body(cls, b: list[Any]) -> "FindNode":
        expect(len(b) == 1, "FIND_NODE: expected 1 field")
        return cls(as_bytes(b[0], "target", size=ID_BYTES))


@dataclass(frozen=True, slots=True)
class Nodes:
    TYPE: ClassVar[int] = 4
    contacts: tuple[ContactInfo, ...]

    def body(self) -> list[Any]:
        return [[c.encode() for c in self.contacts]]

    @classmethod
    def from_body(cls, b: list[Any]) -> "Nodes":
        expect(len(b) == 1, "NODES: expected 1 field")
        return cls(_contacts(b[0]))


@dataclass(frozen=True, slots=True)
class FindValue:
    TYPE: ClassVar[int] = 5
    key: bytes

    def body(self) -> list[Any]:
        return [self.key]

    @classmethod
    def from_body(cls, b: list[Any]) -> "FindValue":
        expect(len(b) == 1, "FIND_VALUE: expected 1 field")
        return cls(as_bytes(b[0], "key", size=ID_BYTES))


@dataclass(frozen=True, slots=True)
class Value:
    TYPE: ClassVar[int] = 6
    records: tuple[bytes, ...]
    contacts: tuple[ContactInfo, ...]

    def body(self) -> list[Any]:
        return [list(self.records), [c.encode() for c in self.contacts]]

    @classmethod
    def from_body(cls, b: list[Any]) -> "Value":
        expect(len(b) == 2, "VALUE: expected 2 fields")
        recs = tuple(as_bytes(r, "record", max_size=MAX_RECORD_BYTES)
                     for r in as_list(b[0], "records", MAX_RECORDS_PER_VALUE))
        return cls(recs, _contacts(b[1]))


@dataclass(frozen=True, slots=True)
class Store:
    TYPE: ClassVar[int] = 7
    record: bytes

    def body(self) -> list[Any]:
        return [self.record]

    @classmethod
    def from_body(cls, b: list[Any]) -> "Store":
        expect(len(b) == 1, "STORE: expected 1 field")
        return cls(as_bytes(b[0], "record", max_size=MAX_RECORD_BYTES))


@dataclass(frozen=True, slots=True)
class Stored:
    TYPE: ClassVar[int] = 8
    status: int

    def body(self) -> list[Any]:
        return [self.status]

    @classmethod
    def from_body(cls, b: list[Any]) -> "Stored":
        expect(len(b) == 1, "STORED: expected 1 field")
        return cls(as_int(b[0], "status", 0, 255))


Body = Ping | Pong | FindNode | Nodes | FindValue | Value | Store | Stored
BODY_TYPES: dict[int, Any] = {c.TYPE: c for c in (Ping, Pong, FindNode, Nodes, FindValue, Value, Store, Stored)}
REQUEST_TYPES = {Ping.TYPE, FindNode.TYPE, FindValue.TYPE, Store.TYPE}
RESPONSE_FOR = {Ping.TYPE: Pong.TYPE, FindNode.TYPE: Nodes.TYPE,
                FindValue.TYPE: Value.TYPE, Store.TYPE: Stored.TYPE}


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded datagram. ``payload`` is kept as received, for auth checks."""

    rid: bytes
    sender_pubkey: bytes
    to: bytes
    ts_ms: int
    body: Body
    auth_kind: int
    auth: bytes
    payload: bytes
    flags: int = 0

    @property
    def is_request(self) -> bool:
        return self.body.TYPE in REQUEST_TYPES

    @property
    def from_client(self) -> bool:
        return bool(self.flags & FLAG_CLIENT)


def encode_payload(body: Body, rid: bytes, sender_pubkey: bytes, to: bytes, ts_ms: int,
                   flags: int = 0) -> bytes:
    doc = [VERSION, body.TYPE, rid, sender_pubkey, to, ts_ms, body.body()]
    if flags:
        doc.append(flags)
    return pack(doc)


def auth_bytes(payload: bytes) -> bytes:
    return AUTH_TAG + payload


def encode_datagram(payload: bytes, auth_kind: int, auth: bytes) -> bytes:
    return pack([payload, auth_kind, auth])


def decode_datagram(data: bytes) -> Message:
    """Parse a datagram; raises :class:`RemoteProtocolError` on anything wrong.

    Authentication is checked by the caller, which knows the keys.
    """
    outer = as_list(unpack_bounded(data, MAX_DATAGRAM, 8), "datagram", 3)
    expect(len(outer) == 3, "datagram: expected 3 fields")
    payload = as_bytes(outer[0], "payload", max_size=MAX_DATAGRAM)
    auth_kind = as_int(outer[1], "auth kind", 0, 1)
    auth = as_bytes(outer[2], "auth", size=SIG_BYTES if auth_kind == AUTH_SIG else MAC_BYTES)
    doc = as_list(unpack_bounded(payload, MAX_DATAGRAM, MAX_RECORDS_PER_VALUE + 8), "payload", 8)
    expect(len(doc) in (7, 8), "payload: expected 7 or 8 fields")
    expect(type(doc[0]) is int and doc[0] == VERSION, "payload: unknown version")
    mtype = as_int(doc[1], "type", 0, 255)
    cls = BODY_TYPES.get(mtype)
    if cls is None:
        raise RemoteProtocolError("payload: unknown message type")
    rid = as_bytes(doc[2], "rid", size=RID_BYTES)
    sender = as_bytes(doc[3], "sender", size=PUBKEY_BYTES)
    to = as_bytes(doc[4], "to", max_size=ID_BYTES)
    expect(len(to) in (0, ID_BYTES), "to: expected 0 or 20 bytes")
    ts_ms = as_int(doc[5], "ts", 0, 2**53)
    body = cls.from_body(as_list(doc[6], "body", 4))
    flags = as_int(doc[7], "flags", 0, 255) if len(doc) == 8 else 0
    return Message(rid, sender, to, ts_ms, body, auth_kind, auth, payload, flags)
