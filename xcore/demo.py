"""The README's first command: the whole story on one machine.

1. 12 node processes start on 127.0.0.1 (a devnet);
2. an owner with only a mnemonic uploads a file of a few tens of MiB at 4/8
   from a short-lived client (the owner's machine is not a node);
3. 4 hosts holding shares are killed with SIGKILL;
4. the surviving hosts notice, wait out the grace period, elect a leader per
   damaged segment and repair it onto new hosts, with no owner online;
5. a fresh client that has nothing but the mnemonic fetches the file back,
   and its SHA-256 is compared with the original.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from xcore.control import call
from xcore.devnet import down, up
from xcore.errors import XcoreError
from xcore.node import DEFAULT_DIFFICULTY

MiB = 1 << 20


def say(msg: str) -> None:
    print(msg, flush=True)


def make_file(path: Path, size: int, seed: int) -> str:
    rng = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 4 * MiB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


async def as_client(data: Path, seeds: list[str], fn: Any) -> Any:
    """Run ``fn(client)`` as a short-lived client from ``data`` (keys only),
    bootstrapping from the devnet's seed list (some of which may be dead)."""
    from xcore.client.files import Client
    from xcore.client.keys import load_owner_keys
    from xcore.node import CONFIG_NAME, NodeService, init_node
    if not (data / CONFIG_NAME).exists():
        init_node(data, capacity=0, bootstrap=seeds, difficulty=DEFAULT_DIFFICULTY)
    keys = load_owner_keys(data, os.environ["XCORE_PASSPHRASE"])
    async with NodeService(data, ephemeral=True) as svc:
        await svc.join()
        client = Client(svc, keys)
        try:
            return await fn(client)
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xcore.demo")
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--size-mib", type=int, default=32)
    ap.add_argument("--kill", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="leave the devnet running")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    os.environ.setdefault("XCORE_PASSPHRASE", "demo passphrase")
    os.environ.setdefault("XCORE_ARGON2", "fast")  # demo only: cheap keystore sealing
    directory = args.dir or Path(tempfile.mkdtemp(prefix="xcore-demo-", dir="/tmp"))
    t0 = time.monotonic()
    say(f"== 1. starting {args.nodes} nodes in {directory}")
    info = up(directory, args.nodes, difficulty=DEFAULT_DIFFICULTY, timeout=120,
              repair_interval=2.0, repair_grace=6.0, progress=lambda m: say("   " + m))
    nodes = {n["node_id"]: n for n in info["nodes"]}
    try:
        return asyncio.run(_story(args, directory, info, nodes, t0))
    except XcoreError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        if not args.keep:
            down(directory)
            if args.dir is None:
                shutil.rmtree(directory, ignore_errors=True)


