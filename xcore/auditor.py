"""The audit loop of a running node: the I/O around :mod:`xcore.contracts.audit`.

Which contracts does a node audit? The ones it holds as a DHT record holder:
a host's contract for a share travels in its ``loc`` record, which lives at
the k nodes closest to ``loc_key(share)`` (:mod:`xcore.contracts.hosts`), so
audit duty spreads over the network with no coordinator and no node audits
everything. Each round the node draws a bounded random sample of them
(:class:`~xcore.contracts.audit.AuditSchedule`: a rate per period, jittered),
challenges each host with a fresh nonce over random 1 KiB blocks, judges the
answer against the contract's Merkle root, signs an attestation, publishes it
under the host's ``attest`` key and feeds its own reputation table. It also
reads other nodes' attestations of the hosts it knows and checks them itself
(a node that took no part in an audit can verify it), so reputation reflects
the whole network's audits, weighted by each attester's standing. A round
reads the attestations of at most ``hosts_read_per_round`` hosts, those read
longest ago first: every node reading every host each round would cost the
network a number of lookups quadratic in its size (at 30 nodes it was most
of the simulator's datagrams). The contracts those attestations name are
cached for an hour.

Attestations and their contracts are archived per month in
``DATA/audits/YYYY-MM.log`` (length-prefixed msgpack pairs) for payouts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time as _time  # month names of the archive only
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xcore.codec import pack, unpack_bounded
from xcore.contracts.audit import (
    Answer, AuditSchedule, Attestation, Challenge, attest, attest_key, classify_attestation,
    make_attest_record, parse_attest_record,
)
from xcore.contracts.contract import SignedContract
from xcore.contracts.hosts import HostInfo, loc_contract, loc_contracts, loc_key, read_hosts
from xcore.contracts.reputation import Reputation
from xcore.errors import (
    ContractEnded, LookupFailed, RecordRejected, RemoteProtocolError, XcoreError,
)
from xcore.net.streams import TCP
from xcore.net.aio import dht_records, wait_op
from xcore.shard.transfer import HostConnection

log = logging.getLogger(__name__)

CONTRACT_CACHE_SECONDS = 3600.0
CONTRACT_CACHE_ENTRIES = 4096


@dataclass
class Auditor:
    svc: Any  # NodeService
    interval: float = 300.0
    rate: float = 4.0  # audits per contract per day
    max_per_round: int = 64
    hosts_read_per_round: int = 16
    reputation: Reputation = field(init=False)
    counters: dict[str, int] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    host_audits: dict[bytes, list[int]] = field(default_factory=dict)  # host -> [passed, failed]
    _hosts: dict[bytes, HostInfo] = field(default_factory=dict)
    _hosts_at: float = 0.0
    _seen: set[bytes] = field(default_factory=set)
    _read_at: dict[bytes, float] = field(default_factory=dict)  # host -> last attestation read
    _contracts: dict[bytes, tuple[float, list[SignedContract]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reputation = Reputation(trusted=[self.svc.identity.node_id])
        self.rng = self.svc.env.rng

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- what we know ------------------------------------------------------------

    def known_contracts(self, host: bytes | None = None) -> list[SignedContract]:
        now = self.svc.clock()
        out = []
        for rec in self.svc.dht.store:
            if rec.kind != "loc":
                continue
            try:
                sc = loc_contract(rec)
            except RecordRejected:
                continue
            if sc is None:
                continue
            c = sc.contract
            if sc.until <= now or c.host_id == self.svc.identity.node_id:
                continue
            if host is not None and c.host_id != host:
                continue
            out.append(sc)
        return out

    async def _dht_get(self, key: bytes) -> list[Any]:
        # (nobody answered, twice: nothing to go on this round)
        return await dht_records(self.svc, key, retried=lambda: self._count("lookup_retries"))

    async def hosts(self) -> dict[bytes, HostInfo]:
        now = self.svc.clock()
        if self._hosts and now - self._hosts_at < max(60.0, self.interval):
            return self._hosts
        best = await read_hosts(self._dht_get, self.svc.dht.config.difficulty)
        self._hosts, self._hosts_at = best, now
        return best

    # -- auditing --------------------------------------------------------------

    async def audit(self, sc: SignedContract) -> Attestation:
        c = sc.contract
        now = self.svc.clock()
        challenge = Challenge.fresh(sc, self.svc.identity, now, self.svc.env.token_bytes)
        answer: Answer | None = None
        host = (await self.hosts()).get(c.host_id)
        if host is None:
            self._hosts_at = 0.0  # maybe just announced: look again before blaming anyone
            host = (await self.hosts()).get(c.host_id)
        if host is None:
            # we cannot reach a host we cannot find: that is no evidence against it
            self._count("audits_skipped_unknown_host")
            raise LookupFailed("host not announced")
        if host is not None:
            try:
                conn = await HostConnection.connect(host.addr, self.svc.identity, c.host_id,
                                                    self.svc.env.token_bytes, timeout=10.0,
                                                    streams=self.svc.streams or TCP)
                try:
                    answer = Answer.decode(await conn.audit(challenge.encode()))
                finally:
                    conn.close()
            except (XcoreError, OSError, asyncio.TimeoutError) as exc:
                log.debug("audit of %s: %s", c.host_id.hex()[:12], exc)
        att = attest(self.svc.identity, sc, challenge, answer, self.svc.clock())
        if not att.passed and await self._ended_before(sc, challenge.issued):
            # the owner deleted the share and the host told the network; our
            # copy of the contract was older (it missed the update)
            self._count("audits_skipped_ended")
            raise ContractEnded("the owner ended this contract")
        self._ingest(att, sc)
        self._archive(att, sc)
        rec = make_attest_record(self.svc.identity, att, self.svc.clock())
        op = self.svc.driver.call(lambda t: self.svc.dht.publish(rec, t))
        try:
            await wait_op(op, 60)
        except XcoreError:
            self._count("attestations_unpublished")
        self._count("audits_passed" if att.passed else "audits_failed")
        tally = self.host_audits.setdefault(c.host_id, [0, 0])
        tally[0 if att.passed else 1] += 1
        self.results.append({"host": c.host_id.hex(), "share": c.share_hash.hex(),
                             "passed": att.passed, "reason": att.reason, "time": att.time})
        del self.results[:-200]
        return att

    async def _ended_before(self, sc: SignedContract, when: float) -> bool:
        """Whether the network holds ``sc`` ended (by its owner) before ``when``;
        such a record is kept, so the contract is not planned again."""
        c = sc.contract
        for rec in await self._dht_get(loc_key(c.share_hash)):
            try:
                other = loc_contract(rec)
            except RecordRejected:
                continue
            if other is not None and other.contract == c and other.delete_sig and other.until <= when:
                try:
                    self.svc.dht.store.put(rec, self.svc.clock())
                except RecordRejected:
                    pass
                return True
        return False

    def _ingest(self, att: Attestation, sc: SignedContract) -> None:
        d = att.digest()
        if d in self._seen:
            return
        self._seen.add(d)
        self.reputation.add(att, sc)

    async def read_attestations(self) -> int:
        """Fetch others' attestations of known hosts and check them ourselves."""
        added = 0
        hosts = self._hosts_to_read(list((await self.hosts()).keys()))
        recs_per_host = await asyncio.gather(*(self._dht_get(attest_key(h)) for h in hosts))
        for recs in recs_per_host:
            for rec in recs:
                if rec.signer_id == self.svc.identity.node_id:
                    continue
                try:
                    att = parse_attest_record(rec)
                except (RecordRejected, RemoteProtocolError):
                    self._count("attestations_malformed")
                    continue
                if att.digest() in self._seen:
                    continue
                known = await self._contracts_of(att.share_hash)
                sc = next((x for x in known if x.contract.host_id == att.host_id), None)
                if sc is None:
                    continue
                evidence = classify_attestation(att, sc)
                self._count(f"attestations_{evidence.value}")
                self._ingest(att, sc)
                self._archive(att, sc)
                added += 1
        return added

    def _hosts_to_read(self, hosts: list[bytes]) -> list[bytes]:
        """This round's hosts: those never read, then those read longest ago
        (ties in random order), at most ``hosts_read_per_round``."""
        order = {h: self.rng.random() for h in sorted(hosts)}
        ranked = sorted(order, key=lambda h: (self._read_at.get(h, float("-inf")), order[h]))
        self._read_at = {h: t for h, t in self._read_at.items() if h in order}
        chosen = ranked[: self.hosts_read_per_round]
        now = self.svc.clock()
        for h in chosen:
            self._read_at[h] = now
        return chosen

    async def _contracts_of(self, share_hash: bytes) -> list[SignedContract]:
        """The contracts the DHT holds for ``share_hash`` (loc records), cached
        for an hour: attestations of one share keep coming from its auditors."""
        now = self.svc.clock()
        hit = self._contracts.get(share_hash)
        if hit is not None and now - hit[0] < CONTRACT_CACHE_SECONDS:
            return hit[1]
        parsed = loc_contracts(await self._dht_get(loc_key(share_hash)))
        if len(self._contracts) >= CONTRACT_CACHE_ENTRIES:
            cutoff = now - CONTRACT_CACHE_SECONDS
            self._contracts = {k: v for k, v in self._contracts.items() if v[0] >= cutoff}
            while len(self._contracts) >= CONTRACT_CACHE_ENTRIES:  # all fresh: drop the oldest
                del self._contracts[next(iter(self._contracts))]
        self._contracts[share_hash] = (now, parsed)
        return parsed

    async def round(self, host: bytes | None = None, force: bool = False) -> list[dict[str, Any]]:
        contracts = self.known_contracts(host)
        if force:
            chosen = contracts[: self.max_per_round]
        else:
            # this round's share of the daily rate, at most max_per_round audits
            plan = AuditSchedule(rate=self.rate * self.interval / 86400.0, period=self.interval,
                                 max_audits=self.max_per_round)
            by_digest = {sc.contract.digest(): sc for sc in contracts}
            due = plan.plan(contracts, self.svc.clock(), self.rng,
                            skip_host=self.svc.identity.node_id)
            chosen = [by_digest[p.contract.digest()] for p in due if p.contract.digest() in by_digest]
        sem = asyncio.Semaphore(8)
        done: list[dict[str, Any]] = []

        async def one(sc: SignedContract) -> None:
            async with sem:
                try:
                    await self.audit(sc)
                except (LookupFailed, ContractEnded):
                    return
                done.append(self.results[-1])
        await asyncio.gather(*(one(sc) for sc in chosen))
        try:
            await self.read_attestations()
        except XcoreError:
            pass
        return done

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval * (0.5 + self.rng.random()))
            if not self.svc.joined:
                continue
            try:
                await self.round()
            except Exception:
                self._count("errors")
                log.exception("audit round failed")

    # -- archive (for payouts) -----------------------------------------------------

    def _archive(self, att: Attestation, sc: SignedContract) -> None:
        # filed by the challenge's time, as payouts count it (an audit across
        # midnight at a month's end belongs to the month it was issued in)
        month = _time.strftime("%Y-%m", _time.gmtime(att.challenge.issued))
        path = Path(self.svc.data_dir) / "audits" / f"{month}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = pack([sc.encode(), att.encode()])
        with open(path, "ab") as f:
            f.write(struct.pack(">I", len(blob)) + blob)

    def report(self) -> dict[str, Any]:
        rows = []
        for h in sorted(set(self.reputation.hosts()) | set(self.host_audits)):
            p, f = self.host_audits.get(h, [0, 0])
            rows.append({"host": h.hex(), "score": round(self.reputation.score(h), 4),
                         "bad": self.reputation.is_bad(h), "audited_passed": p,
                         "audited_failed": f})
        return {"counters": dict(sorted(self.counters.items())), "hosts": rows,
                "recent": self.results[-20:]}


