"""The repair leader's claim while it works (:class:`xcore.repairer.Repairer`).

A recording fake stands in for the node: its DHT answers every operation at
once but moves the node's clock on by ``dht_seconds`` first (a slow DHT), and
remembers what was published. Found on the devnet (tests/integration/
test_repair_devnet.py): with a claim TTL shorter than a publish-and-read, the
leader judged its own claim expired and lost to nobody, round after round;
and a leader stopped (SIGSTOP) mid-repair woke up after another holder had
finished and placed its shares a second time.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from xcore.contracts.repair import claim_key, make_claim, parse_claim
from xcore.contracts.segments import SegmentInfo
from xcore.crypto.identity import Identity
from xcore.dht.operation import Operation
from xcore.errors import ClaimLapsed
from xcore.net.vloop import VirtualTimeLoop
from xcore.repairer import Repairer

T0 = 1_800_000_000.0


class SlowDHT:
    """``svc.driver`` and ``svc.dht`` at once: every operation completes after
    ``dht_seconds`` of the node's (virtual) clock; ``published`` records what was put."""

    def __init__(self, loop: VirtualTimeLoop, dht_seconds: float) -> None:
        self.loop, self.dht_seconds = loop, dht_seconds
        self.published: list[Any] = []
        self.stored: dict[bytes, list[Any]] = {}

    def call(self, fn: Callable[[float], Any]) -> Operation[Any]:
        self.loop.advance(self.dht_seconds)
        return fn(self.loop.time())  # type: ignore[no-any-return]

    def publish(self, rec: Any, now: float) -> Operation[Any]:
        self.published.append(rec)
        self.stored.setdefault(rec.key, []).append(rec)
        op: Operation[Any] = Operation("publish")
        op.set_result(None)
        return op

    def get(self, key: bytes, now: float) -> Operation[Any]:
        op: Operation[Any] = Operation("get")
        op.set_result(SimpleNamespace(records=list(self.stored.get(key, []))))
        return op


def make_repairer(dht_seconds: float = 0.0,
                  claim_ttl: float = 4.0) -> tuple[Repairer, SlowDHT, VirtualTimeLoop]:
    """A Repairer on a virtual-time loop whose clock is the node's clock."""
    loop = VirtualTimeLoop(start=T0)
    dht = SlowDHT(loop, dht_seconds)
    rng = random.Random(5)
    ident = Identity.generate(2, random.Random(1).randbytes)
    svc = SimpleNamespace(identity=ident, clock=loop.time, driver=dht, dht=dht,
                          env=SimpleNamespace(rng=rng, threads=False, token_bytes=rng.randbytes))
    asyncio.set_event_loop(loop)
    try:
        return Repairer(svc, interval=1.0, grace=8.0, claim_ttl=claim_ttl), dht, loop
    finally:
        asyncio.set_event_loop(None)


def run(loop: VirtualTimeLoop, coro: Any) -> Any:
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


SEG = SegmentInfo(bytes(range(20)), 4, 8, 1000, tuple(bytes([i]) * 32 for i in range(8)),
                  int(T0) + 86400, 1, bytes(32))


def test_a_leader_whose_dht_is_slower_than_its_claim_lives_still_wins() -> None:
    rep, dht, loop = make_repairer(dht_seconds=3.0, claim_ttl=4.0)  # publish + read: 6 s
    me = rep.svc.identity.node_id
    assert run(loop, rep._claim(SEG, {me}))
    # the claim it works under is fresh and was published again
    assert rep._claims[SEG.segment_id] > loop.time()
    assert [parse_claim(r) for r in dht.published] == [SEG.segment_id] * 2
    assert dht.published[-1].expires > loop.time()


def test_a_closer_live_holders_claim_still_wins() -> None:
    rep, dht, loop = make_repairer(dht_seconds=0.5)
    me = rep.svc.identity.node_id
    seg_int = int.from_bytes(SEG.segment_id, "big")
    others = [Identity.generate(2, random.Random(s).randbytes) for s in range(10, 40)]
    closer = next(o for o in others
                  if o.node_id != me and int.from_bytes(o.node_id, "big") ^ seg_int
                  < int.from_bytes(me, "big") ^ seg_int)
    dht.stored[claim_key(SEG.segment_id)] = [make_claim(closer, SEG.segment_id, loop.time(), 60)]

    async def both() -> tuple[bool, bool]:
        return (await rep._claim(SEG, {me, closer.node_id}),
                await rep._claim(SEG, {me}))  # a claim by a holder not standing counts for nothing
    assert run(loop, both()) == (False, True)


def test_the_claim_is_renewed_while_the_repair_runs() -> None:
    rep, dht, loop = make_repairer(claim_ttl=4.0)

    async def work() -> None:
        assert await rep._claim(SEG, {rep.svc.identity.node_id})
        keeper = asyncio.create_task(rep._keep_claim(SEG))
        for _ in range(10):  # 10 s of work
            await asyncio.sleep(1.0)
            rep._hold_claim(SEG)
        keeper.cancel()
    run(loop, work())
    assert len(dht.published) >= 4  # renewed every 2-3 s
    assert rep._claims[SEG.segment_id] > loop.time()


