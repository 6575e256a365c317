"""`xcore sim run` and `xcore sim sweep`: scenarios in, metrics and plots out.

A scenario is a TOML file (see ``sims/scenarios/`` and ``sims/README.md``).
One with a ``[model]`` table runs the model-level simulator
(:mod:`sims.model`, numpy, up to millions of hosts); any other runs the
protocol-level simulator (:mod:`sims.protocol`, the real node code in
virtual time). Both write ``summary.json`` and ``metrics.csv`` — virtual-time
quantities only, so one seed gives byte-identical files — and PNG plots.

A sweep runs a grid of parameter values x seeds in parallel on Dask (local
processes by default, or a Dask cluster given by ``--scheduler``), and
writes one table (``sweep.csv``: every run) and ``summary.csv`` (mean and 95%
confidence interval per grid point) with plots.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Callable

from xcore.errors import ConfigError

MODEL_SERIES = ("below_threshold", "lost", "repairs", "repair_bytes", "hosts_alive")


def load_scenario(path: Path) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc.strerror}") from exc
    if len(raw) > 1 << 20:
        raise ConfigError(f"scenario {path} is larger than 1 MiB")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"scenario {path}: {exc}") from exc


def kind_of(doc: dict[str, Any]) -> str:
    return "model" if isinstance(doc.get("model"), dict) else "protocol"


def run_scenario(doc: dict[str, Any], seed: int, out: Path, *, base_dir: Path | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind_of(doc) == "protocol":
        from sims.protocol import run_protocol
        summary = run_protocol(doc, seed, out, log=log)
    else:
        summary = _run_model(doc, seed, out, base_dir, log)
    return summary


def _run_model(doc: dict[str, Any], seed: int, out: Path, base_dir: Path | None,
               log: Callable[[str], None]) -> dict[str, Any]:
    import dataclasses
    from sims.model import ModelConfig, plot_model, run_model
    cfg = dataclasses.replace(ModelConfig.from_toml_dict(doc, base_dir=base_dir), seed=seed)
    last = {"p": -1}

    def progress(frac: float) -> None:
        p = int(frac * 20)
        if p != last["p"]:
            last["p"] = p
            log(f"model: {5 * p}%")
    res = run_model(cfg, progress=progress)
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["day", "repair_bytes", "hosts_online", "unavailable_fraction"])
        for i in range(len(res.days)):
            w.writerow([round(float(res.days[i]) / 86400, 6), int(res.repair_bytes_per_day[i]),
                        int(res.hosts_online_per_day[i]),
                        f"{float(res.unavailable_per_day[i]):.9g}"])
    with open(out / "steps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_hours", *MODEL_SERIES])
        stride = max(1, len(res.times) // 5000)
        for i in range(0, len(res.times), stride):
            w.writerow([round(float(res.times[i]) / 3600, 6)] +
                       [f"{float(getattr(res, s)[i]):.9g}" for s in MODEL_SERIES])
    segments = int(cfg.segments)
    lost = int(res.lost[-1]) if len(res.lost) else 0
    years = cfg.years
    summary = {
        "kind": "model", "seed": seed, "hosts": cfg.hosts, "years": years, "k": cfg.k, "n": cfg.n,
        "segments": segments, "segments_lost": lost,
        "durability": float(res.durability),
        "repairs": int(res.repairs.sum()), "repair_bytes": float(res.repair_bytes.sum()),
        # per byte of user data (k shares) and per byte stored (n shares), per year
        "repair_bytes_per_stored_byte_year": float(res.repair_per_stored_byte_year),
        "repair_bytes_per_raw_byte_year": float(res.repair_per_raw_byte_year),
        "departures": int(res.departures), "absences": int(res.absences),
        "max_below_threshold": int(res.below_threshold.max()) if len(res.below_threshold) else 0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plot_model(res, out)
    log(f"model: {cfg.hosts} hosts x {years} years in {res.wall_seconds:.1f} s wall")
    return summary


# -- sweeps ---------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    t = text.strip()
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    return t


def set_param(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (dotted path, or a bare name found in any table) in ``doc``."""
    if "." in key:
        parts = key.split(".")
        node = doc
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--param {key}: {p} is not a table")
        node[parts[-1]] = value
        return
    if key in doc and not isinstance(doc[key], dict):
        doc[key] = value
        return
    for table in doc.values():
        if isinstance(table, dict) and key in table:
            table[key] = value
            return
    target = doc.get("model") if kind_of(doc) == "model" else doc.setdefault("data", {})
    assert isinstance(target, dict)
    target[key] = value


