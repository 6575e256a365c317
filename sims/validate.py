"""Model versus protocol: one correlated failure, computed three ways.

The model-level simulator (:mod:`sims.model`) claims to apply the nodes'
placement, threshold and repair rules. This module checks that claim on a
case both simulators can run: ``nodes`` hosts, each segment's ``n`` shares
on ``n`` distinct hosts; at ``fail_at`` a random ``fraction`` of the hosts
fail for good at once (no other churn); after the grace period the
survivors repair what they can. Three answers:

* **closed form** — the shares a segment loses are hypergeometric
  (``N`` hosts, ``K = round(fraction * N)`` of them fail, ``n`` drawn): so
  ``P(below threshold) = P(n - X < m)``, ``P(lost) = P(n - X < k)``,
  ``P(repaired) = P(k <= n - X < m)`` and, per repair, the model's traffic of
  ``(k - 1 + X) * share_size`` bytes (:func:`closed_form`);
* **model** — :func:`sims.model.run_model` on the same case with many
  segments (:func:`model_case`);
* **protocol** — :class:`sims.protocol.ProtocolSim`: real nodes, real
  uploads, real repair (:func:`protocol_case`). It records, per segment,
  which hosts held each share before the failure (from their disks), how
  many shares were left right after it, what the nodes repaired (their
  :class:`~xcore.repairer.RepairEvent` records) and what is left at the end.

:func:`check_rules` compares the protocol run with the model's rules segment
by segment (placement on distinct hosts, exactly the segments with
``k <= live < m`` repaired, exactly the lost shares regenerated, traffic per
repair); the statistics (fractions over segments and seeds against the
closed form and the model) are in ``tests/sims/test_validation.py``.

Run ``python -m sims.validate [--seeds 4]`` for a report.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from xcore.shard.erasure import Redundancy, share_size


@dataclass(frozen=True)
class FailureCase:
    """One correlated permanent failure and the repair after it. Times in seconds;
    ``fail_at`` counts from the end of the upload."""

    nodes: int = 12
    redundancy: str = "2/6"
    fraction: float = 0.4
    files: int = 10
    file_size: int = 64 << 10  # one segment per file; shares of file_size / k bytes
    fail_at: float = 60.0
    grace: float = 300.0
    interval: float = 120.0
    after: float = 720.0  # run this long after the failure: grace + 3 repair rounds

    @property
    def red(self) -> Redundancy:
        return Redundancy.parse(self.redundancy)

    @property
    def killed(self) -> int:
        """Hosts the failure takes: as :meth:`sims.churn.CorrelatedFailure.select`."""
        return min(self.nodes, int(round(self.fraction * self.nodes)))

    @property
    def share_size(self) -> int:
        return share_size(self.file_size, self.red)


# -- closed form -----------------------------------------------------------------------


def hypergeometric(N: int, K: int, n: int) -> list[float]:
    """``P(X = x)``, ``x = 0..n``: shares lost when ``K`` of ``N`` hosts fail and a
    segment's ``n`` shares sit on ``n`` distinct hosts."""
    total = math.comb(N, n)
    return [math.comb(K, x) * math.comb(N - K, n - x) / total for x in range(n + 1)]


def closed_form(case: FailureCase) -> dict[str, float]:
    red = case.red
    k, n, m = red.k, red.n, red.repair_threshold
    pmf = hypergeometric(case.nodes, case.killed, n)
    below = sum(p for x, p in enumerate(pmf) if n - x < m)
    lost = sum(p for x, p in enumerate(pmf) if n - x < k)
    repaired = below - lost
    rep = [(x, p / repaired) for x, p in enumerate(pmf) if k <= n - x < m] if repaired else []
    missing = sum(x * p for x, p in rep)
    return {"below": below, "lost": lost, "repaired": repaired,
            "missing_per_repair": missing,
            "missing_sd_per_repair": math.sqrt(sum((x - missing) ** 2 * p for x, p in rep)),
            "bytes_per_repair": (k - 1 + missing) * case.share_size}


# -- model ----------------------------------------------------------------------------


def model_config(case: FailureCase, segments: int, seed: int) -> Any:
    from sims.churn import YEAR, CorrelatedFailure, RenewalChurn
    from sims.model import ModelConfig
    red = case.red
    step = 60.0
    return ModelConfig(
        hosts=case.nodes, years=(case.fail_at + case.after) / YEAR, k=red.k, n=red.n,
        grace=case.grace, step=step, segments=segments, share_size=case.share_size, rate=None,
        churn=RenewalChurn(), events=(CorrelatedFailure(case.fail_at, case.fraction),),
        warm_start=True, replace_departed=False, seed=seed)


