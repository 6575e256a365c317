"""bench/floor.py: the data path's per-byte floor runs on the real functions
(kept working as they change; its figures are for bench/README, not tests)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.floor import datapath_floor, floor_mb_per_s, format_floor  # noqa: E402
from xcore.shard.erasure import Redundancy  # noqa: E402


def test_the_floor_does_a_whole_put_and_get_and_cleans_up(tmp_path: Path) -> None:
    f = datapath_floor(9 << 20, Redundancy(4, 8), tmp_path)  # a whole 8 MiB segment and a short one
    assert f["size"] == 9 << 20 and f["redundancy"] == "4/8"
    for part in ("put_client", "put_hosts", "get_client", "get_hosts"):
        assert f[f"{part}_cpu_s"] > 0, part
    r = floor_mb_per_s(f, 2)
    assert r["put_client_only"] > r["put"] and r["get_client_only"] > r["get"]
    assert abs(r["put"] - 2 * r["put_one_core"]) < 1e-6 * r["put"]
    assert "upper bound on 2 core(s)" in format_floor(f, 2)
    assert list(tmp_path.iterdir()) == []  # the share store and output are gone
