"""xcore on a local devnet: put and get the benchmark files, timed end to end.

What it does, for each ``(nodes, k/n)`` configuration:

1. starts a devnet of ``nodes`` node processes on 127.0.0.1 with
   :func:`xcore.devnet.up` (``difficulty`` 4, 4 GiB offered each, ports chosen
   by the kernel); the node processes are spawned through this module so that
   they are tracked (and stopped on failure) and, with ``profile_dir``, run
   under ``bench/peers/cpuprof.py DIR/<node>.prof`` (cProfile in CPU time,
   every thread). xcore is byte-compiled first, as an installed package is
   (``bench.common.precompile``: this box sets ``PYTHONDONTWRITEBYTECODE``).
   With ``loops_off`` the repair and audit loops run every 24 h instead of the
   devnet's 60 s and 300 s: the data path alone, without the background
   checks that new uploads set off;
2. makes an owner (``xcore keys new``, fast Argon2 parameters);
3. for each file: ``xcore put --redundancy k/n --json`` and ``xcore get
   --json``, each a short-lived client process (it joins the DHT, finds the
   hosts, moves the shares), timed from spawn to exit; the output's SHA-256
   is checked. Peak RSS and CPU seconds of the client process and of every
   node during the operation (:mod:`bench.peers.procs`). The client's own
   figure (``seconds`` in its JSON: after joining) is kept too.

The devnet is stopped and its directory removed on the way out, also on
failure. Needs the project's venv (``.venv/bin/python``).

Alone: ``.venv/bin/python bench/peers/xcore_grid.py [--sizes 64,256] [--nodes 10]
[--redundancy 4/8] [--profile DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.peers.procs import (  # noqa: E402
    MiB, Procs, loadavg, make_random_file, run_timed, sha256_file,
)

ROOT = Path(__file__).resolve().parents[2]
QUIET = 24 * 3600.0  # repair and audit intervals with the background loops "off"
CPUPROF = Path(__file__).resolve().with_name("cpuprof.py")  # CPU time, every thread
CLIENT_ENV = {"XCORE_PASSPHRASE": "bench", "XCORE_ARGON2": "fast", "XCORE_DIFFICULTY": "4"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class XcoreNet:
    """A devnet whose node processes this benchmark owns."""

    def __init__(self, base: Path, nodes: int, procs: Procs, *, difficulty: int = 4,
                 capacity: int = 4 << 30, profile_dir: Path | None = None,
                 loops_off: bool = False) -> None:
        self.base = base
        self.nodes = nodes
        self.procs = procs
        self.difficulty = difficulty
        self.capacity = capacity
        self.profile_dir = profile_dir
        self.loops_off = loops_off
        self.owner = base / "owner"
        self.node_pids: list[int] = []
        self.seed = ""
        self.env = dict(os.environ, **CLIENT_ENV)
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")

    def _node_cmd(self, data_dir: Path) -> list[str]:
        cmd = [sys.executable]
        if self.profile_dir is not None:
            cmd += [str(CPUPROF), str(self.profile_dir / f"node-{data_dir.name}.prof")]
        return cmd + ["-m", "xcore", "node", "start", "--data", str(data_dir)]

    def up(self, timeout: float = 240.0) -> None:
        import xcore.devnet as devnet
        from bench.common import precompile
        precompile()  # node and CLI processes start as an installed xcore does

        def spawn(data_dir: Path) -> subprocess.Popen[bytes]:
            return self.procs.spawn(self._node_cmd(Path(data_dir)),
                                    log=Path(data_dir) / "node.log", env=self.env, cwd=ROOT)

        saved = devnet.spawn
        devnet.spawn = spawn  # type: ignore[assignment]  # track (and maybe profile) the nodes
        try:
            info = devnet.up(self.base / "net", self.nodes, difficulty=self.difficulty,
                             capacity=self.capacity, timeout=timeout,
                             repair_interval=QUIET if self.loops_off else 60.0,
                             audit_interval=QUIET if self.loops_off else 300.0)
        finally:
            devnet.spawn = saved  # type: ignore[assignment]
        self.node_pids = [int(n["pid"]) for n in info["nodes"]]
        self.seed = str(info["seed"])
        run_timed(self._xcore("keys", "new", "--data", str(self.owner), "--json"),
                  env=self.env, cwd=ROOT, timeout=120).check()

    def down(self) -> None:
        self.procs.stop_all(grace=20.0)  # SIGTERM: nodes stop cleanly (and write profiles)

    def _xcore(self, *args: str, profile: Path | None = None) -> list[str]:
        cmd = [sys.executable]
        if profile is not None:
            cmd += [str(CPUPROF), str(profile)]
        return cmd + ["-m", "xcore", *args]

    def put(self, path: Path, redundancy: str, timeout: float,
            profile: Path | None = None) -> tuple[str, dict[str, Any]]:
        t = run_timed(self._xcore("put", "--data", str(self.owner), "--bootstrap", self.seed,
                                  "--redundancy", redundancy, "--json", str(path),
                                  profile=profile),
                      env=self.env, cwd=ROOT, timeout=timeout, watch=self.node_pids).check()
        res = json.loads(t.stdout)
        return str(res["file_id"]), self._row(t, res)

    def get(self, file_id: str, out: Path, timeout: float,
            profile: Path | None = None) -> dict[str, Any]:
        t = run_timed(self._xcore("get", "--data", str(self.owner), "--bootstrap", self.seed,
                                  "--json", file_id, "-o", str(out), profile=profile),
                      env=self.env, cwd=ROOT, timeout=timeout, watch=self.node_pids).check()
        return self._row(t, json.loads(t.stdout))

    def _row(self, t: Any, res: dict[str, Any]) -> dict[str, Any]:
        nodes = [t.watched.get(p, 0) for p in self.node_pids]
        nodes_cpu = sum(t.watched_cpu.get(p, 0.0) for p in self.node_pids)
        return {"wall_s": t.wall, "client_rss": t.maxrss,
                "node_rss_max": max(nodes, default=0),
                "node_rss_mean": sum(nodes) / max(len(nodes), 1),
                "client_cpu_s": t.cpu, "nodes_cpu_s": nodes_cpu, "cpu_s": t.cpu + nodes_cpu,
                "inner_s": res.get("seconds"), "inner_mb_per_s": res.get("mb_per_s")}


def run(files: list[tuple[int, Path, str]], work: Path, *, nodes: int, redundancy: str,
        timeout: float = 900.0, profile_dir: Path | None = None,
        loops_off: bool = False) -> dict[str, Any]:
    """Put and get each ``(size, path, sha256)`` on a fresh devnet; the rows."""
    procs = Procs()
    base = Path(tempfile.mkdtemp(prefix=f"xcore-net{nodes}-", dir=work))
    label = f"xcore {redundancy}" + (" (loops off)" if loops_off else "")
    rows: list[dict[str, Any]] = []
    try:
        net = XcoreNet(base, nodes, procs, profile_dir=profile_dir, loops_off=loops_off)
        log(f"[xcore] devnet of {nodes} nodes starting")
        net.up()
        log(f"[xcore] devnet of {nodes} nodes up; seed {net.seed}")
        for size, path, digest in files:
            mib = size // MiB
            prof = (lambda op: profile_dir / f"client-{op}-{mib}MiB.prof") if profile_dir else (
                lambda op: None)
            load0 = loadavg()
            file_id, row = net.put(path, redundancy, timeout, prof("put"))
            rows.append(dict(row, system=label, nodes=nodes, op="put", size=size,
                             mb_per_s=size / row["wall_s"] / 1e6, load=load0))
            log(f"[{label}, {nodes} nodes] put {mib} MiB: "
                f"{size / row['wall_s'] / 1e6:.1f} MB/s ({row['wall_s']:.1f} s; "
                f"{row['inner_mb_per_s']} MB/s after joining)")
            out = base / "out.bin"
            load0 = loadavg()
            row = net.get(file_id, out, timeout, prof("get"))
            ok = sha256_file(out) == digest
            out.unlink()
            if not ok:
                raise RuntimeError(f"xcore get returned different bytes for {path}")
            rows.append(dict(row, system=label, nodes=nodes, op="get", size=size,
                             mb_per_s=size / row["wall_s"] / 1e6, load=load0, identical=ok))
            log(f"[{label}, {nodes} nodes] get {mib} MiB: "
                f"{size / row['wall_s'] / 1e6:.1f} MB/s ({row['wall_s']:.1f} s; "
                f"{row['inner_mb_per_s']} MB/s after joining), identical")
    finally:
        procs.stop_all(grace=20.0)
        shutil.rmtree(base, ignore_errors=True)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,256", help="file sizes in MiB (default 64,256)")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--redundancy", default="4/8")
    ap.add_argument("--profile", metavar="DIR", help="cProfile the client and every node into DIR")
    ap.add_argument("--loops-off", action="store_true",
                    help="repair and audit loops every 24 h instead of the devnet's 60 s / 300 s")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="xcore-bench-peers-"))
    prof = Path(args.profile).resolve() if args.profile else None
    if prof:
        prof.mkdir(parents=True, exist_ok=True)
    try:
        files = []
        for s in (int(x) for x in args.sizes.split(",") if x.strip()):
            p = work / f"random-{s}MiB.bin"
            files.append((s * MiB, p, make_random_file(p, s * MiB)))
        res = run(files, work, nodes=args.nodes, redundancy=args.redundancy, profile_dir=prof,
                  loops_off=args.loops_off)
        print(json.dumps(res, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