def model_case(case: FailureCase, segments: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Fractions of segments below threshold, lost and repaired, and bytes per
    repair, from :func:`sims.model.run_model`."""
    from sims.model import run_model
    res = run_model(model_config(case, segments, seed))
    repairs = int(res.repairs.sum())
    lost = res.segments_lost
    # the queue holds segments below threshold that are not lost; it peaks when
    # the grace period ends, before the repairs of that step
    below = int(res.below_threshold.max(initial=0)) + lost
    return {"segments": segments, "below": below / segments, "lost": lost / segments,
            "repaired": repairs / segments,
            "bytes_per_repair": float(res.repair_bytes.sum()) / repairs if repairs else 0.0,
            "repairs_per_segment_max": int(res.repairs_per_segment.max(initial=0))}


# -- protocol -----------------------------------------------------------------------


@dataclass
class SegmentOutcome:
    placement: list[list[int]]  # per share index: hosts holding it before the failure
    live_after_failure: int
    live_at_end: int
    repairs: list[dict[str, Any]] = field(default_factory=list)  # RepairEvent.as_dict(), ok ones
    failed_repairs: int = 0


@dataclass
class ProtocolOutcome:
    seed: int
    victims: list[int]
    segments: list[SegmentOutcome]
    share_size: int
    k: int
    n: int
    threshold: int


def protocol_case(case: FailureCase, seed: int) -> ProtocolOutcome:
    """Run ``case`` with the real node code; see the module docstring."""
    from sims.protocol import HOUR, ProtocolConfig, ProtocolSim, run_sim
    red = case.red
    cfg = ProtocolConfig.from_dict({
        "sim": {"nodes": case.nodes, "duration_days": (case.fail_at + case.after) / (24 * HOUR)},
        "data": {"files": case.files, "file_size_mib": case.file_size / (1 << 20),
                 "redundancy": case.redundancy},
        "repair": {"interval_minutes": case.interval / 60, "grace_minutes": case.grace / 60},
        "audit": {"interval_minutes": 24 * 60},  # audits are not what this is about
        "events": [{"at": case.fail_at, "fraction": case.fraction, "permanent": True}],
    })

    async def main(sim: ProtocolSim) -> ProtocolOutcome:
        await sim.setup()
        await sim.upload()
        before = sim.holders()
        plan = sim._churn_plan()
        victims = sorted({i for _, kind, i in plan if kind == "gone"})
        assert all(kind == "gone" for _, kind, _ in plan) and len({t for t, _, _ in plan}) <= 1
        if plan:
            await asyncio.sleep(plan[0][0] - sim.loop.time())
        for _, kind, i in plan:
            await sim._apply(kind, i)
        after_failure = sim.holders()
        await asyncio.sleep(case.after)
        at_end = sim.holders()
        by_segment: dict[str, list[Any]] = {}
        for h in sim.hosts:
            if h.svc is not None and h.svc.repairer is not None:
                for ev in h.svc.repairer.events:
                    by_segment.setdefault(ev.segment, []).append(ev)
        out = []
        for (sid, _, _), b, a, e in zip(sim.segments, before, after_failure, at_end):
            evs = by_segment.get(sid.hex(), [])
            out.append(SegmentOutcome(
                placement=b, live_after_failure=sum(1 for hs in a if hs),
                live_at_end=sum(1 for hs in e if hs),
                repairs=[ev.as_dict() for ev in evs if ev.ok],
                failed_repairs=sum(1 for ev in evs if not ev.ok)))
        return ProtocolOutcome(seed, victims, out, case.share_size, red.k, red.n,
                               red.repair_threshold)

    _, outcome = run_sim(cfg, seed, main)
    return outcome


def check_rules(o: ProtocolOutcome) -> list[str]:
    """Where the nodes did not do what the model assumes; empty if they agree.

    The model's rules (:mod:`sims.model` docstring): the ``n`` shares of a
    segment sit on ``n`` distinct hosts, one copy each; a segment is repaired
    once its healthy shares are below ``m = k + ceil((n - k) / 3)`` and at
    least ``k`` are live, and then exactly its missing shares are regenerated
    onto hosts that hold none of the segment; a repair moves
    ``(k - 1 + missing) * share_size`` bytes.
    """
    bad = []
    k, n, m, size = o.k, o.n, o.threshold, o.share_size
    victims = set(o.victims)
    for j, s in enumerate(o.segments):
        where = f"seed {o.seed} segment {j}"
        hosts = [h for hs in s.placement for h in hs]
        if sorted(len(hs) for hs in s.placement) != [1] * n or len(set(hosts)) != n:
            bad.append(f"{where}: placement {s.placement} is not n = {n} distinct hosts, one copy each")
            continue
        lost_idx = sorted(i for i, hs in enumerate(s.placement) if hs[0] in victims)
        live = n - len(lost_idx)
        if live != s.live_after_failure:
            bad.append(f"{where}: {s.live_after_failure} shares live after the failure, "
                       f"placement says {live}")
        should = k <= live < m
        if should != bool(s.repairs):
            bad.append(f"{where}: {live} live of {n} (k = {k}, threshold {m}): "
                       f"expected {'a repair' if should else 'none'}, nodes did {len(s.repairs)}")
            continue
        if len(s.repairs) > 1:
            bad.append(f"{where}: repaired {len(s.repairs)} times")
        if should:
            ev = s.repairs[0]
            if sorted(ev["missing"]) != lost_idx or sorted(int(i) for i in ev["placed"]) != lost_idx:
                bad.append(f"{where}: lost shares {lost_idx}, repair regenerated {ev['missing']} "
                           f"and placed {sorted(ev['placed'])}")
            new = {bytes.fromhex(h) for h in ev["placed"].values()}
            if len(new) != len(ev["placed"]):
                bad.append(f"{where}: two regenerated shares on one host")
            if s.live_at_end != n:
                bad.append(f"{where}: {s.live_at_end} of {n} shares live after repair")
        elif live >= m and s.live_at_end != live:
            bad.append(f"{where}: not repaired, yet {s.live_at_end} shares live at the end "
                       f"(was {live})")
    return bad


def repair_traffic(o: ProtocolOutcome) -> list[tuple[int, int, int]]:
    """Per successful repair: ``(missing, bytes moved, model's bytes)``."""
    out = []
    for s in o.segments:
        for ev in s.repairs:
            miss = len(ev["missing"])
            out.append((miss, ev["bytes_down"] + ev["bytes_up"], (o.k - 1 + miss) * o.share_size))
    return out


# -- statistics -----------------------------------------------------------------------


def null_moments(o: ProtocolOutcome, killed: int, nodes: int,
                 rule: str) -> tuple[float, float]:
    """Mean and variance of the fraction of ``o``'s segments meeting ``rule``
    ("below", "lost" or "repaired") over all equally likely victim sets of
    ``killed`` of ``nodes`` hosts, given the real placement: the distribution
    of this seed's measurement if victims are uniform, which is what the
    closed form assumes. The segments of one run share hosts, so they are not
    independent; enumerating the victim sets accounts for that exactly."""
    k, n, m = o.k, o.n, o.threshold
    placements = [[hs[0] for hs in s.placement] for s in o.segments
                  if all(len(hs) == 1 for hs in s.placement)]
    values = []
    for vs in itertools.combinations(range(nodes), killed):
        dead = set(vs)
        hit = 0
        for p in placements:
            live = sum(1 for h in p if h not in dead)
            hit += {"below": live < m, "lost": live < k, "repaired": k <= live < m}[rule]
        values.append(hit / max(1, len(placements)))
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / len(values)


def observed(o: ProtocolOutcome) -> dict[str, float]:
    S = len(o.segments)
    k, m = o.k, o.threshold
    return {"below": sum(s.live_after_failure < m for s in o.segments) / S,
            "lost": sum(s.live_after_failure < k for s in o.segments) / S,
            "repaired": sum(bool(s.repairs) for s in o.segments) / S}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sims.validate", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=FailureCase.nodes)
    ap.add_argument("--redundancy", default=FailureCase.redundancy)
    ap.add_argument("--fraction", type=float, default=FailureCase.fraction)
    ap.add_argument("--files", type=int, default=FailureCase.files)
    args = ap.parse_args(argv)
    case = FailureCase(nodes=args.nodes, redundancy=args.redundancy, fraction=args.fraction,
                       files=args.files)
    report: dict[str, Any] = {"case": asdict(case), "closed_form": closed_form(case),
                              "model": model_case(case), "protocol": []}
    for seed in range(args.seeds):
        o = protocol_case(case, seed)
        report["protocol"].append({"seed": seed, "victims": o.victims, **observed(o),
                                   "rule_violations": check_rules(o),
                                   "traffic": repair_traffic(o)})
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
