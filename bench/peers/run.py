"""Benchmarks against peers: one command runs them all and prints the table.

    python bench/peers/run.py [--sizes 64,256] [--quick] [--repeat N] [--json PATH]
                              [--only tahoe,xcore,dht] [--loops-off] [--profile DIR]

1. Tahoe-LAFS (:mod:`bench.peers.tahoe`): installed from PyPI into its own venv
   under /tmp, a grid of an introducer, 10 storage nodes and a client node on
   127.0.0.1 at 3-of-10 (happy 7); ``tahoe put`` / ``tahoe get`` of random files.
2. xcore (:mod:`bench.peers.xcore_grid`): devnets on 127.0.0.1 of 10 nodes at
   4/8 and 3/10 (Tahoe's code, on the same number of hosts) and of 30 nodes at
   10/30 (n hosts for n shares); ``xcore put`` / ``xcore get`` of the same files.
   The nodes run their repair (every 60 s) and audit (300 s) loops as a devnet
   does; ``--loops-off`` adds the same runs with those loops every 24 h.
3. The DHT (:mod:`bench.peers.dht_vs_kademlia`): xcore's DHT against the stock
   ``kademlia`` package, 500 nodes of each in one process.

Every transfer is timed end to end, from spawning the client command to its
exit (for xcore that includes joining the DHT: the client is short-lived; its
own figure after joining is kept in the JSON). MB/s is 10**6 bytes per second.
Memory is the peak RSS per operation of the client process and of each node;
CPU is the user + system seconds of the client and all nodes during the
operation (:mod:`bench.peers.procs`). With ``--repeat N`` each transfer runs N
times (fresh files, fresh networks) and the best wall time is kept.

``--profile DIR`` adds a pass (not in the table) with the xcore client and
every node of a 10-node devnet under cProfile, 4/8, at the largest size, and
prints where the time goes. Runs with the project's venv; started with another
Python, this script re-executes itself under ``.venv/bin/python``. Everything
it starts is stopped and its temporary files removed, also on failure or
SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_PY = ROOT / ".venv" / "bin" / "python"

try:
    import xcore  # noqa: F401
except ImportError:  # started with a Python that lacks the project: use its venv
    if VENV_PY.exists() and Path(sys.prefix).resolve() != VENV_PY.parents[1].resolve():
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]])
    raise

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(ROOT))

from bench.peers import dht_vs_kademlia, tahoe, xcore_grid  # noqa: E402
from bench.peers.procs import MiB, loadavg, make_random_file  # noqa: E402

XCORE_CONFIGS = ((10, "4/8"), (10, "3/10"), (30, "10/30"))
REFERENCE = "xcore 4/8"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: processes stop, dirs go


def best_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (system, nodes, op, size): the best wall time of the repeats."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = (r["system"], r["nodes"], r["op"], r["size"])
        cur = best.get(key)
        if cur is None or r["wall_s"] < cur["wall_s"]:
            best[key] = dict(r, runs=(cur or {}).get("runs", 0) + 1)
        else:
            cur["runs"] = cur.get("runs", 1) + 1
    return list(best.values())


def _mib(b: float) -> str:
    return f"{b / MiB:.0f} MiB"


def format_table(rows: list[dict[str, Any]]) -> str:
    ref = {(r["op"], r["size"]): r for r in rows if r["system"] == REFERENCE}
    head = ("| system | nodes | operation | size | MB/s | CPU s (client + nodes) | MB per CPU s "
            "| client RSS | node RSS max (mean) | xcore 4/8 ÷ this, MB/s | load |")
    L = [head, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    order = {"put": 0, "get": 1}
    for r in sorted(rows, key=lambda r: (r["size"], order[r["op"]], not r["system"].startswith("Tahoe"),
                                         r["nodes"], r["system"])):
        x = ref.get((r["op"], r["size"]))
        ratio = f"{x['mb_per_s'] / r['mb_per_s']:.2f}" if x else "-"
        L.append(f"| {r['system']} | {r['nodes']} | {r['op']} | {_mib(r['size'])} | "
                 f"{r['mb_per_s']:.1f} | {r['cpu_s']:.1f} ({r['client_cpu_s']:.1f} + "
                 f"{r['nodes_cpu_s']:.1f}) | {r['size'] / 1e6 / max(r['cpu_s'], 1e-9):.1f} | "
                 f"{_mib(r['client_rss'])} | {_mib(r['node_rss_max'])} "
                 f"({_mib(r['node_rss_mean'])}) | {ratio} | {r['load']:.1f} |")
    return "\n".join(L)


def format_goal(rows: list[dict[str, Any]]) -> str:
    """Best xcore configuration against Tahoe-LAFS, per operation and size."""
    L = []
    tahoes = {(r["op"], r["size"]): r for r in rows if r["system"].startswith("Tahoe")}
    for (op, size), t in sorted(tahoes.items(), key=lambda kv: (kv[0][1], kv[0][0] != "put")):
        xs = [r for r in rows if r["system"].startswith("xcore") and r["op"] == op
              and r["size"] == size]
        if not xs:
            continue
        b = max(xs, key=lambda r: r["mb_per_s"])
        cpu_t = size / t["cpu_s"]
        cpu_b = size / b["cpu_s"]
        L.append(f"{op} {_mib(size)}: {b['system']} ({b['nodes']} nodes) {b['mb_per_s']:.1f} MB/s vs "
                 f"Tahoe {t['mb_per_s']:.1f} MB/s = {b['mb_per_s'] / t['mb_per_s']:.2f}x wall, "
                 f"{cpu_b / cpu_t:.2f}x per CPU second (goal: 8x)")
    return "\n".join(L)


def profile_pass(size_mib: int, work: Path, out_dir: Path) -> str:
    """xcore 4/8 on 10 nodes, client and nodes under cProfile; where the time goes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    p = work / f"profile-{size_mib}MiB.bin"
    digest = make_random_file(p, size_mib * MiB)
    xcore_grid.run([(size_mib * MiB, p, digest)], work, nodes=10, redundancy="4/8",
                   profile_dir=out_dir)
    p.unlink()
    return profile_summary(out_dir)


