"""The README's first command: a local network demo, end to end.

Today it shows the foundation: a devnet of node processes starts on
127.0.0.1, a signed record is stored through one node and read back through
another, a few nodes are killed with SIGKILL and the record is still read
through the survivors. Later parts grow this into the full storage story.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from xcore.control import call
from xcore.devnet import down, up
from xcore.node import DEFAULT_DIFFICULTY


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xcore.demo")
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="leave the devnet running")
    args = ap.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="xcore-demo-", dir="/tmp"))
    t0 = time.monotonic()
    print(f"== starting {args.nodes} nodes in {directory}")
    info = up(directory, args.nodes, difficulty=DEFAULT_DIFFICULTY, timeout=120,
              progress=lambda m: print("  " + m))
    nodes = info["nodes"]
    try:
        writer, reader = Path(nodes[1]["data"]), Path(nodes[-1]["data"])
        value = f"hello from {nodes[1]['node_id'][:12]} at {time.time():.0f}"
        res = asyncio.run(call(writer, "dht_put", {"key": "demo", "value": value}))
        print(f"== put 'demo' through {nodes[1]['name']}: stored on {res['stored_at']} nodes")
        got = asyncio.run(call(reader, "dht_get", {"key": "demo"}))
        print(f"== get 'demo' through {nodes[-1]['name']}: {got['value']!r} ({got['hops']} hops)")
        assert got["value"] == value, "value read back differs"
        victims = nodes[2:2 + max(1, len(nodes) // 4)]
        for v in victims:
            os.kill(v["pid"], signal.SIGKILL)
        print(f"== killed {', '.join(v['name'] for v in victims)} with SIGKILL")
        got = asyncio.run(call(Path(nodes[-2]["data"]), "dht_get", {"key": "demo"}))
        ok = got["value"] == value
        print(f"== get 'demo' through {nodes[-2]['name']} after the kills: "
              f"{'identical' if ok else 'DIFFERENT'}")
        print(f"== done in {time.monotonic() - t0:.1f}s")
        return 0 if ok else 1
    finally:
        if not args.keep:
            down(directory)
            if args.dir is None:
                shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
