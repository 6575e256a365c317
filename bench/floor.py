"""The data path's per-byte floor on this machine, measured with the real code.

Whatever the transport, the DHT and the event loop cost, a put and a get at
k/n must do some work per byte, and this script does exactly that work, with
xcore's own functions, in one thread, and reports its CPU seconds:

put
  client  AES-256-CTR of the file (``CtrStream``); for each segment
          ``prepare_segment``: zfec encoding, SHA-256 of every share, the
          Merkle root of every share's 1 KiB audit blocks;
  hosts   for each share what ``HostService`` does when it arrives:
          ``ShareStore.put`` (SHA-256 check, write around the page cache,
          fsync, rename) and the
          contract's Merkle root check (``share_merkle_root``).
get
  hosts   ``ShareStore.get`` of k shares per segment (read, SHA-256 check);
  client  SHA-256 of each share, ``segment_pieces``, AES-256-CTR, writing the
          output (``DirectWriter``, as ``xcore get`` does) and its SHA-256
          (the ``sha256`` of ``xcore get --json``).

Not counted: moving bytes over sockets, framing, the DHT (host records,
``loc`` records, lookups), process start-up and the event loop. So these are
lower bounds: a put or get on ``cores`` cores cannot beat
``size / (CPU seconds / cores)``, even with perfect parallelism. With hosts on
other machines only the client's part counts ("client only").

Shares are written to a temporary share store in ``--dir`` (default: the
system temp dir, where the benchmarks' devnets live), so the write costs
are those of that filesystem and of this machine's page cache.

    PYTHONPATH=. .venv/bin/python bench/floor.py [--size 64] [--redundancy 4/8] [--cores 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xcore.client.files import prepare_segment  # noqa: E402
from xcore.contracts.contract import share_merkle_root  # noqa: E402
from xcore.crypto.stream import CtrStream  # noqa: E402
from xcore.directio import DirectWriter  # noqa: E402
from xcore.shard.erasure import Redundancy, segment_pieces, segment_size  # noqa: E402
from xcore.shard.store import ShareStore  # noqa: E402

MiB = 1 << 20


class _Clock:
    """CPU seconds (this process, kernel time included) spent per named part."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self._t = time.process_time()

    def lap(self, part: str) -> None:
        now = time.process_time()
        self.cpu[part] = self.cpu.get(part, 0.0) + now - self._t
        self._t = now


