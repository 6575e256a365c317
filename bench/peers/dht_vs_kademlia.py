"""xcore's DHT against the stock ``kademlia`` package, on the same machine.

Three runs of the same workload, each in its own process (so the memory
figures start from a clean heap):

``kademlia-udp``
    N ``kademlia.network.Server`` instances (bmuller/kademlia, the package
    xcore borrows ``Node``/``NodeHeap``/``KBucket`` from) in one asyncio event
    loop, each on its own UDP socket on 127.0.0.1 (port chosen by the kernel).
``xcore-udp``
    N :class:`xcore.dht.protocol.DHTNode` cores in one event loop of the same
    kind, each behind the production asyncio adapter
    (:class:`xcore.net.aio.DatagramDriver`) on its own UDP socket on 127.0.0.1.
    ``DHTConfig(difficulty=2, diversity=False)``: every node shares one IP, so
    the /24 caps of the routing table are off.
``xcore-sim``
    the same cores on the in-memory :class:`xcore.net.sim.SimNetwork`
    (5-80 ms virtual latency; the wall time is the CPU the cores and the
    simulator use), as ``bench/dht.py`` does.

The workload: N nodes join one after another, each through ``--bootstrap``
(3) random already-joined nodes; ``--records`` values of 100 bytes are stored
from random nodes; then ``--lookups`` value lookups of random stored keys and
as many node lookups of random targets, one at a time, each from a random node
that does not hold the key itself. Figures: join wall time, lookups per wall
second, hops (p50/p90/max), requests per lookup, success (the value was found;
the true closest node, by brute force, came first), RSS growth per node.

Both systems run ``k = 20``, ``alpha = 3``. What each does per lookup differs,
and the figures should be read with it in mind:

* the stock package has no authentication, signatures or rate limits; its
  value lookup stops at the first answer carrying the value; its crawl goes in
  rounds (``alpha`` requests, then waits for all of them);
* xcore verifies an Ed25519 signature on every first contact and every record,
  MACs every datagram, and its value lookup continues to the k closest (it
  collects the newest record per signer) with ``alpha`` requests always in
  flight.

Hops, for both, as :class:`xcore.dht.protocol.Lookup` defines them: nodes from
the asker's own table are hop 1, a node learned from a hop-h answer is hop
h + 1; a value lookup's hops are those of the first node that returned the
value, a node lookup's those of the closest node found. For the stock package
they are counted by wrapping the asker's ``call_find_node`` /
``call_find_value`` (it does not expose them); its requests per lookup are the
calls of those two methods.

    .venv/bin/python bench/peers/dht_vs_kademlia.py [--nodes 200] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SYSTEMS = ("kademlia-udp", "xcore-udp", "xcore-sim")
KSIZE, ALPHA = 20, 3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def percentile(values: list[int], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return float(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))])


def summarise(kind: str, wall: float, hops: list[int], reqs: list[int], ok: int, n: int,
              failed: int) -> dict[str, Any]:
    return {"kind": kind, "count": n, "wall_s": wall, "per_s": n / wall if wall else 0.0,
            "hops_p50": percentile(hops, 50), "hops_p90": percentile(hops, 90),
            "hops_max": max(hops, default=0), "hops_mean": sum(hops) / max(len(hops), 1),
            "requests_per_lookup": sum(reqs) / max(len(reqs), 1),
            "success": ok / max(n, 1), "failed": failed}


# -- the stock package --------------------------------------------------------------

class CallTracer:
    """Counts find_* RPCs and hops of one lookup at a time on one server's protocol."""

    def __init__(self, protocol: Any) -> None:
        self.active = False
        self.rpcs = 0
        self.hop: dict[bytes, int] = {}
        self.value_hop: int | None = None
        for name in ("call_find_node", "call_find_value"):
            orig = getattr(protocol, name)
            setattr(protocol, name, partial(self._call, orig))

    def begin(self) -> None:
        self.active, self.rpcs, self.hop, self.value_hop = True, 0, {}, None

    async def _call(self, orig: Callable[..., Any], ask: Any, target: Any) -> Any:
        if not self.active:
            return await orig(ask, target)
        self.rpcs += 1
        h = self.hop.setdefault(ask.id, 1)
        result = await orig(ask, target)
        ok, payload = result
        if ok:
            if isinstance(payload, dict):
                if self.value_hop is None or h < self.value_hop:
                    self.value_hop = h
            else:
                for tup in payload or []:
                    self.hop.setdefault(tup[0], h + 1)
        return result