def read_archive(data_dir: Path, period: str) -> list[tuple[SignedContract, Attestation]]:
    """The (contract, attestation) pairs archived for ``period`` (YYYY-MM)."""
    path = Path(data_dir) / "audits" / f"{period}.log"
    out: list[tuple[SignedContract, Attestation]] = []
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return out
    off = 0
    while off + 4 <= len(raw):
        (n,) = struct.unpack(">I", raw[off:off + 4])
        blob = raw[off + 4:off + 4 + n]
        off += 4 + n
        if len(blob) != n:
            break  # torn tail after a crash: stop there, keep what is whole
        try:
            sc_b, att_b = unpack_bounded(blob, 1 << 20)
            out.append((SignedContract.decode(sc_b), Attestation.decode(att_b)))
        except (RemoteProtocolError, ValueError, TypeError):
            continue
    return out


def payout_table(data_dir: Path, period: str, inxt: dict[str, int]) -> dict[str, Any]:
    """`xcore payout`: Appendix 1 payouts from this node's audit archive."""
    from xcore.contracts.payout import payouts
    if not period:
        period = _time.strftime("%Y-%m", _time.gmtime())
    pairs = read_archive(data_dir, period)
    contracts = {sc.encode(): sc for sc, _ in pairs}
    held = {bytes.fromhex(k): int(v) for k, v in inxt.items()}
    rows = payouts(period, contracts.values(), [a for _, a in pairs], held)
    return {"period": period, "attestations": len(pairs), "hosts": [
        {"host": r.host_id.hex(), "gb_months": f"{r.gb_months:f}", "audits_passed": r.audits_passed,
         "audits_failed": r.audits_failed, "euros": str(r.euros), "bonus_percent": r.bonus_percent,
         "bonus_euros": str(r.bonus_euros), "total": str(r.total)} for r in rows]}
