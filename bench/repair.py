"""Repair benchmark: what owner-less repair costs, against its lower bounds.

Two parts, both running the real node code:

1. **devnet** (real node processes on 127.0.0.1, ``xcore.devnet``): an owner
   node that offers no disk puts a file (``--size-mib``, 4/8, segments of 4 x
   2 MiB) and stops; then ``--kill`` hosts that hold shares of every segment
   are SIGKILLed at once, ``--rounds`` times. For each round: wall time from
   the kill until every segment is whole again on the hosts' disks (this
   includes the grace period, ``--grace``), each leader's own repair time
   (claim, fetch, regenerate, place), and bytes moved (the leaders'
   ``bytes_down`` + ``bytes_up``), per lost host and against two bounds:

   * *naive*: bytes lost x k, as if each lost share were rebuilt on its own
     from k downloaded shares (the bound named in issue #5);
   * *batch*: per damaged segment, k shares in and the m lost shares out
     ((k + m) x share size): a leader that regenerates all m lost shares from
     one set of k needs no more. xcore's leader is a holder, so it downloads
     k - 1 and can beat this bound by one share.

   Repair throughput (bytes moved per second of a leader's repair) is also
   given against the raw AES-256-CTR, SHA-256 and zfec figures of the same
   run.
2. **churn** (``sims/protocol.py``: the real node program over the in-memory
   network in virtual time): ``--churn-nodes`` nodes, two files at 4/8,
   exponential churn (sessions of ``--session`` hours, downtimes of
   ``--downtime`` minutes) at several mean host lifetimes (``--lifetimes``,
   hours): repair bytes per virtual day, against the bytes that left with
   departed hosts, repairs run, segments below threshold or lost at the end.
   Repair counters of hosts that depart are read as they leave, so traffic
   done by a leader that later dies is counted.

    PYTHONPATH=. .venv/bin/python bench/repair.py [--quick] [--json out.json]

Progress goes to stderr, results to stdout. Load average is printed next to
the figures: on a shared machine wall times are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench`, `sims` and `xcore` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import baselines, format_baselines, format_machine, human, log, machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
DIFFICULTY = 4
ENV = {"XCORE_PASSPHRASE": "bench", "XCORE_ARGON2": "fast", "XCORE_DIFFICULTY": str(DIFFICULTY)}


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# -- part 1: a devnet ------------------------------------------------------------------


def xcore(*args: str, timeout: float = 300.0) -> Any:
    r = subprocess.run([sys.executable, "-m", "xcore", *args, "--json"], cwd=ROOT, text=True,
                       env=dict(os.environ, **ENV), capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"xcore {' '.join(args)}: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def has_share(d: Path, h: bytes) -> bool:
    return (d / "shares" / h.hex()[:2] / h.hex()).is_file()


def share_bytes(dirs: list[Path], seg: Any) -> int:
    """The size of the segment's shares (all the same), from any disk holding one."""
    for d in dirs:
        for h in seg.shares:
            if has_share(d, h):
                return (d / "shares" / h.hex()[:2] / h.hex()).stat().st_size
    raise RuntimeError("no share of the segment on any disk")


def segments_on_disk(dirs: list[Path]) -> dict[bytes, Any]:
    from xcore.contracts.segments import decode_segment_record
    out: dict[bytes, Any] = {}
    for d in dirs:
        for p in (d / "segments").glob("*"):
            out.setdefault(bytes.fromhex(p.name), decode_segment_record(p.read_bytes(), time.time())[1])
    return out


def reports(dirs: list[Path]) -> list[dict[str, Any]]:
    from xcore.control import call

    async def one(d: Path) -> Any:
        try:
            return await call(d, "repair", {}, timeout=20)
        except Exception:
            return None

    async def run() -> list[Any]:
        return await asyncio.gather(*(one(d) for d in dirs))
    return [r for r in asyncio.run(run()) if r is not None]


