"""Focused attacks, one per test, each against the defence that should stop it.

Attacks already covered elsewhere (see docs/security.md for the full table)
are not repeated: tests/dht/test_protocol.py (replayed and forged datagrams,
address hijacking), tests/dht/test_records.py (record codec and store rules),
tests/contracts/test_audit.py (audit cheating), tests/contracts/
test_reputation.py (Sybil attesters), tests/shard/test_transfer.py (bad
grants, deletes, malformed frames). Here: the attacks at the level an
attacker works at (the network, a host's TCP port, a file put through a
cluster), and the ones nobody had tested.

DHT attacks run on the seeded :class:`SimNetwork` (``make_dht_network`` from
tests/conftest.py); host attacks on a real :class:`HostService` over
loopback TCP with a hand-moved clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import struct
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Iterator

import pytest

import xcore.kinds  # noqa: F401  registers every record kind
from xcore.bootstrap import format_seed
from xcore.client.files import Client
from xcore.client.keys import OwnerKeys
from xcore.codec import pack
from xcore.contracts.audit import Challenge, answer_challenge, verify_answer
from xcore.contracts.contract import Contract, SignedContract, share_merkle_root
from xcore.contracts.repair import claim_key, make_claim, winning_claim
from xcore.contracts.segments import (
    SegmentInfo, make_segment_record, parse_segment, segment_id,
)
from xcore.control import read_frame
from xcore.crypto.identity import Identity, check_pubkey, mac, puzzle_ok
from xcore.dht.messages import (
    AUTH_MAC, AUTH_SIG, Ping, Store, auth_bytes, encode_datagram, encode_payload,
)
from xcore.dht.protocol import DHTConfig, DHTNode, new_record
from xcore.dht.records import Record, RecordStore, dht_key, owner_key, validate
from xcore.dht.routing import ip_group
from xcore.errors import (
    BadIdentity, BadShareName, ConfigError, MessageTooLarge, RecordRejected,
    RemoteProtocolError,
)
from xcore.net.sim import SimNetwork
from xcore.node import NodeService, init_node
from xcore.shard.erasure import Redundancy
from xcore.shard.host import HostService
from xcore.shard.store import ShareStore
from xcore.shard.transfer import (
    ERR, OK, PUT, READY, FrameStream, Grant, HostConnection, E_CORRUPT, E_UNAUTHORIZED,
)

Address = tuple[str, int]
Build = Callable[..., tuple[SimNetwork, dict[Address, DHTNode]]]
NOW = 1_750_000_000.0
MiB = 1 << 20


def ident(seed: int, difficulty: int = 2) -> Identity:
    return Identity.generate(difficulty, random.Random(seed).randbytes)


def node_address(i: int) -> Address:
    return (f"10.{i // 200}.{i % 200}.1", 4000)


def craft(identity: Identity, body: Any, now: float, rng: random.Random, *, to: bytes = b"",
          peer_pubkey: bytes | None = None) -> bytes:
    payload = encode_payload(body, rng.randbytes(8), identity.pubkey, to, int(now * 1000))
    if peer_pubkey is not None:
        return encode_datagram(payload, AUTH_MAC,
                               mac(identity.mac_key(peer_pubkey), auth_bytes(payload)))
    return encode_datagram(payload, AUTH_SIG, identity.sign(auth_bytes(payload)))


def store_everywhere(net: SimNetwork, nodes: dict[Address, DHTNode], attacker: Identity,
                     src: Address, record_blob: bytes, rng: random.Random) -> None:
    """The attacker sends a raw STORE of ``record_blob`` to every node."""
    for addr, node in nodes.items():
        net.inject(craft(attacker, Store(record_blob), net.now, rng,
                         to=node.identity.node_id, peer_pubkey=node.identity.pubkey), src, addr)
    net.run_for(1.0)


def get(net: SimNetwork, addr: Address, node: DHTNode, key: bytes) -> list[Record]:
    return net.wait(net.call(addr, lambda now: node.get(key, now))).records  # type: ignore[no-any-return]


# -- Sybil: the ID puzzle ------------------------------------------------------------------


def test_id_grinding_cost_doubles_per_puzzle_bit() -> None:
    """S/Kademlia's static puzzle: an ID is valid only with ``d`` leading zero
    bits of SHA-256(tag || id), so one valid ID costs 2**d key generations on
    average, and an ID next to a chosen target (b more bits) 2**(d+b)."""
    trials = 40
    means = {}
    for d in (2, 4, 6, 8):
        attempts = 0
        for t in range(trials):
            rng = random.Random(1000 * d + t)

            def counting(n: int) -> bytes:
                nonlocal attempts
                attempts += 1
                return rng.randbytes(n)
            assert puzzle_ok(Identity.generate(d, counting).node_id, d)
        means[d] = attempts / trials
        assert 0.5 * 2**d <= means[d] <= 2.0 * 2**d, (d, means[d])
    for d in (2, 4, 6):
        assert 2.0 <= means[d + 2] / means[d] <= 8.0, means  # x4 per two bits
    # the fraction of random IDs that pass halves with every bit
    rng = random.Random(7)
    ids = [rng.randbytes(20) for _ in range(40_000)]
    for d in range(1, 7):
        frac = sum(puzzle_ok(i, d) for i in ids) / len(ids)
        assert abs(frac - 2.0**-d) < 0.2 * 2.0**-d, (d, frac)


def test_ids_failing_the_puzzle_are_refused_at_every_entry_point() -> None:
    difficulty = 8
    rng = random.Random(3)
    while True:
        seed = rng.randbytes(32)
        weak = Identity(seed, 0)
        if not puzzle_ok(weak.node_id, difficulty):
            break
    with pytest.raises(BadIdentity):
        check_pubkey(weak.pubkey, difficulty)
    with pytest.raises(ConfigError):  # a node cannot even run with it
        Identity(seed, difficulty)
    victim = DHTNode(ident(1, difficulty), config=DHTConfig(difficulty=difficulty),
                     rng=random.Random(1), now=NOW)
    for peer in (None, victim.identity.pubkey):  # signed first contact, or MAC'd
        victim.receive_datagram(craft(weak, Ping(), NOW, rng, peer_pubkey=peer),
                                ("192.0.2.1", 4000), NOW)
    assert victim.counters["dropped_bad_identity"] == 2
    assert victim.datagrams_to_send() == []
    # nor through a saved routing table
    victim.restore({"v": 1, "contacts": [[weak.pubkey, "192.0.2.1", 4000]]}, NOW)
    assert weak.node_id not in victim.routing


def test_host_records_of_ids_failing_the_puzzle_are_not_used(make_dht_network: Build) -> None:
    from xcore.contracts.hosts import host_record
    net, nodes = make_dht_network(6, seed=34)
    addr = list(nodes)[1]
    node = nodes[addr]
    honest = host_record(node.identity, ("10.0.1.1", 4001), 64 * MiB, 64 * MiB, net.now - 10,
                         net.now)
    net.wait(net.call(addr, lambda now: node.put(honest, now)))
    rng = random.Random(34)
    sybils: list[bytes] = []
    while len(sybils) < 20:
        weak = Identity(rng.randbytes(32), 0)
        if puzzle_ok(weak.node_id, 2):
            continue
        sybils.append(weak.node_id)
        rec = host_record(weak, (f"203.0.113.{len(sybils)}", 4000), 1 << 40, 1 << 40,
                          net.now - 10**6, net.now)
        net.wait(net.call(addr, lambda now, rec=rec: node.put(rec, now)))
    client = Client(SimDriver(net, addr, node), OwnerKeys(bytes(32)))
    seen = {h.node_id for h in asyncio.run(client.hosts(refresh=True))}
    assert node.identity.node_id in seen
    assert not seen & set(sybils), f"{len(seen & set(sybils))} puzzle-less hosts offered"


# -- eclipse and routing-table poisoning -----------------------------------------------------


def test_contacts_from_one_slash24_are_capped_in_the_routing_table() -> None:
    """40 puzzle-valid nodes in one /24 all contact V (and answer its
    verification pings): V keeps at most 3 of them, table-wide (libp2p's
    diversity filter), so one network cannot fill V's buckets."""
    net = SimNetwork(random.Random(0))
    cfg = DHTConfig(difficulty=2)
    v_addr = ("10.0.0.1", 4000)
    victim = DHTNode(ident(1), config=cfg, rng=random.Random(1), now=net.now)
    net.add(v_addr, victim)
    honest = []
    for i in range(10):  # honest peers, each in its own /24
        addr = (f"10.1.{i}.1", 4000)
        node = DHTNode(ident(100 + i), config=cfg, rng=random.Random(100 + i), now=net.now)
        net.add(addr, node)
        honest.append(node)
        net.call(addr, lambda now, n=node: n.ping(v_addr, victim.identity.node_id, now))
    for i in range(40):
        addr = (f"203.0.113.{i + 1}", 4000)
        sybil = DHTNode(ident(200 + i), config=cfg, rng=random.Random(200 + i), now=net.now)
        net.add(addr, sybil)
        net.call(addr, lambda now, s=sybil: s.ping(v_addr, victim.identity.node_id, now))
    net.run_for(30)
    groups = Counter(ip_group(c.ip) for c in victim.routing.all())
    assert groups["203.0.113.0/24"] <= victim.routing.per_table_group == 3
    assert victim.routing.rejected_diversity >= 37
    assert all(n.identity.node_id in victim.routing for n in honest)


