"""Owner-less repair (DESIGN.md principle 9).

How it works
------------
Every host keeps the owner-signed segment record of each share it holds
(:mod:`xcore.contracts.segments`). The hosts of a segment watch each other:
each round, a host asks the current holders of every share of its segments
(found through ``loc`` records) whether they still have it (``HAS`` over the
authenticated transfer protocol) and feeds the answers to a
:class:`RepairPlanner`, which is pure (no I/O, explicit ``now``).

* A share index is *healthy* while one of its holders answered recently, or
  has been failing for less than the grace period (transient churn must not
  cause repair storms: lazy repair).
* Mirrors (``k = 1``: metadata blobs, ``1/n`` files) list the same share
  hash n times, so holders are counted per hash, not per index: each
  distinct holder of the hash is one copy, and n copies need n distinct
  holders (``groups`` in :meth:`RepairPlanner.decide`). A copy-less index
  of a mirrored segment is a missing copy, regenerated like a lost share.
* When fewer than ``threshold = k + ceil((n-k)/3)`` indices are healthy, the
  segment needs repair. Its *leader* is the holder whose node ID is closest
  (XOR) to the segment ID among those that answer or are still within their
  grace period: every watcher computes the same leader from the same facts,
  no owner is involved, and a leader that misses a probe or two (busy with
  the repair itself, say) is not pre-empted by the next one.
* The leader publishes a signed ``claim`` record (short expiry) and re-reads
  the claims: if a closer holder's unexpired claim is there, it backs off, so
  two leaders cannot both act. The leader renews its claim while it works
  and checks it before every placement: a leader that was stalled past its
  claim's expiry (paused, swapped out) stops and starts over from fresh
  probes. If the leader dies mid-repair, it stops answering, the next-closest
  holder becomes leader once the grace period has passed, and finishes the
  work.
* The leader downloads k healthy shares, regenerates the missing ones
  bit-for-bit with zfec (ciphertext only, no key), checks each against the
  hash the owner signed, and places it on a new host chosen by the selection
  rules, sending the segment record as the owner's repair authorisation.
  Before placing a share it checks again that nobody holds it (for a
  mirror: that fewer than its n copies answer), so no share is placed twice.
* Repair bandwidth per node is bounded (a token bucket) and failed repairs
  back off exponentially.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from xcore.codec import as_bytes, as_int, expect, pack, unpack_bounded
from xcore.crypto.identity import Identity
from xcore.dht.records import KindSpec, Record, dht_key, register_kind
from xcore.errors import RecordRejected, RemoteProtocolError

CLAIM_MAX_TTL = 3600


def claim_key(seg_id: bytes) -> bytes:
    return dht_key(seg_id, namespace=b"claim")


def _check_claim(rec: Record) -> None:
    try:
        parse_claim(rec)
    except RemoteProtocolError as exc:
        raise RecordRejected(f"bad claim record: {exc}") from exc


def parse_claim(rec: Record) -> bytes:
    """The segment ID a claim is for (checked against the key)."""
    doc = unpack_bounded(rec.value, 128, 4)
    expect(isinstance(doc, dict) and doc.get("v") == 1, "claim: bad version")
    seg = as_bytes(doc.get("seg"), "claim segment", size=20)
    expect(claim_key(seg) == rec.key, "claim: key does not match segment")
    return seg


register_kind(KindSpec("claim", max_value=128, max_ttl=CLAIM_MAX_TTL, max_entries=16,
                       validate_value=_check_claim))


def make_claim(identity: Identity, seg_id: bytes, now: float, ttl: float) -> Record:
    return Record.create(identity, "claim", claim_key(seg_id), pack({"v": 1, "seg": seg_id}),
                         int(now * 1000), int(now + ttl) + 1)


def winning_claim(claims: Iterable[Record], now: float, alive: set[bytes]) -> Record | None:
    """The claim that holds: among unexpired claims by live holders of the
    segment, the one whose signer is closest (XOR) to the segment ID — the
    same leader rule as the planner's, so a claimant cannot win by
    backdating its claim's seq, and claims by non-holders count for nothing."""
    valid = []
    for c in claims:
        if c.kind != "claim" or c.expires <= now or c.signer_id not in alive:
            continue
        try:
            seg = parse_claim(c)
        except RemoteProtocolError:
            continue
        valid.append((int.from_bytes(c.signer_id, "big") ^ int.from_bytes(seg, "big"), c))
    if not valid:
        return None
    return min(valid, key=lambda dc: (dc[0], dc[1].signer_id))[1]


@dataclass
class _Probe:
    last_ok: float | None = None
    first_fail: float | None = None