def profile_summary(out_dir: Path) -> str:
    """Top functions of the client's put and get and of all nodes together."""
    import pstats
    parts = [("client put", sorted(out_dir.glob("client-put-*.prof"))),
             ("client get", sorted(out_dir.glob("client-get-*.prof"))),
             ("all 10 nodes (whole lifetime: start, join, put, get)",
              sorted(out_dir.glob("node-*.prof")))]
    text = []
    for label, files in parts:
        if not files:
            text.append(f"== {label}: no profile written ==")
            continue
        st = pstats.Stats(*[str(f) for f in files])
        total = st.total_tt  # type: ignore[attr-defined]
        by_file: dict[str, float] = {}
        for (fname, _line, _fn), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            key = _short(fname)
            by_file[key] = by_file.get(key, 0.0) + tt
        text.append(f"== {label}: {total:.1f} s profiled ==")
        text.append("(`cli.py run_async` is uvloop's C event loop: its own time is mostly "
                    "waiting in epoll)")
        text.append("by file (tottime): " + ", ".join(
            f"{k} {100 * v / total:.0f}%" for k, v in sorted(by_file.items(), key=lambda kv: -kv[1])[:12]))
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:15]  # type: ignore[attr-defined]
        text.append("| tottime | cumtime | calls | function |")
        text.append("| ---: | ---: | ---: | --- |")
        for (fname, line, fn), (_cc, nc, tt, ct, _callers) in rows:
            text.append(f"| {tt:.2f} s | {ct:.2f} s | {nc:,} | `{_short(fname)}:{line}` `{fn}` |")
        text.append("")
    return "\n".join(text)