# -- record forgery, replay and rollback, junk records -------------------------------------------


def test_forged_records_are_refused_by_every_node(make_dht_network: Build) -> None:
    net, nodes = make_dht_network(8, seed=21)
    addrs = list(nodes)
    w = nodes[addrs[1]]
    rec = new_record(w.identity, "text", dht_key("notice"), b"pay alice", net.now, seq=5)
    assert net.wait(net.call(addrs[1], lambda now: w.put(rec, now))) == 8
    attacker, src, rng = ident(66), ("198.51.100.7", 4000), random.Random(66)
    forgeries = [
        # the value changed, the writer's signature kept
        Record(rec.kind, rec.key, b"pay mallory", rec.seq + 1, rec.expires, rec.signer_pubkey,
               rec.signature),
        # signed by the attacker, claiming the writer's key
        Record(rec.kind, rec.key, b"pay mallory", rec.seq + 1, rec.expires, rec.signer_pubkey,
               Record.create(attacker, rec.kind, rec.key, b"pay mallory", rec.seq + 1,
                             rec.expires).signature),
        # a different kind under the same signature
        Record("host", rec.key, rec.value, rec.seq, rec.expires, rec.signer_pubkey,
               rec.signature),
    ]
    before = sum(n.counters.get("records_rejected", 0) for n in nodes.values())
    for forged in forgeries:
        store_everywhere(net, nodes, attacker, src, forged.encode(), rng)
    after = sum(n.counters.get("records_rejected", 0) for n in nodes.values())
    assert after - before == len(forgeries) * len(nodes)
    for addr, node in nodes.items():
        assert node.store.get(rec.key, net.now) == [rec]
    assert get(net, addrs[6], nodes[addrs[6]], rec.key) == [rec]


