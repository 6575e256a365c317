"""Datagram floods against one DHT node, over the simulated network.

A 60-node DHT is built on a seeded :class:`SimNetwork`. One attacker then
sends 100,000 junk datagrams to one victim node V within 20 virtual seconds:
random bytes, truncated valid datagrams, well-formed messages with a bad
signature or MAC, stale or misdirected messages with good signatures, and
validly signed messages from thousands of fresh identities that fail the ID
puzzle. A second flood comes from 50,000 spoofed source addresses.

V is wrapped in an :class:`Accountant` endpoint that checks, datagram by
datagram, what the protocol core promises (DESIGN.md principle 10, and the
receive path described in ``xcore/dht/protocol.py``):

* every junk datagram is counted as received and dropped under exactly one
  ``dropped_*`` counter, the one its kind calls for (or the rate limit);
* junk costs no state: V's replay cache, pending requests, routing table and
  record store do not change, and V sends nothing back;
* the per-source rate table never holds more than ``max_rate_entries``.

Meanwhile readers that know only V (so every lookup goes through V) keep
getting the stored records, during the flood and after it.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable

import pytest

from xcore.crypto.identity import Identity, mac, puzzle_ok
from xcore.dht.messages import (
    AUTH_MAC, AUTH_SIG, FindNode, FindValue, Ping, Store, auth_bytes, encode_datagram,
    encode_payload,
)
from xcore.dht.protocol import DHTConfig, DHTNode, new_record
from xcore.dht.records import Record, dht_key
from xcore.dht.routing import Contact
from xcore.net.sim import SimNetwork

Address = tuple[str, int]
Build = Callable[..., tuple[SimNetwork, dict[Address, DHTNode]]]

N_NODES = 60
FLOOD = 100_000
WINDOW = 20.0  # virtual seconds the flood lasts
ATTACKER: Address = ("198.51.100.66", 6666)
DIFFICULTY = 2

# which counter each kind of junk must land in (when the rate limit lets it through)
EXPECTED = {
    "random": "dropped_malformed",
    "truncated": "dropped_malformed",
    "bad_signature": "dropped_bad_auth",
    "bad_mac": "dropped_bad_auth",
    "no_puzzle": "dropped_bad_identity",
    "stale": "dropped_stale",
    "misdirected": "dropped_misdirected",
}


def node_address(i: int) -> Address:
    return (f"10.{i // 200}.{i % 200}.1", 4000)


def craft(identity: Identity, body: Any, ts_ms: int, rng: random.Random, *, to: bytes = b"",
          peer_pubkey: bytes | None = None) -> bytes:
    payload = encode_payload(body, rng.randbytes(8), identity.pubkey, to, ts_ms)
    if peer_pubkey is not None:
        return encode_datagram(payload, AUTH_MAC,
                               mac(identity.mac_key(peer_pubkey), auth_bytes(payload)))
    return encode_datagram(payload, AUTH_SIG, identity.sign(auth_bytes(payload)))


def drops(counters: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if k.startswith("dropped_")}


class Accountant:
    """V's endpoint as the network sees it: delegates to the real core and
    checks every datagram from ``is_junk`` sources against the core's promises."""

    def __init__(self, node: DHTNode, is_junk: Callable[[Address], bool],
                 kind_of: Callable[[bytes], str]) -> None:
        self.node = node
        self.is_junk = is_junk
        self.kind_of = kind_of
        self.tally: Counter[tuple[str, str]] = Counter()  # (junk kind, counter) -> n
        self.junk = 0
        self.max_rate_entries_seen = 0

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        node = self.node
        if not self.is_junk(addr):
            node.receive_datagram(data, addr, now)
            return
        before = dict(node.counters)
        state = (len(node._seen), len(node._pending), len(node.routing), len(node.store),
                 len(node._out))
        node.receive_datagram(data, addr, now)
        self.junk += 1
        changed = {k: v - before.get(k, 0) for k, v in node.counters.items()
                   if v != before.get(k, 0)}
        dropped = [k for k in changed if k.startswith("dropped_")]
        assert changed.get("received") == 1 and len(dropped) == 1 and changed[dropped[0]] == 1, (
            f"junk datagram not dropped exactly once: {changed}")
        assert "sent" not in changed, f"V answered junk: {changed}"
        after = (len(node._seen), len(node._pending), len(node.routing), len(node.store),
                 len(node._out))
        assert after == state, f"junk changed V's state: {state} -> {after}"
        self.tally[(self.kind_of(data), dropped[0])] += 1
        self.max_rate_entries_seen = max(self.max_rate_entries_seen, len(node._rate))

    def handle_timer(self, now: float) -> None:
        self.node.handle_timer(now)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        return self.node.datagrams_to_send()

    def get_timer(self) -> float | None:
        return self.node.get_timer()


