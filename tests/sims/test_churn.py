"""Churn distributions, trace parsing, diurnal modulation and correlated failures.

Sample means are checked against the exact mean within a 99.9% normal
confidence interval computed from the exact variance (no fudge factors);
every generator is seeded, so the draws are fixed.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from sims.churn import (
    DAY,
    HOUR,
    YEAR,
    ChurnModel,
    CorrelatedFailure,
    Diurnal,
    Empirical,
    Exponential,
    Fixed,
    LogNormal,
    Never,
    RenewalChurn,
    Trace,
    Uniform,
    Weibull,
    distribution_from_config,
    events_from_config,
    parse_duration,
    parse_trace,
)
from xcore.errors import ConfigError

Z = NormalDist().inv_cdf(1 - 0.001 / 2)  # two-sided 99.9%
N = 200_000


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_mean(samples: np.ndarray, mean: float, var: float) -> None:
    half = Z * math.sqrt(var / samples.size)
    assert abs(samples.mean() - mean) <= half, (samples.mean(), mean, half)


# -- distributions -------------------------------------------------------------

def weibull_moment(d: Weibull, r: int) -> float:
    return d.scale**r * math.gamma(1 + r / d.shape)


def lognormal_moment(d: LogNormal, r: int) -> float:
    return math.exp(r * d.mu + r * r * d.sigma**2 / 2)


@pytest.mark.parametrize("dist, m2, m3", [
    (Exponential(3 * DAY), 2 * (3 * DAY) ** 2, 6 * (3 * DAY) ** 3),
    (Weibull.from_mean(0.7, 2 * YEAR), None, None),
    (LogNormal.from_median(2 * HOUR, 1.0), None, None),
    (Uniform(60.0, 3600.0), None, None),
])
def test_sample_and_residual_means(dist, m2, m3) -> None:
    if isinstance(dist, Weibull):
        m2, m3 = weibull_moment(dist, 2), weibull_moment(dist, 3)
    elif isinstance(dist, LogNormal):
        m2, m3 = lognormal_moment(dist, 2), lognormal_moment(dist, 3)
    elif isinstance(dist, Uniform):
        a, b = dist.low, dist.high
        m2 = (a * a + a * b + b * b) / 3
        m3 = (a + b) * (a * a + b * b) / 4
    mean = dist.mean
    assert dist.second_moment == pytest.approx(m2, rel=1e-12)
    assert_mean(dist.sample(rng(1), N), mean, m2 - mean**2)
    # forward recurrence time: density S(x)/E[X], mean E[X^2]/2E[X], E[R^2] = E[X^3]/3E[X]
    r_mean = m2 / (2 * mean)
    assert dist.residual_mean == pytest.approx(r_mean, rel=1e-12)
    assert_mean(dist.sample_residual(rng(2), N), r_mean, m3 / (3 * mean) - r_mean**2)


def test_weibull_parametrisation_and_survival() -> None:
    d = Weibull.from_mean(0.5, 100.0)
    assert d.mean == pytest.approx(100.0)
    assert d.scale == pytest.approx(50.0)  # Gamma(3) = 2
    assert d.residual_mean == pytest.approx(300.0)  # (1 + CV^2)/2 * mean, CV^2 = 5
    x = d.sample(rng(), N)
    for t in (10.0, 100.0, 500.0):
        p = float(d.survival(t))
        half = Z * math.sqrt(p * (1 - p) / N)
        assert abs(np.mean(x > t) - p) <= half


def test_lognormal_from_mean_and_median() -> None:
    a = LogNormal.from_mean(1000.0, 1.5)
    assert a.mean == pytest.approx(1000.0)
    b = LogNormal.from_median(1000.0, 1.5)
    assert float(b.survival(1000.0)) == pytest.approx(0.5)
    x = b.sample(rng(), N)
    assert abs(np.median(x) / 1000.0 - 1) < 0.02


def test_exponential_residual_is_memoryless_and_never_is_infinite() -> None:
    e = Exponential(10.0)
    assert e.residual_mean == pytest.approx(10.0)
    n = Never()
    assert np.all(np.isinf(n.sample(rng(), 5)))
    assert np.all(np.isinf(n.sample_residual(rng(), 5)))
    assert np.all(n.survival(np.array([1.0, 1e9])) == 1.0)
    assert np.all(Fixed(5.0).sample(rng(), 3) == 5.0)


def test_empirical_resamples_only_given_values() -> None:
    d = Empirical((1.0, 2.0, 7.0))
    x = d.sample(rng(), 1000)
    assert set(np.unique(x)) <= {1.0, 2.0, 7.0}
    lb = d.sample_length_biased(rng(), N)
    # length-biased: P(7) = 7 / 10
    p = 0.7
    assert abs(np.mean(lb == 7.0) - p) <= Z * math.sqrt(p * (1 - p) / N)
    with pytest.raises(ConfigError):
        Empirical(())


def test_same_seed_same_draws() -> None:
    m = RenewalChurn(Weibull.from_mean(0.6, YEAR), Exponential(DAY), LogNormal.from_median(HOUR, 1))
    for f in (m.sample_lifetimes, m.sample_sessions, m.sample_downtimes):
        assert np.array_equal(f(rng(5), 100), f(rng(5), 100))
    a = m.sample_initial_state(rng(9), 100)
    b = m.sample_initial_state(rng(9), 100)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_initial_state_online_fraction() -> None:
    m = RenewalChurn(Never(), Exponential(3 * DAY), Exponential(1 * DAY))
    assert m.online_fraction == pytest.approx(0.75)
    online, remaining = m.sample_initial_state(rng(), N)
    p = 0.75
    assert abs(online.mean() - p) <= Z * math.sqrt(p * (1 - p) / N)
    # exponential: the remaining time is again exponential with the same mean
    assert_mean(remaining[online], 3 * DAY, (3 * DAY) ** 2 * 1.0 / 1.0)
    assert RenewalChurn(Exponential(DAY)).online_fraction == 1.0
    on, rem = RenewalChurn(Exponential(DAY)).sample_initial_state(rng(), 10)
    assert on.all() and np.isinf(rem).all()


# -- durations and configuration -----------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    (3600, 3600.0), (1.5, 1.5), ("90s", 90.0), ("15m", 900.0), ("2min", 120.0),
    ("36h", 36 * HOUR), ("3d", 3 * DAY), ("2w", 14 * DAY), ("2y", 2 * YEAR), ("1e3", 1000.0),
    ("never", math.inf), (" 0.5 d ", 0.5 * DAY),
])
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "3 days", "-1h", "h", -5, True, None, [1], "nan"])
def test_parse_duration_rejects(bad) -> None:
    with pytest.raises(ConfigError):
        parse_duration(bad)


def test_from_config_shorthand_families() -> None:
    m = ChurnModel.from_config({"model": "weibull", "shape": 0.6, "lifetime_mean": "2y",
                                "session_mean": "3d", "downtime_mean": "2h"})
    assert isinstance(m, RenewalChurn)
    assert isinstance(m.lifetime, Weibull) and m.lifetime.mean == pytest.approx(2 * YEAR)
    assert m.session.mean == pytest.approx(3 * DAY)
    assert m.downtime.mean == pytest.approx(2 * HOUR)
    e = ChurnModel.from_config({"model": "exponential", "lifetime_mean": 1000})
    assert isinstance(e.lifetime, Exponential) and not e.transient
    ln = ChurnModel.from_config({"model": "lognormal", "sigma": 1.2, "session_mean": "1d",
                                 "downtime_mean": "1h"})
    assert isinstance(ln.lifetime, Never) and ln.transient
    assert ln.session.mean == pytest.approx(DAY)


def test_from_config_tables_and_diurnal() -> None:
    m = ChurnModel.from_config({
        "lifetime": {"dist": "weibull", "shape": 0.5, "scale": "1y"},
        "session": {"dist": "exponential", "rate": 1 / DAY},
        "downtime": {"dist": "lognormal", "median": "2h", "sigma": 1.5},
        "diurnal": {"amplitude": 0.4, "peak_hour": 21},
    })
    assert isinstance(m, Diurnal) and m.amplitude == 0.4 and m.peak_hour == 21
    assert isinstance(m.base.lifetime, Weibull) and m.base.lifetime.scale == pytest.approx(YEAR)
    assert m.session.mean == pytest.approx(DAY)
    assert m.to_config()["diurnal"] == {"amplitude": 0.4, "peak_hour": 21}
    assert distribution_from_config("never") == Never()
    assert distribution_from_config({"dist": "uniform", "low": "1m", "high": "1h"}) == Uniform(60, 3600)


@pytest.mark.parametrize("cfg, words", [
    ({"model": "exponential", "lifetime_mean": "1y", "sesion_mean": "1d"}, "sesion_mean"),
    ({"model": "gamma", "lifetime_mean": "1y"}, "churn.model"),
    ({"model": "weibull", "lifetime_mean": "1y"}, "shape"),
    ({"model": "exponential", "session_mean": "1d"}, "go together"),
    ({"model": "exponential"}, "lifetime_mean"),
    ({"session": {"dist": "exponential", "mean": "1d"}}, "downtime"),
    ({"lifetime": {"dist": "exponential"}}, "exactly one of"),
    ({"lifetime": {"dist": "exponential", "mean": "1y", "median": 3}}, "unknown key"),
    ({"lifetime": {"dist": "weibull", "shape": -1, "mean": "1y"}}, "shape"),
    ({"lifetime": {"dist": "uniform", "low": 10, "high": 5}}, "low < high"),
    ({"lifetime": {"dist": "exponential", "mean": 0}}, "positive"),
    ({"lifetime": "weibull"}, "table"),
    ({"model": "trace"}, "path"),
    ({"model": "exponential", "lifetime_mean": "1y", "diurnal": {"amplitude": 1.5}}, "amplitude"),
    ({"model": "exponential", "lifetime_mean": "1y", "diurnal": {"peak": 3}}, "unknown key"),
    ([1, 2], "table"),
])
def test_from_config_errors(cfg, words) -> None:
    with pytest.raises(ConfigError, match=words):
        ChurnModel.from_config(cfg)


def test_from_config_ignores_the_callers_keys() -> None:
    cfg = {"model": "exponential", "session_mean": "1d", "downtime_mean": "1h",
           "permanent_fraction": 0.3}
    with pytest.raises(ConfigError, match="permanent_fraction"):
        ChurnModel.from_config(cfg)
    m = ChurnModel.from_config(cfg, ignore=["permanent_fraction"])
    assert m.session.mean == pytest.approx(DAY)


# -- diurnal -------------------------------------------------------------------

def test_diurnal_sessions_longer_at_the_peak_and_means_kept() -> None:
    base = RenewalChurn(Never(), Exponential(2 * HOUR), Exponential(2 * HOUR))
    d = Diurnal(base, amplitude=0.8, peak_hour=20)
    n = 50_000
    at_peak = d.sample_sessions(rng(1), n, np.full(n, 20 * HOUR))
    at_trough = d.sample_sessions(rng(1), n, np.full(n, 8 * HOUR))
    assert at_peak.mean() > 1.5 * at_trough.mean()
    back_peak = d.sample_downtimes(rng(2), n, np.full(n, 20 * HOUR))
    back_trough = d.sample_downtimes(rng(2), n, np.full(n, 8 * HOUR))
    assert back_peak.mean() < back_trough.mean() / 1.5
    # a warp whose rate averages 1 over a day: whole days map to whole days
    days = d._warp(np.zeros(4), np.array([DAY, 2 * DAY, 10 * DAY, math.inf]), 0.8)
    assert days[:3] == pytest.approx([DAY, 2 * DAY, 10 * DAY], rel=1e-9)
    assert math.isinf(days[3])
    # and the warp is inverted exactly: R(t0 + W) - R(t0) = D
    t0 = rng(3).uniform(0, DAY, 1000)
    D = rng(4).exponential(5 * HOUR, 1000)
    W = d._warp(t0, D, -0.8)
    w = 2 * math.pi / DAY
    phase = t0 - 20 * HOUR
    R = W + (-0.8 / w) * (np.sin(w * (phase + W)) - np.sin(w * phase))
    assert np.allclose(R, D, rtol=1e-6, atol=1e-3)
    # lifetimes are not modulated
    assert np.array_equal(d.sample_lifetimes(rng(5), 10), base.sample_lifetimes(rng(5), 10))


# -- traces --------------------------------------------------------------------

TRACE = """\
# measured on the devnet
node,join,leave
a,0,100
a,150,400
b,10,50
b,80,
c,5,25
"""


def test_parse_trace_and_empirical_durations() -> None:
    rows = parse_trace(TRACE, "t.csv")
    assert [(r.node, r.join, r.leave) for r in rows] == [
        ("a", 0, 100), ("a", 150, 400), ("b", 10, 50), ("b", 80, None), ("c", 5, 25)]
    assert rows[0].line == 3
    t = Trace(rows, "t.csv")
    assert sorted(t.session.values) == [20.0, 40.0, 100.0, 250.0]  # type: ignore[attr-defined]
    assert sorted(t.downtime.values) == [30.0, 50.0]  # type: ignore[attr-defined]
    assert sorted(t.lifetime.values) == [20.0, 400.0]  # type: ignore[attr-defined]  (b censored)
    assert set(t.sample_sessions(rng(), 100)) <= {20.0, 40.0, 100.0, 250.0}
    assert t.nodes == 3


def test_trace_events_replay() -> None:
    t = Trace.parse(TRACE)
    assert t.node_names == ["a", "c", "b"]
    assert t.events() == [
        (0.0, "down", 1), (0.0, "down", 2), (5.0, "up", 1), (10.0, "up", 2), (25.0, "gone", 1),
        (50.0, "down", 2), (80.0, "up", 2), (100.0, "down", 0), (150.0, "up", 0),
        (400.0, "gone", 0)]
    assert t.events(n_hosts=1, duration=200) == [(100.0, "down", 0), (150.0, "up", 0)]


def test_trace_with_one_session_per_node_has_no_transient_churn() -> None:
    t = Trace.parse("x,0,10\ny,0,30\n")
    assert not t.transient
    assert sorted(t.lifetime.values) == [10.0, 30.0]  # type: ignore[attr-defined]


@pytest.mark.parametrize("text, words", [
    ("", "no sessions"),
    ("# only a comment\n\n", "no sessions"),
    ("a,0\n", "line 1: expected 3 fields"),
    ("a,0,1,2\n", "line 1: expected 3 fields"),
    ("a,0,5\n,1,2\n", "line 2: empty node name"),
    ("a,zero,5\n", "line 1: join time 'zero' is not a number"),
    ("a,0,five\n", "line 1: leave time 'five' is not a number"),
    ("a,-1,5\n", "finite number >= 0"),
    ("a,0,inf\n", "finite number >= 0"),
    ("a,0,nan\n", "finite number >= 0"),
    ("a,10,5\n", "line 1: leave time 5 is before join time 10"),
    ("a,0,10\na,5,20\n", "line 2: node 'a' joins at 5 before its session of line 1"),
    ("a,0,\na,5,20\n", "line 1: node 'a' has an open session"),
    ("a,0,\n", "no completed session"),
    ('"a,0,5\n', "not valid CSV"),
    ("x" * 300 + ",0,5\n", "longer than"),
])
def test_parse_trace_rejects_bad_lines(text, words) -> None:
    with pytest.raises(ConfigError, match=words):
        Trace.parse(text, "bad.csv")


def test_trace_from_config_relative_to_base_dir(tmp_path) -> None:
    (tmp_path / "hosts.csv").write_text(TRACE)
    m = ChurnModel.from_config({"model": "trace", "path": "hosts.csv"}, base_dir=tmp_path)
    assert isinstance(m, Trace) and m.nodes == 3
    with pytest.raises(ConfigError, match="cannot read trace"):
        ChurnModel.from_config({"model": "trace", "path": "missing.csv"}, base_dir=tmp_path)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read trace"):
        ChurnModel.from_config({"model": "trace", "path": "bin.csv"}, base_dir=tmp_path)


# -- correlated failures ---------------------------------------------------------

def test_correlated_random_selects_exact_fraction() -> None:
    ev = CorrelatedFailure(at=DAY, fraction=0.3)
    sel = ev.select(rng(), 10_000)
    assert sel.size == 3000 and np.unique(sel).size == 3000
    assert np.all(np.diff(sel) > 0) and sel.min() >= 0 and sel.max() < 10_000


@pytest.mark.parametrize("scope", ["subnet", "region"])
def test_correlated_groups_fail_whole(scope) -> None:
    n = 10_000
    subnet = np.arange(n) // 4
    region = rng(1).integers(0, 10, n)
    ev = CorrelatedFailure(at=0.0, fraction=0.25, scope=scope)
    sel = ev.select(rng(2), n, subnet=subnet, region=region)
    groups = subnet if scope == "subnet" else region
    hit = np.unique(groups[sel])
    # every host of a hit group is selected, and no other
    assert np.array_equal(np.flatnonzero(np.isin(groups, hit)), sel)
    biggest = np.bincount(groups).max()
    assert 0.25 * n <= sel.size < 0.25 * n + biggest
    with pytest.raises(ConfigError):
        ev.select(rng(), n)


def test_correlated_from_config() -> None:
    evs = events_from_config([
        {"at": "2y", "fraction": 0.3, "scope": "region"},
        {"at": "30d", "fraction": 0.1, "permanent": False, "duration": "6h"},
    ])
    assert [e.at for e in evs] == [30 * DAY, 2 * YEAR]
    assert not evs[0].permanent and evs[0].duration == 6 * HOUR
    assert evs[1].scope == "region" and evs[1].permanent
    assert events_from_config(None) == ()


@pytest.mark.parametrize("cfg, words", [
    ({"at": 0, "fraction": 0}, "fraction"),
    ({"at": 0, "fraction": 1.5}, "fraction"),
    ({"at": 0, "fraction": 0.1, "scope": "planet"}, "scope"),
    ({"at": 0, "fraction": 0.1, "permanent": False}, "duration"),
    ({"at": 0, "fraction": 0.1, "permanent": "yes"}, "permanent"),
    ({"fraction": 0.1}, "needs 'at'"),
    ({"at": 0, "fraction": 0.1, "when": 3}, "unknown key"),
    ({"at": "soon", "fraction": 0.1}, "not a duration"),
])
def test_correlated_from_config_errors(cfg, words) -> None:
    with pytest.raises(ConfigError, match=words):
        CorrelatedFailure.from_config(cfg)
    with pytest.raises(ConfigError):
        events_from_config("not a list")