def test_a_replayed_old_record_does_not_roll_back(make_dht_network: Build) -> None:
    """A captured, validly signed v1 stored again after v2: refused as stale
    by every node (records are ordered by (seq, expires), BEP 44)."""
    net, nodes = make_dht_network(8, seed=22)
    addrs = list(nodes)
    w = nodes[addrs[2]]
    v1 = new_record(w.identity, "text", dht_key("price"), b"10", net.now, seq=1)
    v2 = new_record(w.identity, "text", dht_key("price"), b"12", net.now, seq=2)
    net.wait(net.call(addrs[2], lambda now: w.put(v1, now)))
    net.wait(net.call(addrs[2], lambda now: w.put(v2, now)))
    store_everywhere(net, nodes, ident(67), ("198.51.100.8", 4000), v1.encode(),
                     random.Random(67))
    assert all(n.store.get(v1.key, net.now) == [v2] for n in nodes.values())
    assert sum(n.store.counters.stale for n in nodes.values()) >= len(nodes) - 1
    assert get(net, addrs[5], nodes[addrs[5]], v1.key) == [v2]
    # same (seq, expires), other content (equivocation): the first one held wins
    fork = Record.create(w.identity, "text", v2.key, b"99", v2.seq, v2.expires)
    store_everywhere(net, nodes, ident(67), ("198.51.100.8", 4000), fork.encode(),
                     random.Random(68))
    assert all(n.store.get(v1.key, net.now) == [v2] for n in nodes.values())


