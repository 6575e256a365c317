"""Tahoe-LAFS on a local grid: put and get the benchmark files, timed end to end.

What it does:

1. installs ``tahoe-lafs`` from PyPI into its own virtualenv
   (``/tmp/xcore-bench-tahoe-venv`` by default, outside the repository), unless
   it is already there; if the newest release does not install on this Python,
   older ones are tried, and if none does, :class:`TahoeUnavailable` carries
   pip's own last lines;
2. creates and starts a grid on 127.0.0.1: an introducer, ``storage`` storage
   nodes (``tahoe create-node``, ``--listen=tcp``, each on a port found free at
   run time) and a client node without storage (``tahoe create-client``) with
   ``shares.needed=3``, ``shares.happy=7``, ``shares.total=10``; each runs as
   ``tahoe run --allow-stdin-close NODEDIR`` in the background (stdin is
   /dev/null; without the flag ``tahoe run`` exits when stdin closes);
3. waits until the client's welcome page (``/?t=json``) lists every storage
   node as connected;
4. for each file: ``tahoe put FILE`` (an unlinked immutable CHK file; prints
   its read cap) and ``tahoe get CAP OUT``, each timed from spawning the CLI to
   its exit; the output's SHA-256 is checked. Peak RSS per operation of the
   client node, of every storage node and of the CLI process, and the CPU
   seconds each used during it (:mod:`bench.peers.procs`).

Everything is stopped and the grid directory removed on the way out, also on
failure.

Alone: ``python bench/peers/tahoe.py [--sizes 64,256]`` (any Python 3.9+;
needs only the standard library besides the Tahoe venv it makes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.peers.procs import (  # noqa: E402
    MiB, Procs, free_port, loadavg, make_random_file, run_timed, sha256_file,
)

TAHOE_VENV = Path("/tmp/xcore-bench-tahoe-venv")
# Tried in order until one installs on this Python (the first is the newest).
TAHOE_SPECS = ("tahoe-lafs", "tahoe-lafs<1.20", "tahoe-lafs<1.19")
NEEDED, HAPPY, TOTAL = 3, 7, 10


class TahoeUnavailable(RuntimeError):
    """Tahoe-LAFS could not be installed or started here (the message says why)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_tahoe(venv: Path = TAHOE_VENV, python: str | None = None) -> tuple[Path, str]:
    """The ``tahoe`` executable in ``venv`` (installed if missing) and its version."""
    exe = venv / "bin" / "tahoe"
    if not exe.exists():
        py = python or _base_python()
        log(f"[tahoe] installing Tahoe-LAFS from PyPI into {venv} (Python {py})")
        if not (venv / "bin" / "pip").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([py, "-m", "venv", str(venv)], check=True, timeout=300)
        tail = ""
        for spec in TAHOE_SPECS:
            r = subprocess.run([str(venv / "bin" / "pip"), "install", spec],
                               capture_output=True, text=True, timeout=1200)
            if r.returncode == 0 and exe.exists():
                break
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-25:])
            log(f"[tahoe] pip install {spec!r} failed; trying an older release")
        else:
            raise TahoeUnavailable(f"no Tahoe-LAFS release installs on "
                                   f"{sys.version.split()[0]}; pip said:\n{tail}")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    version = (r.stdout.strip().splitlines() or ["?"])[0]
    if r.returncode != 0:
        raise TahoeUnavailable(f"`tahoe --version` failed:\n{r.stderr[-2000:]}")
    return exe, version


