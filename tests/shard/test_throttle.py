"""Per-peer transfer limits (xcore.shard.throttle) and a host that applies them.

The first tests drive :class:`PeerLimits` by hand with an explicit ``now``.
The rest run a real :class:`HostService` on 127.0.0.1 with the real clock
and small limits, and real TCP clients that bind their own source address
(``127.0.0.2`` for the flooder, ``127.0.0.3`` for the honest peer: Linux
routes all of 127/8 to loopback), with the loopback exemption turned off so
the per-address limits apply. A flooder hammers the host with GETs from
several connections (or several node IDs) while an honest peer fetches at a
modest pace: the flooder is refused and its bytes stay under the bucket's
bound; every honest request succeeds, without waiting behind the flood.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

from xcore.crypto.identity import Identity
from xcore.errors import CapacityExceeded, XcoreError
from xcore.shard.host import HostService
from xcore.shard.throttle import PeerLimits, TransferLimits
from xcore.shard.transfer import MAX_FRAME, FrameStream, HostConnection, client_handshake

KiB, MiB = 1 << 10, 1 << 20
FLOODER_IP, HONEST_IP = "127.0.0.2", "127.0.0.3"


def ident(seed: int) -> Identity:
    return Identity.generate(0, random.Random(seed).randbytes)


# -- the buckets, by hand ---------------------------------------------------------


def small(**kw: Any) -> TransferLimits:
    base = dict(peer_rate=1 * MiB, peer_burst=2 * MiB, ip_rate=2 * MiB, ip_burst=4 * MiB,
                max_wait=1.0, conns_per_peer=2, conns_per_ip=3, exempt_loopback=False)
    return TransferLimits(**{**base, **kw})  # type: ignore[arg-type]


def test_a_peer_over_its_burst_waits_then_is_refused_and_others_are_untouched() -> None:
    lim = PeerLimits(small())
    a, b = b"a" * 20, b"b" * 20
    assert lim.reserve(a, "10.0.0.1", 2 * MiB, 100.0) == (0.0, "")      # the burst
    wait, _ = lim.reserve(a, "10.0.0.1", MiB // 2, 100.0)              # 0.5 s of debt
    assert wait == pytest.approx(0.5)
    wait, which = lim.reserve(a, "10.0.0.1", MiB, 100.0)               # would be 1.5 s
    assert (wait, which) == (-1.0, "peer")
    assert lim.peers.buckets[a].tokens == pytest.approx(-MiB / 2)      # a refusal takes nothing
    assert lim.reserve(b, "10.0.0.2", 2 * MiB, 100.0) == (0.0, "")      # b has its own bucket
    assert lim.reserve(a, "10.0.0.1", MiB // 2, 101.0) == (0.0, "")     # refilled at 1 MiB/s


def test_many_node_ids_from_one_address_share_its_bucket() -> None:
    lim = PeerLimits(small())
    ids = [bytes([i]) * 20 for i in range(6)]
    results = [lim.reserve(i, "10.0.0.9", 2 * MiB, 50.0) for i in ids]
    assert [w for w, _ in results[:2]] == [0.0, 0.0]  # 4 MiB: the address's burst
    assert results[2][0] == pytest.approx(1.0)         # 1 s of address debt: still allowed
    assert results[3:] == [(-1.0, "ip")] * 3
    assert lim.reserve(ids[5], "10.0.0.10", 2 * MiB, 50.0) == (0.0, "")  # elsewhere: fine


def test_loopback_is_exempt_from_address_limits_by_default() -> None:
    lim = PeerLimits(small(exempt_loopback=True))
    for i in range(8):
        assert lim.reserve(bytes([i]) * 20, "127.0.0.1", 2 * MiB, 0.0) == (0.0, "")
        assert lim.open_ip("127.0.0.1")
    assert lim.ips.buckets == {} and lim.conns_by_ip == {}


def test_connection_caps_and_bounded_tables() -> None:
    lim = PeerLimits(small(max_entries=100))
    assert [lim.open_ip("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert [lim.open_peer(b"p" * 20) for _ in range(3)] == [True, True, False]
    lim.close_peer(b"p" * 20)
    assert lim.open_peer(b"p" * 20)
    for _ in range(3):
        lim.close_ip("10.0.0.1")
    assert lim.conns_by_ip == {}
    for i in range(10_000):  # a stream of fresh IDs and addresses
        lim.reserve(i.to_bytes(20, "big"), f"10.{i >> 8 & 255}.{i & 255}.1", MiB, i * 0.001)
    assert len(lim.peers.buckets) <= 100 and len(lim.ips.buckets) <= 100


def test_limits_from_config() -> None:
    lim = TransferLimits.from_config({"transfer_peer_rate": 1000, "transfer_conns_per_ip": 3,
                                      "transfer_max_wait": "x", "transfer_ip_burst": -1,
                                      "transfer_exempt_loopback": False})
    assert (lim.peer_rate, lim.conns_per_ip, lim.exempt_loopback) == (1000.0, 3, False)
    assert lim.max_wait == TransferLimits().max_wait and lim.ip_burst == TransferLimits().ip_burst


# -- a real host, real TCP ---------------------------------------------------------------


@pytest.fixture
def data_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="xc-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


SHARE = 256 * KiB
HOST_LIMITS = TransferLimits(peer_rate=1 * MiB, peer_burst=1 * MiB, ip_rate=2 * MiB,
                             ip_burst=2 * MiB, max_wait=0.5, conns_per_peer=3, conns_per_ip=6,
                             exempt_loopback=False)


async def connect_from(addr: tuple[str, int], source_ip: str, me: Identity,
                       host_id: bytes) -> HostConnection:
    """An authenticated connection whose source address is ``source_ip``."""
    reader, writer = await asyncio.open_connection(addr[0], addr[1], limit=MAX_FRAME * 2,
                                                   local_addr=(source_ip, 0))
    fs = FrameStream(reader, writer, 10.0)
    try:
        pub = await client_handshake(fs, me, host_id, random.Random(7).randbytes)
    except BaseException:
        fs.close()
        raise
    return HostConnection(fs, host_id, pub)


def with_host(data_dir: Path, limits: TransferLimits,
              body: Callable[[HostService, tuple[str, int], bytes], Awaitable[None]]) -> HostService:
    host_key = ident(1)
    host = HostService(data_dir, host_key, 64 * MiB, clock=time.time,
                       token_bytes=random.Random(3).randbytes, timeout=10.0, limits=limits)
    share = random.Random(5).randbytes(SHARE)
    share_hash = hashlib.sha256(share).digest()
    assert host.store.put(share_hash, share)

    async def main() -> None:
        addr = await host.start("127.0.0.1", 0)
        try:
            await asyncio.wait_for(body(host, addr, share_hash), 60)
        finally:
            await host.close()
    asyncio.run(main())
    return host


class Flood:
    """GETs in a loop on each connection until ``stop``; counts bytes and refusals."""

    def __init__(self) -> None:
        self.bytes = 0
        self.refused = 0
        self.stop = False

    async def run(self, conn: HostConnection, share_hash: bytes) -> None:
        while not self.stop:
            try:
                n = len(await conn.get_share(share_hash))
                self.bytes += n
            except CapacityExceeded:  # E_BUSY: rate limited
                self.refused += 1
                await asyncio.sleep(0)


async def honest_fetches(conn: HostConnection, share_hash: bytes, count: int,
                         pace: float) -> list[float]:
    took = []
    for _ in range(count):
        t0 = time.monotonic()
        data = await conn.get_share(share_hash)
        took.append(time.monotonic() - t0)
        assert hashlib.sha256(data).digest() == share_hash
        await asyncio.sleep(pace)
    return took


FLOOD_SECONDS = 3.0


def bound(rate: float, burst: float, seconds: float, limits: TransferLimits) -> float:
    """The most a bucket lets through in ``seconds`` (plus one share of slack)."""
    return burst + rate * (seconds + limits.max_wait) + SHARE


def test_a_flooding_peer_is_throttled_while_an_honest_peer_is_served(data_dir: Path) -> None:
    flood = Flood()
    out: dict[str, Any] = {}

    async def body(host: HostService, addr: tuple[str, int], sh: bytes) -> None:
        hid = host.identity.node_id
        flooder = ident(10)
        conns = [await connect_from(addr, FLOODER_IP, flooder, hid) for _ in range(3)]
        honest = await connect_from(addr, HONEST_IP, ident(20), hid)
        t0 = time.monotonic()
        tasks = [asyncio.create_task(flood.run(c, sh)) for c in conns]
        # the honest peer: 256 KiB every 0.4 s (~0.6 MiB/s, under its 1 MiB/s)
        out["honest"] = await honest_fetches(honest, sh, 7, 0.4)
        await asyncio.sleep(max(0.0, FLOOD_SECONDS - (time.monotonic() - t0)))
        flood.stop = True
        await asyncio.gather(*tasks)
        out["seconds"] = time.monotonic() - t0
        for c in conns + [honest]:
            c.close()
    host = with_host(data_dir, HOST_LIMITS, body)
    c = host.counters
    lim = HOST_LIMITS
    assert flood.refused > 0 and c.get("refused_rate_peer", 0) == flood.refused, (flood.refused, c)
    assert flood.bytes <= bound(lim.peer_rate, lim.peer_burst, out["seconds"], lim), (flood.bytes, out)
    assert c.get("throttled", 0) >= 1, c  # some flood requests were delayed, not refused
    # the honest peer: every fetch served, none of them queued behind the flood
    assert len(out["honest"]) == 7
    assert max(out["honest"]) < lim.max_wait, out["honest"]
    assert c["gets"] == 7 + flood.bytes // SHARE, (c, flood.__dict__)


def test_a_flood_from_many_node_ids_on_one_address_is_throttled_per_address(
        data_dir: Path) -> None:
    flood = Flood()
    out: dict[str, Any] = {}

    async def body(host: HostService, addr: tuple[str, int], sh: bytes) -> None:
        hid = host.identity.node_id
        conns = [await connect_from(addr, FLOODER_IP, ident(100 + i), hid) for i in range(6)]
        honest = await connect_from(addr, HONEST_IP, ident(20), hid)
        t0 = time.monotonic()
        tasks = [asyncio.create_task(flood.run(c, sh)) for c in conns]
        out["honest"] = await honest_fetches(honest, sh, 7, 0.4)
        await asyncio.sleep(max(0.0, FLOOD_SECONDS - (time.monotonic() - t0)))
        flood.stop = True
        await asyncio.gather(*tasks)
        out["seconds"] = time.monotonic() - t0
        for c in conns + [honest]:
            c.close()
    host = with_host(data_dir, HOST_LIMITS, body)
    c, lim = host.counters, HOST_LIMITS
    # six IDs could take 6 × 1 MiB/s; the address holds them to 2 MiB/s together
    assert c.get("refused_rate_ip", 0) > 0, c
    assert flood.bytes <= bound(lim.ip_rate, lim.ip_burst, out["seconds"], lim), (flood.bytes, out)
    assert len(out["honest"]) == 7 and max(out["honest"]) < lim.max_wait, out["honest"]


def test_connections_are_capped_per_peer_and_per_address(data_dir: Path) -> None:
    out: dict[str, Any] = {}

    async def body(host: HostService, addr: tuple[str, int], sh: bytes) -> None:
        hid = host.identity.node_id
        me = ident(10)
        mine = [await connect_from(addr, FLOODER_IP, me, hid) for _ in range(5)]
        results = []
        for c in mine:  # the first request on each tells whether the host kept it
            try:
                await c.has_share(sh)
                results.append("served")
            except XcoreError as exc:
                results.append(type(exc).__name__)
        out["per_peer"] = results
        # more bare connections from the flooder's address than it may hold
        raw = [await asyncio.open_connection(addr[0], addr[1], local_addr=(FLOODER_IP, 0))
               for _ in range(4)]
        await asyncio.sleep(0.2)
        out["ip_refused"] = host.counters.get("refused_conns_ip", 0)
        honest = await connect_from(addr, HONEST_IP, ident(20), hid)
        out["honest"] = await honest.has_share(sh)
        for c in mine + [honest]:
            c.close()
        for _, w in raw:
            w.close()
    host = with_host(data_dir, HOST_LIMITS, body)
    assert out["per_peer"] == ["served"] * 3 + ["CapacityExceeded"] * 2, out
    assert host.counters["refused_conns_peer"] == 2
    # 3 kept + 2 refused-after-handshake are closed or held: at most 6 from one address
    assert out["ip_refused"] >= 1, (out, host.counters)
    assert out["honest"] is True
    assert host.limits.conns_by_peer == {} and host.limits.conns_by_ip == {}