def test_junk_records_are_refused_and_signers_per_key_are_capped() -> None:
    net = SimNetwork(random.Random(5))
    v_addr = ("10.0.0.1", 4000)
    victim = DHTNode(ident(1), config=DHTConfig(difficulty=2), rng=random.Random(1),
                     now=net.now)
    net.add(v_addr, victim)
    attacker, src, rng = ident(70), ("198.51.100.9", 4000), random.Random(70)
    now = net.now
    junk = [
        Record.create(attacker, "bogus", dht_key("x"), b"v", 1, int(now) + 60),        # kind
        Record.create(attacker, "text", dht_key("x"), b"v" * 1025, 1, int(now) + 60),  # size
        Record.create(attacker, "text", dht_key("x"), b"v", 1, int(now) - 1),          # expired
        Record.create(attacker, "text", dht_key("x"), b"v", 1, int(now) + 10**7),      # TTL
        Record.create(attacker, "index", owner_key("index", bytes(32)), b"\x01" * 64, 1,
                      int(now) + 60),                                 # someone else's key
        Record.create(attacker, "seg", dht_key("x"), pack({"v": 1}), 1, int(now) + 60),
    ]
    for r in junk:
        net.inject(craft(attacker, Store(r.encode()), net.now, rng,
                         peer_pubkey=victim.identity.pubkey), src, v_addr)
    net.run_for(1)
    assert victim.counters["records_rejected"] == len(junk)
    assert len(victim.store) == 0
    # 100 signers on one key: the first 64 are kept, the rest refused
    key = dht_key("crowded")
    for i in range(100):
        signer = Identity(random.Random(i).randbytes(32), 0)  # record signers need no puzzle
        r = new_record(signer, "text", key, b"hi", now)
        net.inject(craft(attacker, Store(r.encode()), net.now, rng,
                         peer_pubkey=victim.identity.pubkey), src, v_addr, delay=i * 0.005)
    net.run_for(2)
    assert len(victim.store.get(key, net.now)) == 64
    assert victim.store.counters.full == 36


# -- hosts: shares, grants, deletes ------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def data_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="xc-a-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Rig:
    def __init__(self, data_dir: Path) -> None:
        self.clock = FakeClock()
        self.host_identity = ident(1, 0)
        self.owner = ident(100, 0)
        self.host = HostService(data_dir / "host", self.host_identity, 64 * MiB,
                                clock=self.clock, token_bytes=random.Random(11).randbytes,
                                timeout=5.0)
        self.addr: Address = ("127.0.0.1", 0)
        self.conns: list[HostConnection] = []

    async def connect(self, who: Identity) -> HostConnection:
        conn = await HostConnection.connect(self.addr, who, self.host_identity.node_id,
                                            random.Random(len(self.conns)).randbytes, timeout=5.0)
        self.conns.append(conn)
        return conn

    def grant(self, share_hash: bytes, owner: Identity) -> Grant:
        return Grant.create(owner, share_hash, self.host_identity.node_id,
                            int(self.clock.now) + 3600)


def run_host(data_dir: Path, body: Callable[[Rig], Awaitable[None]]) -> Rig:
    rig = Rig(data_dir)

    async def main() -> None:
        rig.addr = await rig.host.start("127.0.0.1", 0)
        try:
            await asyncio.wait_for(body(rig), 60)
        finally:
            for c in rig.conns:
                c.close()
            for _ in range(200):
                if rig.host.connections == 0:
                    break
                await asyncio.sleep(0.01)
            await rig.host.close()

    asyncio.run(main())
    return rig


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", [
    "../../../../etc/passwd", "..", "/etc/passwd", "aa/../../escape",
    "../" * 21 + "x", "A" * 64, "0" * 63 + "/", "0" * 64 + "\x00", "0" * 62 + "..",
    b"../../etc/passwd", b"\x00" * 31, b"/" * 33, 12345, None,
])
def test_share_names_cannot_become_paths(data_dir: Path, name: Any) -> None:
    store = ShareStore(data_dir / "shares", MiB)
    outside = files_under(data_dir)
    for op in (lambda: store.put(name, b"data"), lambda: store.get(name),
               lambda: store.has(name), lambda: store.delete(name),
               lambda: store.size_of(name), lambda: store.open(name)):
        with pytest.raises(BadShareName):
            op()
    assert files_under(data_dir) == outside