async def run_kademlia(args: argparse.Namespace) -> dict[str, Any]:
    from kademlia.crawling import NodeSpiderCrawl
    from kademlia.network import Server
    from kademlia.node import Node
    from kademlia.utils import digest

    logging.getLogger("kademlia").setLevel(logging.CRITICAL)
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    n = args.nodes
    rng = random.Random(args.seed)
    gc.collect()
    rss0 = rss_bytes()
    servers: list[Any] = []
    addrs: list[tuple[str, int]] = []
    tracers: list[CallTracer] = []
    res: dict[str, Any] = {"system": "kademlia-udp", "nodes": n}
    t0 = time.perf_counter()
    try:
        for i in range(n):
            s = Server(ksize=KSIZE, alpha=ALPHA, node_id=rng.randbytes(20))
            await s.listen(0, interface="127.0.0.1")
            servers.append(s)
            addrs.append(s.transport.get_extra_info("sockname")[:2])
            tracers.append(CallTracer(s.protocol))
            if i > 0:
                picks = rng.sample(range(i), min(args.bootstrap, i))
                await s.bootstrap([addrs[j] for j in picks])
        res["join_wall_s"] = time.perf_counter() - t0
        gc.collect()
        res["rss_per_node"] = (rss_bytes() - rss0) / n
        res["routing_contacts_mean"] = sum(
            sum(len(b) for b in s.protocol.router.buckets) for s in servers) / n

        keys = [f"bench-{args.seed}-{j}" for j in range(args.records)]
        for key in keys:
            await servers[rng.randrange(n)].set(key, rng.randbytes(100))

        async def lookups(kind: str) -> dict[str, Any]:
            hops: list[int] = []
            reqs: list[int] = []
            ok = failed = 0
            busy = 0.0
            for _ in range(args.lookups):
                if kind == "get":
                    key = keys[rng.randrange(len(keys))]
                    dkey = digest(key)
                    who = rng.randrange(n)
                    while servers[who].storage.get(dkey) is not None:
                        who = rng.randrange(n)
                    tr = tracers[who]
                    tr.begin()
                    t = time.perf_counter()
                    value = await servers[who].get(key)
                    busy += time.perf_counter() - t
                    tr.active = False
                    if value is None or tr.value_hop is None:
                        failed += 1
                    else:
                        ok += 1
                        hops.append(tr.value_hop)
                    reqs.append(tr.rpcs)
                else:
                    who = rng.randrange(n)
                    target = rng.randbytes(20)
                    s = servers[who]
                    tr = tracers[who]
                    tr.begin()
                    t = time.perf_counter()
                    node = Node(target)
                    nearest = s.protocol.router.find_neighbors(node, ALPHA)
                    found = await NodeSpiderCrawl(s.protocol, node, nearest, KSIZE, ALPHA).find()
                    busy += time.perf_counter() - t
                    tr.active = False
                    reqs.append(tr.rpcs)
                    if not found:
                        failed += 1
                        continue
                    hops.append(tr.hop.get(found[0].id, 1))
                    tl = int.from_bytes(target, "big")
                    best = min((x.node.long_id ^ tl, x.node.id) for x in servers if x is not s)[1]
                    ok += found[0].id == best
            return summarise(kind, busy, hops, reqs, ok, args.lookups, failed)

        res["get"] = await lookups("get")
        res["find_node"] = await lookups("find_node")
    finally:
        for s in servers:
            s.stop()
        await asyncio.sleep(0)
    res["total_wall_s"] = time.perf_counter() - t0
    return res


# -- xcore on real UDP ------------------------------------------------------------------

async def run_xcore_udp(args: argparse.Namespace) -> dict[str, Any]:
    from xcore.crypto.identity import Identity
    from xcore.dht.protocol import DHTConfig, DHTNode, new_record
    from xcore.dht.records import dht_key
    from xcore.net.aio import open_udp, wall_clock, wait_op

    n = args.nodes
    rng = random.Random(args.seed)
    id_rng = random.Random(rng.getrandbits(64))
    cfg = DHTConfig(ksize=KSIZE, alpha=ALPHA, difficulty=2, diversity=False)
    gc.collect()
    rss0 = rss_bytes()
    nodes: list[Any] = []
    drivers: list[Any] = []
    addrs: list[tuple[str, int]] = []
    res: dict[str, Any] = {"system": "xcore-udp", "nodes": n}
    t0 = time.perf_counter()
    try:
        for i in range(n):
            ident = Identity.generate(cfg.difficulty, id_rng.randbytes)
            node = DHTNode(ident, config=cfg, rng=random.Random(rng.getrandbits(64)),
                           now=wall_clock())
            drv, addr = await open_udp(node, "127.0.0.1", 0)
            nodes.append(node)
            drivers.append(drv)
            addrs.append(addr)
            if i > 0:
                picks = rng.sample(range(i), min(args.bootstrap, i))
                seeds = [(addrs[j], nodes[j].identity.node_id) for j in picks]
                await wait_op(drv.call(partial(node.join, seeds)), 60)
            if i == 1:  # node 0 had nobody to join through
                await wait_op(drivers[0].call(partial(nodes[0].join,
                                                      [(addrs[1], nodes[1].identity.node_id)])), 60)
        res["join_wall_s"] = time.perf_counter() - t0
        gc.collect()
        res["rss_per_node"] = (rss_bytes() - rss0) / n
        res["routing_contacts_mean"] = sum(len(x.routing) for x in nodes) / n

        records = []
        for j in range(args.records):
            who = rng.randrange(n)
            rec = new_record(nodes[who].identity, "text", dht_key(f"bench-{args.seed}-{j}"),
                             rng.randbytes(100), wall_clock())
            await wait_op(drivers[who].call(partial(nodes[who].put, rec)), 60)
            records.append(rec)
        res.update(await _xcore_lookups(args, rng, nodes, lambda i, fn: wait_op(
            drivers[i].call(fn), 60), wall_clock))
    finally:
        for d in drivers:
            d.close()
        await asyncio.sleep(0)
    res["total_wall_s"] = time.perf_counter() - t0
    return res


