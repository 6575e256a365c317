"""`python -m tests.chaos --minutes 30 --seed 7`: a long chaos run (see engine.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.chaos.engine import run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos",
                                 description="Real nodes under random faults while files go up; "
                                             "every acknowledged file is checked at the end.")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--loopback", action="store_true",
                    help="all nodes on 127.0.0.1 even where network namespaces work")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    a = ap.parse_args()
    report = run(seed=a.seed, seconds=a.minutes * 60, nodes=a.nodes,
                 netns=False if a.loopback else None,
                 log=lambda m: print(m, file=sys.stderr, flush=True), keep=a.keep)
    print(json.dumps(report.as_dict(), indent=2) if a.json else report.summary())
    return 0 if report.lost == 0 and report.corrupt == 0 and report.acknowledged > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
