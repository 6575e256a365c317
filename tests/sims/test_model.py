"""The model-level simulator against closed forms, and its behaviour under churn.

How the statistical checks work: the quantity of interest (loss fraction,
repair traffic per segment) is measured in ``R`` independent runs (seeds
``0..R-1``) and compared with the closed form using a two-sided 99.9%
Student-t confidence interval on the mean of the runs. Runs rather than
segments are the independent samples because segments of one run share hosts
(a host that leaves takes a share of every segment it holds), which makes
per-segment outcomes correlated; across runs everything is independent.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np
import pytest

from sims.churn import (
    DAY,
    HOUR,
    YEAR,
    CorrelatedFailure,
    Diurnal,
    Exponential,
    LogNormal,
    Never,
    RenewalChurn,
    Uniform,
    Weibull,
)
from sims.model import (
    ModelConfig,
    ModelResult,
    durability_binomial,
    durability_poisson,
    lazy_repair_bandwidth,
    lazy_repair_chain,
    lazy_repair_stationary,
    main,
    plot_model,
    run_model,
)
from xcore.errors import ConfigError, InvalidParameter
from xcore.shard.erasure import Redundancy

CONFIDENCE = 0.999


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile (p > 0.5): the t density integrated numerically
    (trapezoids on a fine grid, error < 1e-6), inverted by interpolation."""
    x = np.linspace(0.0, 60.0, 600_001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * (x[1] - x[0]))])
    return float(np.interp(p, cdf, x))


def test_t_quantile() -> None:
    # tables: t(0.9995; 5) = 6.869, t(0.9995; 7) = 5.408, t(0.975; 30) = 2.042
    assert t_quantile(0.9995, 5) == pytest.approx(6.869, abs=1e-3)
    assert t_quantile(0.9995, 7) == pytest.approx(5.408, abs=1e-3)
    assert t_quantile(0.975, 30) == pytest.approx(2.042, abs=1e-3)
    assert t_quantile(0.975, 10_000) == pytest.approx(NormalDist().inv_cdf(0.975), abs=1e-3)


