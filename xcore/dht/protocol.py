"""The DHT protocol core: a sans-IO Kademlia node.

How it works
------------
:class:`DHTNode` never touches a socket or a clock. An adapter (the asyncio
one in :mod:`xcore.net.aio`, or the simulator in :mod:`xcore.net.sim`) feeds
it with::

    node.receive_datagram(data, addr, now)
    node.handle_timer(now)

and after every call pulls what it must do::

    node.datagrams_to_send()  -> [(bytes, (host, port)), ...]
    node.get_timer()          -> the next deadline, or None

Long operations (``join``, ``put``, ``get``, ``find_node``) are started with
an explicit ``now`` and return an :class:`~xcore.dht.operation.Operation`
that completes as responses and timers arrive. An iterative lookup is a
:class:`Lookup` object with ``on_response`` / ``on_timeout``, not a coroutine.

Every datagram is authenticated (see :mod:`xcore.dht.messages`). The receive
path checks, in order: rate limit per source, size and structure, the
sender's key against the ID puzzle, that it was meant for us, its timestamp
window, the signature or MAC, and for requests that the (sender, rid) pair is
new; a response must match a pending request by rid, by the address the
request went to and by the node ID expected there. Anything else is dropped
and counted in :attr:`DHTNode.counters`; nothing from the network raises.

Kademlia rules (Maymounkov & Mazières 2002): k-buckets with LRU eviction only
after the least-recently-seen contact fails a ping (section 2.2); iterative
lookups with ``alpha`` parallel requests (2.3); values stored at the k closest
nodes, republished hourly and expired after their TTL (2.5); a newly seen
node is given the records it is now among the closest to (2.5, done right:
the stock package hashed the key twice, so newcomers got nothing). Records are
signed and versioned (:mod:`xcore.dht.records`); a value lookup gathers the
best record per signer and writes it back to the close nodes that returned a
stale or no copy (as BEP 44 / libp2p).
"""

from __future__ import annotations

import functools
import hmac
import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Container

from kademlia.node import Node, NodeHeap

from xcore.crypto.identity import (
    ID_BYTES, Identity, check_pubkey, mac, node_id_of, verify,
)
from xcore.dht.messages import (
    AUTH_MAC, AUTH_SIG, FLAG_CLIENT, MAX_DATAGRAM, MAX_RECORDS_PER_VALUE, RID_BYTES, Address, Body, ContactInfo, FindNode,
    FindValue, Message, Nodes, Ping, Pong, Store, Stored, Value, auth_bytes,
    decode_datagram, encode_datagram, encode_payload, RESPONSE_FOR,
)
from xcore.dht.operation import Operation
from xcore.dht.records import Record, RecordStore, best_per_signer, kind_spec, validate
from xcore.dht.routing import Contact, RoutingTable
from xcore.errors import (
    BadIdentity, BadSignature, LookupFailed, NoPeers, NotFound, RecordRejected,
    RemoteProtocolError,
)


@dataclass
class DHTConfig:
    """Network parameters (DESIGN.md, defaults table)."""

    ksize: int = 20
    alpha: int = 3
    difficulty: int = 8
    request_timeout: float = 2.0
    record_ttl: int = 24 * 3600
    republish_interval: float = 3600.0
    refresh_interval: float = 3600.0
    maintenance_interval: float = 60.0
    replay_window: float = 300.0
    max_failures: int = 2
    rate_per_peer: float = 400.0  # datagrams/s sustained, per source address
    burst_per_peer: float = 800.0
    max_rate_entries: int = 20_000
    diversity: bool = True
    welcome_batch: int = 64  # records handed to one newcomer at most
    max_seen: int = 200_000  # replay cache entries (request IDs within the window)
    # A short-lived client (``xcore put`` without a running node): it asks but
    # does not serve. Its messages carry FLAG_CLIENT, so peers answer without
    # adding it to their tables; it keeps no records (a put counts remote
    # copies only) and joins with a self-lookup, without refreshing buckets.
    client: bool = False


@dataclass
class _Pending:
    addr: Address
    expected_id: bytes | None
    response_type: int
    deadline: float
    sent_at: float
    on_reply: Callable[[Message, Contact, float], None]
    on_fail: Callable[[float], None]


@dataclass
class _RateBucket:
    tokens: float
    stamp: float


