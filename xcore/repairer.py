"""The repair loop of a running node: the I/O around :class:`RepairPlanner`.

Every ``interval`` seconds the node probes the holders of every share of the
segments it holds part of, lets the planner decide, and, where it is the
leader of a segment below the repair threshold, claims it and repairs it
(see :mod:`xcore.contracts.repair` for the rules).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from xcore.bootstrap import parse_address
from xcore.contracts.hosts import HostInfo, loc_address, loc_key, read_hosts
from xcore.contracts.repair import (
    RepairPlanner, TokenBucket, claim_key, make_claim, parse_claim, winning_claim,
)
from xcore.contracts.segments import SegmentInfo
from xcore.contracts.selection import select_hosts
from xcore.errors import ClaimLapsed, NotEnoughShares, XcoreError
from xcore.net.aio import dht_records, wait_op
from xcore.net.streams import run_blocking
from xcore.shard.erasure import Redundancy, regenerate
from xcore.shard.transfer import HostConnection

log = logging.getLogger(__name__)


@dataclass
class RepairEvent:
    segment: str
    leader: str
    missing: list[int]
    placed: dict[str, str]  # share index (as text: msgpack map keys) -> new host
    bytes_down: int
    bytes_up: int
    seconds: float
    ok: bool
    error: str | None = None
    started: float = 0.0  # node clock when the claim was won

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Repairer:
    svc: Any  # NodeService
    interval: float = 60.0
    grace: float = 900.0
    claim_ttl: float = 120.0
    rate: float = 50e6  # bytes/s of repair traffic per node
    planner: RepairPlanner = field(init=False)
    bucket: TokenBucket = field(init=False)
    events: list[RepairEvent] = field(default_factory=list)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    active: dict[str, dict[str, Any]] = field(default_factory=dict)  # repairs under way
    counters: dict[str, int] = field(default_factory=dict)
    _backoff: dict[bytes, tuple[float, float]] = field(default_factory=dict)
    _loc_cache: dict[bytes, tuple[float, list[tuple[bytes, str]]]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _running: bool = False
    _claims: dict[bytes, float] = field(default_factory=dict)  # segment -> our claim's expiry
    _claim_recs: dict[bytes, bytes] = field(default_factory=dict)  # segment -> our claim record

    def __post_init__(self) -> None:
        self.planner = RepairPlanner(self.svc.identity.node_id, self.grace)
        self.bucket = TokenBucket(self.rate, self.rate * 2, stamp=self.svc.clock())
        self.rng = self.svc.env.rng
        self.threads = self.svc.env.threads

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- plumbing ------------------------------------------------------------

    async def _dht_get(self, key: bytes) -> list[Any]:
        # (nobody answered, twice: nothing to go on this round)
        return await dht_records(self.svc, key, retried=lambda: self._count("lookup_retries"))

    async def _holders(self, share_hash: bytes, fresh: bool = False) -> list[tuple[bytes, str]]:
        now = self.svc.clock()
        cached = self._loc_cache.get(share_hash)
        if cached is not None and not fresh and now - cached[0] < max(30.0, 5 * self.interval):
            return cached[1]
        out = []
        for rec in await self._dht_get(loc_key(share_hash)):
            try:
                a = loc_address(rec)
            except XcoreError:
                continue
            out.append((rec.signer_id, f"{a[0]}:{a[1]}"))
        self._loc_cache[share_hash] = (now, out)
        return out

    async def _conn(self, host_id: bytes, addr: str) -> HostConnection:
        return await HostConnection.connect(parse_address(addr), self.svc.identity, host_id,
                                            self.svc.env.token_bytes, timeout=5.0,
                                            streams=self.svc.streams)

    async def _probe(self, host_id: bytes, addr: str, share_hash: bytes) -> bool:
        try:
            conn = await self._conn(host_id, addr)
        except (XcoreError, OSError, asyncio.TimeoutError):
            return False
        try:
            return await conn.has_share(share_hash)
        except (XcoreError, OSError, asyncio.TimeoutError):
            return False
        finally:
            conn.close()

    # -- the loop -------------------------------------------------------------

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if not self.svc.joined:
                continue
            try:
                await self.check_all()
            except Exception:  # a repair bug must not stop the node
                self._count("errors")
                log.exception("repair round failed")

    async def check_all(self) -> list[dict[str, Any]]:
        host = self.svc.host
        if host is None:
            return []
        self._running = True
        try:
            segs = await run_blocking(host.segments, threads=self.threads)
            await asyncio.gather(*(self.check_segment(blob, info) for blob, info in segs.values()))
            for gone in set(self.status) - {s.hex() for s in segs}:
                del self.status[gone]
            return list(self.status.values())
        finally:
            self._running = False

    async def check_segment(self, blob: bytes, info: SegmentInfo) -> None:
        own = self.svc.identity.node_id
        now = self.svc.clock()
        holders: dict[int, list[bytes]] = {}
        addrs: dict[bytes, str] = {}
        probes = []
        # one entry per distinct share hash, under its first index: the n
        # indices of a mirror (k = 1) are copies of one share
        groups = info.groups
        located = await asyncio.gather(*(self._holders(info.shares[g[0]]) for g in groups))
        for g, found in zip(groups, located):
            i, h = g[0], info.shares[g[0]]
            ids = []
            if self.svc.host.store.has(h):
                ids.append(own)
                self.planner.observe(info.segment_id, i, own, True, now)
            for hid, addr in found:
                if hid == own or hid in ids:
                    continue
                ids.append(hid)
                addrs[hid] = addr
                probes.append((i, hid, addr, h))
            holders[i] = ids
        results = await asyncio.gather(*(self._probe(hid, addr, h) for i, hid, addr, h in probes))
        now = self.svc.clock()
        rep = getattr(self.svc, "reputation", None)
        for (i, hid, _, _), ok in zip(probes, results):
            if ok and rep is not None and rep.is_bad(hid):
                ok = False  # marked bad by audits: its shares count as lost, to be repaired
            self.planner.observe(info.segment_id, i, hid, ok, now)
            if not ok:
                self._loc_cache.pop(info.shares[i], None)  # look again next round
        d = self.planner.decide(info.segment_id, info.n, info.threshold, holders, now, groups)
        action = d.action
        if action == "repair" and sum(1 for hs in d.live_holders.values() if hs) < info.k:
            action = "wait: fewer than k shares answered"  # repair() would refuse it
        self.status[info.segment_id.hex()] = {
            "segment": info.segment_id.hex(), "k": info.k, "n": info.n,
            "threshold": info.threshold, "healthy": len(d.healthy), "missing": d.missing,
            "grace": d.grace,
            "action": action, "leader": d.leader.hex() if d.leader else None,
            "checked": now}
        if d.action != "repair":
            return
        until, delay = self._backoff.get(info.segment_id, (0.0, 0.0))
        if now < until:
            return
        ev = await self.repair(blob, info, d.missing, d.live_holders, addrs,
                               standing=set(d.candidates))
        if ev is not None and not ev.ok:
            delay = min(max(2 * delay, self.interval), 3600.0)
            self._backoff[info.segment_id] = (self.svc.clock() + delay, delay)
        elif ev is not None:
            self._backoff.pop(info.segment_id, None)

    async def _claim(self, info: SegmentInfo, alive: set[bytes]) -> bool:
        own = self.svc.identity.node_id
        rec = make_claim(self.svc.identity, info.segment_id, self.svc.clock(), self.claim_ttl)
        op = self.svc.driver.call(lambda t: self.svc.dht.publish(rec, t))
        try:
            await wait_op(op, 30)
        except XcoreError:
            # e.g. the key is full of junk claims by non-holders: they cannot
            # win (only live holders count), so decide from what we read
            self._count("claims_unpublished")
        claims = [c for c in await self._dht_get(claim_key(info.segment_id)) if c.signer_id != own]
        # our own claim is judged as renewed now: publishing and reading back
        # can take longer than a short claim lives, and a leader must not lose
        # to nobody because its DHT was slow (it renews the claim while it works)
        now = self.svc.clock()
        fresh = make_claim(self.svc.identity, info.segment_id, now, self.claim_ttl)
        win = winning_claim(claims + [fresh], now, alive | {own})
        if win is None or win.signer_id != own:
            return False
        if rec.expires - now < self.claim_ttl / 2:
            self._publish_claim(fresh)
        else:
            self._claims[info.segment_id] = float(rec.expires)
            self._claim_recs[info.segment_id] = rec.encode()
        return True

    def _publish_claim(self, rec: Any) -> None:
        """(Re)publish our claim without waiting for the DHT (renewal while we work)."""
        seg = parse_claim(rec)
        self._claims[seg] = float(rec.expires)
        self._claim_recs[seg] = rec.encode()  # what our repair PUTs show the hosts
        self.svc.driver.call(lambda t: self.svc.dht.publish(rec, t))

    async def _keep_claim(self, info: SegmentInfo) -> None:
        """While a repair runs: renew our claim when half its life is gone. A
        claim found expired is not renewed (this node was stalled: paused,
        swapped out): :meth:`_hold_claim` then stops the repair."""
        seg = info.segment_id
        while True:
            expires = self._claims.get(seg, 0.0)
            await asyncio.sleep(max(0.0, expires - self.claim_ttl / 2 - self.svc.clock()))
            now = self.svc.clock()
            if now >= self._claims.get(seg, 0.0):
                return
            self._publish_claim(make_claim(self.svc.identity, seg, now, self.claim_ttl))

    def _hold_claim(self, info: SegmentInfo) -> None:
        """Before each step of a repair: is our claim still unexpired? If it
        expired meanwhile, someone else may have taken over: stop."""
        now = self.svc.clock()
        expires = self._claims.get(info.segment_id, 0.0)
        if now >= expires:
            self._count("claims_lapsed")
            raise ClaimLapsed(f"our claim on segment {info.segment_id.hex()[:12]} expired "
                              f"{now - expires:.1f} s ago while we worked: starting over")

    async def repair(self, blob: bytes, info: SegmentInfo, missing: list[int],
                     live: dict[int, list[bytes]], addrs: dict[bytes, str],
                     standing: set[bytes] | None = None) -> RepairEvent | None:
        """``live``: holders that answered, per index (to fetch from);
        ``standing``: holders that answered or are within their grace period
        (whose claims count, see RepairPlanner.decide)."""
        own = self.svc.identity.node_id
        alive = {h for hs in live.values() for h in hs}
        if sum(1 for hs in live.values() if hs) < info.k:
            # Fewer than k shares answered us: no repair can succeed from
            # here (our probes may have missed busy holders), so neither claim
            # nor download; a holder that sees k answers will lead.
            self._count("repairs_short_of_k")
            return None
        if not await self._claim(info, alive | (standing or set())):
            self._count("claims_lost")
            return None
        started = self.svc.clock()
        ev = RepairEvent(info.segment_id.hex(), own.hex(), list(missing), {}, 0, 0, 0.0, False,
                         started=started)
        self.active[ev.segment] = progress = {
            "phase": "fetching", "placed": ev.placed, "started": started,
            "claim_expires": self._claims.get(info.segment_id, 0.0)}
        renewer = asyncio.create_task(self._keep_claim(info))
        try:
            red = Redundancy(info.k, info.n)
            good: dict[int, bytes] = {}
            # our own share first: it costs no download (k - 1 instead of k)
            for i, hs in sorted(live.items(), key=lambda ihs: own not in ihs[1]):
                if len(good) >= info.k:
                    break
                for hid in sorted(hs, key=lambda h: h != own):
                    self._hold_claim(info)
                    try:
                        if hid == own:
                            data = await run_blocking(self.svc.host.store.get, info.shares[i],
                                                      threads=self.threads)
                        else:
                            conn = await self._conn(hid, addrs[hid])
                            try:
                                data = await conn.get_share(info.shares[i])
                            finally:
                                conn.close()
                            ev.bytes_down += len(data)
                            await asyncio.sleep(self.bucket.delay_for(len(data), self.svc.clock()))
                        if hashlib.sha256(data).digest() == info.shares[i]:
                            good[i] = data
                            break
                    except (XcoreError, OSError, asyncio.TimeoutError):
                        continue
            if len(good) < info.k:
                raise NotEnoughShares(f"only {len(good)} of {info.k} shares could be fetched")
            regenerated = regenerate(good, red, missing)
            progress["phase"] = "placing"
            # where every share of the segment is now (not only the missing
            # ones: a holder whose loc record our probes missed must not be
            # handed a second share of the segment)
            distinct = list(dict.fromkeys(info.shares))
            hosts, again = await asyncio.gather(
                self._candidates(),
                asyncio.gather(*(self._holders(h, fresh=True) for h in distinct)))
            holders_of = dict(zip(distinct, again))
            placed_of: dict[bytes, set[bytes]] = {}
            # no host gets two shares of the segment: avoid every holder we know of
            holders_now = (set(alive) | set(addrs) | (standing or set())
                           | {hid for hs in again for hid, _ in hs})
            for i in missing:
                data = regenerated[i]
                holders_of_i = holders_of[info.shares[i]]
                if hashlib.sha256(data).digest() != info.shares[i]:
                    raise NotEnoughShares(f"regenerated share {i} does not match its hash")
                # pace first, then check, then place: a check made before a wait
                # (or before this node was stalled) says nothing about after it
                await asyncio.sleep(self.bucket.delay_for(len(data), self.svc.clock()))
                self._hold_claim(info)
                # never place a share twice: someone may have repaired it meanwhile
                # (holders already judged gone are not asked again: a dead host
                # can take the whole connection timeout to fail once more)
                # (a mirror's share is placed until its n copies answer)
                gone = set(addrs) - (standing if standing is not None else alive)
                asked = [(hid, a) for hid, a in holders_of_i if hid not in gone and hid != own]
                found = await asyncio.gather(*(self._probe(hid, a, info.shares[i])
                                               for hid, a in asked))
                have = {hid for (hid, _), ok in zip(asked, found) if ok}
                have |= placed_of.get(info.shares[i], set())
                if self.svc.host.store.has(info.shares[i]):
                    have.add(own)
                if len(have) >= info.shares.count(info.shares[i]):
                    self._count("already_repaired")
                    continue
                placed = False
                avoid = set(holders_now) | {own}  # (holders_of_i are in holders_now)
                for _ in range(8):
                    pick = select_hosts(hosts, 1, rng=self.rng, now=self.svc.clock(),
                                        need_bytes=len(data), exclude=avoid)
                    if not pick:
                        break
                    target = pick[0]
                    avoid.add(target.node_id)
                    try:
                        conn = await HostConnection.connect(target.addr, self.svc.identity,
                                                            target.node_id, self.svc.env.token_bytes,
                                                            5.0, streams=self.svc.streams)
                        try:
                            await conn.put_share(info.shares[i], data, None, blob,
                                                 claim=self._claim_recs.get(info.segment_id))
                        finally:
                            conn.close()
                    except (XcoreError, OSError, asyncio.TimeoutError):
                        continue
                    ev.bytes_up += len(data)
                    ev.placed[str(i)] = target.node_id.hex()
                    holders_now.add(target.node_id)
                    placed_of.setdefault(info.shares[i], set()).add(target.node_id)
                    self._loc_cache.pop(info.shares[i], None)
                    placed = True
                    break
                if not placed:
                    raise NotEnoughShares(f"no new host took share {i}")
            ev.ok = True
            self._count("repairs")
        except XcoreError as exc:
            ev.error = str(exc)
            self._count("repairs_failed")
        finally:
            renewer.cancel()
            self.active.pop(ev.segment, None)
            self._claims.pop(info.segment_id, None)
            self._claim_recs.pop(info.segment_id, None)
        self._count("repair_bytes", ev.bytes_down + ev.bytes_up)  # failed repairs move bytes too
        ev.seconds = round(self.svc.clock() - started, 3)
        self.events.append(ev)
        del self.events[:-100]
        log.info("repair of segment %s: %s", ev.segment[:12], ev.as_dict())
        return ev

    async def _candidates(self) -> list[HostInfo]:
        return list((await read_hosts(self._dht_get, self.svc.dht.config.difficulty)).values())

    def report(self) -> dict[str, Any]:
        return {"segments": sorted(self.status.values(), key=lambda s: s["segment"]),
                "events": [e.as_dict() for e in self.events[-20:]],
                "active": {s: dict(a, placed=dict(a["placed"]),
                                   claim_expires=self._claims.get(bytes.fromhex(s), 0.0))
                           for s, a in self.active.items()},
                "counters": dict(sorted(self.counters.items())),
                "interval": self.interval, "grace": self.grace, "claim_ttl": self.claim_ttl,
                "rate": self.rate}