def fresh_identity(rng: random.Random, *, passes: bool) -> Identity:
    while True:
        ident = Identity(rng.randbytes(32), 0)
        if puzzle_ok(ident.node_id, DIFFICULTY) == passes:
            return ident


def junk_pool(victim: DHTNode, other: DHTNode, now: float,
              rng: random.Random) -> dict[bytes, str]:
    """A few thousand distinct junk datagrams of every kind, mapped to their kind."""
    ts = int(now * 1000)
    pool: dict[bytes, str] = {}
    sender = fresh_identity(rng, passes=True)  # a puzzle-valid attacker identity
    vid = victim.identity.node_id
    rec = new_record(sender, "text", dht_key("junk"), b"x" * 200, now)
    bodies: list[Any] = [Ping(), FindNode(rng.randbytes(20)), FindValue(rng.randbytes(20)),
              Store(rec.encode())]
    valid = [craft(sender, rng.choice(bodies), ts, rng, to=vid,
                   peer_pubkey=victim.identity.pubkey if i % 2 else None) for i in range(300)]
    for _ in range(3000):
        pool.setdefault(rng.randbytes(rng.randrange(0, 300)), "random")
    for _ in range(3000):
        d = rng.choice(valid)
        pool.setdefault(d[:rng.randrange(0, len(d))], "truncated")
    for _ in range(1000):
        sig = bytearray(craft(sender, rng.choice(bodies), ts, rng, to=vid))
        sig[-1 - rng.randrange(64)] ^= 1 << rng.randrange(8)  # a bit of the signature
        pool.setdefault(bytes(sig), "bad_signature")
        payload = encode_payload(rng.choice(bodies), rng.randbytes(8), sender.pubkey, vid, ts)
        pool.setdefault(encode_datagram(payload, AUTH_MAC,
                                        mac(rng.randbytes(32), auth_bytes(payload))), "bad_mac")
    for _ in range(2000):  # many fresh identities, each message validly signed
        weak = fresh_identity(rng, passes=False)
        pool.setdefault(craft(weak, rng.choice(bodies[:3]), ts, rng, to=vid), "no_puzzle")
    for _ in range(500):
        pool.setdefault(craft(sender, Ping(), ts - 1_000_000, rng, to=vid), "stale")
        pool.setdefault(craft(sender, Ping(), ts, rng, to=other.identity.node_id), "misdirected")
    return pool


def store_records(net: SimNetwork, nodes: dict[Address, DHTNode], rng: random.Random,
                  count: int) -> list[Record]:
    addrs = list(nodes)
    recs = []
    for i in range(count):
        addr = rng.choice(addrs)
        w = nodes[addr]
        rec = new_record(w.identity, "text", dht_key(f"flood-{i}"), f"value {i}".encode(), net.now)
        assert net.wait(net.call(addr, lambda now, w=w, rec=rec: w.put(rec, now))) >= 1
        recs.append(rec)
    return recs


class Readers:
    """Fresh reader nodes that know only V, so each of their lookups starts at V."""

    def __init__(self, net: SimNetwork, victim_addr: Address, victim: DHTNode,
                 rng: random.Random) -> None:
        self.net, self.victim_addr, self.victim, self.rng = net, victim_addr, victim, rng
        self.count = 0

    def get(self, rec: Record) -> None:
        self.count += 1
        addr = (f"172.16.{self.count}.9", 4000)
        ident = Identity.generate(DIFFICULTY, random.Random(self.rng.getrandbits(64)).randbytes)
        reader = DHTNode(ident, config=DHTConfig(difficulty=DIFFICULTY),
                         rng=random.Random(self.count), now=self.net.now)
        self.net.add(addr, reader)
        v = self.victim
        reader.routing.add(Contact(v.identity.node_id, *self.victim_addr, v.identity.pubkey),
                           self.net.now)
        served = (v.counters.get("served_values", 0), v.counters.get("served_value_misses", 0))
        op = self.net.call(addr, lambda now: reader.get(rec.key, now))
        res = self.net.wait(op, timeout=60)
        assert res.records == [rec]
        served_after = (v.counters.get("served_values", 0),
                        v.counters.get("served_value_misses", 0))
        assert served_after != served, "the lookup did not go through V"


def build(make_dht_network: Build, seed: int) -> tuple[SimNetwork, dict[Address, DHTNode],
                                                       Address, DHTNode]:
    net, nodes = make_dht_network(N_NODES, seed=seed, difficulty=DIFFICULTY)
    victim_addr = node_address(17)
    return net, nodes, victim_addr, nodes[victim_addr]


