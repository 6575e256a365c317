"""Data-path benchmark: `xcore put` and `xcore get` against a real local devnet.

Starts ``xcore devnet up --nodes N --difficulty 4`` (N node processes on
127.0.0.1), makes an owner keystore in a separate data dir (no node runs
there, so every command is a short-lived client seeded with all the nodes),
then for each size puts a random file and gets it back, each as its own
``python -m xcore`` process. For each run it reports:

* wall MB/s of the whole command (process start, DHT join, transfer, exit);
* the client's own MB/s (``mb_per_s`` in its ``--json`` output: transfer only);
* the client process's peak RSS (``ru_maxrss`` from ``os.wait4`` on it);
* the client MB/s as a fraction of the raw AES-256-CTR, SHA-256 and zfec
  (k=4, n=8) single-thread baselines measured at the start of the same run;
* at the end, the per-byte floor of the same put and get (``bench/floor.py``:
  the encryption, coding, hashing and share writes alone, with xcore's own
  functions, in CPU seconds) and the client MB/s as a fraction of the bound
  that floor sets on this machine's cores.

``--big`` adds a 1 GiB run, whose peak client RSS should stay <= 300 MB.
The devnet is always taken down and the temporary dirs removed.

    PYTHONPATH=. .venv/bin/python bench/datapath.py [--sizes 64,256] [--big] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    MiB, baselines, format_baselines, format_machine, log, machine_info, precompile,
)
from bench.floor import datapath_floor, floor_mb_per_s, format_floor  # noqa: E402
from xcore.shard.erasure import Redundancy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIFFICULTY = 4
RSS_TARGET = 300 * 10**6


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(XCORE_PASSPHRASE="pw", XCORE_ARGON2="fast", XCORE_DIFFICULTY=str(DIFFICULTY))
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run(args: list[str], timeout: float = 1800.0) -> tuple[str, float, int]:
    """Run ``python -m xcore ARGS``: (stdout, wall seconds, peak RSS bytes of that process)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "xcore", *args], cwd=ROOT, env=_env(),
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        end = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > end:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if p.returncode != 0:
        raise RuntimeError(f"xcore {' '.join(args)} -> {p.returncode}\n{stdout}\n{stderr}")
    return stdout, wall, ru.ru_maxrss * 1024