async def _xcore_lookups(args: argparse.Namespace, rng: random.Random, nodes: list[Any],
                         call: Callable[[int, Callable[[float], Any]], Any],
                         clock: Callable[[], float]) -> dict[str, Any]:
    """The lookup phase, shared by the UDP and the simulated runs."""
    from xcore.dht.records import dht_key
    n = len(nodes)
    keys = [dht_key(f"bench-{args.seed}-{j}") for j in range(args.records)]
    ids = [x.identity.node_id for x in nodes]
    longs = [int.from_bytes(b, "big") for b in ids]
    out: dict[str, Any] = {}
    for kind in ("get", "find_node"):
        hops: list[int] = []
        reqs: list[int] = []
        ok = failed = 0
        busy = 0.0
        for _ in range(args.lookups):
            who = rng.randrange(n)
            if kind == "get":
                target = keys[rng.randrange(len(keys))]
                while nodes[who].store.get(target, clock()):
                    who = rng.randrange(n)
                fn = partial(nodes[who].get, target)
            else:
                target = rng.randbytes(20)
                fn = partial(nodes[who].find_node, target)
            t = time.perf_counter()
            try:
                r = await call(who, fn)
            except Exception:  # a failed lookup is a figure
                r = None
            busy += time.perf_counter() - t
            if r is None:
                failed += 1
                continue
            hops.append(r.hops)
            reqs.append(r.messages)
            if kind == "get":
                ok += any(x.key == target for x in r.records)
            else:
                tl = int.from_bytes(target, "big")
                best = min((v ^ tl, i) for i, v in enumerate(longs) if i != who)[1]
                ok += bool(r.contacts) and r.contacts[0].id == ids[best]
        out[kind] = summarise(kind, busy, hops, reqs, ok, args.lookups, failed)
    return out


# -- xcore on the simulator -----------------------------------------------------------------

def run_xcore_sim(args: argparse.Namespace) -> dict[str, Any]:
    from xcore.crypto.identity import Identity
    from xcore.dht.protocol import DHTConfig, DHTNode, new_record
    from xcore.dht.records import dht_key
    from xcore.net.sim import SimNetwork

    n = args.nodes
    rng = random.Random(args.seed)
    id_rng = random.Random(rng.getrandbits(64))
    net = SimNetwork(random.Random(rng.getrandbits(64)))
    cfg = DHTConfig(ksize=KSIZE, alpha=ALPHA, difficulty=2)
    gc.collect()
    rss0 = rss_bytes()
    nodes: list[Any] = []
    addrs: list[tuple[str, int]] = []
    res: dict[str, Any] = {"system": "xcore-sim", "nodes": n}
    t0 = time.perf_counter()
    for i in range(n):
        ident = Identity.generate(cfg.difficulty, id_rng.randbytes)
        addr = (f"10.{i // 250}.{i % 250}.1", 4000)  # one /24 each: the caps never bite
        node = DHTNode(ident, config=cfg, rng=random.Random(rng.getrandbits(64)), now=net.now)
        net.add(addr, node)
        nodes.append(node)
        addrs.append(addr)
        if i > 0:
            picks = rng.sample(range(i), min(args.bootstrap, i))
            net.wait(net.call(addr, partial(node.join, [(addrs[j], nodes[j].identity.node_id)
                                                        for j in picks])))
        if i == 1:
            net.wait(net.call(addrs[0], partial(nodes[0].join,
                                                [(addrs[1], nodes[1].identity.node_id)])))
    res["join_wall_s"] = time.perf_counter() - t0
    gc.collect()
    res["rss_per_node"] = (rss_bytes() - rss0) / n
    res["routing_contacts_mean"] = sum(len(x.routing) for x in nodes) / n
    for j in range(args.records):
        who = rng.randrange(n)
        rec = new_record(nodes[who].identity, "text", dht_key(f"bench-{args.seed}-{j}"),
                         rng.randbytes(100), net.now)
        net.wait(net.call(addrs[who], partial(nodes[who].put, rec)))

    async def call(i: int, fn: Callable[[float], Any]) -> Any:
        return net.wait(net.call(addrs[i], fn))

    res.update(asyncio.run(_xcore_lookups(args, rng, nodes, call, lambda: net.now)))
    res["total_wall_s"] = time.perf_counter() - t0
    return res


