"""The routing table: unit tests and a stateful test against a simple model."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from xcore.dht.routing import ID_SPACE, Contact, RoutingTable, ip_group

OWN = bytes(20)


def cid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def contact(n: int | bytes, host: str = "127.0.0.1", port: int = 4000) -> Contact:
    node_id = cid(n) if isinstance(n, int) else n
    return Contact(node_id, host, port, b"k" * 32)


def xor(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


# -- ip groups ------------------------------------------------------------------------


@pytest.mark.parametrize("host,group", [
    ("10.1.2.3", "10.1.2.0/24"),
    ("10.1.2.200", "10.1.2.0/24"),
    ("2001:db8:1:2::5", "2001:db8:1::/48"),
    ("127.0.0.1", None),
    ("127.5.5.5", None),
    ("::1", None),
    ("0.0.0.0", None),
    ("::", None),
    ("node.example", "node.example"),
])
def test_ip_group(host: str, group: str | None) -> None:
    assert ip_group(host) == group


# -- unit tests -------------------------------------------------------------------------


def test_own_id_never_stored() -> None:
    t = RoutingTable(OWN, ksize=4)
    assert t.add(contact(OWN), 1.0) is None
    assert OWN not in t and len(t) == 0


def test_bad_length_id_refused() -> None:
    t = RoutingTable(OWN, ksize=4)
    assert t.add(Contact(b"short", "127.0.0.1", 1, b"k" * 32), 1.0) is None
    assert len(t) == 0


def test_add_get_touch_moves_to_tail() -> None:
    t = RoutingTable(OWN, ksize=4)
    a, b = contact(2**159 + 1), contact(2**159 + 2)
    t.add(a, 1.0)
    t.add(b, 2.0)
    bucket = t.buckets[t.bucket_index(a.id)]
    assert list(bucket.nodes) == [a.id, b.id]
    t.touch(a.id, 3.0)
    assert list(bucket.nodes) == [b.id, a.id]
    assert t.get(a.id).last_seen == 3.0  # type: ignore[union-attr]
    assert bucket.last_updated == 3.0


def test_known_id_from_new_address_keeps_old_address() -> None:
    t = RoutingTable(OWN, ksize=4)
    t.add(contact(5, "10.0.0.1", 1000), 1.0)
    assert t.add(contact(5, "10.9.9.9", 2000), 2.0) is None
    assert t.get(cid(5)).address == ("10.0.0.1", 1000)  # type: ignore[union-attr]


def test_full_bucket_returns_head_then_evict_promotes_replacement() -> None:
    t = RoutingTable(OWN, ksize=2)
    # Two IDs in the far half sharing exactly 5 leading bits: the bucket does
    # not hold our ID and its depth is a multiple of 5, so it will not split.
    a = contact(0b111110 << 154, "127.0.0.1", 4001)
    b = contact(0b111111 << 154, "127.0.0.1", 4002)
    c = contact((0b111110 << 154) + 1, "127.0.0.1", 4003)
    d = contact((0b111111 << 154) + 1, "127.0.0.1", 4004)
    assert t.add(a, 1.0) is None
    assert t.add(b, 2.0) is None
    head = t.add(c, 3.0)
    assert head is a                                 # least recently seen
    assert t.add(d, 4.0) is a
    assert c.id not in t and d.id not in t
    bucket = t.buckets[t.bucket_index(head.id)]
    assert len(bucket) == 2 and head.id in bucket.nodes
    assert list(bucket.nodes)[0] == head.id           # least recently seen
    replacements = list(bucket.replacement_nodes)
    assert replacements, "the refused contact waits in the replacement cache"
    freshest = replacements[-1]
    t.evict(head.id)
    assert head.id not in t
    assert freshest in t and freshest in bucket.nodes
    assert freshest not in bucket.replacement_nodes


def test_evict_unknown_is_harmless() -> None:
    t = RoutingTable(OWN, ksize=4)
    t.add(contact(7), 1.0)
    t.evict(cid(8))
    assert len(t) == 1


def test_failed_evicts_after_max_failures_and_add_resets() -> None:
    t = RoutingTable(OWN, ksize=4)
    for i in range(10, 14):   # more than k contacts: timeouts may shrink the table to k
        t.add(contact(2**150 * i, f"10.0.{i}.1"), 1.0)
    t.add(contact(9), 1.0)
    assert t.failed(cid(9), 3) is False
    assert t.failed(cid(9), 3) is False
    t.add(contact(9), 2.0)                       # seen alive: failures reset
    assert t.get(cid(9)).failures == 0           # type: ignore[union-attr]
    assert t.failed(cid(9), 3) is False
    assert t.failed(cid(9), 3) is False
    assert t.failed(cid(9), 3) is True
    assert cid(9) not in t
    assert t.failed(cid(9), 3) is False


def test_per_bucket_group_cap() -> None:
    t = RoutingTable(OWN, ksize=20)
    for i in range(3):
        t.add(contact(2**159 + i, "10.0.0." + str(i + 1)), 1.0)
    assert len(t) == 2
    assert t.rejected_diversity == 1
    # another /24 is fine
    t.add(contact(2**159 + 10, "10.0.1.1"), 1.0)
    assert len(t) == 3


def test_per_table_group_cap() -> None:
    t = RoutingTable(OWN, ksize=1)
    # four IDs in four different buckets (ksize 1 splits towards OWN)
    ids = [2**159, 2**158, 2**157, 2**156]
    for i, n in enumerate(ids):
        t.add(contact(n, f"10.0.0.{i + 1}"), 1.0)
    assert len({t.bucket_index(cid(n)) for n in ids}) == 4
    assert len(t) == 3
    assert t.table_groups == {"10.0.0.0/24": 3}


def test_loopback_exempt_from_caps() -> None:
    t = RoutingTable(OWN, ksize=20)
    for i in range(10):
        t.add(contact(2**159 + i, "127.0.0.1", 4000 + i), 1.0)
    assert len(t) == 10
    assert t.rejected_diversity == 0
    assert t.table_groups == {}


def test_diversity_off() -> None:
    t = RoutingTable(OWN, ksize=20, diversity=False)
    for i in range(10):
        t.add(contact(2**159 + i, "10.0.0.1", 4000 + i), 1.0)
    assert len(t) == 10


def test_evict_respects_group_cap_when_promoting() -> None:
    t = RoutingTable(OWN, ksize=2)
    a = contact(0b111110 << 154, "10.0.0.1")
    b = contact(0b111111 << 154, "10.0.1.1")
    c = contact((0b111110 << 154) + 1, "10.0.0.2")
    t.add(a, 1.0)
    t.add(b, 1.0)
    assert t.add(c, 2.0) is a                 # c waits as a replacement
    far = t.buckets[t.bucket_index(a.id)]
    assert c.id in far.replacement_nodes
    # meanwhile 10.0.0.0/24 reaches its table-wide cap elsewhere
    t.add(contact(1, "10.0.0.3"), 3.0)
    t.add(contact(2**100, "10.0.0.4"), 3.0)
    assert t.table_groups["10.0.0.0/24"] == 3
    t.evict(b.id)
    assert c.id not in t, "promotion must not break the per-table cap"
    assert t.table_groups["10.0.0.0/24"] == 3
    assert len(far) == 1


def test_closest_sorted_by_xor() -> None:
    rng = random.Random(5)
    t = RoutingTable(OWN, ksize=8, diversity=False)
    for _ in range(200):
        t.add(contact(rng.randbytes(20), "127.0.0.1"), 1.0)
    everyone = t.all()
    for _ in range(20):
        target = rng.randbytes(20)
        got = t.closest(target, 10)
        want = sorted(everyone, key=lambda c: xor(c.id, target))[:10]
        assert got == want
        dists = [xor(c.id, target) for c in got]
        assert dists == sorted(dists)
    got = t.closest(everyone[0].id, 5, exclude=everyone[0].id)
    assert everyone[0] not in got and len(got) == 5
    assert len(t.closest(OWN)) == 8     # k defaults to ksize


def test_lonely_buckets() -> None:
    t = RoutingTable(OWN, ksize=4)
    t.add(contact(2**159), 100.0)
    assert t.lonely_buckets(150.0, 60.0) == []
    assert t.lonely_buckets(160.0, 60.0) == t.buckets


# -- the stateful test --------------------------------------------------------------------

HOSTS = (
    [f"10.0.{a}.{b}" for a in range(3) for b in range(1, 5)]
    + ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    + ["127.0.0.1", "127.0.0.2", "::1"]
    + ["2001:db8:1::1", "2001:db8:1::2", "2001:db8:1:5::1", "2001:db8:2::1"]
    + ["node.example"]
)


class RoutingMachine(RuleBasedStateMachine):
    """Drive a RoutingTable with adds, touches, failures and evictions.

    The model is a dict of what must be in the table (node ID -> address) and
    the set of contacts the table refused while a bucket was full (the only
    ones eviction may promote).
    """

    @initialize(own=st.binary(min_size=20, max_size=20), ksize=st.integers(1, 4))
    def setup(self, own: bytes, ksize: int) -> None:
        self.own = own
        self.table = RoutingTable(own, ksize=ksize)
        self.model: dict[bytes, tuple[str, int]] = {}
        self.waiting: set[bytes] = set()   # refused while the bucket was full
        self.now = 0.0
        self.port = 1000

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    def _new_id(self, prefix: int, bits: int) -> bytes:
        # an ID sharing exactly `prefix` leading bits with ours
        own = int.from_bytes(self.own, "big")
        flip = 1 << (159 - prefix)
        low = bits & (flip - 1)
        return ((own ^ flip) & ~(flip - 1) | low).to_bytes(20, "big")

    # Buckets whose contacts share 5, 10, ... bits and that do not hold our ID
    # stop splitting (the kademlia package's depth % 5 rule): prefixes 4 and 9
    # fill such buckets, so full buckets, heads and promotions get exercised.
    @rule(batch=st.lists(st.tuples(
        st.one_of(st.sampled_from([4, 4, 4, 9, 9]), st.integers(0, 159)),
        st.one_of(st.integers(0, ID_SPACE - 1), st.integers(0, 15)),
        st.sampled_from(HOSTS)), min_size=1, max_size=6))
    def add_new(self, batch: list[tuple[int, int, str]]) -> None:
        for prefix, bits, host in batch:
            self._add(self._new_id(prefix, bits), host)

    @rule(host=st.sampled_from(HOSTS))
    def add_own_id(self, host: str) -> None:
        assert self.table.add(Contact(self.own, host, 1, b"k" * 32), self._tick()) is None
        assert self.own not in self.table

    def _add(self, node_id: bytes, host: str) -> None:
        t = self.table
        self.port += 1
        c = Contact(node_id, host, self.port, b"k" * 32)
        known = node_id in t
        before = t.rejected_diversity
        head = t.add(c, self._tick())
        if known:
            assert head is None
            assert t.get(node_id).address == self.model[node_id]  # type: ignore[union-attr]
            return
        if node_id in t:
            assert head is None
            self.model[node_id] = c.address
            self.waiting.discard(node_id)
            return
        bucket = t.buckets[t.bucket_index(node_id)]
        if head is not None:
            event("bucket full: head returned")
            assert len(bucket) == t.ksize
            assert head.id in bucket.nodes
            assert head is list(bucket.nodes.values())[0]
            if node_id in bucket.replacement_nodes:
                self.waiting.add(node_id)
        else:
            event("refused for diversity")
            # refused for diversity: the group really is at a cap
            assert t.rejected_diversity == before + 1
            g = ip_group(host)
            assert g is not None
            assert (t.table_groups.get(g, 0) >= t.per_table_group
                    or bucket.groups().get(g, 0) >= t.per_bucket_group)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def re_add_known(self, data: st.DataObject) -> None:
        node_id = data.draw(st.sampled_from(sorted(self.model)))
        host, port = self.model[node_id]
        c = Contact(node_id, host, port, b"k" * 32)
        assert self.table.add(c, self._tick()) is None
        bucket = self.table.buckets[self.table.bucket_index(node_id)]
        assert list(bucket.nodes)[-1] == node_id      # most recently seen

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data(), host=st.sampled_from(HOSTS))
    def known_id_new_address(self, data: st.DataObject, host: str) -> None:
        node_id = data.draw(st.sampled_from(sorted(self.model)))
        self._add(node_id, host)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        node_id = data.draw(st.sampled_from(sorted(self.model)))
        self.table.touch(node_id, self._tick())
        bucket = self.table.buckets[self.table.bucket_index(node_id)]
        assert list(bucket.nodes)[-1] == node_id

    def _evict_check(self, node_id: bytes, before: set[bytes]) -> None:
        after = set(self.table.contacts)
        assert node_id not in after
        promoted = after - (before - {node_id})
        assert len(promoted) <= 1
        if node_id not in before:
            assert not promoted
        for p in promoted:
            event("replacement promoted")
            assert p in self.waiting, "only a contact refused for a full bucket may be promoted"
            assert self.table.bucket_index(p) == self.table.bucket_index(node_id)
            self.model[p] = self.table.get(p).address  # type: ignore[union-attr]
            self.waiting.discard(p)
        self.model.pop(node_id, None)
        self.waiting.discard(node_id)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def evict(self, data: st.DataObject) -> None:
        node_id = data.draw(st.sampled_from(sorted(self.model)))
        before = set(self.table.contacts)
        self.table.evict(node_id)
        self._evict_check(node_id, before)

    @rule(bits=st.integers(0, ID_SPACE - 1))
    def evict_unknown(self, bits: int) -> None:
        node_id = bits.to_bytes(20, "big")
        if node_id in self.table:
            return
        before = set(self.table.contacts)
        self.table.evict(node_id)
        assert set(self.table.contacts) == before
        self.waiting.discard(node_id)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        node_id = data.draw(st.sampled_from(sorted(self.model)))
        before = set(self.table.contacts)
        failures = self.table.get(node_id).failures  # type: ignore[union-attr]
        evicted = self.table.failed(node_id, 2)
        assert evicted == (failures + 1 >= 2)
        if evicted:
            self._evict_check(node_id, before)
        else:
            assert set(self.table.contacts) == before

    @rule(where=st.binary(min_size=20, max_size=20), k=st.integers(1, 30))
    def closest(self, where: bytes, k: int) -> None:
        got = self.table.closest(where, k)
        want = sorted(self.model, key=lambda n: xor(n, where))[:k]
        assert [c.id for c in got] == want

    # -- invariants --

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "table"):
            return
        t = self.table
        assert {n: c.address for n, c in t.contacts.items()} == self.model
        assert len(t) == len(self.model)

    @invariant()
    def structure(self) -> None:
        if not hasattr(self, "table"):
            return
        t = self.table
        assert self.own not in t.contacts
        # buckets tile the ID space in order
        assert t.buckets[0].range[0] == 0
        assert t.buckets[-1].range[1] == ID_SPACE - 1
        for a, b in zip(t.buckets, t.buckets[1:]):
            assert a.range[1] + 1 == b.range[0]
        seen: set[bytes] = set()
        table_groups: dict[str, int] = {}
        for i, bucket in enumerate(t.buckets):
            assert len(bucket) <= t.ksize
            groups: dict[str, int] = {}
            for node_id, c in bucket.nodes.items():
                assert c.id == node_id
                assert node_id not in seen, "a contact is in two buckets"
                seen.add(node_id)
                assert bucket.range[0] <= c.long_id <= bucket.range[1]
                assert t.bucket_index(node_id) == i
                assert t.contacts[node_id] is c
                g = ip_group(c.ip)
                if g is not None:
                    groups[g] = groups.get(g, 0) + 1
                    table_groups[g] = table_groups.get(g, 0) + 1
            assert all(v <= t.per_bucket_group for v in groups.values()), groups
            for node_id, c in bucket.replacement_nodes.items():
                assert bucket.range[0] <= c.long_id <= bucket.range[1]
        assert seen == set(t.contacts)
        assert all(v <= t.per_table_group for v in table_groups.values()), table_groups
        assert t.table_groups == table_groups


RoutingMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestRoutingTableStateful = RoutingMachine.TestCase


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=80, unique=True),
       st.binary(min_size=20, max_size=20))
def test_closest_matches_brute_force(ids: list[bytes], target: bytes) -> None:
    t = RoutingTable(OWN, ksize=20)
    for n in ids:
        t.add(Contact(n, "127.0.0.1", 1, b"k" * 32), 1.0)
    got = [c.id for c in t.closest(target, 20)]
    stored = list(t.contacts)
    assert got == sorted(stored, key=lambda n: xor(n, target))[:20]