def assert_in_ci(values: list[float], expected: float) -> None:
    """``expected`` lies in the CONFIDENCE t-interval of the mean of ``values``."""
    x = np.asarray(values, dtype=float)
    half = t_quantile(1 - (1 - CONFIDENCE) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    assert abs(x.mean() - expected) <= half, (x.mean(), expected, half)


def replicate(cfg: ModelConfig, runs: int) -> list[ModelResult]:
    return [run_model(dataclasses.replace(cfg, seed=s)) for s in range(runs)]


# -- closed forms ----------------------------------------------------------------

def test_threshold_is_the_nodes_rule() -> None:
    for k, n in ((4, 8), (10, 30), (1, 3), (29, 30), (5, 5)):
        cfg = ModelConfig(hosts=100, segments=1, k=k, n=n)
        assert cfg.threshold == Redundancy(k, n).repair_threshold == k + math.ceil((n - k) / 3)
    assert ModelConfig(hosts=100, segments=1, k=4, n=8, threshold=7).threshold == 7


def test_poisson_durability_reproduces_the_storj_whitepaper_tables() -> None:
    # Storj v3 whitepaper sec. 3.4: P(D | p = 10%) for a month without repair
    table = {(1, 1): 0.90483741803595962, (1, 2): 0.98247690369357827,
             (1, 16): 0.99999999998036174, (4, 6): 0.97688471224736705,
             (4, 12): 0.99999514117129605, (20, 30): 0.99970766304935266,
             (20, 50): 0.99999999999999548}
    for (k, n), durable in table.items():
        assert durability_poisson(0.1, k, n, n) == pytest.approx(1 - durable, rel=1e-6, abs=1e-15)


def test_binomial_durability() -> None:
    # P(Binomial(m, p) > m - k), by hand for k = 1, n = m = 2: both lost
    assert durability_binomial(0.1, 1, 2, 2) == pytest.approx(0.01)
    # default m is the repair threshold: 4/8 -> m = 6, lost if 3+ of 6 go
    p = 0.05
    expect = sum(math.comb(6, i) * p**i * (1 - p) ** (6 - i) for i in range(3, 7))
    assert durability_binomial(p, 4, 8) == pytest.approx(expect)
    # Poisson(p m) approximates Binomial(m, p) for small p
    assert durability_poisson(1e-3, 10, 30) == pytest.approx(durability_binomial(1e-3, 10, 30), rel=0.05)
    with pytest.raises(InvalidParameter):
        durability_binomial(1.5, 4, 8)
    with pytest.raises(InvalidParameter):
        durability_binomial(0.1, 4, 8, 3)


def test_lazy_repair_bandwidth_formulas() -> None:
    alpha = 1.0
    # exact: alpha (n - m + k) / (k (H_n - H_{m-1})); 10/30 -> m = 17
    harmonic = sum(1 / i for i in range(17, 31))
    assert lazy_repair_bandwidth(alpha, 10, 30) == pytest.approx((30 - 17 + 10) / (10 * harmonic))
    # the published form alpha (n - m + k) / (k ln(n/m)) (Storj v3 whitepaper sec. 7.1)
    assert lazy_repair_bandwidth(alpha, 10, 30, exact=False) == pytest.approx(
        (30 - 17 + 10) / (10 * math.log(30 / 17)))
    ratio = lazy_repair_bandwidth(alpha, 10, 30, exact=False) / lazy_repair_bandwidth(alpha, 10, 30)
    assert 1.08 < ratio < 1.10  # ln(n/m) leaves out the 1/m term: ~9% too high here
    assert lazy_repair_bandwidth(2.0, 4, 8) == pytest.approx(2 * lazy_repair_bandwidth(1.0, 4, 8))


@pytest.mark.parametrize("k, n", [(4, 8), (10, 30), (29, 80)])
def test_chain_tends_to_the_closed_form(k: int, n: int) -> None:
    """The exact step-by-step chain, with steps much shorter than lifetimes,
    gives the continuous-time renewal-reward bandwidth."""
    alpha_dt = 1e-5  # step / MTTF
    _, shares = lazy_repair_stationary(-math.expm1(-alpha_dt), k, n)
    per_unit_time = shares / k / alpha_dt  # per byte of user data, per MTTF
    assert per_unit_time == pytest.approx(lazy_repair_bandwidth(1.0, k, n), rel=n * alpha_dt * 5)


def test_chain_loss_is_bounded_by_the_window_formula() -> None:
    # per step, a segment (>= m healthy at the start) is lost with at most
    # the worst-case window probability P[Bin(m, p) > m - k]
    p = 0.02
    ch = lazy_repair_chain(p, 4, 8, steps=200)
    hazard = np.diff(np.concatenate([[0.0], ch.lost])) / (1 - np.concatenate([[0.0], ch.lost[:-1]]))
    assert np.all(hazard <= durability_binomial(p, 4, 8) * (1 + 1e-9))
    assert hazard[0] == pytest.approx(durability_binomial(p, 4, 8, 8))  # starts at n


# -- the simulator against the closed forms ------------------------------------------

def test_no_repair_loss_matches_binomial_tail() -> None:
    """Without repair a segment is lost iff more than n - k of its n hosts leave:
    P[Binomial(n, 1 - exp(-T / MTTF)) > n - k]."""
    mttf = 1.5 * YEAR
    cfg = ModelConfig(hosts=20_000, years=1, segments=2000, k=4, n=8, step=YEAR, repair=False,
                      churn=RenewalChurn(Exponential(mttf)))
    runs = replicate(cfg, 10)
    expect = durability_binomial(-math.expm1(-YEAR / mttf), 4, 8, 8)
    assert_in_ci([1 - r.durability for r in runs], expect)
    assert all(r.repairs.sum() == 0 for r in runs)


@pytest.fixture(scope="module")
def exponential_runs() -> tuple[ModelConfig, list[ModelResult]]:
    """4/8 under exponential lifetimes (mean 40 days), grace 0, two-day steps:
    the setting of :func:`lazy_repair_chain`, with enough churn to lose segments."""
    cfg = ModelConfig(hosts=20_000, years=1, segments=1000, k=4, n=8, grace=0.0, step=2 * DAY,
                      rate=None, churn=RenewalChurn(Exponential(40 * DAY)))
    return cfg, replicate(cfg, 8)


def test_durability_with_repair_matches_chain(exponential_runs) -> None:
    cfg, runs = exponential_runs
    chain = lazy_repair_chain(-math.expm1(-cfg.step / (40 * DAY)), cfg.k, cfg.n, steps=runs[0].times.size)
    assert chain.lost[-1] > 0.01  # losses are frequent enough to measure
    assert_in_ci([1 - r.durability for r in runs], float(chain.lost[-1]))


def test_repair_bandwidth_matches_chain(exponential_runs) -> None:
    cfg, runs = exponential_runs
    chain = lazy_repair_chain(-math.expm1(-cfg.step / (40 * DAY)), cfg.k, cfg.n, steps=runs[0].times.size)
    shares = [r.repair_bytes.sum() / cfg.share_size / r.segments for r in runs]
    assert_in_ci(shares, float(chain.shares.sum()))
    assert_in_ci([r.repairs.sum() / r.segments for r in runs], float(chain.repairs.sum()))
    # every repair moves k - 1 shares to the leader plus the missing ones
    r = runs[0]
    assert np.all(r.repair_bytes_per_segment >= r.repairs_per_segment * (cfg.k - 1 + cfg.n - cfg.m + 1)
                  * cfg.share_size)


@pytest.mark.slow
def test_repair_bandwidth_10_of_30_matches_chain() -> None:
    mttf = 60 * DAY
    cfg = ModelConfig(hosts=30_000, years=0.5, segments=1000, k=10, n=30, grace=0.0, step=DAY,
                      rate=None, churn=RenewalChurn(Exponential(mttf)))
    runs = replicate(cfg, 8)
    chain = lazy_repair_chain(-math.expm1(-cfg.step / mttf), 10, 30, steps=runs[0].times.size)
    assert_in_ci([r.repair_bytes.sum() / cfg.share_size / r.segments for r in runs],
                 float(chain.shares.sum()))


# -- behaviour ---------------------------------------------------------------------

def test_same_seed_same_arrays() -> None:
    churn = Diurnal(RenewalChurn(Weibull.from_mean(0.6, 60 * DAY), Exponential(12 * HOUR),
                                 LogNormal.from_median(2 * HOUR, 1.5)), amplitude=0.5)
    events = (CorrelatedFailure(3 * DAY, 0.1, scope="subnet"),
              CorrelatedFailure(5 * DAY, 0.2, scope="region", permanent=False, duration=30 * HOUR))
    cfg = ModelConfig(hosts=3000, years=8 / 365.25, segments=300, k=4, n=8, grace=6 * HOUR,
                      step=2 * HOUR, rate=2e6, churn=churn, events=events, seed=7)
    a, b = run_model(cfg), run_model(cfg)
    assert a.repairs.sum() > 0 and a.departures > 0 and a.absences > 0
    for f in dataclasses.fields(ModelResult):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y), f.name
    assert a.summary() | {"wall_seconds": 0} == b.summary() | {"wall_seconds": 0}
    c = run_model(dataclasses.replace(cfg, seed=8))
    assert not np.array_equal(a.repair_bytes, c.repair_bytes)