# -- driver ------------------------------------------------------------------------------------

def run_one(system: str, args: argparse.Namespace) -> dict[str, Any]:
    if system == "xcore-sim":
        return run_xcore_sim(args)
    loop = asyncio.new_event_loop()
    if args.uvloop:
        import uvloop
        loop = uvloop.new_event_loop()
    # the stock package leaves store tasks running after its sockets close; they are
    # cancelled below and their complaints about closed transports are not figures
    loop.set_exception_handler(lambda _loop, _ctx: None)
    try:
        fn = run_kademlia if system == "kademlia-udp" else run_xcore_udp
        r = loop.run_until_complete(fn(args))
        r["loop"] = "uvloop" if args.uvloop else "asyncio"
        return r
    finally:
        pending = asyncio.all_tasks(loop)
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=10))
        loop.close()


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each system in its own child process; their figures."""
    out = []
    for system in args.systems.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            path = tmp.name
        try:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", system,
                   "--child-out", path, "--nodes", str(args.nodes), "--lookups",
                   str(args.lookups), "--records", str(args.records), "--seed", str(args.seed),
                   "--bootstrap", str(args.bootstrap)] + (["--uvloop"] if args.uvloop else [])
            log(f"[dht] {system}: {args.nodes} nodes, {args.records} records, "
                f"{args.lookups} + {args.lookups} lookups")
            rc = subprocess.call(cmd, timeout=args.timeout)
            if rc != 0:
                out.append({"system": system, "nodes": args.nodes, "error": f"exit {rc}"})
                continue
            with open(path, encoding="utf-8") as fh:
                r = json.load(fh)
            out.append(r)
            log(format_one(r))
        except subprocess.TimeoutExpired:
            out.append({"system": system, "nodes": args.nodes,
                        "error": f"timed out after {args.timeout:.0f} s"})
        finally:
            os.unlink(path)
    return out


def format_one(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['system']:<13} N={r['nodes']}: {r['error']}"
    lines = [f"{r['system']:<13} N={r['nodes']}: join {r['join_wall_s']:.1f} s, "
             f"{r['routing_contacts_mean']:.0f} contacts/node, "
             f"{r['rss_per_node'] / 1024:.0f} KiB/node"]
    for k in ("get", "find_node"):
        x = r[k]
        lines.append(f"  {k:<9} {x['per_s']:7.1f} lookups/s  hops p50 {x['hops_p50']:.0f} "
                     f"p90 {x['hops_p90']:.0f} max {x['hops_max']}  "
                     f"{x['requests_per_lookup']:.1f} requests/lookup  "
                     f"success {100 * x['success']:.0f}%")
    return "\n".join(lines)


def format_table(results: list[dict[str, Any]]) -> str:
    head = ("| system | N | lookup | lookups/s | hops p50 / p90 / max | requests/lookup "
            "| success | join (s) | RSS/node |")
    L = [head, "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        if "error" in r:
            L.append(f"| {r['system']} | {r['nodes']} | - | {r['error']} | | | | | |")
            continue
        for k in ("get", "find_node"):
            x = r[k]
            L.append(f"| {r['system']} | {r['nodes']} | {k} | {x['per_s']:.1f} | "
                     f"{x['hops_p50']:.0f} / {x['hops_p90']:.0f} / {x['hops_max']} | "
                     f"{x['requests_per_lookup']:.1f} | {100 * x['success']:.0f}% | "
                     f"{r['join_wall_s']:.1f} | {r['rss_per_node'] / 1024:.0f} KiB |")
    return "\n".join(L)


def build_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--lookups", type=int, default=200, help="value lookups, and as many node lookups")
    ap.add_argument("--records", type=int, default=50)
    ap.add_argument("--bootstrap", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--uvloop", action="store_true", help="uvloop for both UDP runs")
    ap.add_argument("--timeout", type=float, default=900.0, help="per system, seconds")
    ap.add_argument("--quick", action="store_true", help="N=50, 50 lookups, 20 records")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.nodes, args.lookups, args.records = 50, 50, 20
    return args


def main(argv: list[str] | None = None) -> None:
    args = build_args(argv)
    if args.child:
        r = run_one(args.child, args)
        with open(args.child_out, "w", encoding="utf-8") as fh:
            json.dump(r, fh)
        return
    results = run_all(args)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