def _base_python() -> str:
    """A Python to make the venv with: the interpreter under this one's venv, if any."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base


class TahoeGrid:
    """An introducer, ``storage`` storage nodes and a client node on 127.0.0.1."""

    def __init__(self, tahoe: Path, base: Path, procs: Procs, storage: int = 10) -> None:
        self.tahoe = tahoe
        self.base = base
        self.procs = procs
        self.storage = storage
        self.client_dir = base / "client"
        self.client_pid = 0
        self.storage_pids: list[int] = []
        self.webport = 0

    def _cli(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run([str(self.tahoe), *args], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise TahoeUnavailable(f"tahoe {' '.join(args[:2])} failed:\n{r.stdout}{r.stderr}")
        return r.stdout

    def _start(self, node_dir: Path) -> int:
        p = self.procs.spawn([str(self.tahoe), "run", "--allow-stdin-close", str(node_dir)],
                             log=node_dir.parent / f"{node_dir.name}.log")
        return p.pid

    def start(self, timeout: float = 240.0) -> None:
        """Create the nodes, start them, wait until the client sees every server."""
        intro = self.base / "introducer"
        port = free_port()
        self._cli("create-introducer", "--listen=tcp", f"--port=tcp:{port}:interface=127.0.0.1",
                  f"--location=tcp:127.0.0.1:{port}", str(intro))
        self._start(intro)
        furl_path = intro / "private" / "introducer.furl"
        deadline = time.monotonic() + timeout
        while not furl_path.exists():
            self._deadline(deadline, "the introducer did not write its FURL")
            time.sleep(0.2)
        furl = furl_path.read_text().strip()
        shares = [f"--shares-needed={NEEDED}", f"--shares-happy={HAPPY}",
                  f"--shares-total={TOTAL}"]
        names = [f"s{i:02d}" for i in range(1, self.storage + 1)]
        creates = []
        for name in names:
            port = free_port()
            creates.append(("create-node", f"--nickname={name}", f"--introducer={furl}",
                            "--listen=tcp", f"--port=tcp:{port}:interface=127.0.0.1",
                            f"--location=tcp:127.0.0.1:{port}", "--webport=none", *shares,
                            str(self.base / name)))
        self.webport = free_port()
        creates.append(("create-client", "--nickname=client", f"--introducer={furl}",
                        f"--webport=tcp:{self.webport}:interface=127.0.0.1", *shares,
                        str(self.client_dir)))
        # `tahoe create-*` costs seconds of CPU each (imports, keys): two at a time
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda a: self._cli(*a), creates))
        self.storage_pids = [self._start(self.base / n) for n in names]
        self.client_pid = self._start(self.client_dir)
        log(f"[tahoe] grid starting: introducer, {self.storage} storage nodes, client "
            f"(web API 127.0.0.1:{self.webport})")
        deadline = time.monotonic() + timeout
        while True:
            n = self.connected()
            if n >= self.storage:
                break
            dead = [p.args for p in self.procs.procs if p.poll() is not None]
            if dead:
                raise TahoeUnavailable(f"Tahoe node exited early: {dead[0]!r}")
            self._deadline(deadline, f"the client sees only {n} of {self.storage} servers")
            time.sleep(0.5)
        log(f"[tahoe] client connected to {self.storage} storage servers")

    @staticmethod
    def _deadline(deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise TahoeUnavailable(f"timed out: {what}")

    def connected(self) -> int:
        """Storage servers the client node reports as connected."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.webport}/?t=json",
                                        timeout=5) as resp:
                doc = json.load(resp)
        except (OSError, ValueError):
            return 0
        return sum(1 for s in doc.get("servers", [])
                   if str(s.get("connection_status", "")).lower().startswith("connected"))

    def put(self, path: Path, timeout: float) -> tuple[str, dict[str, Any]]:
        t = run_timed([str(self.tahoe), "-d", str(self.client_dir), "put", str(path)],
                      timeout=timeout, watch=[self.client_pid, *self.storage_pids]).check()
        cap = t.stdout.strip().splitlines()[-1].strip()
        if not cap.startswith("URI:"):
            raise TahoeUnavailable(f"tahoe put printed no cap: {t.stdout!r} {t.stderr[-500:]!r}")
        return cap, self._row(t)

    def get(self, cap: str, out: Path, timeout: float) -> dict[str, Any]:
        t = run_timed([str(self.tahoe), "-d", str(self.client_dir), "get", cap, str(out)],
                      timeout=timeout, watch=[self.client_pid, *self.storage_pids]).check()
        return self._row(t)

    def _row(self, t: Any) -> dict[str, Any]:
        nodes = [t.watched.get(p, 0) for p in self.storage_pids]
        client_cpu = t.watched_cpu.get(self.client_pid, 0.0) + t.cpu
        nodes_cpu = sum(t.watched_cpu.get(p, 0.0) for p in self.storage_pids)
        return {"wall_s": t.wall, "client_rss": t.watched.get(self.client_pid, 0),
                "cli_rss": t.maxrss, "node_rss_max": max(nodes, default=0),
                "node_rss_mean": sum(nodes) / max(len(nodes), 1),
                "client_cpu_s": client_cpu, "cli_cpu_s": t.cpu, "nodes_cpu_s": nodes_cpu,
                "cpu_s": client_cpu + nodes_cpu}


def run(files: list[tuple[int, Path, str]], work: Path, *, storage: int = 10,
        timeout: float = 900.0) -> dict[str, Any]:
    """Put and get each ``(size, path, sha256)`` on a fresh grid; the rows and the version."""
    exe, version = ensure_tahoe()
    log(f"[tahoe] {version} at {exe}")
    procs = Procs()
    base = Path(tempfile.mkdtemp(prefix="tahoe-grid-", dir=work))
    rows: list[dict[str, Any]] = []
    try:
        grid = TahoeGrid(exe, base, procs, storage)
        grid.start()
        for size, path, digest in files:
            label = f"Tahoe-LAFS {NEEDED}/{TOTAL}"
            load0 = loadavg()
            cap, row = grid.put(path, timeout)
            rows.append(dict(row, system=label, nodes=storage, op="put", size=size,
                             mb_per_s=size / row["wall_s"] / 1e6, load=load0))
            log(f"[tahoe] put {size // MiB} MiB: {size / row['wall_s'] / 1e6:.1f} MB/s "
                f"({row['wall_s']:.1f} s)")
            out = base / "out.bin"
            load0 = loadavg()
            row = grid.get(cap, out, timeout)
            ok = sha256_file(out) == digest
            out.unlink()
            if not ok:
                raise TahoeUnavailable(f"tahoe get returned different bytes for {path}")
            rows.append(dict(row, system=label, nodes=storage, op="get", size=size,
                             mb_per_s=size / row["wall_s"] / 1e6, load=load0, identical=ok))
            log(f"[tahoe] get {size // MiB} MiB: {size / row['wall_s'] / 1e6:.1f} MB/s "
                f"({row['wall_s']:.1f} s), identical")
    finally:
        procs.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    return {"version": version, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,256", help="file sizes in MiB (default 64,256)")
    ap.add_argument("--storage", type=int, default=10, help="storage nodes (default 10)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="xcore-bench-peers-"))
    try:
        files = []
        for s in (int(x) for x in args.sizes.split(",") if x.strip()):
            p = work / f"random-{s}MiB.bin"
            files.append((s * MiB, p, make_random_file(p, s * MiB)))
        res = run(files, work, storage=args.storage)
        print(json.dumps(res, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