def parse_params(specs: tuple[str, ...] | list[str]) -> list[tuple[str, list[Any]]]:
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--param {spec!r}: expected NAME=V1,V2,...")
        grid.append((key.strip(), [parse_value(v) for v in values.split(",")]))
    return grid


def _one(doc: dict[str, Any], seed: int, out: str, base_dir: str | None) -> dict[str, Any]:
    logs: list[str] = []
    summary = run_scenario(doc, seed, Path(out), base_dir=Path(base_dir) if base_dir else None,
                           log=logs.append)
    (Path(out) / "run.log").write_text("\n".join(logs) + "\n")
    return summary


def sweep(doc: dict[str, Any], params: list[tuple[str, list[Any]]], seeds: int, out: Path, *,
          base_dir: Path | None = None, scheduler: str | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    import dask
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [k for k, _ in params]
    points = list(itertools.product(*[v for _, v in params])) or [()]
    jobs = []
    for pi, combo in enumerate(points):
        d = copy.deepcopy(doc)
        for k, v in zip(keys, combo):
            set_param(d, k, v)
        for s in range(seeds):
            run_dir = out / "runs" / f"p{pi:03d}-s{s:03d}"
            jobs.append((combo, s, dask.delayed(_one)(d, s, str(run_dir),
                                                      str(base_dir) if base_dir else None)))
    log(f"sweep: {len(points)} grid point(s) x {seeds} seed(s) = {len(jobs)} runs")
    if scheduler:
        try:
            from distributed import Client  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("--scheduler needs the 'distributed' package "
                              "(pip install 'dask[distributed]')") from None
        client = Client(scheduler)
        try:
            results = dask.compute(*[j for _, _, j in jobs])
        finally:
            client.close()
    else:
        results = dask.compute(*[j for _, _, j in jobs], scheduler="processes")
    rows = []
    for (combo, s, _), summary in zip(jobs, results):
        flat = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
        rows.append({**dict(zip(keys, combo)), "seed": s, **flat})
    metric_names = sorted({k for r in rows for k, v in r.items()
                           if k not in keys and k != "seed" and isinstance(v, (int, float))
                           and not isinstance(v, bool)})
    fields = keys + ["seed"] + sorted({k for r in rows for k in r} - set(keys) - {"seed"})
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    agg = []
    for combo in points:
        sel = [r for r in rows if tuple(r[k] for k in keys) == tuple(combo)]
        entry: dict[str, Any] = dict(zip(keys, combo))
        entry["runs"] = len(sel)
        for m in metric_names:
            vals = [float(r[m]) for r in sel if m in r]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            entry[f"{m}_mean"] = mean
            entry[f"{m}_ci95"] = 1.96 * sd / math.sqrt(len(vals)) if vals else 0.0
        agg.append(entry)
    with open(out / "summary.csv", "w", newline="") as f:
        afields = sorted({k for e in agg for k in e}, key=lambda k: (k not in keys, k))
        w = csv.DictWriter(f, fieldnames=afields)
        w.writeheader()
        w.writerows(agg)
    _plot_sweep(out, keys, agg, metric_names)
    return {"points": len(points), "runs": len(rows), "out": str(out)}


def _plot_sweep(out: Path, keys: list[str], agg: list[dict[str, Any]], metrics: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    wanted = [m for m in ("durability", "segments_lost", "files_lost", "repair_bytes",
                          "repair_bytes_per_stored_byte_year", "repairs") if m in metrics]
    labels = [", ".join(f"{k}={e[k]}" for k in keys) or "base" for e in agg]
    for m in wanted:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(agg)), 4))
        means = [e.get(f"{m}_mean", 0.0) for e in agg]
        cis = [e.get(f"{m}_ci95", 0.0) for e in agg]
        ax.bar(range(len(agg)), means, yerr=cis, capsize=4)
        ax.set_xticks(range(len(agg)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(m)
        ax.set_title(f"{m} (mean, 95% CI)")
        fig.tight_layout()
        fig.savefig(out / f"sweep_{m}.png", dpi=90)
        plt.close(fig)