class ShortList(NodeHeap):  # type: ignore[misc]
    """:class:`kademlia.node.NodeHeap` with set membership.

    The stock ``push`` tests ``node not in self``, a scan of the whole heap
    (hundreds of entries in a lookup) per pushed node; here membership is a
    set of IDs kept in step with ``push`` and ``remove``.
    """

    def __init__(self, node: Node, maxsize: int) -> None:
        super().__init__(node, maxsize)
        self._ids: set[bytes] = set()

    def push(self, nodes: Node | list[Node]) -> None:
        for node in nodes if isinstance(nodes, list) else [nodes]:
            if node.id not in self._ids:
                self._ids.add(node.id)
                heapq.heappush(self.heap, (self.node.long_id ^ node.long_id, node))

    def remove(self, peers: list[bytes]) -> None:
        super().remove(peers)
        self._ids.difference_update(peers)

    def __contains__(self, node: Node) -> bool:
        return node.id in self._ids


class Lookup:
    """An iterative node or value lookup (paper section 2.3).

    Keeps the ``k`` closest nodes seen in a :class:`ShortList` (a
    :class:`kademlia.node.NodeHeap`),
    queries ``alpha`` at a time, and ends when the ``k`` closest have all
    answered or failed. Hop count: the seeds from our own table are hop 1;
    a node learned from a hop-h answer is hop h+1.
    """

    def __init__(self, dht: "DHTNode", target: bytes, find_value: bool,
                 op: Operation[Any]) -> None:
        self.dht = dht
        self.target = target
        self.find_value = find_value
        self.op = op
        self.k = dht.config.ksize
        self.shortlist = ShortList(Node(target), self.k)
        self.contacts: dict[bytes, Contact] = {}
        self.hop: dict[bytes, int] = {}
        self.in_flight: set[bytes] = set()
        self.responded: dict[bytes, Contact] = {}
        self.held: dict[bytes, dict[bytes, tuple[int, int]]] = {}  # node -> signer -> order
        self.records: dict[bytes, Record] = {}
        self.value_hop: int | None = None
        self.messages = 0
        self.finished = False

    def start(self, seeds: list[Contact], now: float) -> None:
        for c in seeds:
            self._learn(c, 1)
        self._step(now)

    def _learn(self, c: Contact, hop: int) -> None:
        if c.id == self.dht.identity.node_id or c.id in self.contacts:
            return
        self.contacts[c.id] = c
        self.hop[c.id] = hop
        self.shortlist.push(c)

    def _step(self, now: float) -> None:
        if self.finished:
            return
        for c in self.shortlist:
            if len(self.in_flight) >= self.dht.config.alpha:
                break
            if c.id in self.shortlist.contacted:
                continue
            self.shortlist.mark_contacted(c)
            self.in_flight.add(c.id)
            self.messages += 1
            body: Body = FindValue(self.target) if self.find_value else FindNode(self.target)
            contact = self.contacts[c.id]
            cid: bytes = c.id
            self.dht._request(contact.address, contact.id, contact.pubkey, body, now,
                              functools.partial(self._answered, cid),
                              functools.partial(self.on_timeout, cid))
        if not self.in_flight:
            self._finish(now)

    def _answered(self, cid: bytes, msg: Message, who: Contact, now: float) -> None:
        self.on_response(cid, msg, now)

    def on_response(self, cid: bytes, msg: Message, now: float) -> None:
        self.in_flight.discard(cid)
        if self.finished:
            return
        self.responded[cid] = self.contacts[cid]
        hop = self.hop.get(cid, 1)
        body = msg.body
        infos: tuple[ContactInfo, ...] = ()
        if isinstance(body, Nodes):
            infos = body.contacts
        elif isinstance(body, Value):
            infos = body.contacts
            held = self.held.setdefault(cid, {})
            for blob in body.records:
                try:
                    rec = self.dht._accept_record_blob(blob, now)
                except RecordRejected:
                    continue
                if rec.key != self.target:
                    continue
                held[rec.signer_id] = rec.order
                cur = self.records.get(rec.signer_id)
                if cur is None or rec.order > cur.order:
                    self.records[rec.signer_id] = rec
                if self.value_hop is None or hop < self.value_hop:
                    self.value_hop = hop
        for info in infos:
            c = self.dht._contact_from_info(info, self.contacts)
            if c is not None:
                self._learn(c, hop + 1)
        self._step(now)

    def on_timeout(self, cid: bytes, now: float) -> None:
        self.in_flight.discard(cid)
        if self.finished:
            return
        self.shortlist.remove([cid])
        self._step(now)

    def closest_responders(self) -> list[Contact]:
        t = int.from_bytes(self.target, "big")
        rs = sorted(self.responded.values(), key=lambda c: c.long_id ^ t)
        return rs[: self.k]

    def hops(self) -> int:
        if self.find_value and self.value_hop is not None:
            return self.value_hop
        closest = self.closest_responders()
        return self.hop.get(closest[0].id, 1) if closest else 0

    def _finish(self, now: float) -> None:
        self.finished = True
        self.dht._lookup_done(self, now)