@dataclass
class Decision:
    action: str  # "healthy", "degraded" (below n, above threshold), "repair", "follow"
    healthy: list[int]
    missing: list[int]
    leader: bytes | None
    live_holders: dict[int, list[bytes]]
    grace: list[int] = field(default_factory=list)  # healthy only while failing holders are in grace
    candidates: list[bytes] = field(default_factory=list)  # holders live or in grace: may lead


@dataclass
class RepairPlanner:
    """Pure repair decisions for the segments one host watches."""

    own_id: bytes
    grace: float
    probes: dict[tuple[bytes, int, bytes], _Probe] = field(default_factory=dict)
    unknown_since: dict[tuple[bytes, int], float] = field(default_factory=dict)

    def observe(self, seg_id: bytes, index: int, holder: bytes, ok: bool, now: float) -> None:
        p = self.probes.setdefault((seg_id, index, holder), _Probe())
        if ok:
            p.last_ok = now
            p.first_fail = None
        elif p.first_fail is None:
            p.first_fail = now

    def forget(self, seg_id: bytes) -> None:
        for key in [k for k in self.probes if k[0] == seg_id]:
            del self.probes[key]
        for ukey in [k for k in self.unknown_since if k[0] == seg_id]:
            del self.unknown_since[ukey]

    def _holder_state(self, seg_id: bytes, index: int, holder: bytes, now: float) -> str:
        p = self.probes.get((seg_id, index, holder))
        if p is None:
            return "unknown"
        if p.first_fail is None:
            return "live"
        return "grace" if now - p.first_fail < self.grace else "gone"

    def decide(self, seg_id: bytes, n: int, threshold: int,
               holders: dict[int, list[bytes]], now: float,
               groups: list[list[int]] | None = None) -> Decision:
        """``holders[i]``: node IDs believed to hold share ``i`` (from loc
        records and our own store).

        ``groups``: indices that name the same share hash, each in index
        order (:attr:`SegmentInfo.groups`); default, every index alone. A
        group of m indices is m *copies* (mirrors, ``k = 1``): each distinct
        holder of its hash is one copy, so m copies need m holders. Holders
        of a group are listed, and observed, under its first index."""
        if groups is None:
            groups = [[i] for i in range(n)]
        healthy: list[int] = []
        missing: list[int] = []
        grace: list[int] = []
        standing: set[bytes] = set()
        live: dict[int, list[bytes]] = {}
        for group in groups:
            first = group[0]
            listed = list(dict.fromkeys(h for i in group for h in holders.get(i, [])))
            states = {h: self._holder_state(seg_id, first, h, now) for h in listed}
            answered = sorted(h for h, s in states.items() if s == "live")
            in_grace = sum(1 for s in states.values() if s == "grace")
            standing.update(h for h, s in states.items() if s in ("live", "grace"))
            # copies that count: answered, failing within the grace period, or not probed yet
            held = sum(1 for s in states.values() if s != "gone")
            for j, i in enumerate(group):  # index i stands for the group's j-th copy
                live[i] = answered[j::len(group)]
                if j < held:
                    healthy.append(i)
                    if len(answered) <= j < len(answered) + in_grace:
                        grace.append(i)
                    self.unknown_since.pop((seg_id, i), None)
                    continue
                # nobody (alive) holds this copy: lazy, so only after the grace period,
                # unless a holder of it was seen and is gone
                since = self.unknown_since.setdefault((seg_id, i), now)
                if j < len(states) or now - since >= self.grace:
                    missing.append(i)
                else:
                    healthy.append(i)
        healthy.sort()
        missing.sort()
        grace.sort()
        # a holder within its grace period may still be at work: it keeps the
        # lead, or a leader slow to answer one probe would be pre-empted mid-repair
        seg_int = int.from_bytes(seg_id, "big")
        leader = (min(standing, key=lambda h: int.from_bytes(h, "big") ^ seg_int)
                  if standing else None)
        if len(healthy) >= n:
            action = "healthy"
        elif len(healthy) >= threshold:
            action = "degraded"
        elif leader == self.own_id:
            action = "repair"
        else:
            action = "follow"
        return Decision(action, healthy, missing, leader, live, grace,
                        sorted(standing, key=lambda h: int.from_bytes(h, "big") ^ seg_int))


@dataclass
class TokenBucket:
    """Bounded repair bandwidth: ``rate`` bytes/s, bursts up to ``burst``."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = 0.0

    def delay_for(self, nbytes: int, now: float) -> float:
        """Take ``nbytes``; return how long to wait before sending them."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= nbytes
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def parse_claim_value(value: bytes) -> bytes:
    doc = unpack_bounded(value, 128, 4)
    expect(isinstance(doc, dict), "claim: not a map")
    return as_bytes(doc.get("seg"), "claim segment", size=20)


__all__ = ["RepairPlanner", "Decision", "TokenBucket", "make_claim", "winning_claim",
           "claim_key", "parse_claim", "as_int"]