def test_a_leader_stalled_past_its_claim_stops_at_the_next_step() -> None:
    rep, dht, loop = make_repairer(claim_ttl=4.0)

    async def work() -> None:
        assert await rep._claim(SEG, {rep.svc.identity.node_id})
        keeper = asyncio.create_task(rep._keep_claim(SEG))
        await asyncio.sleep(0.5)
        n = len(dht.published)
        loop.advance(30.0)  # SIGSTOP, SIGCONT: the whole process was stalled
        for _ in range(5):  # the keeper's timer is due: it runs, and must not renew
            await asyncio.sleep(0)
        assert keeper.done() and len(dht.published) == n
        with pytest.raises(ClaimLapsed):
            rep._hold_claim(SEG)
    run(loop, work())
    assert rep.counters["claims_lapsed"] == 1


def test_a_holder_that_hears_fewer_than_k_shares_neither_claims_nor_downloads() -> None:
    """Seen on a busy devnet (bench/repair.py): a holder whose probes missed two
    live holders thought 5 of 8 shares gone, claimed the segment and downloaded
    2 shares before giving up ("only 3 of 4 shares could be fetched"), while
    the rightful leader, which heard enough holders, repaired it."""
    rep, dht, loop = make_repairer()
    me = rep.svc.identity.node_id
    others = [Identity.generate(2, random.Random(s).randbytes).node_id for s in (50, 51)]
    live = {0: [me], 4: [others[0]], 7: [others[1]]}  # 3 < k = 4 answered
    ev = run(loop, rep.repair(b"", SEG, [1, 2, 3, 5, 6], live,
                              {o: "127.0.0.1:9" for o in others}))
    assert ev is None
    assert dht.published == []  # no claim
    assert rep.counters["repairs_short_of_k"] == 1
    assert not rep.active


def test_a_mirror_is_watched_per_copy_and_its_lost_copies_go_to_repair() -> None:
    """A mirrored segment (k = 1: a metadata blob) lists one hash n times: its
    holders are looked up and probed once each, not once per index, and the
    copies lost past the grace period are what the leader repairs."""
    from xcore.contracts.segments import segment_id
    rep, dht, loop = make_repairer()  # grace 8 s
    me = rep.svc.identity.node_id
    share = bytes([7]) * 32
    info = SegmentInfo(segment_id([share] * 5), 1, 5, 1000, (share,) * 5, int(T0) + 86400, 1,
                       bytes(32))
    seg_int = int.from_bytes(info.segment_id, "big")
    farther = [o.node_id for o in (Identity.generate(2, random.Random(s).randbytes)
                                   for s in range(60, 120))
               if int.from_bytes(o.node_id, "big") ^ seg_int > int.from_bytes(me, "big") ^ seg_int]
    others = farther[:4]  # so that this node leads
    dead = set(others[1:])
    rep.svc.host = SimpleNamespace(store=SimpleNamespace(has=lambda h: h == share))
    looked: list[bytes] = []
    probed: list[bytes] = []
    repairs: list[tuple[list[int], dict[int, list[bytes]]]] = []

    async def holders(h: bytes, fresh: bool = False) -> list[tuple[bytes, str]]:
        looked.append(h)
        return [(me, "127.0.0.1:9")] + [(o, "127.0.0.1:9") for o in others]

    async def probe(hid: bytes, addr: str, h: bytes) -> bool:
        probed.append(hid)
        return hid not in dead

    async def repair(blob: bytes, info: SegmentInfo, missing: list[int],
                     live: dict[int, list[bytes]], addrs: dict[bytes, str],
                     standing: set[bytes] | None = None) -> None:
        repairs.append((missing, live))

    rep._holders = holders  # type: ignore[method-assign]
    rep._probe = probe  # type: ignore[method-assign]
    rep.repair = repair  # type: ignore[method-assign,assignment]

    async def rounds() -> list[dict[str, Any]]:
        out = []
        for _ in range(2):
            await rep.check_segment(b"seg record", info)
            out.append(dict(rep.status[info.segment_id.hex()]))
            await asyncio.sleep(10.0)  # past the grace period
        return out
    first, second = run(loop, rounds())
    assert looked == [share, share]  # one lookup a round, not one per index
    assert sorted(probed) == sorted(others * 2)  # each other holder once a round, never itself
    assert first["action"] == "healthy" and first["grace"] == [2, 3, 4]
    assert second["action"] == "repair" and second["healthy"] == 2
    assert second["missing"] == [2, 3, 4] and second["leader"] == me.hex()
    assert len(repairs) == 1
    missing, live = repairs[0]
    assert missing == [2, 3, 4]
    assert sorted(h for hs in live.values() for h in hs) == sorted([me, others[0]])