def random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def bench(sizes_mib: list[int], nodes: int, redundancy: str, base: dict[str, float]) -> list[dict[str, Any]]:
    d = Path(tempfile.mkdtemp(prefix="xc-", dir="/tmp"))
    scratch = Path(tempfile.mkdtemp(prefix="xc-b-", dir="/tmp"))
    rows: list[dict[str, Any]] = []
    try:
        log(f"devnet: {nodes} nodes in {d}")
        info = json.loads(run(["devnet", "up", "--nodes", str(nodes), "--dir", str(d),
                               "--difficulty", str(DIFFICULTY), "--json"], timeout=300)[0])
        boot: list[str] = []
        for n in info["nodes"]:
            boot += ["--bootstrap", f"{n['address']} {n['node_id']}"]
        owner = d / "owner"
        run(["keys", "new", "--data", str(owner), "--json"])
        for mib in sizes_mib:
            size = mib * MiB
            src, dst = scratch / f"r{mib}.bin", scratch / f"r{mib}.out"
            digest = random_file(src, size)
            log(f"put {mib} MiB ...")
            out, put_wall, put_rss = run(["put", "--data", str(owner), *boot, "--redundancy",
                                          redundancy, "--json", str(src)])
            put = json.loads(out)
            log(f"get {mib} MiB ...")
            out, get_wall, get_rss = run(["get", "--data", str(owner), *boot, "--json",
                                          "-o", str(dst), put["file_id"]])
            got = json.loads(out)
            if got["sha256"] != digest:
                raise RuntimeError(f"{mib} MiB: got back a different file")
            row = {"mib": mib, "size": size,
                   "put_wall_MBps": size / put_wall / 1e6, "put_client_MBps": float(put["mb_per_s"]),
                   "put_peak_rss": put_rss, "put_wall_s": put_wall,
                   "get_wall_MBps": size / get_wall / 1e6, "get_client_MBps": float(got["mb_per_s"]),
                   "get_peak_rss": get_rss, "get_wall_s": get_wall,
                   "get_hedged": int(got.get("hedged_downloads", 0))}
            rows.append(row)
            log(fmt_row(row, base) + f" (get: {row['get_hedged']} hedged downloads)")
            src.unlink()
            dst.unlink()
    finally:
        down = subprocess.run([sys.executable, "-m", "xcore", "devnet", "down", "--dir", str(d)],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        if down.returncode != 0:
            log(f"devnet down failed: {down.stderr.strip()}")
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


HEADER = ("| size | op | wall MB/s | client MB/s | peak RSS | /AES-CTR | /SHA-256 | /zfec |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|")


def fmt_row(r: dict[str, Any], base: dict[str, float]) -> str:
    lines = []
    for op in ("put", "get"):
        mbps = r[f"{op}_client_MBps"]
        lines.append(
            f"| {r['mib']} MiB | {op} | {r[f'{op}_wall_MBps']:.1f} | {mbps:.1f} | "
            f"{r[f'{op}_peak_rss'] / 1e6:.0f} MB | {mbps / base['aes256ctr_MBps']:.3f} | "
            f"{mbps / base['sha256_MBps']:.3f} | {mbps / base['zfec_k4n8_encode_MBps']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,256", help="file sizes in MiB (default 64,256)")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--redundancy", default="4/8")
    ap.add_argument("--quick", action="store_true", help="one 16 MiB file, quick baselines")
    ap.add_argument("--big", action="store_true", help="also a 1024 MiB file (peak RSS target <= 300 MB)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    sizes = [16] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.big and 1024 not in sizes:
        sizes.append(1024)

    precompile()  # the commands below start as an installed xcore does
    m = machine_info()
    print(format_machine(m))
    base = baselines(args.quick)
    print(format_baselines(base))
    print(f"\ndata path: devnet of {args.nodes} nodes, redundancy {args.redundancy}, "
          f"each command a short-lived client process (wall = whole process; client = its "
          f"own transfer MB/s; ratios use client MB/s)", flush=True)
    rows = bench(sizes, args.nodes, args.redundancy, base)
    print(HEADER)
    for r in rows:
        print(fmt_row(r, base))
    # the per-byte floor of the same work (bench/floor.py), measured after the
    # devnet is gone, so the figures above are also read as fractions of it
    cores = os.cpu_count() or 1
    floor = min((datapath_floor(min(sizes) * MiB, Redundancy.parse(args.redundancy))
                 for _ in range(1 if args.quick else 2)),
                key=lambda f: f["put_client_cpu_s"] + f["put_hosts_cpu_s"])
    limits = floor_mb_per_s(floor, cores)
    print("\n" + format_floor(floor, cores))
    for r in rows:
        print(f"{r['mib']} MiB: client MB/s as a fraction of the floor's bound on {cores} core(s): "
              f"put {r['put_client_MBps'] / limits['put']:.2f}, get {r['get_client_MBps'] / limits['get']:.2f}")
    status = 0
    for r in rows:
        if r["mib"] >= 1024:
            peak = max(r["put_peak_rss"], r["get_peak_rss"])
            verdict = "OK" if peak <= RSS_TARGET else "OVER TARGET"
            print(f"1 GiB peak client RSS: {peak / 1e6:.0f} MB (target <= {RSS_TARGET / 1e6:.0f} MB): {verdict}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": m, "baselines": base, "nodes": args.nodes,
                       "redundancy": args.redundancy, "runs": rows, "floor": floor,
                       "floor_mb_per_s": limits}, f, indent=2)
    return status


if __name__ == "__main__":
    sys.exit(main())