def bench_devnet(nodes: int, size_mib: int, kill: int, rounds: int, grace: float,
                 seed: int) -> dict[str, Any]:
    from xcore.devnet import down, spawn, up, wait_joined
    from xcore.node import init_node
    rng = random.Random(seed)
    top = Path(tempfile.mkdtemp(prefix="xc-b-", dir="/tmp"))
    try:
        t0 = time.monotonic()
        info = up(top, nodes, difficulty=DIFFICULTY, repair_interval=1.0, repair_grace=grace,
                  audit_interval=3600.0, timeout=180)
        log(f"  devnet of {nodes} up in {time.monotonic() - t0:.1f} s (load {load()})")
        names = {n["name"]: n for n in info["nodes"]}
        dirs = {n: top / n for n in names}
        owner = top / "owner"
        init_node(owner, capacity=0, bootstrap=[info["seed"]], difficulty=DIFFICULTY)
        xcore("keys", "new", "--data", str(owner))
        proc = spawn(owner)
        wait_joined(owner, proc, time.monotonic() + 60)
        src = top / "file.bin"
        src.write_bytes(rng.randbytes(size_mib * MiB))
        put = xcore("put", "--data", str(owner), "--redundancy", "4/8", str(src))
        xcore("node", "stop", "--data", str(owner))
        proc.wait(timeout=30)
        log(f"  put {size_mib} MiB: {put['segments']} segments, {put['shares']} shares "
            f"in {put['seconds']} s; owner's node stopped")
        # the file's data segments (the metadata blobs' mirrored k = 1 segments
        # are repaired too, but are not what this measures)
        segs = [s for s in segments_on_disk(list(dirs.values())).values() if s.k > 1]
        seg_hex = {s.segment_id.hex() for s in segs}
        dead: set[str] = set()
        out_rounds = []
        for rnd in range(rounds):
            live = [n for n in names if n not in dead]
            where = {s.segment_id: {i: [n for n in live if has_share(dirs[n], h)]
                                    for i, h in enumerate(s.shares)} for s in segs}
            # hosts holding a share of every segment first: every segment is damaged
            count = {n: sum(1 for w in where.values() if any(n in hs for hs in w.values()))
                     for n in live}
            victims = sorted(live, key=lambda n: (-count[n], rng.random()))[:kill]
            share_size = {s.segment_id: share_bytes(list(dirs.values()), s) for s in segs}
            lost = {s.segment_id: [i for i, hs in where[s.segment_id].items()
                                   if hs and set(hs) <= set(victims)] for s in segs}
            bytes_lost = sum(len(lost[s.segment_id]) * share_size[s.segment_id] for s in segs)
            damaged = [s for s in segs if len(lost[s.segment_id]) > s.n - s.threshold]
            before = {n: {e["segment"] + str(e["started"]) for e in r["events"]}
                      for n, r in zip(live, reports([dirs[n] for n in live]))}
            load0 = load()
            t_kill = time.monotonic()
            for v in victims:
                os.kill(names[v]["pid"], signal.SIGKILL)
                dead.add(v)
            log(f"  round {rnd + 1}: killed {', '.join(victims)}: {bytes_lost / MiB:.1f} MiB lost, "
                f"{len(damaged)} of {len(segs)} segments below threshold")
            survivors = [n for n in names if n not in dead]
            whole_at: dict[bytes, float] = {}
            while time.monotonic() - t_kill < 300 and len(whole_at) < len(damaged):
                time.sleep(0.2)
                for s in damaged:
                    if s.segment_id not in whole_at and all(
                            any(has_share(dirs[n], h) for n in survivors) for h in s.shares):
                        whole_at[s.segment_id] = time.monotonic() - t_kill
                        log(f"    segment {s.segment_id.hex()[:12]} whole again after "
                            f"{whole_at[s.segment_id]:.1f} s")
            time.sleep(1.5)  # let the leaders log their events
            events = []
            for n, r in zip(survivors, reports([dirs[n] for n in survivors])):
                events += [e for e in r["events"] if e["segment"] in seg_hex
                           and e["segment"] + str(e["started"]) not in before.get(n, set())]
            ok = [e for e in events if e["ok"]]
            moved = sum(e["bytes_down"] + e["bytes_up"] for e in events)
            naive = bytes_lost * 4
            batch = sum((s.k + len(lost[s.segment_id])) * share_size[s.segment_id] for s in damaged)
            busy = sum(e["seconds"] for e in ok)
            out_rounds.append({
                "round": rnd + 1, "hosts_killed": len(victims), "segments_damaged": len(damaged),
                "bytes_lost": bytes_lost, "bytes_moved": moved,
                "bytes_down": sum(e["bytes_down"] for e in events),
                "bytes_up": sum(e["bytes_up"] for e in events),
                "repairs_ok": len(ok), "repairs_failed": len(events) - len(ok),
                "errors": [e["error"] for e in events if not e["ok"]],
                "bytes_moved_ok": sum(e["bytes_down"] + e["bytes_up"] for e in ok),
                "naive_bound": naive, "batch_bound": batch,
                "moved_over_naive": moved / naive if naive else 0.0,
                "moved_over_batch": moved / batch if batch else 0.0,
                "seconds_to_whole": round(max(whole_at.values()), 1) if whole_at else None,
                "segments_whole": len(whole_at),
                "leader_seconds": [e["seconds"] for e in ok],
                "repair_MBps": moved / busy / 1e6 if busy else 0.0,
                "per_lost_host_bytes": moved / len(victims),
                "per_lost_host_seconds": (max(whole_at.values()) / len(victims)) if whole_at else None,
                "grace": grace, "load_before": load0, "load_after": load()})
        return {"nodes": nodes, "size_mib": size_mib, "segments": len(segs), "rounds": out_rounds}
    finally:
        down(top)
        if not os.environ.get("XCORE_BENCH_KEEP"):
            shutil.rmtree(top, ignore_errors=True)


