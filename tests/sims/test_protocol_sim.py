"""The protocol-level simulator: the real node code under churn in virtual time."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sims.protocol import CARRIED, ProtocolConfig, ProtocolSim, host_counts, run_protocol, run_sim
from sims.run import load_scenario, parse_params, set_param

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "sim": {"nodes": 8, "duration_days": 1.5 / 24, "sample_hours": 0.25},
    "data": {"files": 1, "file_size_mib": 0.5, "redundancy": "2/4"},
    "repair": {"interval_minutes": 2, "grace_minutes": 5},
    "audit": {"interval_minutes": 10},
    "events": [{"at": "20m", "fraction": 0.25, "permanent": True}],
}

pytestmark = pytest.mark.slow


def test_same_seed_gives_identical_metrics_files(tmp_path: Path) -> None:
    a = run_protocol(TINY, 3, tmp_path / "a", log=lambda m: None)
    b = run_protocol(TINY, 3, tmp_path / "b", log=lambda m: None)
    assert a == b
    for name in ("metrics.csv", "summary.json", "events.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # the run did something real: the file was fetched back, traffic flowed
    assert a["files_ok"] == 1 and a["files_corrupt"] == 0
    rows = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    assert len(rows) > 4
    assert (tmp_path / "a" / "protocol.png").stat().st_size > 1000


def test_a_correlated_failure_is_repaired_without_the_owner(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(TINY))
    doc["data"] = {"files": 2, "file_size_mib": 0.5, "redundancy": "2/6"}
    doc["sim"]["nodes"] = 10
    doc["events"] = [{"at": "20m", "fraction": 0.4, "permanent": True}]
    s = run_protocol(doc, 5, tmp_path, log=lambda m: None)
    assert s["files_ok"] == 2 and s["files_lost"] == 0 and s["files_corrupt"] == 0
    final = s["final"]
    assert final["hosts_up"] == 6
    assert final["segments_below_threshold"] == 0  # repaired back above the threshold
    assert final["repairs"] >= 1 and final["repair_bytes"] > 0


def test_cumulative_columns_do_not_fall_when_nodes_restart() -> None:
    """A node restarted by churn is a new process with counters at zero; the
    metrics add its earlier processes' counts, so they never fall."""
    cfg = ProtocolConfig.from_dict({**TINY, "sim": {**TINY["sim"], "nodes": 6}})

    async def main(sim: ProtocolSim) -> tuple[list[dict[str, Any]], list[dict[str, int]]]:
        await sim.setup()
        rows = [sim.sample_row()]
        for i in (1, 2):
            await sim._apply("down", i)
        await asyncio.sleep(600)
        rows.append(sim.sample_row())
        per_host = [host_counts(sim.hosts[i]) for i in (1, 2)]
        for i in (1, 2):
            await sim._apply("up", i)
        rows.append(sim.sample_row())
        per_host += [host_counts(sim.hosts[i]) for i in (1, 2)]
        await asyncio.sleep(600)
        rows.append(sim.sample_row())
        return rows, per_host

    _, (rows, per_host) = run_sim(cfg, 4, main)
    for _, col in CARRIED:
        values = [r[col] for r in rows]
        assert values == sorted(values), (col, values)
        for before, after in zip(per_host[:2], per_host[2:]):
            assert after[col] >= before[col], (col, before, after)
    assert per_host[0]["lookups"] > 0 and rows[3]["lookups"] > rows[0]["lookups"]


def test_cli_sim_run_writes_metrics_and_plots(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        "[sim]\nnodes = 6\nduration_days = 0.03\nsample_hours = 0.25\n"
        "[data]\nfiles = 1\nfile_size_mib = 0.25\nredundancy = \"2/4\"\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "xcore", "sim", "run", str(scenario), "--seed", "2",
                          "--out", str(out), "--json"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["files_ok"] == 1
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "metrics.csv").exists() and (out / "protocol.png").exists()


def test_every_shipped_scenario_parses() -> None:
    from sims.model import ModelConfig
    from sims.protocol import ProtocolConfig
    from sims.run import kind_of
    for path in sorted((ROOT / "sims" / "scenarios").glob("*.toml")):
        doc = load_scenario(path)
        if kind_of(doc) == "model":
            ModelConfig.from_toml_dict(doc, base_dir=path.parent)
        else:
            ProtocolConfig.from_dict(doc)


def test_sweep_parameters_reach_into_tables() -> None:
    doc = load_scenario(ROOT / "sims" / "scenarios" / "weibull-churn-10k.toml")
    grid = parse_params(["redundancy=4/8,10/30", "churn.session.shape=0.4,0.6"])
    assert grid == [("redundancy", ["4/8", "10/30"]), ("churn.session.shape", [0.4, 0.6])]
    set_param(doc, "redundancy", "4/8")
    set_param(doc, "churn.session.shape", 0.4)
    assert doc["model"]["redundancy"] == "4/8"
    assert doc["churn"]["session"]["shape"] == 0.4
