"""Kademlia routing table with IP-diversity caps and an injected clock.

Built on the ``kademlia`` package's :class:`kademlia.node.Node` (XOR distance)
and :class:`kademlia.routing.KBucket` (LRU bucket with a replacement cache,
paper section 4.1). Replaced from that package, and why:

* ``KBucket.touch_last_updated`` read ``time.monotonic()``: :class:`Bucket`
  takes the time from the table, which the protocol core feeds with ``now``.
* ``RoutingTable.add_contact`` fired ``asyncio.ensure_future(ping)`` from
  inside the table: here :meth:`RoutingTable.add` returns the head that should
  be pinged, and the (sans-IO) protocol core sends the ping and calls
  :meth:`RoutingTable.evict` or :meth:`RoutingTable.touch` with the outcome.
* ``get_bucket_for`` compared with ``<`` against an inclusive upper bound
  (an ID equal to a split point landed in the wrong bucket): replaced by a
  lookup on inclusive ranges.
* nothing limited how many contacts one network could place in the table: at
  most ``per_bucket_group`` (2) contacts of one /24 (IPv4) or /48 (IPv6) per
  bucket and ``per_table_group`` (3) in the whole table, as libp2p's
  diversity filter does. Loopback addresses are exempt (a devnet on one host).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Callable

from kademlia.node import Node
from kademlia.routing import KBucket

from xcore.crypto.identity import ID_BYTES

ID_SPACE = 2**160


@functools.lru_cache(maxsize=65536)
def ip_group(host: str) -> str | None:
    """The diversity group of an address (/24 or /48), None if exempt."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name: its own group
    if ip.is_loopback or ip.is_unspecified:
        return None
    if ip.version == 4:
        return str(ipaddress.ip_network(f"{host}/24", strict=False))
    return str(ipaddress.ip_network(f"{host}/48", strict=False))


def _depth(bucket: KBucket) -> int:
    """Shared prefix length of a bucket's IDs (the stock depth() builds
    160-character bit strings for every ID)."""
    ids = [n.long_id for n in bucket.nodes.values()]
    if not ids:
        return 0
    return 160 - (min(ids) ^ max(ids)).bit_length()


class Contact(Node):  # type: ignore[misc]
    """A known peer: node ID, address and Ed25519 public key."""

    def __init__(self, node_id: bytes, host: str, port: int, pubkey: bytes) -> None:
        super().__init__(node_id, host, port)
        self.pubkey = pubkey
        self.failures = 0
        self.last_seen = 0.0
        self.rtt: float | None = None
        self.wire: object | None = None  # the protocol core's ContactInfo for it, made once

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Contact) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"Contact({self.id.hex()[:12]} {self.ip}:{self.port})"