# -- part 2: churn in the protocol simulator --------------------------------------------


def bench_churn(nodes: int, hours: float, lifetime_h: float, session_h: float,
                downtime_m: float, seed: int) -> dict[str, Any]:
    from sims.protocol import ProtocolConfig, ProtocolSim, run_sim
    cfg = ProtocolConfig.from_dict({
        "sim": {"nodes": nodes, "duration_days": hours / 24, "sample_hours": 1},
        "data": {"files": 2, "file_size_mib": 2, "redundancy": "4/8"},
        "churn": {"model": "exponential", "lifetime_mean": f"{lifetime_h}h",
                  "session_mean": f"{session_h}h", "downtime_mean": f"{downtime_m}m"},
        "repair": {"interval_minutes": 2, "grace_minutes": 15},
        "audit": {"interval_minutes": 120},
    })
    tally = {"repair_bytes_gone": 0, "repairs_gone": 0, "bytes_departed": 0, "departures": 0,
             "restarts": 0}

    class Counted(ProtocolSim):
        def _kill(self, h: Any, permanent: bool) -> None:  # type: ignore[override]
            svc = h.svc
            if svc is not None and svc.repairer is not None and h.up:
                tally["repair_bytes_gone"] += svc.repairer.counters.get("repair_bytes", 0)
                tally["repairs_gone"] += svc.repairer.counters.get("repairs", 0)
            if permanent and h.up and svc is not None and svc.host is not None:
                tally["bytes_departed"] += svc.host.store.used
                tally["departures"] += 1
            elif h.up:
                tally["restarts"] += 1
            super()._kill(h, permanent)

    import sims.protocol as sp
    real = sp.ProtocolSim
    sp.ProtocolSim = Counted  # type: ignore[misc]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        sim, summary = run_sim(cfg, seed, Counted.run)
    finally:
        sp.ProtocolSim = real  # type: ignore[misc]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    final = summary.get("final", {})
    live_bytes = int(final.get("repair_bytes", 0))  # counters of the hosts up at the end
    repair_bytes = live_bytes + tally["repair_bytes_gone"]
    days = hours / 24
    return {"lifetime_h": lifetime_h, "hours": hours, "nodes": nodes,
            "repair_bytes": repair_bytes, "repair_MB_per_day": repair_bytes / 1e6 / days,
            "repairs": int(final.get("repairs", 0)) + tally["repairs_gone"],
            "bytes_departed": tally["bytes_departed"], "departures": tally["departures"],
            "downtimes": tally["restarts"],
            "repair_over_departed": repair_bytes / tally["bytes_departed"]
            if tally["bytes_departed"] else None,
            "segments_below_threshold": final.get("segments_below_threshold"),
            "segments_lost": final.get("segments_lost"), "files_ok": summary["files_ok"],
            "files": summary["files"], "wall_s": wall, "cpu_s": cpu, "load": load()}


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about 2 min)")
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--size-mib", type=int, default=16)
    ap.add_argument("--kill", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--grace", type=float, default=3.0)
    ap.add_argument("--churn-nodes", type=int, default=12)
    ap.add_argument("--hours", type=float, default=8.0, help="virtual hours per churn run")
    ap.add_argument("--lifetimes", default="12,24,72", help="mean host lifetimes, hours")
    ap.add_argument("--session", type=float, default=6.0, help="mean session, hours")
    ap.add_argument("--downtime", type=float, default=20.0, help="mean downtime, minutes")
    ap.add_argument("--no-churn", action="store_true")
    ap.add_argument("--no-devnet", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.quick:
        args.size_mib, args.hours, args.lifetimes = 8, 4.0, "12,48"
    m = machine_info()
    print(format_machine(m))
    print(f"load average at start: {load()}")
    b = baselines(quick=True)
    print(format_baselines(b))
    out: dict[str, Any] = {"machine": m, "baselines": b, "load_start": load()}
    if not args.no_devnet:
        log(f"devnet: {args.nodes} nodes, {args.size_mib} MiB at 4/8, kill {args.kill} x "
            f"{args.rounds}")
        d = bench_devnet(args.nodes, args.size_mib, args.kill, args.rounds, args.grace, args.seed)
        out["devnet"] = d
        print(f"\nrepair on a devnet of {d['nodes']} node processes, {d['size_mib']} MiB at 4/8 "
              f"({d['segments']} segments of 8 x 2 MiB), grace {args.grace} s, checks every 1 s:")
        for r in d["rounds"]:
            print(f"  round {r['round']}: {r['hosts_killed']} hosts killed, "
                  f"{r['segments_damaged']} segments below threshold, "
                  f"{r['bytes_lost'] / MiB:.1f} MiB lost (load {r['load_before']} -> {r['load_after']})")
            print(f"    whole again after {r['seconds_to_whole']} s "
                  f"({r['segments_whole']}/{r['segments_damaged']} segments); leaders' own repair "
                  f"times {r['leader_seconds']} s; {r['repairs_ok']} repairs ok, "
                  f"{r['repairs_failed']} failed {r['errors']}")
            print(f"    moved {r['bytes_moved'] / MiB:.1f} MiB ({r['bytes_down'] / MiB:.1f} down, "
                  f"{r['bytes_up'] / MiB:.1f} up) = {r['per_lost_host_bytes'] / MiB:.1f} MiB "
                  f"per lost host; by the repairs that succeeded: "
                  f"{r['bytes_moved_ok'] / MiB:.1f} MiB")
            print(f"    vs naive bound (bytes lost x k = {r['naive_bound'] / MiB:.1f} MiB): "
                  f"{r['moved_over_naive']:.2f}x; vs batch bound ((k + m) x share = "
                  f"{r['batch_bound'] / MiB:.1f} MiB): {r['moved_over_batch']:.2f}x")
            if r["repair_MBps"]:
                print(f"    repair throughput {human(r['repair_MBps'])} MB/s per leader = "
                      f"{r['repair_MBps'] / b['zfec_k4n8_encode_MBps']:.3f} x zfec encode, "
                      f"{r['repair_MBps'] / b['sha256_MBps']:.3f} x SHA-256, "
                      f"{r['repair_MBps'] / b['aes256ctr_MBps']:.3f} x AES-256-CTR")
    if not args.no_churn:
        rows = []
        for lt in [float(x) for x in args.lifetimes.split(",")]:
            log(f"churn: {args.churn_nodes} nodes x {args.hours} virtual h, lifetime {lt} h ...")
            r = bench_churn(args.churn_nodes, args.hours, lt, args.session, args.downtime, args.seed)
            log(f"  {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, load {r['load']}")
            rows.append(r)
        out["churn"] = rows
        print(f"\nrepair bandwidth under churn (protocol simulator, real node code; "
              f"{args.churn_nodes} nodes, 2 files of 2 MiB at 4/8, {args.hours} virtual h, "
              f"sessions {args.session} h, downtimes {args.downtime} min, grace 15 min):")
        print("  lifetime  departures  downtimes  MB departed  repair MB  MB/day  repair/departed"
              "  repairs  below thr  lost  files ok  wall s  CPU s  load")
        for r in rows:
            ratio = f"{r['repair_over_departed']:.2f}" if r["repair_over_departed"] else "-"
            print(f"  {r['lifetime_h']:>6.0f} h  {r['departures']:>10}  {r['downtimes']:>9}  "
                  f"{r['bytes_departed'] / 1e6:>11.1f}  {r['repair_bytes'] / 1e6:>9.1f}  "
                  f"{r['repair_MB_per_day']:>6.1f}  {ratio:>15}  {r['repairs']:>7}  "
                  f"{r['segments_below_threshold']!s:>9}  {r['segments_lost']!s:>4}  "
                  f"{r['files_ok']}/{r['files']:<6}  {r['wall_s']:>6.0f}  {r['cpu_s']:>5.0f}  "
                  f"{r['load']}")
    out["load_end"] = load()
    print(f"\nload average at end: {out['load_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
