"""DHT benchmark: N real DHTNode cores on the in-memory SimNetwork.

What it does, per network size N (each size in its own process when several
are given, so memory figures start from a clean heap):

1. builds N :class:`~xcore.dht.protocol.DHTNode` cores (``DHTConfig(difficulty=2)``,
   identities ground from one seeded ``Random``'s ``randbytes``, one /24 per
   node) and joins them, each through ``--bootstrap`` random already-joined
   nodes. ``--join waves`` (the default): in concurrent waves, as many nodes
   join a real network at once; a wave of min(``--wave``, nodes already in)
   newcomers starts its joins at one virtual instant and the next wave starts
   when all of them are done. ``--join sequential``: one after another, the
   network running until each join is done (virtual time, and with it every
   node's background traffic, then grows with N, so the join phase is
   quadratic: hours at N=10,000);
2. lets the network settle, puts ``--records`` signed "text" records from
   random nodes;
3. runs ``--lookups`` random ``get()``s of those records and ``--lookups``
   random ``find_node()``s of random targets, one at a time, and measures
   lookups per wall second, hops (``LookupResult.hops``), requests per lookup
   (``LookupResult.messages``) and datagrams delivered per lookup;
4. leaves the network idle for ``--idle-hours`` of virtual time and counts the
   datagrams delivered (hourly bucket refreshes and record republishing), per
   node and hour, and the ratio of virtual to wall time;
5. reports memory per node (RSS growth while building and joining, / N).

Machine baselines from :mod:`bench.common` are measured first, and the DHT
figures are also given as ratios against them.

Everything is seeded (``--seed``): two runs with the same arguments process
the same events. Wall times of course differ.

    PYTHONPATH=. .venv/bin/python bench/dht.py --quick
    PYTHONPATH=. .venv/bin/python bench/dht.py --sizes 1000 --join sequential
    PYTHONPATH=. .venv/bin/python bench/dht.py --sizes 1000 --profile /tmp/dht.prof

Progress (every 5 % of a phase, and at least once a minute) goes to stderr
with wall and CPU time, virtual time, datagrams, RSS and the load average.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `xcore` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    baselines, format_baselines, format_machine, human, log, machine_info, peak_rss_bytes,
    percentile, rss_bytes,
)
from xcore.crypto.identity import Identity  # noqa: E402
from xcore.dht.operation import Operation  # noqa: E402
from xcore.dht.protocol import DHTConfig, DHTNode, LookupResult, new_record  # noqa: E402
from xcore.dht.records import dht_key  # noqa: E402
from xcore.net.sim import SimNetwork  # noqa: E402

Address = tuple[str, int]


def node_address(i: int) -> Address:
    """One /24 per node, so the routing table's diversity caps never bite."""
    return (f"10.{i // 250}.{i % 250}.1", 4000)


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class Progress:
    """Prints ``label i/n`` on stderr every 5%, at least every ``every``
    wall seconds, and at the end."""

    def __init__(self, label: str, total: int, net: SimNetwork, every: float = 60.0) -> None:
        self.label, self.total, self.net = label, max(total, 1), net
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()
        self.v0 = net.now
        self.next_pct = 5
        self.every = every
        self.last = self.t0

    def update(self, done: int) -> None:
        pct = 100 * done / self.total
        now = time.perf_counter()
        if pct + 1e-9 < self.next_pct and done != self.total and now - self.last < self.every:
            return
        while self.next_pct <= pct:
            self.next_pct += 5
        self.last = now
        el = now - self.t0
        eta = el / done * (self.total - done) if done else 0.0
        load = "/".join(f"{x:.1f}" for x in loadavg())
        log(f"  {self.label} {done}/{self.total} ({pct:3.0f}%)  wall {el:7.1f}s  "
            f"cpu {time.process_time() - self.c0:7.1f}s  "
            f"eta(linear) {eta:7.1f}s  virtual +{self.net.now - self.v0:8.1f}s  "
            f"delivered {self.net.stats.delivered:,}  rss {rss_bytes() / 2**20:,.0f} MiB  "
            f"load {load}")