def test_put_with_a_traversal_shaped_hash_writes_nothing_outside_the_store(data_dir: Path) -> None:
    """A PUT's hash is 32 bytes, stored under its hex: "../" bytes in it are
    just bytes, and the data must hash to it, so nothing is written at all."""
    evil = (b"../" * 11)[:32]
    data = b"x" * 100

    async def body(rig: Rig) -> None:
        conn = await rig.connect(ident(5, 0))
        await conn.fs.send(PUT, evil, len(data), rig.grant(evil, rig.owner).encode(), None)
        assert await conn.fs.expect(READY) == [1]
        await conn.fs.send(12, data)  # DATA
        ftype, fields = await conn.fs.recv()
        assert (ftype, fields[0]) == (ERR, E_CORRUPT)
        # a hash field that is a path, not 32 bytes: a bad request
        await conn.fs.send(PUT, b"../../../../../../tmp/pwned", 4, None, None)
        ftype, _ = await conn.fs.recv()
        assert ftype == ERR

    before = files_under(data_dir)
    rig = run_host(data_dir, body)
    assert rig.host.store.list() == []
    new = files_under(data_dir) - before
    assert all(p == "host" or p.startswith("host/") for p in new), new
    assert not any(".." in p or "pwned" in p for p in new), new
    assert {p for p in new if (data_dir / p).is_file()} == {"host/shares/store-stats"}
    assert not Path("/tmp/pwned").exists()


def test_put_without_any_owner_grant_is_refused(data_dir: Path) -> None:
    data = b"free storage please" * 50
    sh = hashlib.sha256(data).digest()

    async def body(rig: Rig) -> None:
        conn = await rig.connect(ident(6, 0))
        await conn.fs.send(PUT, sh, len(data), None, None)  # no grant, no segment record
        ftype, fields = await conn.fs.recv()
        assert (ftype, fields[0]) == (ERR, E_UNAUTHORIZED)
        # a grant for this share, but addressed to another host
        other = Grant.create(rig.owner, sh, ident(7, 0).node_id, int(rig.clock.now) + 60)
        await conn.fs.send(PUT, sh, len(data), other.encode(), None)
        ftype, fields = await conn.fs.recv()
        assert (ftype, fields[0]) == (ERR, E_UNAUTHORIZED)

    rig = run_host(data_dir, body)
    assert rig.host.store.list() == [] and rig.host.owners(sh) == {}
    assert rig.host.counters["puts_unauthorized"] == 2