def test_absences_shorter_than_grace_cost_nothing() -> None:
    grace = 6 * HOUR
    base = ModelConfig(hosts=2000, years=20 / 365.25, segments=300, k=4, n=8, grace=grace,
                       rate=None, churn=RenewalChurn(Never(), Exponential(6 * HOUR),
                                                     Uniform(5 * 60, 0.9 * grace)))
    r = run_model(base)
    assert r.absences > 50_000  # every host goes away about 80 times
    assert r.repairs.sum() == 0 and r.repair_bytes.sum() == 0
    assert r.below_threshold.max() == 0 and r.segments_lost == 0
    assert r.unavailable_per_day.max() > 0  # yet shares were offline
    # the same absences made a little longer than the grace period do cost repairs
    longer = dataclasses.replace(base, churn=RenewalChurn(Never(), Exponential(6 * HOUR),
                                                          Uniform(1.1 * grace, 2 * grace)))
    assert run_model(longer).repairs.sum() > 100


def test_weibull_shape_below_one_changes_repair_in_the_expected_direction() -> None:
    """Same mean lifetime. In a network at equilibrium, a host picked for a
    share has a residual life of mean E[L^2]/2E[L], three times the mean for
    Weibull(0.5) against once for exponential: less repair. A network that
    starts with every host new sees the Weibull's early departures: more
    repair at first."""
    mean = 60 * DAY
    base = ModelConfig(hosts=20_000, years=0.5, segments=1000, k=4, n=8, grace=DAY, step=DAY,
                       rate=None, churn=RenewalChurn(Exponential(mean)))
    weib = dataclasses.replace(base, churn=RenewalChurn(Weibull.from_mean(0.5, mean)))
    e, w = run_model(base), run_model(weib)
    assert w.repair_per_stored_byte_year < 0.75 * e.repair_per_stored_byte_year
    e0 = run_model(dataclasses.replace(base, warm_start=False, years=30 / 365.25))
    w0 = run_model(dataclasses.replace(weib, warm_start=False, years=30 / 365.25))
    assert w0.repair_bytes.sum() > 1.5 * e0.repair_bytes.sum()


