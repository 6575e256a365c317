"""Host announcements and share locations, as signed DHT records.

``host`` records: every node that offers space publishes one, signed with its
node key, under the multi-writer key ``dht_key("hosts/<shard>")`` where
``shard = node_id[0] % HOST_SHARDS``. A client reads the shards to learn
hosts; the signer's node ID is the host's ID, so a host cannot announce for
another (the transfer handshake checks the same key).

Value layout (msgpack map)::

    {"v": 1, "addr": "host:port" (TCP), "cap": capacity, "free": bytes free,
     "since": unix time the node started}

Each node keeps at most 256 announcements per shard key (16 x 256 = 4,096
hosts in all); hosts renew theirs while they run, and a full key drops the
announcement expiring first for a fresher one (``evict_oldest``), so in a
larger network the latest announcements are held and every running host
keeps getting back in. A VALUE reply carries the freshest records that fit
one datagram (about 30 host records), so a reader sees a few hundred
recently announced hosts, a sample that rotates as hosts renew.

``loc`` records: a host that stores a share says so under
``loc_key(share_hash)`` = ``dht_key(share_hash, b"loc")``, so a reader (or a
repairer) finds current holders even when a manifest's host list is out of
date. The same record carries the host's storage contract for the share,
when it has one (:mod:`.contract`): the record holders are the share's
auditors (:mod:`xcore.auditor`). Value (msgpack map)::

    {"v": 1, "addr": "host:port", "c": signed contract (optional)}
    {"v": 1, "c": signed contract ended by its owner}     the share was deleted

One record per share, not a location and a contract apart: each record a
host publishes costs an iterative lookup and a STORE at the k closest nodes,
each checked with Ed25519, and storing a share used to cost two of them (the
largest part of a host's CPU during an upload, bench/README "Data path").

A contract in a loc record must be signed by both parties, be for the
record's share and be the signing host's own. A record without ``addr`` (a
*tombstone*) is allowed only with a contract its owner ended: after a
DELETE the host publishes one, once, for a ``LOC_TTL``, so that auditors
holding the older record learn that the contract ended instead of blaming
the host for a share it was told to drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from xcore.bootstrap import parse_address
from xcore.codec import as_bytes, as_int, as_str, expect, pack, unpack_bounded
from xcore.contracts.contract import MAX_CONTRACT_BYTES, SignedContract
from xcore.crypto.identity import Identity
from xcore.dht.records import KindSpec, Record, dht_key, register_kind
from xcore.errors import ConfigError, LocalProtocolError, RecordRejected, RemoteProtocolError

HOST_SHARDS = 16
HOST_TTL = 2 * 3600
LOC_TTL = 24 * 3600
LOC_MAX_VALUE = 128 + MAX_CONTRACT_BYTES


def _check_host_value(rec: Record) -> None:
    try:
        HostInfo.from_record(rec)
    except RemoteProtocolError as exc:
        raise RecordRejected(f"bad host record: {exc}") from exc


def _check_loc_value(rec: Record) -> None:
    try:
        doc = _loc_doc(rec)
        if "addr" in doc:
            _decode_addr(doc["addr"])
    except RemoteProtocolError as exc:
        raise RecordRejected(f"bad loc record: {exc}") from exc
    sc = _doc_contract(rec, doc)
    if "addr" not in doc and (sc is None or not sc.delete_sig):
        raise RecordRejected("bad loc record: no address and no ended contract")


register_kind(KindSpec("host", max_value=256, max_ttl=HOST_TTL, max_entries=256, evict_oldest=True,
                       validate_value=_check_host_value))
register_kind(KindSpec("loc", max_value=LOC_MAX_VALUE, max_ttl=LOC_TTL, max_entries=64,
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


def loc_record(identity: Identity, share_hash: bytes, addr: tuple[str, int] | None, now: float,
               contract: SignedContract | None = None) -> Record:
    """``identity`` holds ``share_hash`` at ``addr`` (under ``contract``, if
    any); with ``addr`` None, a tombstone for a contract its owner ended."""
    doc: dict[str, Any] = {"v": 1}
    if addr is not None:
        doc["addr"] = f"{addr[0]}:{addr[1]}"
    if contract is not None:
        c = contract.contract
        if c.share_hash != share_hash or c.host_pubkey != identity.pubkey or not contract.complete:
            raise LocalProtocolError("a loc record carries its host's signed contract for the share")
        doc["c"] = contract.encode()
    elif addr is None:
        raise LocalProtocolError("a loc record without an address needs an ended contract")
    return Record.create(identity, "loc", loc_key(share_hash), pack(doc), int(now * 1000),
                         int(now) + LOC_TTL)


def _loc_doc(rec: Record) -> dict[str, Any]:
    doc = unpack_bounded(rec.value, LOC_MAX_VALUE, 4)
    expect(isinstance(doc, dict) and doc.get("v") == 1, "loc record: bad version")
    return doc  # type: ignore[no-any-return]


def loc_address(rec: Record) -> tuple[str, int]:
    """Where the signer serves the share; :class:`RemoteProtocolError` for a
    malformed record or a tombstone (the share was deleted)."""
    doc = _loc_doc(rec)
    expect("addr" in doc, "loc record: the share was deleted")
    return _decode_addr(doc["addr"])


def loc_contract(rec: Record) -> SignedContract | None:
    """The host's signed contract a loc record carries (None if it has none),
    fully checked: signed by both parties, for the record's share, and the
    record's signer is the contract's host. Raises :class:`RecordRejected`.
    (The record's own signature is the store's business.)"""
    if rec.kind != "loc":
        raise RecordRejected("not a loc record")
    try:
        doc = _loc_doc(rec)
    except RemoteProtocolError as exc:
        raise RecordRejected(f"bad loc record: {exc}") from exc
    return _doc_contract(rec, doc)


def loc_contracts(records: Iterable[Record]) -> list[SignedContract]:
    """The valid contracts among ``records`` (the records of a ``loc_key``
    lookup); records without one, or with a bad one, are skipped."""
    out = []
    for rec in records:
        try:
            sc = loc_contract(rec)
        except RecordRejected:
            continue
        if sc is not None:
            out.append(sc)
    return out


def _doc_contract(rec: Record, doc: dict[str, Any]) -> SignedContract | None:
    """The checks of :func:`loc_contract` on the record's decoded value. A
    node meets one contract again and again (each republication of its loc
    record, every audit round); :func:`xcore.crypto.identity.verify`
    remembers its two signature checks."""
    if doc.get("c") is None:
        return None
    try:
        sc = SignedContract.decode(as_bytes(doc["c"], "contract", max_size=MAX_CONTRACT_BYTES))
        sc.verify()
    except RemoteProtocolError as exc:
        raise RecordRejected(f"bad contract in loc record: {exc}") from exc
    c = sc.contract
    if rec.key != loc_key(c.share_hash):
        raise RecordRejected("loc record: the contract is for another share")
    if rec.signer_pubkey != c.host_pubkey:
        raise RecordRejected("loc record: the contract is another host's")
    return sc


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