def test_a_co_owner_by_dedup_cannot_delete_the_first_owners_share(data_dir: Path) -> None:
    """Share hashes are public (seg, loc and contract records), and a host
    deduplicates: anyone who knows a hash can PUT it with a self-signed grant
    and no data, and so become one more owner (with a host-signed contract:
    a limit, see docs/security.md, free-riding). A DELETE by that co-owner
    drops only its own grant; the first owner's share stays."""
    data = random.Random(8).randbytes(3000)
    sh = hashlib.sha256(data).digest()
    mallory = ident(9, 0)

    async def body(rig: Rig) -> None:
        owner_conn = await rig.connect(ident(10, 0))
        await owner_conn.put_share(sh, data, rig.grant(sh, rig.owner))
        conn = await rig.connect(mallory)
        # the hash, size and Merkle root are public (the host's contract record)
        terms = Contract(sh, len(data), share_merkle_root(data), 1024, 1, 1, int(rig.clock.now),
                         int(rig.clock.now) + 3600, 1, rig.host_identity.node_id,
                         rig.host_identity.pubkey, mallory.pubkey)
        half = SignedContract(terms).sign_as_owner(mallory)
        await conn.fs.send(PUT, sh, len(data), rig.grant(sh, mallory).encode(), None,
                           half.encode())
        assert await conn.fs.expect(READY) == [0]  # "already have it": no bytes needed
        ok = await conn.fs.expect(OK)
        signed = SignedContract.decode(ok[0]["contract"])
        signed.verify()  # a host-signed contract for a share mallory never uploaded
        assert set(rig.host.owners(sh)) == {rig.owner.pubkey, mallory.pubkey}
        await conn.delete_share(sh, mallory, int(rig.clock.now))
        assert rig.host.store.has(sh)
        assert set(rig.host.owners(sh)) == {rig.owner.pubkey}
        with pytest.raises(Exception):  # not an owner any more: refused
            await (await rig.connect(mallory)).delete_share(sh, mallory, int(rig.clock.now))
        assert await owner_conn.get_share(sh) == data

    rig = run_host(data_dir, body)
    assert rig.host.counters["deletes"] == 1 and rig.host.counters["deletes_unauthorized"] == 1