@dataclass(frozen=True)
class LookupResult:
    contacts: list[Contact]
    records: list[Record]
    hops: int
    messages: int


class DHTNode:
    """A sans-IO Kademlia node with signed records (see module docstring)."""

    def __init__(self, identity: Identity, *, config: DHTConfig | None = None,
                 rng: random.Random, now: float) -> None:
        self.identity = identity
        self.config = config or DHTConfig()
        self.rng = rng
        self.routing = RoutingTable(identity.node_id, self.config.ksize,
                                    diversity=self.config.diversity)
        self.store = RecordStore()
        self.published: dict[tuple[str, bytes], Record] = {}
        self.counters: dict[str, int] = {}
        self.lookup_hops: list[int] = []
        self.observed_address: Address | None = None
        self._out: list[tuple[bytes, Address]] = []
        # (deadline, seq, fn, rid): rid is set for a request's expiry, which
        # is moot once the answer came (see get_timer)
        self._timers: list[tuple[float, int, Callable[[float], None], bytes | None]] = []
        self._timer_seq = 0
        self._pending: dict[bytes, _Pending] = {}
        self._seen: dict[tuple[bytes, bytes], float] = {}
        self._rate: dict[Address, _RateBucket] = {}
        self._pinging: set[bytes] = set()
        self._republished: dict[tuple[bytes, bytes], float] = {}
        self._seeds: list[tuple[Address, bytes | None]] = []
        self._last_answer = now
        self._verifying: set[bytes] = set()
        self._last_republish = now
        self._now = now
        self.started = now
        self._schedule(now + self.config.maintenance_interval, self._maintenance)

    # -- adapter interface -------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        # Drop expiry timers of requests already answered from the head of
        # the heap: they would do nothing when due, and each would cost the
        # adapter a wake-up (most requests are answered, so most would).
        timers, pending = self._timers, self._pending
        while timers and timers[0][3] is not None and timers[0][3] not in pending:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        while self._timers and self._timers[0][0] <= now:
            fn = heapq.heappop(self._timers)[2]
            fn(now)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self._now = now
        self._count("received")
        if not self._rate_ok(addr, now):
            self._count("dropped_rate_limited")
            return
        try:
            msg = decode_datagram(data)
        except RemoteProtocolError:
            self._count("dropped_malformed")
            return
        except Exception:  # belt and braces: a parser bug must not kill the node
            self._count("dropped_malformed")
            return
        try:
            sender_id = check_pubkey(msg.sender_pubkey, self.config.difficulty)
        except BadIdentity:
            self._count("dropped_bad_identity")
            return
        if sender_id == self.identity.node_id:
            self._count("dropped_self")
            return
        if msg.to and msg.to != self.identity.node_id:
            self._count("dropped_misdirected")
            return
        if abs(msg.ts_ms / 1000.0 - now) > self.config.replay_window:
            self._count("dropped_stale")
            return
        try:
            self._check_auth(msg)
        except (BadSignature, BadIdentity):
            self._count("dropped_bad_auth")
            return
        contact = Contact(sender_id, addr[0], addr[1], msg.sender_pubkey)
        if msg.is_request:
            key = (sender_id, msg.rid)
            if key in self._seen:
                self._count("dropped_replayed")
                return
            if len(self._seen) >= self.config.max_seen:
                cutoff = now - self.config.replay_window
                self._seen = {k: v for k, v in self._seen.items() if v >= cutoff}
                if len(self._seen) >= self.config.max_seen:
                    # cannot remember more requests: refuse rather than forget
                    # fresh ones (which would reopen replays)
                    self._count("dropped_replay_cache_full")
                    return
            self._seen[key] = now
            self._handle_request(msg, contact, addr, now)
            if msg.from_client:
                self._count("client_requests")  # answered, never routed through
            elif msg.auth_kind == AUTH_MAC or sender_id in self.routing:
                self._saw_alive(contact, now)
            else:
                self._verify_then_add(contact, now)
        else:
            pending = self._pending.get(msg.rid)
            if (pending is None or pending.addr != addr
                    or (pending.expected_id is not None and pending.expected_id != sender_id)
                    or pending.response_type != msg.body.TYPE):
                self._count("dropped_unexpected_response")
                return
            del self._pending[msg.rid]
            self._last_answer = now
            held = self.routing.get(sender_id)
            if held is not None:
                held.rtt = now - pending.sent_at
            if not msg.from_client:
                self._saw_alive(contact, now)
            pending.on_reply(msg, contact, now)

    # -- operations ----------------------------------------------------------

    def join(self, seeds: list[tuple[Address, bytes | None]], now: float) -> Operation[int]:
        """Ping the seeds, look ourselves up, refresh far buckets.

        Completes with the number of contacts known, or fails with
        :class:`NoPeers` when no seed answered and the table is empty.
        """
        self._now = now
        op: Operation[int] = Operation("join")
        waiting = {"n": len(seeds)}
        self._seeds = [(a, i) for a, i in seeds][:16]

        def after_pings(t: float) -> None:
            if not len(self.routing):
                op.set_error(NoPeers())
                return
            own = self.find_node(self.identity.node_id, t)
            own.add_done_callback(lambda _o: refresh(self._now))

        def refresh(t: float) -> None:
            ops = [] if self.config.client else [
                self.find_node(self._random_id_in(b.range), t)
                for b in self.routing.buckets if not b.has_in_range(self.routing.own)]
            if not ops:
                op.set_result(len(self.routing))
                return
            left = {"n": len(ops)}

            def one_done(_o: Operation[Any]) -> None:
                left["n"] -= 1
                if left["n"] == 0:
                    op.set_result(len(self.routing))
            for o in ops:
                o.add_done_callback(one_done)

        if not seeds:
            if len(self.routing):
                after_pings(now)
            else:
                op.set_error(NoPeers())
            return op

        def one(t: float) -> None:
            waiting["n"] -= 1
            if waiting["n"] == 0:
                after_pings(t)

        for addr, node_id in seeds:
            if node_id == self.identity.node_id:
                one(now)
                continue
            pubkey = None
            known = self.routing.get(node_id) if node_id else None
            if known is not None:
                pubkey = known.pubkey
            self._request(addr, node_id, pubkey, Ping(), now,
                          lambda msg, c, t: one(t), one)
        return op

    def ping(self, addr: Address, node_id: bytes | None, now: float) -> Operation[Contact]:
        op: Operation[Contact] = Operation("ping")
        known = self.routing.get(node_id) if node_id else None
        self._request(addr, node_id, known.pubkey if known else None, Ping(), now,
                      lambda msg, c, t: op.set_result(c),
                      lambda t: op.set_error(LookupFailed("no answer to ping")))
        return op

    def find_node(self, target: bytes, now: float) -> Operation[LookupResult]:
        return self._lookup(target, False, now)

    def get(self, key: bytes, now: float) -> Operation[LookupResult]:
        """Find the best record per signer under ``key`` (fails with NotFound)."""
        return self._lookup(key, True, now)

    def put(self, record: Record, now: float) -> Operation[int]:
        """Store ``record`` locally and at the k closest nodes to its key.

        Completes with the number of nodes that acknowledged (ours included).
        """
        self._now = now
        op: Operation[int] = Operation("put")
        local = 0
        try:
            if self.config.client:  # a client's copy leaves with it: only remote ones count
                validate(record, now)
            else:
                self.store.put(record, now)
                local = 1
        except RecordRejected as exc:
            if "stale" in str(exc) or "same seq" in str(exc):
                op.set_error(exc)
                return op
            if "too many" not in str(exc) and "full" not in str(exc):
                op.set_error(exc)
                return op
        self._store_at_closest(record, now, op, local)
        return op

    def publish(self, record: Record, now: float) -> Operation[int]:
        """Put a record and keep it alive: our own records are re-signed with a
        fresh expiry before they expire; others' are republished until then."""
        self.published[(record.kind, record.key)] = record
        return self.put(record, now)

    def unpublish(self, kind: str, key: bytes) -> None:
        self.published.pop((kind, key), None)

    # -- internals: sending ---------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _schedule(self, when: float, fn: Callable[[float], None],
                  rid: bytes | None = None) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, fn, rid))

    def _send(self, body: Body, rid: bytes, addr: Address, to_id: bytes | None,
              to_pubkey: bytes | None, now: float) -> None:
        self._now = now
        payload = encode_payload(body, rid, self.identity.pubkey, to_id or b"", int(now * 1000),
                                 FLAG_CLIENT if self.config.client else 0)
        if to_pubkey is not None:
            try:
                auth = mac(self.identity.mac_key(to_pubkey), auth_bytes(payload))
                kind = AUTH_MAC
            except BadIdentity:
                return
        else:
            auth = self.identity.sign(auth_bytes(payload))
            kind = AUTH_SIG
        data = encode_datagram(payload, kind, auth)
        if len(data) > MAX_DATAGRAM:
            self._count("send_too_large")
            return
        self._count("sent")
        self._out.append((data, addr))

    def _request(self, addr: Address, node_id: bytes | None, pubkey: bytes | None, body: Body,
                 now: float, on_reply: Callable[[Message, Contact, float], None],
                 on_fail: Callable[[float], None]) -> None:
        rid = self.rng.getrandbits(RID_BYTES * 8).to_bytes(RID_BYTES, "big")
        deadline = now + self.config.request_timeout
        self._pending[rid] = _Pending(addr, node_id, RESPONSE_FOR[body.TYPE], deadline, now,
                                      on_reply, on_fail)
        self._send(body, rid, addr, node_id, pubkey, now)

        def expire(t: float) -> None:
            p = self._pending.pop(rid, None)
            if p is None:
                return
            self._count("timeouts")
            # Evict a silent contact only while others answer us: when nobody
            # has answered for a while, we are more likely the one cut off
            # (or our event loop stalled) than the whole table dead, and an
            # empty table could not recover.
            if node_id is not None and t - self._last_answer < 4 * self.config.request_timeout:
                self.routing.failed(node_id, self.config.max_failures)
            p.on_fail(t)
        self._schedule(deadline, expire, rid)

    def _check_auth(self, msg: Message) -> None:
        data = auth_bytes(msg.payload)
        if msg.auth_kind == AUTH_SIG:
            verify(msg.sender_pubkey, data, msg.auth)
        else:
            expected = mac(self.identity.mac_key(msg.sender_pubkey), data)
            if not hmac.compare_digest(expected, msg.auth):
                raise BadSignature()

    def _rate_ok(self, addr: Address, now: float) -> bool:
        b = self._rate.get(addr)
        cfg = self.config
        if b is None:
            if len(self._rate) >= cfg.max_rate_entries:
                # drop the stalest quarter: bounded memory under spoofed floods
                for a, _ in sorted(self._rate.items(), key=lambda kv: kv[1].stamp)[: len(self._rate) // 4]:
                    del self._rate[a]
            b = self._rate[addr] = _RateBucket(cfg.burst_per_peer, now)
        b.tokens = min(cfg.burst_per_peer, b.tokens + (now - b.stamp) * cfg.rate_per_peer)
        b.stamp = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    # -- internals: receiving -------------------------------------------------

    def _contact_from_info(self, info: ContactInfo,
                           skip: Container[bytes] = ()) -> Contact | None:
        """The contact ``info`` describes (ours if we hold it); None for a bad
        key, or for an ID in ``skip`` (a lookup's known nodes: no object to build)."""
        try:
            node_id = check_pubkey(info.pubkey, self.config.difficulty)
        except BadIdentity:
            self._count("dropped_bad_contact")
            return None
        if node_id in skip:
            return None
        held = self.routing.get(node_id)
        if held is not None:
            return held
        return Contact(node_id, info.host, info.port, info.pubkey)

    def _info(self, c: Contact) -> ContactInfo:
        # a contact's ID, key and address never change: encode it once
        info = c.wire
        if not isinstance(info, ContactInfo):
            info = c.wire = ContactInfo(c.pubkey, c.ip, c.port)
        return info

    def _verify_then_add(self, contact: Contact, now: float) -> None:
        """A signed request may be a replay of someone's first contact, sent
        from another address: before trusting the address, ping it with a MAC
        only the key's owner can answer."""
        if contact.id in self._verifying or len(self._verifying) > 256:
            return
        self._verifying.add(contact.id)
        cid = contact.id

        def ok(msg: Message, c: Contact, t: float) -> None:
            self._verifying.discard(cid)

        def fail(t: float) -> None:
            self._verifying.discard(cid)
            self._count("unverified_contacts")
        self._request(contact.address, contact.id, contact.pubkey, Ping(), now, ok, fail)

    def _saw_alive(self, contact: Contact, now: float) -> None:
        was_new = contact.id not in self.routing
        head = self.routing.add(contact, now)
        if head is not None and head.id not in self._pinging:
            self._pinging.add(head.id)
            hid = head.id

            def ok(msg: Message, c: Contact, t: float) -> None:
                self._pinging.discard(hid)
                self.routing.touch(hid, t)

            def dead(t: float) -> None:
                self._pinging.discard(hid)
                self.routing.evict(hid)
                self.routing.add(contact, t)
            self._request(head.address, head.id, head.pubkey, Ping(), now, ok, dead)
        if was_new and contact.id in self.routing:
            self._welcome(contact, now)

    def _welcome(self, newcomer: Contact, now: float) -> None:
        """Hand a newcomer the records it is now among the closest to.

        We do it only for keys where we are the closest node we know of (so a
        newcomer gets each record once, not from every neighbour), and only
        when the newcomer is among the k closest we know.
        """
        sent = 0
        k = self.config.ksize
        own_long = int.from_bytes(self.identity.node_id, "big")
        for key in list(self.store.keys()):
            if sent >= self.config.welcome_batch:
                break
            t = int.from_bytes(key, "big")
            # the k+1 contacts closest to the key: the newcomer must be among
            # the first k, and the closest other contact farther than us
            near = self.routing.closest(key, k + 1)
            if not any(c.id == newcomer.id for c in near[:k]):
                continue
            others = [c for c in near[:2] if c.id != newcomer.id]
            if others and (others[0].long_id ^ t) < (own_long ^ t):
                continue
            for rec in self.store.get(key, now):
                self._request(newcomer.address, newcomer.id, newcomer.pubkey,
                              Store(rec.encode()), now, lambda m, c, t: None, lambda t: None)
                sent += 1
                self._count("welcome_stores")

    def _handle_request(self, msg: Message, contact: Contact, addr: Address, now: float) -> None:
        body = msg.body
        reply: Body
        if isinstance(body, Ping):
            reply = Pong(addr)
        elif isinstance(body, FindNode):
            reply = Nodes(tuple(self._info(c) for c in
                                self.routing.closest(body.target, self.config.ksize, exclude=contact.id)))
        elif isinstance(body, FindValue):
            infos = tuple(self._info(c) for c in
                          self.routing.closest(body.key, self.config.ksize, exclude=contact.id))
            budget = MAX_DATAGRAM - 400 - sum(len(c.pubkey) + len(c.host) + 8 for c in infos)
            recs: list[bytes] = []
            for r in self.store.get(body.key, now):
                if len(recs) >= MAX_RECORDS_PER_VALUE:
                    break
                blob = r.encode()
                if len(blob) + 4 > budget:
                    continue
                budget -= len(blob) + 4
                recs.append(blob)
            reply = Value(tuple(recs), infos)
            self._count("served_values" if recs else "served_value_misses")
        elif isinstance(body, Store):
            try:
                record = Record.decode(body.record)
                self.store.put(record, now)
                reply = Stored(0)
            except (RecordRejected, RemoteProtocolError):
                self._count("records_rejected")
                reply = Stored(1)
        else:  # pragma: no cover - is_request guarantees one of the above
            return
        self._send(reply, msg.rid, addr, contact.id, msg.sender_pubkey, now)

    def _accept_record_blob(self, blob: bytes, now: float) -> Record:
        from xcore.dht.records import decode_and_validate
        try:
            return decode_and_validate(blob, now)
        except RecordRejected:
            self._count("records_rejected")
            raise

    # -- internals: lookups ----------------------------------------------------

    def _lookup(self, target: bytes, find_value: bool, now: float) -> Operation[LookupResult]:
        self._now = now
        op: Operation[LookupResult] = Operation("get" if find_value else "find_node")
        if len(target) != ID_BYTES:
            op.set_error(LookupFailed("target must be 20 bytes"))
            return op
        lk = Lookup(self, target, find_value, op)
        if find_value:
            for r in self.store.get(target, now):
                lk.records[r.signer_id] = r
        # More seeds than k: NodeHeap shows only the k closest, the rest come
        # into view as dead ones time out (else k dead contacts end a lookup).
        seeds = self.routing.closest(target, 3 * self.config.ksize)
        if not seeds and self.routing.evicted:
            # An empty table (every contact timed out while our loop, or
            # theirs, was stalled) is not "no peers": start from the contacts
            # we evicted last; those that answer come back into the table.
            self._count("lookups_from_evicted")
            t = int.from_bytes(target, "big")
            seeds = sorted(self.routing.evicted, key=lambda c: c.long_id ^ t)[:3 * self.config.ksize]
        if not seeds:
            if find_value and lk.records:
                op.set_result(LookupResult([], self._sorted(lk.records), 0, 0))
            else:
                op.set_error(NoPeers())
            return op
        self._count("lookups")
        lk.start(seeds, now)
        return op

    @staticmethod
    def _sorted(records: dict[bytes, Record]) -> list[Record]:
        return sorted(records.values(), key=lambda r: (-r.seq, -r.expires, r.signer_pubkey))

    def _lookup_done(self, lk: Lookup, now: float) -> None:
        closest = lk.closest_responders()
        hops = lk.hops()
        self.lookup_hops.append(hops)
        if len(self.lookup_hops) > 10_000:
            del self.lookup_hops[:5_000]
        if not lk.find_value:
            if not closest:
                lk.op.set_error(LookupFailed("no node answered the lookup"))
            else:
                lk.op.set_result(LookupResult(closest, [], hops, lk.messages))
            return
        if not lk.records:
            if not lk.responded:
                # nobody answered: that is not "absent" (a caller must not
                # overwrite what it could not read, e.g. an owner's index)
                lk.op.set_error(LookupFailed("no node answered the lookup"))
            else:
                lk.op.set_error(NotFound())
            return
        # Write the best record of each signer back to close nodes that
        # answered without it or with an older one (BEP 44 / libp2p).
        for c in closest:
            held = lk.held.get(c.id, {})
            for signer, rec in lk.records.items():
                order = held.get(signer)
                if order is None or order < rec.order:
                    self._count("writebacks")
                    self._request(c.address, c.id, c.pubkey, Store(rec.encode()), now,
                                  lambda m, cc, t: None, lambda t: None)
        # Keep what we found only if we are ourselves among the k closest to
        # the key: elsewhere a copy would only multiply hourly republishing.
        t = int.from_bytes(lk.target, "big")
        own = int.from_bytes(self.identity.node_id, "big") ^ t
        if not self.config.client and (len(closest) < self.config.ksize
                                       or own < (closest[-1].long_id ^ t)):
            for rec in lk.records.values():
                try:
                    self.store.put(rec, now)
                except RecordRejected:
                    pass
        lk.op.set_result(LookupResult(closest, self._sorted(lk.records), hops, lk.messages))

    def _store_at_closest(self, record: Record, now: float, op: Operation[int], local: int) -> None:
        look = self.find_node(record.key, now)
        blob = record.encode()

        def stored(lop: Operation[LookupResult]) -> None:
            t = self._now
            if lop.error is not None:
                if local:
                    op.set_result(local)
                else:
                    op.set_error(lop.error)
                return
            targets = lop.result().contacts
            state = {"left": len(targets), "acks": local}
            if not targets:
                op.set_result(local)
                return

            def fin() -> None:
                state["left"] -= 1
                if state["left"] == 0:
                    if state["acks"]:
                        op.set_result(state["acks"])
                    else:
                        op.set_error(LookupFailed("no node stored the record"))

            def ack(msg: Message, c: Contact, tt: float) -> None:
                if isinstance(msg.body, Stored) and msg.body.status == 0:
                    state["acks"] += 1
                fin()
            for c in targets:
                self._request(c.address, c.id, c.pubkey, Store(blob), t, ack, lambda tt: fin())
        look.add_done_callback(stored)

    def _random_id_in(self, rng_range: tuple[int, int]) -> bytes:
        lo, hi = rng_range
        return self.rng.randint(lo, hi).to_bytes(ID_BYTES, "big")

    # -- maintenance ------------------------------------------------------------

    def _maintenance(self, now: float) -> None:
        self._now = now
        cfg = self.config
        self.store.expire(now)
        cutoff = now - cfg.replay_window * 2
        if self._seen:
            self._seen = {k: v for k, v in self._seen.items() if v >= cutoff}
        # refresh buckets nobody touched for an hour (paper section 2.3)
        for b in self.routing.lonely_buckets(now, cfg.refresh_interval):
            b.touch_last_updated()
            self.find_node(self._random_id_in(b.range), now)
        # re-sign our own records before they expire
        for k, rec in list(self.published.items()):
            if rec.expires <= now:
                del self.published[k]
                continue
            if rec.signer_pubkey != self.identity.pubkey:
                continue  # someone else's record (an owner's): held and republished, not re-signed
            spec = kind_spec(rec.kind)
            ttl = min(cfg.record_ttl, spec.max_ttl) if spec else cfg.record_ttl
            if rec.expires - now < ttl - cfg.republish_interval:
                fresh = Record.create(self.identity, rec.kind, rec.key, rec.value, rec.seq,
                                      int(now) + ttl)
                self.published[k] = fresh
                self.put(fresh, now)
        # republish each record we hold once an hour, skipping those somebody
        # else stored here within the hour (paper section 2.5)
        for rec in list(self.store):
            rk = (rec.key, rec.signer_id)
            got = max(self.store.received.get(rk, 0.0), self._republished.get(rk, 0.0))
            if now - got < cfg.republish_interval:
                continue
            self._republished[rk] = now
            self._count("republished")
            self._store_at_closest(rec, now, Operation("republish"), 1)
        if len(self._republished) > 2 * len(self.store) + 1024:
            live = {(r.key, r.signer_id) for r in self.store}
            self._republished = {k: v for k, v in self._republished.items() if k in live}
        # recover from partitions: with too few contacts, go back to the seeds
        # and to contacts we evicted (a healed partition brings them back)
        if len(self.routing) < cfg.ksize and (self._seeds or self.routing.evicted):
            again = list(self._seeds) + [((c.ip, c.port), c.id) for c in self.routing.evicted[-8:]]
            for addr, nid in again:
                self._request(addr, nid, None, Ping(), now, lambda m, c, t: None, lambda t: None)
            self._count("rejoin_pings", len(again))
        self._schedule(now + cfg.maintenance_interval, self._maintenance)

    # -- persistence ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What to save across restarts (msgpack-able; never pickle)."""
        return {
            "v": 1,
            "contacts": [[c.pubkey, c.ip, c.port] for c in self.routing.all()],
            "records": self.store.dump(),
            "published": [r.encode() for r in self.published.values()],
        }

    def restore(self, snap: Any, now: float) -> None:
        """Load a snapshot; everything is re-validated, bad entries dropped."""
        if not isinstance(snap, dict) or snap.get("v") != 1:
            return
        def section(name: str) -> list[Any]:
            v = snap.get(name)
            return v if isinstance(v, list) else []
        for item in section("contacts"):
            try:
                info = ContactInfo.decode(item)
            except RemoteProtocolError:
                continue
            c = self._contact_from_info(info)
            if c is not None:
                self.routing.add(c, now)
        blobs = [b for b in section("records") if isinstance(b, bytes)]
        self.store.load(blobs, now)
        for blob in section("published"):
            if not isinstance(blob, bytes):
                continue
            try:
                rec = Record.decode(blob)
                rec.verify_signature()
            except (RemoteProtocolError, BadSignature):
                continue
            if kind_spec(rec.kind) is None or rec.expires <= now:
                continue
            self.published[(rec.kind, rec.key)] = rec

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.identity.node_id.hex(),
            "peers": len(self.routing),
            "buckets": len(self.routing.buckets),
            "records": len(self.store),
            "pending_requests": len(self._pending),
            "counters": dict(sorted(self.counters.items())),
            "store": vars(self.store.counters).copy(),
            "rejected_diversity": self.routing.rejected_diversity,
        }


def new_record(identity: Identity, kind: str, key: bytes, value: bytes, now: float,
               ttl: int = 24 * 3600, seq: int | None = None) -> Record:
    """Sign a record; ``seq`` defaults to the time in milliseconds."""
    return Record.create(identity, kind, key, value,
                         int(now * 1000) if seq is None else seq, int(now) + ttl)


__all__ = ["DHTConfig", "DHTNode", "Lookup", "LookupResult", "new_record", "node_id_of"]
