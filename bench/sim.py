"""Simulator benchmark: how fast the two simulators run on this machine.

    python bench/sim.py [--quick] [--nodes 20,50] [--hours 6] [--no-churn] [--no-model]
                        [--model-hosts 100000,1000000]

Protocol level (the real node code in virtual time): wall and CPU time (split
into start-up, upload and the run itself), virtual seconds per CPU second of
the run, CPU seconds per node per virtual day, asyncio callbacks per CPU
second (the simulator's events), datagrams and stream bytes carried, memory
per simulated node (growth of peak RSS over the run, divided by the nodes).
Run sizes in ascending order (or one per process): peak RSS only grows.
Model level (numpy): wall time for H hosts x Y years. Prints the machine's raw baselines first
(bench/common.py) so figures can be compared across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_protocol(nodes: int, hours: float, churn: bool = True) -> dict[str, float]:
    """One protocol-level run; CPU and wall time split into start-up (nodes
    created and joined one after another, then 2 virtual minutes of
    announcing), upload (the owner's two files) and the run itself (``hours``
    virtual hours of churn, maintenance, audits and repair), so the run's rate
    can be extrapolated to longer horizons without the one-off start-up."""
    from sims.protocol import ProtocolConfig, ProtocolSim
    doc: dict[str, object] = {
        "sim": {"nodes": nodes, "duration_days": hours / 24, "sample_hours": 1},
        "data": {"files": 2, "file_size_mib": 1, "redundancy": "4/8"},
        "repair": {"interval_minutes": 5, "grace_minutes": 30},
        "audit": {"interval_minutes": 60},
    }
    if churn:
        doc["churn"] = {"model": "exponential", "lifetime_mean": "30d", "session_mean": "12h",
                        "downtime_mean": "1h"}
    cfg = ProtocolConfig.from_dict(doc)
    marks: dict[str, tuple[float, float, float]] = {}

    class Timed(ProtocolSim):
        async def setup(self) -> None:
            marks["start"] = (time.perf_counter(), time.process_time(), self.loop.time())
            await super().setup()
            marks["joined"] = (time.perf_counter(), time.process_time(), self.loop.time())

        async def upload(self) -> None:
            await super().upload()
            marks["uploaded"] = (time.perf_counter(), time.process_time(), self.loop.time())

    work = Path(tempfile.mkdtemp(prefix="xcore-bench-sim-"))
    sim = Timed(cfg, 1, work)
    counted = {"n": 0}
    orig = sim.loop._run_once  # type: ignore[attr-defined]

    def run_once() -> None:
        counted["n"] += len(sim.loop._ready) + 1  # type: ignore[attr-defined]
        orig()
    sim.loop._run_once = run_once  # type: ignore[attr-defined]
    rss0 = rss_mib()
    t0 = time.perf_counter()
    c0 = time.process_time()
    asyncio.set_event_loop(sim.loop)
    try:
        summary = sim.loop.run_until_complete(sim.run())
        end = (time.perf_counter(), time.process_time(), sim.loop.time())
        rss_end = rss_mib()
        for t in asyncio.all_tasks(sim.loop):
            t.cancel()
        sim.loop.run_until_complete(asyncio.sleep(0))
    finally:
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        sim.loop.close()
        asyncio.set_event_loop(None)
        shutil.rmtree(work, ignore_errors=True)
    virtual = sim.loop.time() - sim.start
    j, u = marks["joined"], marks["uploaded"]
    run_virtual = end[2] - u[2]  # the churn run and the final fetch
    run_cpu = end[1] - u[1]
    return {"nodes": nodes, "virtual_hours": virtual / 3600, "wall_s": wall, "cpu_s": cpu,
            "setup_cpu_s": j[1] - c0, "upload_cpu_s": u[1] - j[1], "run_cpu_s": run_cpu,
            "run_virtual_per_cpu": run_virtual / run_cpu if run_cpu > 0 else 0.0,
            "cpu_s_per_node_virtual_day": run_cpu / nodes / (run_virtual / 86400),
            "virtual_per_wall": virtual / wall, "events_per_cpu_s": counted["n"] / cpu,
            "datagrams": sim.net.stats.datagrams, "stream_mib": sim.net.stats.stream_bytes / 2**20,
            "rss_growth_mib": rss_end - rss0, "kib_per_node": (rss_end - rss0) * 1024 / nodes,
            "files_ok": summary["files_ok"]}


def bench_model(hosts: int, years: float, segments: int) -> dict[str, float]:
    from sims.model import ModelConfig, run_model
    cfg = ModelConfig(hosts=hosts, years=years, segments=segments, step=3600.0)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    res = run_model(cfg)
    return {"hosts": hosts, "years": years, "segments": segments,
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0,
            "durability": float(res.durability), "repairs": int(res.repairs.sum())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nodes", default="20,50")
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--model-hosts", default="100000,1000000")
    ap.add_argument("--model-years", type=float, default=5.0)
    ap.add_argument("--model-segments", type=int, default=100_000)
    ap.add_argument("--no-churn", action="store_true", help="protocol runs without churn")
    ap.add_argument("--no-model", action="store_true", help="skip the model-level runs")
    args = ap.parse_args()
    try:
        from bench.common import baselines, format_machine, machine_info
        print(format_machine(machine_info()))
        for k, v in baselines(quick=args.quick).items():
            print(f"  {k}: {v:,.1f}")
    except Exception as exc:  # the baselines are context, not the benchmark
        print(f"(baselines unavailable: {exc})")
    nodes = [10] if args.quick else [int(x) for x in args.nodes.split(",")]
    hours = 2.0 if args.quick else args.hours
    print("\nprotocol level (real node code, virtual time)")
    for n in nodes:
        r = bench_protocol(n, hours, churn=not args.no_churn)
        print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in r.items()), flush=True)
    if args.no_model:
        return 0
    print("\nmodel level (numpy)")
    hosts = [10_000] if args.quick else [int(x) for x in args.model_hosts.split(",")]
    for h in hosts:
        r = bench_model(h, 1.0 if args.quick else args.model_years,
                        10_000 if args.quick else args.model_segments)
        print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in r.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