# -- memory: huge length prefixes ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["transfer", "control"])
def test_a_4_gib_length_prefix_is_refused_before_allocation(where: str) -> None:
    """Only the 4-byte header arrives (no body, no EOF): the reader must refuse
    it at once, not wait for 4 GiB nor allocate a buffer for it."""
    async def main() -> None:
        reader = asyncio.StreamReader(limit=1 << 20)
        reader.feed_data(struct.pack(">I", 2**32 - 1))
        tracemalloc.start()
        try:
            if where == "transfer":
                with pytest.raises(MessageTooLarge):
                    await asyncio.wait_for(FrameStream(reader, None, 30.0).recv(), 2.0)  # type: ignore[arg-type]
            else:
                with pytest.raises(RemoteProtocolError, match="too large"):
                    await asyncio.wait_for(read_frame(reader), 2.0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 256 * 1024, peak
    asyncio.run(main())


# -- audits: what proofs of retrievability cannot show -----------------------------------------------


def test_an_outsourced_audit_answer_passes() -> None:
    """A limit, shown: a host that dropped its copy fetches the challenged
    blocks from another holder (a mirror) at audit time and answers with its
    own signature. The answer verifies: audits prove the host can *produce*
    the blocks, not that it stores them (docs/security.md)."""
    share = random.Random(12).randbytes(8 * 1024)
    owner, lazy, mirror, auditor = ident(20, 0), ident(21, 0), ident(22, 0), ident(23, 0)
    contract = (SignedContract(Contract.for_share(share, k=1, n=2, start=int(NOW) - 1,
                                                  end=int(NOW) + 86400, price=1,
                                                  host_pubkey=lazy.pubkey,
                                                  owner_pubkey=owner.pubkey))
                .sign_as_owner(owner).sign_as_host(lazy))
    ch = Challenge.fresh(contract, auditor, NOW, random.Random(13), count=3)
    fetched_from_mirror = share  # the lazy host asks the mirror for the bytes
    answer = answer_challenge(fetched_from_mirror, ch, lazy)
    assert verify_answer(contract, ch, answer).passed
    del mirror


# -- repair hijack -------------------------------------------------------------------------------------


def _seg() -> tuple[bytes, list[bytes]]:
    shares = [hashlib.sha256(bytes([i])).digest() for i in range(6)]
    return segment_id(shares), shares


def test_a_claim_by_a_non_holder_never_wins() -> None:
    seg, _ = _seg()
    holder, squatters = ident(30, 0), [ident(31 + i, 0) for i in range(5)]
    t = NOW
    early = [make_claim(s, seg, t - 50 + i, 120) for i, s in enumerate(squatters)]
    mine = make_claim(holder, seg, t, 120)
    alive = {holder.node_id}
    assert winning_claim(early + [mine], t + 1, alive) == mine
    assert winning_claim(early, t + 1, alive) is None
    expired = make_claim(holder, seg, t - 1000, 10)
    assert winning_claim([expired], t, alive) is None


def test_a_seg_record_whose_key_does_not_match_its_shares_is_rejected() -> None:
    seg, shares = _seg()
    owner = ident(40, 0)
    good = make_segment_record(owner, shares, 2, 6, 1000, int(NOW) + 3600, 1, NOW)
    validate(good, NOW)
    assert parse_segment(good).shares == tuple(shares)
    swapped = list(shares)
    swapped[0] = hashlib.sha256(b"attacker's share").digest()
    # the same key with another share list, and the other list under another key
    liar = Record.create(owner, "seg", good.key, make_segment_record(
        owner, swapped, 2, 6, 1000, int(NOW) + 3600, 1, NOW).value, good.seq + 1, good.expires)
    with pytest.raises(RecordRejected, match="key does not match"):
        validate(liar, NOW)
    store = RecordStore()
    store.put(good, NOW)
    with pytest.raises(RecordRejected):
        store.put(liar, NOW)
    assert store.get(seg, NOW) == [good]


class SimDriver:
    """Just enough of a NodeService for :class:`xcore.repairer.Repairer`'s
    claim step: its DHT is a node on a :class:`SimNetwork`, and each call runs
    the simulation until the operation it started is done."""

    def __init__(self, net: SimNetwork, addr: Address, node: DHTNode) -> None:
        self.net, self.addr = net, addr
        self.identity = node.identity
        self.dht = node
        self.driver = self
        self.env = SimpleNamespace(rng=random.Random(0), threads=False,
                                   token_bytes=random.Random(1).randbytes)
        self.streams = None
        self.host = None

    def clock(self) -> float:
        return self.net.now

    def call(self, fn: Callable[[float], Any]) -> Any:
        op = self.net.call(self.addr, fn)
        self.net.wait_all([op], timeout=120)
        return op


def _claim(net: SimNetwork, addr: Address, node: DHTNode, seg: bytes, alive: set[bytes]) -> bool:
    from xcore.repairer import Repairer
    svc = SimDriver(net, addr, node)
    info = SegmentInfo(seg, 2, 6, 1000, tuple(_seg()[1]), int(NOW) + 86400, 1, bytes(32))

    async def main() -> bool:
        return await Repairer(svc)._claim(info, alive)  # type: ignore[no-any-return]
    return asyncio.run(main())


def _leader_and_rival(nodes: dict[Address, DHTNode], seg: bytes) -> tuple[Address, Address]:
    """The holder closest (XOR) to the segment (the planner's leader) and another."""
    order = sorted(nodes, key=lambda a: int.from_bytes(nodes[a].identity.node_id, "big")
                   ^ int.from_bytes(seg, "big"))
    return order[0], order[-1]


def test_the_leader_wins_its_claim_against_later_claims(make_dht_network: Build) -> None:
    net, nodes = make_dht_network(8, seed=31)
    seg, _ = _seg()
    lead, rival = _leader_and_rival(nodes, seg)
    alive = {nodes[lead].identity.node_id, nodes[rival].identity.node_id}
    assert _claim(net, lead, nodes[lead], seg, alive)
    net.run_for(5)
    assert not _claim(net, rival, nodes[rival], seg, alive)


def test_a_backdated_claim_does_not_beat_the_leaders_claim(make_dht_network: Build) -> None:
    net, nodes = make_dht_network(8, seed=32)
    seg, _ = _seg()
    lead, rival = _leader_and_rival(nodes, seg)
    r = nodes[rival]
    alive = {nodes[lead].identity.node_id, r.identity.node_id}
    backdated = Record.create(r.identity, "claim", claim_key(seg), pack({"v": 1, "seg": seg}),
                              0, int(net.now) + 120)
    net.wait(net.call(rival, lambda now: r.put(backdated, now)))
    assert _claim(net, lead, nodes[lead], seg, alive), "the leader lost to a backdated claim"


def test_claims_by_non_holders_do_not_lock_the_leader_out(make_dht_network: Build) -> None:
    net, nodes = make_dht_network(8, seed=33)
    seg, _ = _seg()
    lead, rival = _leader_and_rival(nodes, seg)
    a = nodes[rival]
    for i in range(16):
        squatter = Identity(random.Random(500 + i).randbytes(32), 0)
        rec = make_claim(squatter, seg, net.now, 3000)
        net.wait(net.call(rival, lambda now, rec=rec: a.put(rec, now)))
    assert all(len(n.store.get(claim_key(seg), net.now)) == 16 for n in nodes.values())
    assert _claim(net, lead, nodes[lead], seg, {nodes[lead].identity.node_id}), (
        "16 claims by non-holders locked the leader out")


# -- confidentiality: plaintext and metadata never reach hosts or the DHT ------------------------------


def _confidential(size: int) -> bytes:
    lines: list[bytes] = []
    i = 0
    while sum(len(x) for x in lines) < size:
        lines.append(f"CONFIDENTIAL line {i:06d}: the vault code is {i * 7919 % 1000000:06d}.\n"
                     .encode())
        i += 1
    return b"".join(lines)[:size]


async def _put_through_a_cluster(base: Path, plaintext: bytes, name: str,
                                 keys: OwnerKeys) -> tuple[dict[str, Any], list[Record]]:
    nodes: list[NodeService] = []
    seed_line = ""
    try:
        for i in range(4):
            d = base / f"n{i}"
            init_node(d, capacity=64 * MiB, difficulty=2, diversity=False,
                      bootstrap=[seed_line] if i else [])
            svc = NodeService(d)
            await svc.start()
            nodes.append(svc)
            if i == 0:
                await svc.join()
                assert svc.address is not None
                seed_line = format_seed(svc.address, svc.identity.node_id)
        await asyncio.gather(*(svc.join() for svc in nodes[1:]))
        for svc in nodes:
            svc.announce()
        client = Client(nodes[1], keys, rng=random.Random(0))
        for _ in range(300):
            if len(await client.hosts(refresh=True)) >= 4:
                break
            await asyncio.sleep(0.1)
        src = base / "upload.bin"
        src.write_bytes(plaintext)
        res = await client.put(src, Redundancy(2, 4), name=name)
        out = base / "download.bin"
        await client.get(bytes.fromhex(res["file_id"]), out)
        assert out.read_bytes() == plaintext  # the data really is in the network
        assert [r["name"] for r in await client.ls()] == [name]
        client.close()
        src.unlink()
        out.unlink()
        records = [r for svc in nodes for r in svc.dht.store]
        return res, records
    finally:
        for svc in nodes:
            await svc.stop()  # saves dht.state


def test_plaintext_and_file_names_never_reach_hosts_or_the_dht() -> None:
    """A file put through a 4-node in-process cluster (real nodes, real UDP
    and TCP on loopback): neither its plaintext nor its name appears in any
    share, segment record, owner file or saved DHT state on any node's disk,
    nor in any DHT record any node holds (the index record and the manifest
    are sealed, DESIGN.md principles 5 and 7)."""
    base = Path(tempfile.mkdtemp(prefix="xc-p-", dir="/tmp"))
    name = "Q3-layoffs-draft-Zebulon.txt"
    plaintext = _confidential(300_000)
    keys = OwnerKeys(random.Random(77).randbytes(32))
    try:
        res, records = asyncio.run(asyncio.wait_for(
            _put_through_a_cluster(base, plaintext, name, keys), 120))
        blobs = [r.encode() for r in records]
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.is_symlink():
                blobs.append(path.read_bytes())
        share_files = [p for p in base.rglob("shares/??/*") if p.is_file()]
        assert len(share_files) >= 4 + 3  # 4 shares + 3 manifest copies, at least
        # the owner's index record is in the DHT...
        assert any(r.kind == "index" and r.signer_pubkey == keys.pubkey for r in records)
        haystack = b"\x00".join(blobs)
        needles = {name.encode(), name.encode("utf-16-le"), name.split("-")[1].encode()}
        for needle in needles:
            assert needle not in haystack, f"{needle!r} leaked"  # ...and opaque
        for off in range(0, len(plaintext) - 32, 3001):
            assert plaintext[off:off + 32] not in haystack, f"plaintext at {off} leaked"
        assert b"CONFIDENTIAL" not in haystack and b"vault code" not in haystack
    finally:
        shutil.rmtree(base, ignore_errors=True)