async def _story(args: Any, directory: Path, info: dict[str, Any], nodes: dict[str, Any],
                 t0: float) -> int:
    import secrets
    from xcore.client.keys import argon2_params_from_env, create_keystore, import_keystore
    from xcore.contracts.segments import segment_id
    from xcore.bootstrap import format_seed, parse_address
    seed = [format_seed(parse_address(n["address"]), bytes.fromhex(n["node_id"]))
            for n in info["nodes"]]
    owner_dir, fresh_dir = directory / "owner", directory / "fresh-client"
    words = create_keystore(owner_dir, os.environ["XCORE_PASSPHRASE"], token_bytes=secrets.token_bytes,
                            params=argon2_params_from_env())
    say(f"== 2. owner keys created (mnemonic: {' '.join(words.split()[:3])} ...)")
    src = directory / "original.bin"
    want = make_file(src, args.size_mib * MiB, args.seed)
    say(f"   file of {args.size_mib} MiB, sha256 {want[:16]}...")

    async def do_put(client: Any) -> Any:
        from xcore.shard.erasure import Redundancy
        res = await client.put(src, Redundancy(4, 8))
        entry = await client.find_entry(bytes.fromhex(res["file_id"]))
        return res, await client.manifest(entry)
    res, manifest = await as_client(owner_dir, seed, do_put)
    say(f"   put {res['size']} bytes at 4/8 in {res['seconds']} s: {res['mb_per_s']} MB/s, "
        f"{res['segments']} segments, {res['shares']} shares, file id {res['file_id']}")

    per_host: dict[str, int] = {}
    for seg in manifest.segments:
        for s in seg.shares:
            per_host[s.host_id.hex()] = per_host.get(s.host_id.hex(), 0) + 1
    victims = sorted(per_host, key=lambda h: (-per_host[h], h))[: args.kill]
    for v in victims:
        os.kill(nodes[v]["pid"], signal.SIGKILL)
    say(f"== 3. killed {len(victims)} hosts with SIGKILL: " + ", ".join(
        f"{nodes[v]['name']} ({per_host[v]} shares)" for v in victims))

    seg_ids = {segment_id([s.hash for s in seg.shares]).hex(): seg for seg in manifest.segments}
    damaged = {sid for sid, seg in seg_ids.items() if any(s.host_id.hex() in victims for s in seg.shares)}
    say(f"== 4. waiting for owner-less repair of {len(damaged)} damaged segment(s) "
        f"(grace 6 s, checks every 2 s)")
    survivors = [n for nid, n in nodes.items() if nid not in victims]
    t_kill = time.monotonic()
    events: dict[str, dict[str, Any]] = {}
    healthy: dict[str, int] = {}
    while time.monotonic() - t_kill < 150:
        await asyncio.sleep(1.0)
        healthy = {}
        for n in survivors:
            try:
                rep = await call(Path(n["data"]), "repair", {}, timeout=10)
            except Exception:
                continue
            for s in rep["segments"]:
                if s["segment"] in seg_ids:
                    healthy[s["segment"]] = max(healthy.get(s["segment"], 0),
                                                s["healthy"] if not s["missing"] else 0)
            for e in rep["events"]:
                if e["ok"] and e["segment"] in seg_ids:
                    events.setdefault(e["segment"] + e["leader"], e)
        repaired = {e["segment"] for e in events.values()}
        if damaged <= repaired and all(healthy.get(s, 0) >= 8 for s in seg_ids):
            break
    names = {nid: n["name"] for nid, n in nodes.items()}
    total = 0
    for e in sorted(events.values(), key=lambda e: e["segment"]):
        moved = e["bytes_down"] + e["bytes_up"]
        total += moved
        say(f"   repair segment {e['segment'][:12]}: leader {names.get(e['leader'], e['leader'][:8])}, "
            f"shares {e['missing']} regenerated onto "
            f"{', '.join(names.get(h, h[:8]) for h in e['placed'].values())}, "
            f"{moved / MiB:.1f} MiB moved in {e['seconds']} s")
    ok_repair = damaged <= {e["segment"] for e in events.values()}
    say(f"   repair {'complete' if ok_repair else 'INCOMPLETE'}: {len(events)} repair(s), "
        f"{total / MiB:.1f} MiB moved, {time.monotonic() - t_kill:.1f} s after the kills")

    import_keystore(fresh_dir, words, os.environ["XCORE_PASSPHRASE"], token_bytes=secrets.token_bytes,
                    params=argon2_params_from_env())
    out = directory / "fetched.bin"

    async def do_get(client: Any) -> Any:
        listing = await client.ls()
        got = await client.get(bytes.fromhex(res["file_id"]), out)
        return listing, got
    listing, got = await as_client(fresh_dir, seed, do_get)
    say(f"== 5. fresh client with only the mnemonic: ls shows {[f['name'] for f in listing]}; "
        f"get {got['size']} bytes in {got['seconds']} s ({got['mb_per_s']} MB/s)")
    have = sha256_file(out)
    same = have == want
    say(f"   sha256 original {want[:16]}... fetched {have[:16]}... -> "
        f"{'identical' if same else 'DIFFERENT'}")
    say(f"== done in {time.monotonic() - t0:.1f} s")
    return 0 if same and ok_repair else 1


if __name__ == "__main__":
    sys.exit(main())