def _sum_counters(nodes: list[DHTNode]) -> Counter[str]:
    total: Counter[str] = Counter()
    for n in nodes:
        total.update(n.counters)
    return total


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Build, join, measure one network of ``n`` nodes. Returns the figures."""
    res: dict[str, Any] = {"nodes": n, "seed": args.seed}
    rng = random.Random(args.seed)
    id_rng = random.Random(rng.getrandbits(64))
    net = SimNetwork(random.Random(rng.getrandbits(64)))
    cfg = DHTConfig(difficulty=2)

    gc.collect()
    rss0 = rss_bytes()
    if args.tracemalloc:
        import tracemalloc
        tracemalloc.start()

    # -- build and join ------------------------------------------------------
    log(f"[dht N={n}] building and joining "
        f"({f'waves of up to {args.wave}' if args.join == 'waves' else 'sequential'})")
    nodes: list[DHTNode] = []
    addrs: list[Address] = []
    failures = 0
    waves = 0
    contacts_at_join: list[int] = []
    prog = Progress(f"N={n} join", n, net)
    t_join0 = time.perf_counter()
    c_join0 = time.process_time()
    v_join0 = net.now
    d_join0 = net.stats.delivered
    res["loadavg_start"] = loadavg()

    def new_node(i: int) -> tuple[Address, DHTNode]:
        ident = Identity.generate(cfg.difficulty, id_rng.randbytes)
        addr = node_address(i)
        node = DHTNode(ident, config=cfg, rng=random.Random(rng.getrandbits(64)), now=net.now)
        net.add(addr, node)
        nodes.append(node)
        addrs.append(addr)
        return addr, node

    def start_join(i: int, among: int) -> Operation[int]:
        """Node ``i`` joins through random nodes of the first ``among``."""
        picks = rng.sample(range(among), min(args.bootstrap, among))
        seeds: list[tuple[Address, bytes | None]] = [
            (addrs[j], nodes[j].identity.node_id) for j in picks]
        return net.call(addrs[i], partial(nodes[i].join, seeds))  # type: ignore[no-any-return]

    def joined(i: int, op: Operation[int]) -> None:
        nonlocal failures
        try:
            contacts_at_join.append(op.result())
        except Exception as exc:  # a failed join is a figure, not a crash
            failures += 1
            log(f"  join of node {i} failed: {exc!r}")

    if args.join == "sequential":
        for i in range(n):
            new_node(i)
            if i > 0:
                op = start_join(i, i)
                try:
                    net.wait(op)
                except Exception:
                    pass
                joined(i, op)
                if i == 1:  # node 0 had nobody to join through; it joins via node 1
                    op0 = net.call(addrs[0], partial(nodes[0].join,
                                                     [(addrs[1], nodes[1].identity.node_id)]))
                    net.wait(op0)
            prog.update(i + 1)
    else:
        # node 0, then node 1 through node 0 and node 0 through node 1; then
        # waves, each at most doubling the network, of at most --wave nodes
        for i in range(min(n, 2)):
            new_node(i)
        if n > 1:
            op = start_join(1, 1)
            net.wait(op)
            joined(1, op)
            net.wait(net.call(addrs[0], partial(nodes[0].join,
                                                [(addrs[1], nodes[1].identity.node_id)])))
        prog.update(len(nodes))
        while len(nodes) < n:
            among = len(nodes)
            size = min(args.wave, among, n - among)
            for i in range(among, among + size):
                new_node(i)
            ops = [(i, start_join(i, among)) for i in range(among, among + size)]
            net.wait_all([o for _i, o in ops], timeout=3600.0)
            for i, o in ops:
                if o.done:
                    joined(i, o)
                else:
                    failures += 1
                    log(f"  join of node {i} not done after an hour")
            waves += 1
            prog.update(len(nodes))
    join_wall = time.perf_counter() - t_join0
    res["join_mode"] = args.join
    res["join_wave_max"] = args.wave if args.join == "waves" else 1
    res["join_waves"] = waves
    res["join_wall_s"] = join_wall
    res["join_cpu_s"] = time.process_time() - c_join0
    res["join_virtual_s"] = net.now - v_join0
    res["join_datagrams"] = net.stats.delivered - d_join0
    res["join_sim_events"] = net.stats.events
    res["join_failures"] = failures
    res["contacts_at_join_mean"] = sum(contacts_at_join) / max(len(contacts_at_join), 1)
    res["loadavg_after_join"] = loadavg()

    net.run_for(args.settle)
    gc.collect()
    rss1 = rss_bytes()
    res["rss_total_MiB"] = rss1 / 2**20
    res["mem_per_node_bytes_rss"] = (rss1 - rss0) / n
    if args.tracemalloc:
        import tracemalloc
        cur, _peak = tracemalloc.get_traced_memory()
        res["mem_per_node_bytes_traced"] = cur / n
        tracemalloc.stop()
    res["routing_contacts_mean"] = sum(len(x.routing) for x in nodes) / n
    res["buckets_mean"] = sum(len(x.routing.buckets) for x in nodes) / n
    res["mac_keys_mean"] = sum(len(x.identity._mac_keys) for x in nodes) / n
    res["seen_entries_mean"] = sum(len(x._seen) for x in nodes) / n
    res["timers_mean"] = sum(len(x._timers) for x in nodes) / n
    res["sim_events_queued"] = len(net._events)

    # -- records -------------------------------------------------------------
    log(f"[dht N={n}] putting {args.records} records")
    records = []
    acks: list[int] = []
    for j in range(args.records):
        who = rng.randrange(n)
        rec = new_record(nodes[who].identity, "text", dht_key(f"bench-{args.seed}-{j}"),
                         rng.randbytes(100), net.now)
        op = net.call(addrs[who], partial(nodes[who].put, rec))
        try:
            acks.append(net.wait(op))
        except Exception as exc:
            log(f"  put {j} failed: {exc!r}")
            acks.append(0)
        records.append((who, rec))
    res["put_acks_mean"] = sum(acks) / max(len(acks), 1)
    net.run_for(args.settle)

    # -- lookups -------------------------------------------------------------
    ids = [x.identity.node_id for x in nodes]
    id_longs = [int.from_bytes(b, "big") for b in ids]

    def timed_lookups(kind: str) -> dict[str, Any]:
        hops: list[int] = []
        reqs: list[int] = []
        ok = 0
        failed = 0
        prog = Progress(f"N={n} {kind}", args.lookups, net)
        d0, e0, v0 = net.stats.delivered, net.stats.events, net.now
        busy = 0.0
        cpu = 0.0
        for q in range(args.lookups):
            who = rng.randrange(n)
            if kind == "get":
                signer, rec = records[rng.randrange(len(records))]
                target = rec.key
            else:
                target = rng.randbytes(20)
            t0 = time.perf_counter()
            c0 = time.process_time()
            start = nodes[who].get if kind == "get" else nodes[who].find_node
            op = net.call(addrs[who], partial(start, target))
            try:
                r: LookupResult = net.wait(op)
            except Exception:
                r = None  # type: ignore[assignment]
            busy += time.perf_counter() - t0
            cpu += time.process_time() - c0
            if r is None:
                failed += 1
            else:
                hops.append(r.hops)
                reqs.append(r.messages)
                if kind == "get":
                    ok += any(x.key == target and x.signer_pubkey == rec.signer_pubkey
                              for x in r.records)
                else:
                    t = int.from_bytes(target, "big")
                    best = min((v ^ t, i) for i, v in enumerate(id_longs) if i != who)[1]
                    ok += bool(r.contacts) and r.contacts[0].id == ids[best]
            prog.update(q + 1)
        m = args.lookups
        return {
            "count": m,
            "wall_s": busy,
            "cpu_s": cpu,
            "per_s": m / busy if busy else 0.0,
            "per_cpu_s": m / cpu if cpu else 0.0,
            "hops_p50": percentile(hops, 50),
            "hops_p90": percentile(hops, 90),
            "hops_max": max(hops) if hops else 0,
            "hops_hist": dict(sorted(Counter(hops).items())),
            "requests_per_lookup": sum(reqs) / max(len(reqs), 1),
            "datagrams_per_lookup": (net.stats.delivered - d0) / m,
            "sim_events_per_lookup": (net.stats.events - e0) / m,
            "virtual_s": net.now - v0,
            "success": ok / m,
            "failed": failed,
            "loadavg_after": loadavg(),
        }

    log(f"[dht N={n}] {args.lookups} get()s and {args.lookups} find_node()s")
    res["get"] = timed_lookups("get")
    res["find_node"] = timed_lookups("find_node")
    net.run_for(args.settle)

    # -- idle --------------------------------------------------------------------
    log(f"[dht N={n}] idle for {args.idle_hours} virtual hours")
    c0 = _sum_counters(nodes)
    d0, e0, b0 = net.stats.delivered, net.stats.events, net.stats.bytes
    v0 = net.now
    total = args.idle_hours * 3600.0
    steps = max(20, int(total // 60))  # a virtual minute each: progress during refresh bursts
    prog = Progress(f"N={n} idle", steps, net)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for s in range(steps):
        net.run(until=v0 + total * (s + 1) / steps)
        prog.update(s + 1)
    idle_wall = time.perf_counter() - t0
    idle_cpu = time.process_time() - cpu0
    c1 = _sum_counters(nodes)
    dd = net.stats.delivered - d0
    hours = (net.now - v0) / 3600.0
    res["idle"] = {
        "virtual_hours": hours,
        "wall_s": idle_wall,
        "cpu_s": idle_cpu,
        "datagrams": dd,
        "datagrams_per_node_hour": dd / n / hours,
        "bytes_per_node_hour": (net.stats.bytes - b0) / n / hours,
        "virtual_per_wall": (net.now - v0) / idle_wall,
        "virtual_per_cpu": (net.now - v0) / idle_cpu if idle_cpu else 0.0,
        "loadavg_after": loadavg(),
        "sim_events": net.stats.events - e0,
        "lookups_started": c1["lookups"] - c0["lookups"],
        "republished": c1["republished"] - c0["republished"],
        "timeouts": c1["timeouts"] - c0["timeouts"],
        "counters": {k: c1[k] - c0[k] for k in sorted(c1) if c1[k] != c0[k]},
    }
    res["peak_rss_MiB"] = peak_rss_bytes() / 2**20
    res["total_wall_s"] = time.perf_counter() - t_join0
    res["total_cpu_s"] = time.process_time() - c_join0
    return res


# -- reporting ---------------------------------------------------------------------

def format_result(r: dict[str, Any], base: dict[str, float] | None) -> str:
    n = r["nodes"]
    g, f, idle = r["get"], r["find_node"], r["idle"]
    L = []
    L.append(f"== DHT, N={n:,} nodes (seed {r['seed']}) ==")
    mode = r.get("join_mode", "sequential")
    if mode == "waves":
        mode = f"{r['join_waves']} waves of <= {r['join_wave_max']}"
    L.append(f"join ({mode})".ljust(23) + f" {r['join_wall_s']:.1f} s wall, "
             f"{r.get('join_cpu_s', 0.0):.1f} s cpu "
             f"({1000 * r['join_wall_s'] / n:.1f} ms/node), {r['join_virtual_s']:.0f} s virtual, "
             f"{r['join_datagrams'] / n:.0f} datagrams/node, failures {r['join_failures']}")
    L.append(f"routing table           {r['routing_contacts_mean']:.1f} contacts, "
             f"{r['buckets_mean']:.1f} buckets per node (mean)")
    L.append(f"put                     {r['put_acks_mean']:.1f} acks per record (mean)")
    for name, x in (("get()", g), ("find_node()", f)):
        L.append(f"{name:<23} {x['per_s']:.0f} lookups/s wall ({x.get('per_cpu_s', 0.0):.0f}/s cpu), "
                 f"hops p50 {x['hops_p50']:.0f} "
                 f"p90 {x['hops_p90']:.0f} max {x['hops_max']}, "
                 f"{x['requests_per_lookup']:.1f} requests/lookup, "
                 f"{x['datagrams_per_lookup']:.1f} datagrams/lookup (net-wide), "
                 f"success {100 * x['success']:.1f}%")
    L.append(f"idle                    {idle['datagrams_per_node_hour']:.0f} datagrams/node/hour "
             f"({idle['bytes_per_node_hour'] / 1024:.0f} KiB/node/hour) over "
             f"{idle['virtual_hours']:.1f} h; virtual/wall {idle['virtual_per_wall']:.1f}x "
             f"({idle['wall_s']:.1f} s wall, {idle.get('cpu_s', 0.0):.1f} s cpu); "
             f"{idle['lookups_started']} refresh/republish lookups, "
             f"{idle['republished']} republished records")
    mem = f"{r['mem_per_node_bytes_rss'] / 1024:.1f} KiB/node (RSS growth / N)"
    if "mem_per_node_bytes_traced" in r:
        mem += f", {r['mem_per_node_bytes_traced'] / 1024:.1f} KiB/node (tracemalloc)"
    L.append(f"memory                  {mem}; total RSS {r['rss_total_MiB']:.0f} MiB, "
             f"peak {r['peak_rss_MiB']:.0f} MiB")
    L.append(f"per-node state (mean)   mac keys {r['mac_keys_mean']:.0f}, replay cache "
             f"{r['seen_entries_mean']:.0f}, timer heap {r['timers_mean']:.0f}")
    L.append(f"total                   {r['total_wall_s']:.1f} s wall, "
             f"{r.get('total_cpu_s', 0.0):.1f} s cpu; load average (1/5/15 min) at start "
             f"{r.get('loadavg_start')}, after join {r.get('loadavg_after_join')}, after idle "
             f"{idle.get('loadavg_after')}")
    if base:
        L.append("ratios against this machine's baselines:")
        ver = base["ed25519_verify_per_s"]
        unp = base["msgpack_unpack_per_s"]
        macs = base["blake2b_mac_per_s"]
        for name, x in (("get()", g), ("find_node()", f)):
            if x["per_s"]:
                L.append(f"  one {name:<12} costs the wall time of {ver / x['per_s']:.0f} Ed25519 "
                         f"verifies or {unp / x['per_s']:.0f} msgpack unpacks")
        dg_wall = g["wall_s"] / max(g["datagrams_per_lookup"] * g["count"], 1)
        L.append(f"  per delivered datagram (during get()s): {1e6 * dg_wall:.0f} us wall = "
                 f"{dg_wall * ver:.1f} Ed25519 verifies = {dg_wall * unp:.1f} msgpack unpacks = "
                 f"{dg_wall * macs:.0f} MACs")
        join_per_node = r["join_wall_s"] / n
        L.append(f"  join: {join_per_node * ver:.0f} Ed25519 verifies' worth of wall time per node")
        idle_dg = idle["wall_s"] / max(idle["datagrams"], 1)
        L.append(f"  idle: {1e6 * idle_dg:.0f} us wall per delivered datagram "
                 f"({idle_dg * ver:.1f} verifies)")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000",
                    help="comma-separated network sizes (default 1000,10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lookups", type=int, default=500,
                    help="get()s, and as many find_node()s, per size (default 500)")
    ap.add_argument("--records", type=int, default=200, help="records put before the gets")
    ap.add_argument("--bootstrap", type=int, default=3,
                    help="random already-joined nodes each newcomer joins through")
    ap.add_argument("--join", choices=("waves", "sequential"), default="waves",
                    help="newcomers join in concurrent waves (default) or one at a time")
    ap.add_argument("--wave", type=int, default=100,
                    help="most nodes in one join wave (default 100; a wave also never "
                         "more than doubles the network)")
    ap.add_argument("--idle-hours", type=float, default=2.0)
    ap.add_argument("--settle", type=float, default=30.0,
                    help="virtual seconds run between phases")
    ap.add_argument("--quick", action="store_true",
                    help="small fast run: N=200, 100 lookups, 50 records, short baselines")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also measure memory with tracemalloc (much slower)")
    ap.add_argument("--profile", metavar="PATH",
                    help="run under cProfile, save stats to PATH, print the top 15 by tottime")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--in-process", action="store_true",
                    help="run all sizes in this process (memory figures then less clean)")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON")
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        if args.sizes == ap.get_default("sizes"):
            args.sizes = "200"
        args.lookups = min(args.lookups, 100)
        args.records = min(args.records, 50)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    if args.child_out:  # one size, spawned by the parent below
        r = _run_one(sizes[0], args)
        with open(args.child_out, "w", encoding="utf-8") as fh:
            json.dump(r, fh)
        return

    out: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "results": []}
    print(format_machine(out["machine"]), flush=True)
    base: dict[str, float] | None = None
    if not args.no_baselines:
        base = baselines(args.quick)
        out["baselines"] = base
        print(format_baselines(base), flush=True)
    print(flush=True)

    for n in sizes:
        if len(sizes) > 1 and not args.in_process and not args.profile:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
                path = tmp.name
            cmd = [sys.executable, os.path.abspath(__file__), "--sizes", str(n),
                   "--child-out", path]
            for flag in ("seed", "lookups", "records", "bootstrap", "idle_hours", "settle",
                         "join", "wave"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            if args.tracemalloc:
                cmd.append("--tracemalloc")
            rc = subprocess.call(cmd)
            if rc != 0:
                print(f"N={n}: child exited with {rc}", flush=True)
                continue
            with open(path, encoding="utf-8") as fh:
                r = json.load(fh)
            os.unlink(path)
        else:
            r = _run_one(n, args)
        out["results"].append(r)
        print(format_result(r, base), flush=True)
        print(flush=True)
        if args.json:  # after every size, so a long run leaves partial results
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(out, fh, indent=2)


def _run_one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    if not args.profile:
        return run_size(n, args)
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    r = prof.runcall(run_size, n, args)
    prof.dump_stats(args.profile)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
    print(s.getvalue(), flush=True)
    return r


if __name__ == "__main__":
    main()