class Bucket(KBucket):  # type: ignore[misc]
    """A k-bucket whose clock is the table's and which splits into Buckets."""

    def __init__(self, lo: int, hi: int, ksize: int, clock: Callable[[], float]) -> None:
        self._clock = clock
        super().__init__(lo, hi, ksize)

    def touch_last_updated(self) -> None:
        self.last_updated = self._clock()

    def split(self) -> tuple["Bucket", "Bucket"]:
        mid = (self.range[0] + self.range[1]) // 2
        one = Bucket(self.range[0], mid, self.ksize, self._clock)
        two = Bucket(mid + 1, self.range[1], self.ksize, self._clock)
        for node in list(self.nodes.values()):
            (one if node.long_id <= mid else two).nodes[node.id] = node
        for node in list(self.replacement_nodes.values()):
            (one if node.long_id <= mid else two).replacement_nodes[node.id] = node
        return one, two

    def groups(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes.values():
            g = ip_group(node.ip)
            if g is not None:
                counts[g] = counts.get(g, 0) + 1
        return counts


class RoutingTable:
    """Kademlia routing table (paper section 2.4, 4.2)."""

    def __init__(self, own_id: bytes, ksize: int = 20, *, per_bucket_group: int = 2,
                 per_table_group: int = 3, diversity: bool = True) -> None:
        self.own = Node(own_id)
        self.ksize = ksize
        self.per_bucket_group = per_bucket_group
        self.per_table_group = per_table_group
        self.diversity = diversity
        self.now = 0.0
        self.buckets: list[Bucket] = [Bucket(0, ID_SPACE - 1, ksize, self._clock)]
        self.contacts: dict[bytes, Contact] = {}
        self.table_groups: dict[str, int] = {}
        self.rejected_diversity = 0
        self.evicted: list[Contact] = []  # recently evicted, to retry after a partition

    def _clock(self) -> float:
        return self.now

    def bucket_index(self, node_id: bytes) -> int:
        v = int.from_bytes(node_id, "big")
        lo, hi = 0, len(self.buckets) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if v > self.buckets[mid].range[1]:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def get(self, node_id: bytes) -> Contact | None:
        return self.contacts.get(node_id)

    def __len__(self) -> int:
        return len(self.contacts)

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self.contacts

    def _group_ok(self, bucket: Bucket, contact: Contact) -> bool:
        if not self.diversity:
            return True
        g = ip_group(contact.ip)
        if g is None:
            return True
        in_table = self.table_groups.get(g, 0)
        if in_table >= self.per_table_group:
            return False
        if in_table < self.per_bucket_group:
            return True  # a bucket holds no more of the group than the table
        return bucket.groups().get(g, 0) < self.per_bucket_group

    def _count(self, contact: Contact, delta: int) -> None:
        g = ip_group(contact.ip)
        if g is not None:
            self.table_groups[g] = self.table_groups.get(g, 0) + delta
            if self.table_groups[g] <= 0:
                del self.table_groups[g]

    def add(self, contact: Contact, now: float) -> Contact | None:
        """Note that ``contact`` was seen alive.

        Returns None when the contact is in the table (or was refused), or the
        least-recently-seen contact of a full bucket: the caller should ping it
        and call :meth:`evict` if it does not answer, :meth:`touch` if it does.
        """
        self.now = now
        if contact.id == self.own.id or len(contact.id) != ID_BYTES:
            return None
        contact.last_seen = now
        held = self.contacts.get(contact.id)
        index = self.bucket_index(contact.id)
        bucket = self.buckets[index]
        if held is not None:
            if held.address != contact.address:
                # A known ID from a new address: keep the old one until it
                # stops answering (protects against address hijacking).
                return None
            held.last_seen = now
            held.failures = 0
            bucket.add_node(held)  # move to tail (most recently seen)
            bucket.touch_last_updated()
            return None
        if len(bucket) < self.ksize:
            if not self._group_ok(bucket, contact):
                self.rejected_diversity += 1
                return None
            bucket.add_node(contact)
            bucket.touch_last_updated()
            self.contacts[contact.id] = contact
            self._count(contact, +1)
            return None
        # Full: split if the bucket holds our own ID, or is shallow enough
        # (paper section 4.2, relaxed as in the kademlia package: depth % 5).
        if bucket.has_in_range(self.own) or _depth(bucket) % 5 != 0:
            one, two = bucket.split()
            self.buckets[index:index + 1] = [one, two]
            return self.add(contact, now)
        if not self._group_ok(bucket, contact):
            self.rejected_diversity += 1
            return None  # could never enter: no point pinging the head for it
        bucket.replacement_nodes.pop(contact.id, None)
        bucket.replacement_nodes[contact.id] = contact
        while len(bucket.replacement_nodes) > bucket.max_replacement_nodes:
            bucket.replacement_nodes.popitem(last=False)
        return bucket.head()  # type: ignore[no-any-return]

    def touch(self, node_id: bytes, now: float) -> None:
        c = self.contacts.get(node_id)
        if c is not None:
            self.add(c, now)

    def evict(self, node_id: bytes) -> None:
        """Remove a dead contact, promoting the freshest replacement."""
        c = self.contacts.pop(node_id, None)
        bucket = self.buckets[self.bucket_index(node_id)]
        bucket.replacement_nodes.pop(node_id, None)
        if c is None:
            return
        bucket.nodes.pop(node_id, None)
        self._count(c, -1)
        self.evicted.append(c)
        del self.evicted[:-64]
        while bucket.replacement_nodes:
            _, repl = bucket.replacement_nodes.popitem(last=True)
            if repl.id in self.contacts or not self._group_ok(bucket, repl):
                continue
            bucket.nodes[repl.id] = repl
            self.contacts[repl.id] = repl
            self._count(repl, +1)
            break

    def failed(self, node_id: bytes, max_failures: int) -> bool:
        """Count a failed request; evict after ``max_failures`` in a row."""
        c = self.contacts.get(node_id)
        if c is None:
            return False
        c.failures += 1
        if c.failures >= max_failures:
            self.evict(node_id)
            return True
        return False

    def closest(self, target: bytes, k: int | None = None,
                exclude: bytes | None = None) -> list[Contact]:
        """The ``k`` contacts closest to ``target`` by XOR, closest first.

        Walks the buckets nearest first instead of ranking every contact.
        Each bucket covers an aligned block of 2**m IDs (buckets only come
        from halving), and XOR with the target maps an aligned block onto an
        aligned block of distances, so blocks never interleave: every contact
        of the bucket with the smaller ``(lo ^ t) >> m << m`` is closer than
        every contact of the other. Once ``k`` contacts are gathered, farther
        buckets cannot contribute.
        """
        k = self.ksize if k is None else k
        if k <= 0:
            return []
        t = int.from_bytes(target, "big")
        order = sorted(self.buckets, key=lambda b: (b.range[0] ^ t) & ~(b.range[1] - b.range[0]))
        found: list[Contact] = []
        for b in order:
            if b.nodes:
                found.extend(b.nodes.values())
                if len(found) > k or (len(found) == k and exclude is None):
                    break
        if exclude is not None:
            found = [c for c in found if c.id != exclude]
        found.sort(key=lambda c: c.long_id ^ t)
        return found[:k]

    def all(self) -> list[Contact]:
        return list(self.contacts.values())

    def lonely_buckets(self, now: float, age: float) -> list[Bucket]:
        return [b for b in self.buckets if now - b.last_updated >= age]