def _short(fname: str) -> str:
    import re
    if fname == "~":
        return "(built-in)"
    m = re.search(r"site-packages/(.*)|/lib/python3\.\d+/(.*)|/(xcore/.*)$", fname)
    if m:
        return next(g for g in m.groups() if g)
    return os.path.basename(fname)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,256", help="file sizes in MiB (default 64,256)")
    ap.add_argument("--quick", action="store_true",
                    help="16 MiB only, xcore 4/8 only, small DHT run (a few minutes)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per transfer; the best is kept")
    ap.add_argument("--only", default="tahoe,xcore,dht", help="parts to run (tahoe,xcore,dht)")
    ap.add_argument("--dht-nodes", type=int, default=500)
    ap.add_argument("--loops-off", action="store_true",
                    help="also run each xcore configuration with the repair and audit loops "
                         "off (every 24 h), to separate the data path from background checks")
    ap.add_argument("--profile", metavar="DIR", help="also profile xcore (see above) into DIR")
    ap.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    configs = list(XCORE_CONFIGS)
    if args.quick:
        sizes = [16] if args.sizes == ap.get_default("sizes") else sizes
        configs = [(10, "4/8")]

    from bench.common import format_machine, machine_info
    machine = machine_info()
    out: dict[str, Any] = {"machine": machine, "args": vars(args), "rows": [], "errors": [],
                           "load_start": loadavg()}
    print(format_machine(machine), flush=True)
    work = Path(tempfile.mkdtemp(prefix="xcore-bench-peers-"))
    t_start = time.monotonic()
    try:
        for rep in range(args.repeat):
            files = []
            for s in sizes:
                p = work / f"random-{s}MiB-{rep}.bin"
                files.append((s * MiB, p, make_random_file(p, s * MiB)))
            if "tahoe" in parts:
                try:
                    res = tahoe.run(files, work)
                    out["tahoe_version"] = res["version"]
                    out["rows"] += res["rows"]
                except tahoe.TahoeUnavailable as exc:
                    log(f"[tahoe] unavailable: {exc}")
                    out["errors"].append(f"Tahoe-LAFS: {exc}")
            if "xcore" in parts:
                for loops_off in (False, True) if args.loops_off else (False,):
                    for nodes, red in configs:
                        try:
                            out["rows"] += xcore_grid.run(files, work, nodes=nodes, redundancy=red,
                                                          loops_off=loops_off)["rows"]
                        except Exception as exc:  # one failed configuration is a figure too
                            log(f"[xcore {red}, {nodes} nodes] failed: {exc}")
                            out["errors"].append(f"xcore {red} on {nodes} nodes: {exc}")
            for _s, p, _d in files:
                p.unlink()
        if "dht" in parts:
            dargs = ["--nodes", str(args.dht_nodes)] + (["--quick"] if args.quick else [])
            dns = dht_vs_kademlia.build_args(dargs)
            out["dht"] = dht_vs_kademlia.run_all(dns)
        if args.profile:
            out["profile"] = profile_pass(max(sizes), work, Path(args.profile).resolve())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["load_end"] = loadavg()
    out["wall_s"] = time.monotonic() - t_start
    rows = best_rows(out["rows"])
    out["best"] = rows
    print()
    if rows:
        version = out.get("tahoe_version", "")
        print(f"Transfers (Tahoe-LAFS {version.split('/')[-1]} at 3-of-10 on 10 storage nodes; "
              f"best of {args.repeat}; load = 1-min load average at the start of the operation):")
        print(format_table(rows))
        goal = format_goal(rows)
        if goal:
            print()
            print(goal)
    if out.get("dht"):
        print()
        print("DHT, xcore against the stock kademlia package:")
        print(dht_vs_kademlia.format_table(out["dht"]))
    if out.get("profile"):
        print()
        print(out["profile"])
    for e in out["errors"]:
        print(f"error: {e}")
    print(f"\nload average {out['load_start']:.1f} at the start, {out['load_end']:.1f} at the end; "
          f"{out['wall_s']:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