def datapath_floor(size: int, red: Redundancy, workdir: Path | None = None) -> dict[str, Any]:
    """CPU seconds of the per-byte work of putting and getting ``size`` bytes at ``red``."""
    base = Path(tempfile.mkdtemp(prefix="xcore-floor-", dir=workdir))
    try:
        return _measure(size, red, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _measure(size: int, red: Redundancy, base: Path) -> dict[str, Any]:
    seg_len = segment_size(red)
    plain = random.Random(1).randbytes(seg_len)  # one segment of plaintext, reused
    key, nonce = b"k" * 32, b"n" * 8
    store = ShareStore(base / "shares", capacity=4 * size * red.n // red.k + (64 << 20))
    segments: list[tuple[int, list[bytes]]] = []  # (length, primary share hashes)
    clock = _Clock()
    wall0 = time.perf_counter()
    ctr = CtrStream(key, nonce)
    left = size
    while left > 0:
        n = min(seg_len, left)
        left -= n
        clock.lap("idle")
        ct = ctr.update(plain[:n])
        shares, hashes, roots = prepare_segment(ct, red)
        clock.lap("put_client")
        for h, sh, root in zip(hashes, shares, roots):
            if store.put(h, sh) and share_merkle_root(sh) != root:
                raise AssertionError("Merkle root mismatch")
        clock.lap("put_hosts")
        segments.append((n, hashes[:red.k]))
        del ct, shares
    put_wall = time.perf_counter() - wall0

    out_path = base / "out"
    wall0 = time.perf_counter()
    clock.lap("idle")
    ctr = CtrStream(key, nonce)
    digest = hashlib.sha256()
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    out = DirectWriter(fd)  # as xcore get writes its output
    try:
        for n, hashes in segments:
            got = {i: store.get(h) for i, h in enumerate(hashes)}
            clock.lap("get_hosts")
            for i, h in enumerate(hashes):
                if hashlib.sha256(got[i]).digest() != h:
                    raise AssertionError("share hash mismatch")
            for piece in segment_pieces(got, red, n):  # as xcore get streams a segment
                plain_out = ctr.update(piece)
                out.write(plain_out)
                digest.update(plain_out)
            clock.lap("get_client")
        out.finish()
        os.fsync(fd)
        clock.lap("get_client")
    finally:
        out.close()
        os.close(fd)
    get_wall = time.perf_counter() - wall0
    cpu = clock.cpu
    return {"size": size, "redundancy": str(red),
            "put_client_cpu_s": cpu.get("put_client", 0.0),
            "put_hosts_cpu_s": cpu.get("put_hosts", 0.0),
            "get_hosts_cpu_s": cpu.get("get_hosts", 0.0),
            "get_client_cpu_s": cpu.get("get_client", 0.0),
            "put_wall_s": put_wall, "get_wall_s": get_wall}


def floor_mb_per_s(f: dict[str, Any], cores: int) -> dict[str, float]:
    """The upper bounds on MB/s the floor ``f`` allows on ``cores`` cores."""
    mb = f["size"] / 1e6

    def rate(cpu: float, n: int) -> float:
        return mb / (cpu / n) if cpu > 0 else float("inf")
    put = f["put_client_cpu_s"] + f["put_hosts_cpu_s"]
    get = f["get_client_cpu_s"] + f["get_hosts_cpu_s"]
    return {"put": rate(put, cores), "get": rate(get, cores),
            "put_client_only": rate(f["put_client_cpu_s"], cores),
            "get_client_only": rate(f["get_client_cpu_s"], cores),
            "put_one_core": rate(put, 1), "get_one_core": rate(get, 1)}


def format_floor(f: dict[str, Any], cores: int) -> str:
    r = floor_mb_per_s(f, cores)
    mib = f["size"] / MiB
    return "\n".join([
        f"Per-byte floor of the data path ({mib:g} MiB at {f['redundancy']}, real xcore functions, "
        f"one thread, CPU seconds incl. kernel):",
        f"  put: client {f['put_client_cpu_s']:.2f} s (AES-CTR, zfec, SHA-256, Merkle roots) + "
        f"hosts {f['put_hosts_cpu_s']:.2f} s (SHA-256 check, write+fsync, Merkle check)",
        f"  get: hosts {f['get_hosts_cpu_s']:.2f} s (read, SHA-256 check) + client "
        f"{f['get_client_cpu_s']:.2f} s (SHA-256, decode, AES-CTR, write, output SHA-256)",
        f"  upper bound on {cores} core(s), hosts and client sharing them: put {r['put']:.0f} MB/s, "
        f"get {r['get']:.0f} MB/s",
        f"  upper bound with hosts on other machines (client only, {cores} core(s)): "
        f"put {r['put_client_only']:.0f} MB/s, get {r['get_client_only']:.0f} MB/s",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="MiB (default 64)")
    ap.add_argument("--redundancy", default="4/8")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=2, help="runs; the cheapest is kept")
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary share store goes")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    red = Redundancy.parse(args.redundancy)
    runs = [datapath_floor(args.size * MiB, red, args.dir) for _ in range(max(1, args.repeat))]
    best = min(runs, key=lambda f: f["put_client_cpu_s"] + f["put_hosts_cpu_s"]
               + f["get_client_cpu_s"] + f["get_hosts_cpu_s"])
    print(format_floor(best, args.cores))
    if args.json:
        Path(args.json).write_text(json.dumps({"floor": best, "runs": runs,
                                               "mb_per_s": floor_mb_per_s(best, args.cores)},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
