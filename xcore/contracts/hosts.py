"""Host announcements and share locations, as signed DHT records.

``host`` records: every node that offers space publishes one, signed with its
node key, under the multi-writer key ``dht_key("hosts/<shard>")`` where
``shard = node_id[0] % HOST_SHARDS``. A client reads the shards to learn
hosts; the signer's node ID is the host's ID, so a host cannot announce for
another (the transfer handshake checks the same key).

Value layout (msgpack map)::

    {"v": 1, "addr": "host:port" (TCP), "cap": capacity, "free": bytes free,
     "since": unix time the node started}

``loc`` records: a host that stores a share says so under
``dht_key(share_hash, b"loc")``, value ``{"v": 1, "addr": "host:port"}``, so
a reader (or a repairer) finds current holders even when a manifest's host
list is out of date.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from xcore.bootstrap import parse_address
from xcore.codec import as_int, as_str, expect, pack, unpack_bounded
from xcore.crypto.identity import Identity
from xcore.dht.records import KindSpec, Record, dht_key, register_kind
from xcore.errors import ConfigError, RecordRejected, RemoteProtocolError

HOST_SHARDS = 16
HOST_TTL = 2 * 3600
LOC_TTL = 24 * 3600


def _check_host_value(rec: Record) -> None:
    try:
        HostInfo.from_record(rec)
    except RemoteProtocolError as exc:
        raise RecordRejected(f"bad host record: {exc}") from exc


def _check_loc_value(rec: Record) -> None:
    try:
        loc_address(rec)
    except RemoteProtocolError as exc:
        raise RecordRejected(f"bad loc record: {exc}") from exc


register_kind(KindSpec("host", max_value=256, max_ttl=HOST_TTL, max_entries=256,
                       validate_value=_check_host_value))
register_kind(KindSpec("loc", max_value=128, max_ttl=LOC_TTL, max_entries=64,
                       validate_value=_check_loc_value))


def host_shard_key(shard: int) -> bytes:
    return dht_key(f"hosts/{shard}")


def host_shard_of(node_id: bytes) -> int:
    return node_id[0] % HOST_SHARDS


def loc_key(share_hash: bytes) -> bytes:
    return dht_key(share_hash, namespace=b"loc")


def _decode_addr(v: Any) -> tuple[str, int]:
    text = as_str(v, "addr", 300)
    try:
        return parse_address(text)
    except ConfigError as exc:
        raise RemoteProtocolError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class HostInfo:
    node_id: bytes
    pubkey: bytes
    addr: tuple[str, int]
    capacity: int
    free: int
    since: int
    seen: int  # seq of the announcement (ms)

    @classmethod
    def from_record(cls, rec: Record) -> "HostInfo":
        doc = unpack_bounded(rec.value, 256, 16)
        expect(isinstance(doc, dict) and doc.get("v") == 1, "host record: bad version")
        return cls(rec.signer_id, rec.signer_pubkey, _decode_addr(doc.get("addr")),
                   as_int(doc.get("cap"), "cap", 0, 1 << 62),
                   as_int(doc.get("free"), "free", 0, 1 << 62),
                   as_int(doc.get("since"), "since", 0, 1 << 40), rec.seq)


def host_value(addr: tuple[str, int], capacity: int, free: int, since: float) -> bytes:
    return pack({"v": 1, "addr": f"{addr[0]}:{addr[1]}", "cap": capacity, "free": free,
                 "since": int(since)})


def host_record(identity: Identity, addr: tuple[str, int], capacity: int, free: int,
                since: float, now: float) -> Record:
    return Record.create(identity, "host", host_shard_key(host_shard_of(identity.node_id)),
                         host_value(addr, capacity, free, since), int(now * 1000),
                         int(now) + HOST_TTL)


def loc_record(identity: Identity, share_hash: bytes, addr: tuple[str, int], now: float) -> Record:
    return Record.create(identity, "loc", loc_key(share_hash),
                         pack({"v": 1, "addr": f"{addr[0]}:{addr[1]}"}), int(now * 1000),
                         int(now) + LOC_TTL)


def loc_address(rec: Record) -> tuple[str, int]:
    doc = unpack_bounded(rec.value, 128, 4)
    expect(isinstance(doc, dict) and doc.get("v") == 1, "loc record: bad version")
    return _decode_addr(doc.get("addr"))


async def read_hosts(dht_get: Callable[[bytes], Awaitable[list[Record]]],
                     difficulty: int) -> dict[bytes, HostInfo]:
    """Every host announced in the DHT, newest announcement per host.

    Hosts whose ID does not meet the network's ID puzzle are ignored: a host
    ID must cost what a node ID costs (Sybil resistance).
    """
    import asyncio
    from xcore.crypto.identity import puzzle_ok
    shards = await asyncio.gather(*(dht_get(host_shard_key(i)) for i in range(HOST_SHARDS)))
    best: dict[bytes, HostInfo] = {}
    for recs in shards:
        for rec in recs:
            if rec.kind != "host":
                continue
            try:
                h = HostInfo.from_record(rec)
            except RemoteProtocolError:
                continue
            if not puzzle_ok(h.node_id, difficulty):
                continue
            cur = best.get(h.node_id)
            if cur is None or h.seen > cur.seen:
                best[h.node_id] = h
    return best