def test_correlated_failure_spikes_segments_below_threshold() -> None:
    """30% of hosts fail at once. A segment that lost more than n - k = 4 of
    its 8 shares is lost at once; one grace period later, one that lost
    n - m + 1 = 3 or 4 is below threshold. For a random 30% of hosts:
    P[Bin(8, 0.3) > 4] and P[3 <= Bin(8, 0.3) <= 4]."""
    at = 2 * DAY + HOUR / 2
    cfg = ModelConfig(hosts=20_000, years=5 / 365.25, segments=1000, k=4, n=8, grace=DAY,
                      rate=None, churn=RenewalChurn(Never()),
                      events=(CorrelatedFailure(at, 0.3),))
    runs = replicate(cfg, 8)
    step = int((at + cfg.grace) // cfg.step)
    for r in runs:
        assert r.below_threshold[:step].max() == 0  # nothing before
        assert r.below_threshold[step] > 250  # the spike
        assert r.below_threshold[step + 1:].max() == 0  # repaired at once (no bandwidth limit)
        assert r.hosts_alive.min() == cfg.hosts  # replaced by new hosts
    pmf = [math.comb(8, i) * 0.3**i * 0.7 ** (8 - i) for i in range(9)]
    assert_in_ci([r.below_threshold[step] / r.segments for r in runs], pmf[3] + pmf[4])
    assert_in_ci([1 - r.durability for r in runs], durability_binomial(0.3, 4, 8, 8))


def test_bandwidth_limit_delays_repairs() -> None:
    at = DAY + HOUR / 2
    cfg = ModelConfig(hosts=5000, years=4 / 365.25, segments=1000, k=4, n=8, grace=HOUR,
                      rate=None, churn=RenewalChurn(Never()), events=(CorrelatedFailure(at, 0.3),))
    fast = run_model(cfg)
    share = cfg.share_size
    slow = run_model(dataclasses.replace(cfg, rate=share / cfg.step))  # a repair takes ~6 steps
    assert fast.repairs.sum() == slow.repairs.sum() > 0
    assert np.count_nonzero(slow.below_threshold) > np.count_nonzero(fast.below_threshold)


def test_transient_outage_longer_than_grace_repairs_and_returning_copies_are_dropped() -> None:
    cfg = ModelConfig(hosts=5000, years=4 / 365.25, segments=500, k=4, n=8, grace=2 * HOUR,
                      rate=None, churn=RenewalChurn(Never()),
                      events=(CorrelatedFailure(DAY, 0.4, permanent=False, duration=6 * HOUR),))
    r = run_model(cfg)
    assert r.repairs.sum() > 0 and r.segments_lost == 0 and r.departures == 0
    short = dataclasses.replace(cfg, events=(CorrelatedFailure(DAY, 0.4, permanent=False,
                                                               duration=HOUR),))
    assert run_model(short).repairs.sum() == 0


def test_no_replacement_shrinks_the_network() -> None:
    cfg = ModelConfig(hosts=2000, years=30 / 365.25, segments=100, k=4, n=8, step=DAY,
                      churn=RenewalChurn(Exponential(60 * DAY)), replace_departed=False)
    r = run_model(cfg)
    assert r.hosts_alive[-1] == cfg.hosts - r.departures < cfg.hosts
    assert np.all(np.diff(r.hosts_alive) <= 0)


# -- configuration and output ------------------------------------------------------

def test_from_toml_dict() -> None:
    doc = {
        "model": {"hosts": 5000, "years": 0.1, "redundancy": "4/8", "grace": "12h", "step": "2h",
                  "segments": 200, "rate": "none", "seed": 3, "warm_start": False},
        "churn": {"model": "weibull", "shape": 0.7, "lifetime_mean": "1y", "session_mean": "2d",
                  "downtime_mean": "1h"},
        "events": [{"at": "10d", "fraction": 0.2, "scope": "subnet"}],
    }
    cfg = ModelConfig.from_toml_dict(doc)
    assert (cfg.hosts, cfg.k, cfg.n, cfg.threshold, cfg.grace, cfg.step) == (5000, 4, 8, 6, 12 * HOUR, 2 * HOUR)
    assert cfg.rate is None and cfg.seed == 3 and not cfg.warm_start
    assert isinstance(cfg.churn.lifetime, Weibull)
    assert cfg.events == (CorrelatedFailure(10 * DAY, 0.2, scope="subnet"),)
    flat = ModelConfig.from_toml_dict({"hosts": 100, "k": 2, "n": 5, "threshold": 4, "segments": 1})
    assert (flat.k, flat.n, flat.threshold) == (2, 5, 4)
    assert flat.to_dict()["threshold"] == 4


@pytest.mark.parametrize("doc, words", [
    ({"hosts": 5, "redundancy": "4/8"}, "at least n"),
    ({"redundancy": "8/4"}, "redundancy"),
    ({"redundancy": "4/8", "k": 4}, "either"),
    ({"k": 4, "n": 8, "threshold": 9}, "threshold"),
    ({"k": 4, "n": 8, "threshold": 3}, "threshold"),
    ({"hosts": "many"}, "hosts"),
    ({"years": 0}, "years"),
    ({"grace": "-1h"}, "grace"),
    ({"rate": -5}, "rate"),
    ({"rate": True}, "rate"),
    ({"repair": "yes"}, "repair"),
    ({"hostz": 3}, "unknown key"),
    ({"churn": {"model": "weibull"}}, "churn"),
    ({"events": [{"at": 0, "fraction": 2}]}, "fraction"),
    ({"step": "1s", "years": 5}, "steps"),
])
def test_from_toml_dict_errors(doc, words) -> None:
    with pytest.raises(ConfigError, match=words):
        ModelConfig.from_toml_dict(doc)


def test_plot_model_and_main(tmp_path, capsys) -> None:
    cfg = ModelConfig(hosts=2000, years=20 / 365.25, segments=200, k=4, n=8, step=12 * HOUR,
                      churn=RenewalChurn(Exponential(30 * DAY), Exponential(DAY),
                                         Exponential(2 * HOUR)))
    r = run_model(cfg)
    assert r.repairs.sum() > 0
    paths = plot_model(r, tmp_path / "plots")
    assert len(paths) == 4
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    toml = tmp_path / "m.toml"
    toml.write_text('[model]\nhosts = 1000\nyears = 0.02\nsegments = 50\nredundancy = "4/8"\n'
                    'step = "6h"\n[churn]\nmodel = "exponential"\nlifetime_mean = "30d"\n')
    assert main([str(toml), "--quiet", "--out", str(tmp_path / "out"), "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert '"durability"' in out and "repairs_per_segment.png" in out
    toml.write_text("[model]\nhosts = 'x'\n")
    assert main([str(toml), "--quiet"]) == 2
    assert "hosts" in capsys.readouterr().err


def test_counters_match_a_recount_after_a_busy_run() -> None:
    """The incremental per-segment counters and the per-host index agree with a
    recount from the cells after churn, outages, departures and repairs
    (with record storage compacted and the index rebuilt along the way)."""
    from sims.model import _Model

    churn = RenewalChurn(Exponential(20 * DAY), Exponential(8 * HOUR), LogNormal.from_median(3 * HOUR, 1.2))
    events = (CorrelatedFailure(2 * DAY, 0.15, scope="region", permanent=False, duration=9 * HOUR),
              CorrelatedFailure(4 * DAY, 0.1, scope="subnet"))
    cfg = ModelConfig(hosts=1500, years=12 / 365.25, segments=400, k=4, n=8, grace=4 * HOUR,
                      rate=4e6, churn=churn, events=events, seed=11)
    m = _Model(cfg)
    r = m.run()
    assert r.repairs.sum() > 100 and r.segments_lost < r.segments
    recs = m.cell_rec.reshape(cfg.segments, cfg.n)
    assert np.array_equal(m.n_exist, (~m.rec_dead[recs]).sum(axis=1))
    assert np.array_equal(m.n_healthy, (~m.rec_gone[recs]).sum(axis=1))
    indexed, _ = m._records(np.arange(cfg.hosts))
    assert np.array_equal(np.sort(indexed), np.sort(m.cell_rec[~m.rec_dead[m.cell_rec]]))
    # no segment holds two shares on one host
    live = np.where(m.rec_dead[recs], -1 - np.arange(recs.size).reshape(recs.shape), m.rec_host[recs])
    srt = np.sort(live, axis=1)
    assert not (srt[:, 1:] == srt[:, :-1]).any()
    # gone shares belong to hosts that are away (or gone for good)
    gone = m.cell_rec[m.rec_gone[m.cell_rec] & ~m.rec_dead[m.cell_rec]]
    assert np.all(m.away[m.rec_host[gone]])