@pytest.mark.slow
def test_one_peer_floods_100k_junk_datagrams(make_dht_network: Build) -> None:
    net, nodes, victim_addr, victim = build(make_dht_network, seed=41)
    rng = random.Random(41)
    records = store_records(net, nodes, rng, 12)
    pool = junk_pool(victim, nodes[node_address(3)], net.now, rng)
    kinds = list(pool)
    acct = Accountant(victim, lambda a: a == ATTACKER, pool.__getitem__)
    net.hosts[victim_addr].endpoint = acct
    readers = Readers(net, victim_addr, victim, rng)
    start = net.now
    before = drops(victim.counters)
    sent: Counter[str] = Counter()
    for i in range(FLOOD):
        data = rng.choice(kinds)
        sent[pool[data]] += 1
        net.inject(data, ATTACKER, victim_addr, delay=i * WINDOW / FLOOD)
    # honest lookups through V while the flood is on ...
    for i, at in enumerate((1.0, 5.0, 9.0, 13.0, 17.0)):
        net.run(until=start + at)
        readers.get(records[i])
    net.run(until=start + WINDOW + 1)
    assert acct.junk == FLOOD
    # ... and after it
    for rec in records[5:]:
        readers.get(rec)

    # every junk datagram was dropped, under the counter its kind calls for
    for (kind, counter), n in acct.tally.items():
        assert counter in (EXPECTED[kind], "dropped_rate_limited"), (kind, counter, n)
    for kind, n in sent.items():
        assert sum(v for (k, _), v in acct.tally.items() if k == kind) == n
        assert acct.tally[(kind, EXPECTED[kind])] > 0, f"no {kind} junk got past the rate limit"
    after = drops(victim.counters)
    assert sum(after.values()) - sum(before.values()) >= FLOOD
    # one source is held to its rate: ~burst + rate x duration got through, no more
    cfg = victim.config
    admitted = FLOOD - sum(v for (_, c), v in acct.tally.items() if c == "dropped_rate_limited")
    assert admitted <= cfg.burst_per_peer + cfg.rate_per_peer * (WINDOW + 1)
    # nothing from the flood stuck: the attacker is not a contact, the rate table is tiny
    assert all(c.address != ATTACKER for c in victim.routing.all())
    assert acct.max_rate_entries_seen <= cfg.max_rate_entries
    assert len(victim._seen) < 1000 and len(victim._pending) < 100


def test_flood_from_50k_spoofed_addresses_keeps_the_rate_table_bounded(
        make_dht_network: Build) -> None:
    net, nodes, victim_addr, victim = build(make_dht_network, seed=42)
    rng = random.Random(42)
    records = store_records(net, nodes, rng, 3)
    pool = junk_pool(victim, nodes[node_address(3)], net.now, rng)
    cheap = [d for d, k in pool.items() if k in ("random", "truncated", "no_puzzle")]
    acct = Accountant(victim, lambda a: a[0].startswith("100."), pool.__getitem__)
    net.hosts[victim_addr].endpoint = acct
    readers = Readers(net, victim_addr, victim, rng)
    start = net.now
    n = 50_000
    for i in range(n):
        src = (f"100.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}", 1024 + i % 50_000)
        net.inject(rng.choice(cheap), src, victim_addr, delay=i * 10.0 / n)
    net.run(until=start + 5.0)
    readers.get(records[0])
    net.run(until=start + 11.0)
    readers.get(records[1])
    readers.get(records[2])
    assert acct.junk == n
    # every source is new, so none is rate limited: each is dropped on its merits
    assert not any(c == "dropped_rate_limited" for (_, c) in acct.tally)
    assert acct.max_rate_entries_seen <= victim.config.max_rate_entries
    assert len(victim._rate) <= victim.config.max_rate_entries


def test_replay_cache_stays_bounded_under_authenticated_requests_from_many_addresses() -> None:
    now = 1_750_000_000.0
    cap = 2_000
    cfg = DHTConfig(difficulty=DIFFICULTY, max_seen=cap)
    victim = DHTNode(Identity.generate(DIFFICULTY, random.Random(1).randbytes), config=cfg,
                     rng=random.Random(1), now=now)
    rng = random.Random(2)
    attacker = fresh_identity(rng, passes=True)
    n = cap + 2_000
    vid, vpub = victim.identity.node_id, victim.identity.pubkey
    for i in range(n):
        t = now + i * 1e-4  # 10,000 requests a virtual second, all inside the replay window
        data = craft(attacker, Ping(), int(t * 1000), rng, to=vid, peer_pubkey=vpub)
        victim.receive_datagram(data, (f"100.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}", 4000), t)
        victim.datagrams_to_send()
        victim.handle_timer(t)
    assert victim.counters.get("dropped_rate_limited", 0) == 0
    assert len(victim._seen) <= cap, f"replay cache holds {len(victim._seen)} entries"
