"""Churn models: how long hosts stay, how long they are online, how long away.

How it works
------------
A host's life is an *alternating renewal process* inside a *lifetime*:

* it joins, and stays in the network for a **lifetime** (wall-clock seconds,
  offline time included), after which it leaves for good and its shares are
  gone (a *permanent departure*);
* within that lifetime it alternates **sessions** (online) and **downtimes**
  (offline: a *transient absence*; the disk is still there). A downtime that
  would outlast the lifetime means the host never comes back.

A :class:`ChurnModel` draws these three durations with
``sample_lifetimes(rng, n)``, ``sample_sessions(rng, n)`` and
``sample_downtimes(rng, n)`` (seconds, as a float array; ``inf`` for
"never"). ``rng`` is always a :class:`numpy.random.Generator` the caller
seeded, so one seed replays a whole run. Sessions and downtimes take the
wall-clock ``start`` of each period, which :class:`Diurnal` uses.

The models:

* :class:`RenewalChurn` -- one :class:`Distribution` per duration, drawn
  independently: :class:`Exponential`, :class:`Weibull` (shape < 1: many
  early departures, a long tail of stable hosts), :class:`LogNormal`,
  :class:`Fixed`, :class:`Uniform`, :class:`Never`, :class:`Empirical`.
* :class:`Trace` -- empirical durations from a measured trace, a CSV of
  ``node,join,leave`` rows (:func:`parse_trace`), also replayable as
  events for the protocol-level simulator.
* :class:`Diurnal` -- wraps a model and makes sessions end faster (and
  downtimes slower) away from the daily peak hour, by a time warp that keeps
  long-run means.
* :class:`CorrelatedFailure` -- not a renewal process but a scheduled event:
  a fraction of the hosts (random, whole /24 subnets or whole regions) fail at
  once, for good (disks lost) or for a while (a power or network outage).

*Equilibrium.* A network that has been running for a long time does not start
with every host freshly joined: a host picked at random is, by the inspection
paradox, in a longer-than-average period, and its remaining time is the
*forward recurrence time* with density ``S(x) / E[X]`` and mean
``E[X^2] / (2 E[X])`` (Cox, *Renewal Theory*, 1962, ch. 5; Ross, *Stochastic
Processes*, 2nd ed., sec. 3.4). ``Distribution.sample_residual`` draws it as
``U * L`` with ``L`` length-biased (density ``x f(x) / E[X]``) and ``U``
uniform; :meth:`ChurnModel.sample_initial_state` uses it to start hosts in
the stationary state. For exponential durations it is the same exponential;
for Weibull with shape < 1 it is much longer than the mean.

Configuration (a TOML table, see :meth:`ChurnModel.from_config`)::

    [churn]                      # shorthand: one family for all three
    model = "weibull"
    shape = 0.6
    lifetime_mean = "2y"
    session_mean = "3d"
    downtime_mean = "2h"

    [churn]                      # or one table per duration
    lifetime = { dist = "weibull", shape = 0.5, mean = "2y" }
    session = { dist = "exponential", mean = "3d" }
    downtime = { dist = "lognormal", median = "2h", sigma = 1.5 }
    diurnal = { amplitude = 0.5, peak_hour = 20 }

    [churn]                      # or a measured trace
    model = "trace"
    path = "traces/hosts.csv"

Durations are seconds, or strings with a unit: ``"90s"``, ``"15m"``,
``"36h"``, ``"3d"``, ``"2w"``, ``"2y"`` (a year is 365.25 days).
"""

from __future__ import annotations

import csv
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xcore.errors import ConfigError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
YEAR = 365.25 * DAY

_UNITS = {"s": 1.0, "m": MINUTE, "min": MINUTE, "h": HOUR, "d": DAY, "w": WEEK, "y": YEAR}
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|min|m|h|d|w|y)?\s*")
MAX_TRACE_ROWS = 10_000_000
MAX_NODE_NAME = 256


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds from a number (seconds) or a string with a unit (``"36h"``, ``"2y"``).

    ``"inf"``/``"never"`` give ``math.inf``. Raises :class:`ConfigError` on
    anything else, or on a negative or NaN value.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        if value.strip().lower() in ("inf", "never", "infinity"):
            return math.inf
        m = _DURATION.fullmatch(value)
        if m is None:
            raise ConfigError(f"{what}: {value!r} is not a duration (e.g. 3600, \"36h\", \"2y\")")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ConfigError(f"{what}: expected a duration, got {type(value).__name__}")
    if math.isnan(seconds) or seconds < 0:
        raise ConfigError(f"{what}: must be >= 0, got {value!r}")
    return seconds


def _positive(value: Any, what: str, *, duration: bool = True, finite: bool = True) -> float:
    x = parse_duration(value, what) if duration else _number(value, what)
    if not x > 0 or (finite and math.isinf(x)):
        raise ConfigError(f"{what}: must be a positive{' finite' if finite else ''} value, got {value!r}")
    return x


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what}: expected a number, got {value!r}")
    x = float(value)
    if math.isnan(x):
        raise ConfigError(f"{what}: expected a number, got NaN")
    return x


def _check_keys(cfg: Mapping[str, Any], allowed: set[str], where: str) -> None:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")


# -- distributions -------------------------------------------------------------


class Distribution(ABC):
    """A distribution of durations in seconds (non-negative, possibly ``inf``)."""

    @property
    @abstractmethod
    def mean(self) -> float:
        """E[X] in seconds (``inf`` for :class:`Never`)."""

    @abstractmethod
    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        """``size`` independent draws."""

    @abstractmethod
    def sample_length_biased(self, rng: np.random.Generator, size: int) -> FloatArray:
        """Draws with density ``x f(x) / E[X]``: the length of the period a
        random instant falls into."""

    @abstractmethod
    def survival(self, t: FloatArray | float) -> FloatArray:
        """``P(X > t)``."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """The table :func:`distribution_from_config` reads back."""

    @property
    def second_moment(self) -> float:
        """E[X^2] (used for the equilibrium residual mean E[X^2] / 2E[X])."""
        raise NotImplementedError

    def sample_residual(self, rng: np.random.Generator, size: int) -> FloatArray:
        """The remaining time of the period a random instant falls into
        (forward recurrence time, density ``S(x) / E[X]``)."""
        lengths = self.sample_length_biased(rng, size)
        return rng.random(size) * lengths

    @property
    def residual_mean(self) -> float:
        """E[X^2] / (2 E[X])."""
        return self.second_moment / (2 * self.mean)


@dataclass(frozen=True)
class Exponential(Distribution):
    """Memoryless durations; ``scale`` is the mean in seconds (rate ``1 / scale``)."""

    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _positive(self.scale, "exponential mean"))

    @property
    def mean(self) -> float:
        return self.scale

    @property
    def second_moment(self) -> float:
        return 2 * self.scale**2

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        return rng.exponential(self.scale, size)

    def sample_length_biased(self, rng: np.random.Generator, size: int) -> FloatArray:
        return rng.gamma(2.0, self.scale, size)

    def sample_residual(self, rng: np.random.Generator, size: int) -> FloatArray:
        return rng.exponential(self.scale, size)  # memoryless

    def survival(self, t: FloatArray | float) -> FloatArray:
        return np.exp(-np.asarray(t, dtype=float) / self.scale)

    def to_config(self) -> dict[str, Any]:
        return {"dist": "exponential", "mean": self.scale}


@dataclass(frozen=True)
class Weibull(Distribution):
    """Weibull durations, ``S(t) = exp(-(t / scale)^shape)``.

    ``shape < 1`` gives a decreasing hazard (infant mortality: most departures
    come early, the survivors are stable), the usual fit for P2P host
    lifetimes; ``shape = 1`` is exponential. Build it from the mean with
    :meth:`from_mean`.
    """

    shape: float
    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _positive(self.shape, "weibull shape", duration=False))
        object.__setattr__(self, "scale", _positive(self.scale, "weibull scale"))

    @classmethod
    def from_mean(cls, shape: float, mean: float) -> Weibull:
        shape = _positive(shape, "weibull shape", duration=False)
        return cls(shape, _positive(mean, "weibull mean") / math.gamma(1 + 1 / shape))

    @property
    def mean(self) -> float:
        return self.scale * math.gamma(1 + 1 / self.shape)

    @property
    def second_moment(self) -> float:
        return self.scale**2 * math.gamma(1 + 2 / self.shape)

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        return self.scale * rng.weibull(self.shape, size)

    def sample_length_biased(self, rng: np.random.Generator, size: int) -> FloatArray:
        # x f(x) is proportional to x^shape exp(-(x/scale)^shape): with
        # y = (x/scale)^shape that is y^(1/shape) e^-y, a Gamma(1 + 1/shape).
        return self.scale * rng.gamma(1 + 1 / self.shape, 1.0, size) ** (1 / self.shape)

    def survival(self, t: FloatArray | float) -> FloatArray:
        return np.exp(-((np.asarray(t, dtype=float) / self.scale) ** self.shape))

    def to_config(self) -> dict[str, Any]:
        return {"dist": "weibull", "shape": self.shape, "scale": self.scale}


@dataclass(frozen=True)
class LogNormal(Distribution):
    """Durations whose logarithm is normal(``mu``, ``sigma``); median ``exp(mu)``.

    Build it with :meth:`from_median` or :meth:`from_mean`.
    """

    mu: float
    sigma: float

    def __post_init__(self) -> None:
        mu = _number(self.mu, "lognormal mu")
        if not math.isfinite(mu):
            raise ConfigError(f"lognormal mu must be finite, got {self.mu!r}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", _positive(self.sigma, "lognormal sigma", duration=False))

    @classmethod
    def from_median(cls, median: float, sigma: float) -> LogNormal:
        return cls(math.log(_positive(median, "lognormal median")), sigma)

    @classmethod
    def from_mean(cls, mean: float, sigma: float) -> LogNormal:
        sigma = _positive(sigma, "lognormal sigma", duration=False)
        return cls(math.log(_positive(mean, "lognormal mean")) - sigma**2 / 2, sigma)

    @property
    def mean(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)

    @property
    def second_moment(self) -> float:
        return math.exp(2 * self.mu + 2 * self.sigma**2)

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        return rng.lognormal(self.mu, self.sigma, size)

    def sample_length_biased(self, rng: np.random.Generator, size: int) -> FloatArray:
        # x f(x) for a lognormal(mu, s) is a lognormal(mu + s^2, s) density
        return rng.lognormal(self.mu + self.sigma**2, self.sigma, size)

    def survival(self, t: FloatArray | float) -> FloatArray:
        t = np.asarray(t, dtype=float)
        with np.errstate(divide="ignore"):
            z = (np.log(np.maximum(t, 0.0)) - self.mu) / (self.sigma * math.sqrt(2))
        erfc = np.frompyfunc(math.erfc, 1, 1)
        return np.asarray(0.5 * erfc(z), dtype=float)

    def to_config(self) -> dict[str, Any]:
        return {"dist": "lognormal", "mu": self.mu, "sigma": self.sigma}


@dataclass(frozen=True)
class Fixed(Distribution):
    """Always ``value`` seconds (scripted scenarios and tests)."""

    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", parse_duration(self.value, "fixed value"))

    @property
    def mean(self) -> float:
        return float(self.value)

    @property
    def second_moment(self) -> float:
        return float(self.value) ** 2

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        return np.full(size, float(self.value))

    def sample_length_biased(self, rng: np.random.Generator, size: int) -> FloatArray:
        return self.sample(rng, size)

    def survival(self, t: FloatArray | float) -> FloatArray:
        return (np.asarray(t, dtype=float) < self.value).astype(float)

    def to_config(self) -> dict[str, Any]:
        return {"dist": "fixed", "value": self.value}


@dataclass(frozen=True)
class Uniform(Distribution):
    """Uniform on ``[low, high]`` seconds."""

    low: float
    high: float

    def __post_init__(self) -> None:
        lo = parse_duration(self.low, "uniform low")
        hi = parse_duration(self.high, "uniform high")
        if not lo < hi or math.isinf(hi):
            raise ConfigError(f"uniform: need 0 <= low < high < inf, got {self.low!r}, {self.high!r}")
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    @property
    def second_moment(self) -> float:
        return (self.low**2 + self.low * self.high + self.high**2) / 3

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        return rng.uniform(self.low, self.high, size)

    def sample_length_biased(self, rng: np.random.Generator, size: int) -> FloatArray:
        # density x / (mean (high - low)) on [low, high]: inverse CDF
        u = rng.random(size)
        return np.sqrt(self.low**2 + u * (self.high**2 - self.low**2))

    def survival(self, t: FloatArray | float) -> FloatArray:
        t = np.asarray(t, dtype=float)
        return np.clip((self.high - t) / (self.high - self.low), 0.0, 1.0)

    def to_config(self) -> dict[str, Any]:
        return {"dist": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Never(Distribution):
    """An infinite duration: the host never leaves (or never goes offline)."""

    @property
    def mean(self) -> float:
        return math.inf

    @property
    def second_moment(self) -> float:
        return math.inf

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        return np.full(size, math.inf)

    def sample_length_biased(self, rng: np.random.Generator, size: int) -> FloatArray:
        return self.sample(rng, size)

    def sample_residual(self, rng: np.random.Generator, size: int) -> FloatArray:
        return self.sample(rng, size)

    @property
    def residual_mean(self) -> float:
        return math.inf

    def survival(self, t: FloatArray | float) -> FloatArray:
        return np.ones_like(np.asarray(t, dtype=float))

    def to_config(self) -> dict[str, Any]:
        return {"dist": "never"}


@dataclass(frozen=True)
class Empirical(Distribution):
    """Resample measured durations (bootstrap)."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConfigError("empirical distribution: no samples")
        arr = np.asarray(self.values, dtype=float)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ConfigError("empirical distribution: samples must be finite and >= 0")
        object.__setattr__(self, "_arr", arr)

    @property
    def _a(self) -> FloatArray:
        return self._arr  # type: ignore[attr-defined, no-any-return]

    @property
    def mean(self) -> float:
        return float(self._a.mean())

    @property
    def second_moment(self) -> float:
        return float(np.mean(self._a**2))

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        return self._a[rng.integers(0, self._a.size, size)]

    def sample_length_biased(self, rng: np.random.Generator, size: int) -> FloatArray:
        total = self._a.sum()
        if total <= 0:
            return np.zeros(size)
        cum = np.cumsum(self._a)
        pick = np.searchsorted(cum, rng.random(size) * total, side="right")
        out: FloatArray = self._a[np.minimum(pick, self._a.size - 1)]
        return out

    def survival(self, t: FloatArray | float) -> FloatArray:
        srt = np.sort(self._a)
        t = np.asarray(t, dtype=float)
        return 1.0 - np.searchsorted(srt, t, side="right") / srt.size

    def to_config(self) -> dict[str, Any]:
        return {"dist": "empirical", "samples": len(self.values)}


_DIST_KEYS: dict[str, set[str]] = {
    "exponential": {"mean", "rate"},
    "weibull": {"shape", "mean", "scale"},
    "lognormal": {"sigma", "mean", "median", "mu"},
    "fixed": {"value"},
    "uniform": {"low", "high"},
    "never": set(),
}


def distribution_from_config(cfg: Mapping[str, Any] | str | None, where: str = "distribution"
                             ) -> Distribution:
    """A :class:`Distribution` from a table like ``{dist = "weibull", shape = 0.5, mean = "2y"}``.

    ``"never"`` (or an absent table) gives :class:`Never`.
    """
    if cfg is None or (isinstance(cfg, str) and cfg.strip().lower() == "never"):
        return Never()
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a table like {{dist = \"exponential\", mean = \"3d\"}}")
    kind = cfg.get("dist")
    if not isinstance(kind, str) or kind.lower() not in _DIST_KEYS:
        raise ConfigError(f"{where}: 'dist' must be one of {', '.join(sorted(_DIST_KEYS))}, "
                          f"got {kind!r}")
    kind = kind.lower()
    _check_keys(cfg, _DIST_KEYS[kind] | {"dist"}, where)

    def one_of(*names: str) -> str:
        given = [n for n in names if n in cfg]
        if len(given) != 1:
            raise ConfigError(f"{where}: {kind} needs exactly one of {', '.join(names)}")
        return given[0]

    try:
        if kind == "exponential":
            which = one_of("mean", "rate")
            if which == "rate":
                return Exponential(1.0 / _positive(cfg["rate"], f"{where}.rate", duration=False))
            return Exponential(_positive(cfg["mean"], f"{where}.mean"))
        if kind == "weibull":
            shape = _positive(cfg.get("shape"), f"{where}.shape", duration=False)
            if one_of("mean", "scale") == "mean":
                return Weibull.from_mean(shape, _positive(cfg["mean"], f"{where}.mean"))
            return Weibull(shape, _positive(cfg["scale"], f"{where}.scale"))
        if kind == "lognormal":
            sigma = _positive(cfg.get("sigma"), f"{where}.sigma", duration=False)
            which = one_of("mean", "median", "mu")
            if which == "mean":
                return LogNormal.from_mean(_positive(cfg["mean"], f"{where}.mean"), sigma)
            if which == "median":
                return LogNormal.from_median(_positive(cfg["median"], f"{where}.median"), sigma)
            return LogNormal(_number(cfg["mu"], f"{where}.mu"), sigma)
        if kind == "fixed":
            return Fixed(parse_duration(cfg.get("value"), f"{where}.value"))
        if kind == "uniform":
            return Uniform(parse_duration(cfg.get("low"), f"{where}.low"),
                           parse_duration(cfg.get("high"), f"{where}.high"))
        return Never()
    except ConfigError as exc:
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None


# -- churn models --------------------------------------------------------------


def _starts(start: FloatArray | float | None, n: int) -> FloatArray:
    if start is None:
        return np.zeros(n)
    return np.broadcast_to(np.asarray(start, dtype=float), (n,))


class ChurnModel(ABC):
    """Where host lifetimes, sessions and downtimes come from.

    All durations are wall-clock seconds (``inf`` = never). ``start`` is the
    wall-clock time (seconds since the run began) each drawn period begins;
    only time-dependent models (:class:`Diurnal`) look at it.
    """

    @abstractmethod
    def sample_lifetimes(self, rng: np.random.Generator, n: int,
                         start: FloatArray | float | None = None) -> FloatArray:
        """Time from joining to leaving for good, for ``n`` new hosts."""

    @abstractmethod
    def sample_sessions(self, rng: np.random.Generator, n: int,
                        start: FloatArray | float | None = None) -> FloatArray:
        """Lengths of ``n`` online periods starting at ``start``."""

    @abstractmethod
    def sample_downtimes(self, rng: np.random.Generator, n: int,
                         start: FloatArray | float | None = None) -> FloatArray:
        """Lengths of ``n`` transient absences starting at ``start``."""

    @property
    @abstractmethod
    def lifetime(self) -> Distribution:
        """The lifetime distribution (for closed forms and equilibrium starts)."""

    @property
    @abstractmethod
    def session(self) -> Distribution:
        """The session distribution."""

    @property
    @abstractmethod
    def downtime(self) -> Distribution:
        """The downtime distribution."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """A description (a table like the one :meth:`from_config` reads)."""

    @property
    def transient(self) -> bool:
        """Whether hosts go offline between sessions at all."""
        return math.isfinite(self.session.mean)

    @property
    def online_fraction(self) -> float:
        """Long-run fraction of time a (not departed) host is online: E[S] / (E[S] + E[D])."""
        s, d = self.session.mean, self.downtime.mean
        if math.isinf(s):
            return 1.0
        return s / (s + d)

    def sample_residual_lifetimes(self, rng: np.random.Generator, n: int) -> FloatArray:
        """Remaining lifetimes of ``n`` hosts of a network in equilibrium."""
        return self.lifetime.sample_residual(rng, n)

    def sample_initial_state(self, rng: np.random.Generator, n: int
                             ) -> tuple[NDArray[np.bool_], FloatArray]:
        """Equilibrium state of ``n`` hosts: ``(online, remaining)``.

        A host is online with probability :attr:`online_fraction`; ``remaining``
        is the forward recurrence time of its current session (if online) or
        downtime (if offline).
        """
        if not self.transient:
            return np.ones(n, dtype=bool), np.full(n, math.inf)
        online = rng.random(n) < self.online_fraction
        remaining = np.empty(n)
        on = np.flatnonzero(online)
        off = np.flatnonzero(~online)
        remaining[on] = self.session.sample_residual(rng, on.size)
        remaining[off] = self.downtime.sample_residual(rng, off.size)
        return online, remaining

    @staticmethod
    def from_config(cfg: Mapping[str, Any], *, base_dir: Path | str | None = None,
                    ignore: Iterable[str] = ()) -> ChurnModel:
        """Build a model from a ``[churn]`` table (see the module docstring).

        A trace ``path`` is relative to ``base_dir`` if given. Keys in
        ``ignore`` belong to the caller and are skipped; any other unknown key
        or bad value raises :class:`~xcore.errors.ConfigError`.
        """
        return churn_from_config(cfg, base_dir=base_dir, ignore=ignore)


@dataclass(frozen=True)
class RenewalChurn(ChurnModel):
    """Independent lifetime, session and downtime distributions.

    The defaults are a host that never leaves and never goes offline.
    """

    lifetime_dist: Distribution = field(default_factory=Never)
    session_dist: Distribution = field(default_factory=Never)
    downtime_dist: Distribution = field(default_factory=lambda: Fixed(0.0))

    @property
    def lifetime(self) -> Distribution:
        return self.lifetime_dist

    @property
    def session(self) -> Distribution:
        return self.session_dist

    @property
    def downtime(self) -> Distribution:
        return self.downtime_dist

    def sample_lifetimes(self, rng: np.random.Generator, n: int,
                         start: FloatArray | float | None = None) -> FloatArray:
        return self.lifetime_dist.sample(rng, n)

    def sample_sessions(self, rng: np.random.Generator, n: int,
                        start: FloatArray | float | None = None) -> FloatArray:
        return self.session_dist.sample(rng, n)

    def sample_downtimes(self, rng: np.random.Generator, n: int,
                         start: FloatArray | float | None = None) -> FloatArray:
        return self.downtime_dist.sample(rng, n)

    def to_config(self) -> dict[str, Any]:
        return {"lifetime": self.lifetime_dist.to_config(),
                "session": self.session_dist.to_config(),
                "downtime": self.downtime_dist.to_config()}


def exponential_churn(lifetime_mean: float, session_mean: float | None = None,
                      downtime_mean: float | None = None) -> RenewalChurn:
    """Exponential lifetimes, and (if given) exponential sessions and downtimes."""
    return RenewalChurn(
        Exponential(lifetime_mean) if math.isfinite(lifetime_mean) else Never(),
        Exponential(session_mean) if session_mean is not None else Never(),
        Exponential(downtime_mean) if downtime_mean is not None else Fixed(0.0))


# -- diurnal modulation --------------------------------------------------------


@dataclass(frozen=True)
class Diurnal(ChurnModel):
    """Daily rhythm on top of another model.

    Sessions and downtimes are drawn from ``base`` in *operational time* and
    mapped to wall-clock time through a warp whose rate is
    ``r(t) = 1 + b cos(2 pi (t - peak) / day)``: a wall-clock interval
    ``[t0, t0 + W]`` consumes ``R(t0 + W) - R(t0)`` of operational time,
    ``R(t) = t + b day / (2 pi) sin(2 pi (t - peak) / day)``. Sessions use
    ``b = -amplitude`` (they end slowly around the peak hour, fast twelve hours
    away from it) and downtimes ``b = +amplitude`` (hosts come back fast around
    the peak). Because ``r`` averages to 1 over a day, periods much longer than
    a day keep their base length; the fraction of hosts online peaks near
    ``peak_hour``. Lifetimes are not modulated.

    (A non-homogeneous process obtained by a deterministic time change:
    Cinlar, *Introduction to Stochastic Processes*, 1975, ch. 4.)
    """

    base: ChurnModel
    amplitude: float = 0.5
    peak_hour: float = 20.0
    day: float = DAY

    def __post_init__(self) -> None:
        a = _number(self.amplitude, "diurnal amplitude")
        if not 0 <= a < 1:
            raise ConfigError(f"diurnal amplitude must be in [0, 1), got {self.amplitude!r}")
        h = _number(self.peak_hour, "diurnal peak_hour")
        if not 0 <= h < 24:
            raise ConfigError(f"diurnal peak_hour must be in [0, 24), got {self.peak_hour!r}")
        _positive(self.day, "diurnal day")

    @property
    def lifetime(self) -> Distribution:
        return self.base.lifetime

    @property
    def session(self) -> Distribution:
        return self.base.session

    @property
    def downtime(self) -> Distribution:
        return self.base.downtime

    def _warp(self, start: FloatArray, operational: FloatArray, b: float) -> FloatArray:
        """Wall-clock lengths W with R(start + W) - R(start) = operational."""
        w = 2 * math.pi / self.day
        phase0 = start - self.peak_hour * HOUR * self.day / DAY
        out = np.array(operational, dtype=float, copy=True)
        fin = np.isfinite(out) & (out > 0)
        if b == 0 or not fin.any():
            return out
        d = out[fin]
        p0 = phase0[fin]
        s0 = np.sin(w * p0)
        amp = abs(b) / w
        lo = np.maximum(d - 2 * amp, d / (1 + abs(b)))
        hi = np.minimum(d + 2 * amp, d / (1 - abs(b)))
        x = np.clip(d - (b / w) * (np.sin(w * (p0 + d)) - s0), lo, hi)  # one fixed-point step
        todo = np.arange(d.size)
        for _ in range(100):  # safeguarded Newton: quadratic near the root, bisection if it strays
            xa, pa = x[todo], p0[todo]
            f = xa + (b / w) * (np.sin(w * (pa + xa)) - s0[todo]) - d[todo]
            left = np.abs(f) > 1e-7 * np.maximum(1.0, d[todo])
            todo, xa, pa, f = todo[left], xa[left], pa[left], f[left]
            if todo.size == 0:
                break
            lo[todo] = np.where(f < 0, xa, lo[todo])
            hi[todo] = np.where(f > 0, xa, hi[todo])
            nxt = xa - f / (1 + b * np.cos(w * (pa + xa)))
            la, ha = lo[todo], hi[todo]
            x[todo] = np.where((nxt <= la) | (nxt >= ha), (la + ha) / 2, nxt)
        out[fin] = x
        return out

    def sample_lifetimes(self, rng: np.random.Generator, n: int,
                         start: FloatArray | float | None = None) -> FloatArray:
        return self.base.sample_lifetimes(rng, n, start)

    def sample_sessions(self, rng: np.random.Generator, n: int,
                        start: FloatArray | float | None = None) -> FloatArray:
        t0 = _starts(start, n)
        return self._warp(t0, self.base.sample_sessions(rng, n, t0), -self.amplitude)

    def sample_downtimes(self, rng: np.random.Generator, n: int,
                         start: FloatArray | float | None = None) -> FloatArray:
        t0 = _starts(start, n)
        return self._warp(t0, self.base.sample_downtimes(rng, n, t0), self.amplitude)

    def sample_residual_lifetimes(self, rng: np.random.Generator, n: int) -> FloatArray:
        return self.base.sample_residual_lifetimes(rng, n)

    def sample_initial_state(self, rng: np.random.Generator, n: int
                             ) -> tuple[NDArray[np.bool_], FloatArray]:
        # the base equilibrium, ignoring the phase of the day at t = 0
        return self.base.sample_initial_state(rng, n)

    def to_config(self) -> dict[str, Any]:
        out = dict(self.base.to_config())
        out["diurnal"] = {"amplitude": self.amplitude, "peak_hour": self.peak_hour}
        return out


# -- traces --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceSession:
    """One CSV row: ``node`` was online from ``join`` to ``leave`` (``None``: still
    online when the trace ends)."""

    node: str
    join: float
    leave: float | None
    line: int = 0


def _trace_float(text: str, what: str, where: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(x) or x < 0:
        raise ConfigError(f"{where}: {what} must be a finite number >= 0, got {text!r}")
    return x


def parse_trace(text: str, source: str = "<trace>") -> list[TraceSession]:
    """Parse a ``node,join,leave`` CSV (times in seconds from the trace start).

    Blank lines and lines starting with ``#`` are skipped; a first line
    ``node,join,leave`` is a header. ``leave`` may be empty: the node was
    still online when the trace ended. Each bad line raises
    :class:`~xcore.errors.ConfigError` naming ``source`` and the line: wrong
    field count, empty or overlong node name, a time that is not a finite
    number >= 0, ``leave < join``, sessions of one node that overlap, or an
    open session that is not the node's last.
    """
    rows: list[TraceSession] = []
    header_seen = False
    lines = text.splitlines()
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {lineno}"
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise ConfigError(f"{where}: not valid CSV ({exc})") from None
        fields = [f.strip() for f in fields]
        if not header_seen and not rows and [f.lower() for f in fields] == ["node", "join", "leave"]:
            header_seen = True
            continue
        if len(fields) != 3:
            raise ConfigError(f"{where}: expected 3 fields node,join,leave, got {len(fields)}")
        node, join_s, leave_s = fields
        if not node:
            raise ConfigError(f"{where}: empty node name")
        if len(node) > MAX_NODE_NAME:
            raise ConfigError(f"{where}: node name longer than {MAX_NODE_NAME} characters")
        join = _trace_float(join_s, "join time", where)
        leave = None if leave_s == "" else _trace_float(leave_s, "leave time", where)
        if leave is not None and leave < join:
            raise ConfigError(f"{where}: leave time {leave_s} is before join time {join_s}")
        rows.append(TraceSession(node, join, leave, lineno))
        if len(rows) > MAX_TRACE_ROWS:
            raise ConfigError(f"{source}: more than {MAX_TRACE_ROWS} rows")
    if not rows:
        raise ConfigError(f"{source}: the trace has no sessions")
    by_node: dict[str, list[TraceSession]] = {}
    for r in rows:
        by_node.setdefault(r.node, []).append(r)
    for node, sessions in by_node.items():
        sessions.sort(key=lambda r: r.join)
        for a, b in zip(sessions, sessions[1:]):
            if a.leave is None:
                raise ConfigError(f"{source} line {a.line}: node {node!r} has an open session "
                                  f"(no leave time) that is not its last (see line {b.line})")
            if b.join < a.leave:
                raise ConfigError(f"{source} line {b.line}: node {node!r} joins at {b.join:g} "
                                  f"before its session of line {a.line} ends at {a.leave:g}")
    return rows


class Trace(ChurnModel):
    """Churn measured on a real network, from a ``node,join,leave`` CSV.

    Durations are resampled (bootstrap) from the trace:

    * sessions: the completed sessions ``leave - join``;
    * downtimes: the gaps between consecutive sessions of a node;
    * lifetimes: first join to last leave of each node whose last session
      ended inside the trace (nodes still online at the end are censored and
      left out; if every node is censored, hosts never leave).

    If no node ever came back (one session per node), sessions *are*
    lifetimes: hosts never go offline transiently and leave after a resampled
    session length.

    :meth:`events` replays the trace itself, for the protocol-level simulator.
    """

    def __init__(self, sessions: Sequence[TraceSession], source: str = "<trace>") -> None:
        if not sessions:
            raise ConfigError(f"{source}: the trace has no sessions")
        self.rows: tuple[TraceSession, ...] = tuple(sessions)
        self.source = source
        by_node: dict[str, list[TraceSession]] = {}
        for r in self.rows:
            by_node.setdefault(r.node, []).append(r)
        durations = [r.leave - r.join for r in self.rows if r.leave is not None]
        gaps: list[float] = []
        spans: list[float] = []
        for node_rows in by_node.values():
            node_rows.sort(key=lambda r: r.join)
            gaps.extend(b.join - a.leave for a, b in zip(node_rows, node_rows[1:])
                        if a.leave is not None)
            last = node_rows[-1].leave
            if last is not None:
                spans.append(last - node_rows[0].join)
        if not durations:
            raise ConfigError(f"{source}: the trace has no completed session (every leave is empty)")
        self.nodes = len(by_node)
        if gaps:
            self._session: Distribution = Empirical(tuple(durations))
            self._downtime: Distribution = Empirical(tuple(gaps))
            self._lifetime: Distribution = Empirical(tuple(spans)) if spans else Never()
        else:
            self._session = Never()
            self._downtime = Fixed(0.0)
            self._lifetime = Empirical(tuple(durations))

    @classmethod
    def parse(cls, text: str, source: str = "<trace>") -> Trace:
        return cls(parse_trace(text, source), source)

    @classmethod
    def load(cls, path: Path | str) -> Trace:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read trace {str(p)!r}: {exc}") from None
        return cls.parse(text, str(p))

    @property
    def lifetime(self) -> Distribution:
        return self._lifetime

    @property
    def session(self) -> Distribution:
        return self._session

    @property
    def downtime(self) -> Distribution:
        return self._downtime

    def sample_lifetimes(self, rng: np.random.Generator, n: int,
                         start: FloatArray | float | None = None) -> FloatArray:
        return self._lifetime.sample(rng, n)

    def sample_sessions(self, rng: np.random.Generator, n: int,
                        start: FloatArray | float | None = None) -> FloatArray:
        return self._session.sample(rng, n)

    def sample_downtimes(self, rng: np.random.Generator, n: int,
                         start: FloatArray | float | None = None) -> FloatArray:
        return self._downtime.sample(rng, n)

    @property
    def node_names(self) -> list[str]:
        """Node names in order of first appearance: host ``i`` of :meth:`events`."""
        return list(dict.fromkeys(r.node for r in sorted(self.rows, key=lambda r: (r.join, r.line))))

    def events(self, n_hosts: int | None = None, duration: float | None = None
               ) -> list[tuple[float, str, int]]:
        """Replay the trace: ``(time, kind, host)`` in time order.

        Host ``i`` is the ``i``-th node of :attr:`node_names` (only the first
        ``n_hosts`` if given). Every host is taken to be online at time 0, so
        a node whose first join is later gets ``"down"`` at 0 and ``"up"`` at
        its join; a leave followed by a later session is ``"down"``, the last
        leave is ``"gone"`` (the node left for good, as for lifetimes); an
        empty leave emits nothing. Events after ``duration`` are dropped.
        """
        names = self.node_names
        index = {name: i for i, name in enumerate(names)}
        by_node: dict[str, list[TraceSession]] = {}
        for r in self.rows:
            by_node.setdefault(r.node, []).append(r)
        out: list[tuple[float, str, int]] = []
        for name, rows in by_node.items():
            i = index[name]
            if n_hosts is not None and i >= n_hosts:
                continue
            rows = sorted(rows, key=lambda r: r.join)
            if rows[0].join > 0:
                out.append((0.0, "down", i))
            for j, r in enumerate(rows):
                if r.join > 0:
                    out.append((r.join, "up", i))
                if r.leave is not None:
                    out.append((r.leave, "gone" if j == len(rows) - 1 else "down", i))
        if duration is not None:
            out = [e for e in out if e[0] <= duration]
        order = {"down": 0, "gone": 0, "up": 1}
        out.sort(key=lambda e: (e[0], order[e[1]], e[2]))
        return out

    def to_config(self) -> dict[str, Any]:
        return {"model": "trace", "source": self.source, "rows": len(self.rows),
                "nodes": self.nodes}


# -- correlated failures -------------------------------------------------------

SCOPES = ("random", "subnet", "region")


@dataclass(frozen=True)
class CorrelatedFailure:
    """A fraction of the hosts failing at once, at time ``at`` (seconds from start).

    ``scope``: ``"random"`` picks ``round(fraction * hosts)`` hosts uniformly;
    ``"subnet"`` and ``"region"`` take whole /24 subnets or whole regions, in
    random order, until at least ``fraction`` of the hosts are hit (a
    regional outage, a provider's /24). ``permanent``: the hosts are gone
    with their disks (a fire, a bad firmware update); otherwise they come back
    after ``duration`` seconds with their shares intact (a power or network
    outage), which costs no repair if ``duration`` is shorter than the grace
    period.
    """

    at: float
    fraction: float
    scope: str = "random"
    permanent: bool = True
    duration: float = 0.0

    def __post_init__(self) -> None:
        at = parse_duration(self.at, "event time")
        if math.isinf(at):
            raise ConfigError("event time must be finite")
        f = _number(self.fraction, "event fraction")
        if not 0 < f <= 1:
            raise ConfigError(f"event fraction must be in (0, 1], got {self.fraction!r}")
        if self.scope not in SCOPES:
            raise ConfigError(f"event scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        d = parse_duration(self.duration, "event duration")
        if not self.permanent and not 0 < d < math.inf:
            raise ConfigError("a transient event (permanent = false) needs a finite duration > 0")
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "fraction", f)
        object.__setattr__(self, "duration", d)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> CorrelatedFailure:
        _check_keys(cfg, {"at", "fraction", "scope", "permanent", "duration"}, "event")
        if "at" not in cfg or "fraction" not in cfg:
            raise ConfigError("event: needs 'at' and 'fraction'")
        permanent = cfg.get("permanent", True)
        if not isinstance(permanent, bool):
            raise ConfigError(f"event.permanent must be true or false, got {permanent!r}")
        scope = cfg.get("scope", "random")
        if not isinstance(scope, str):
            raise ConfigError(f"event.scope must be a string, got {scope!r}")
        return cls(parse_duration(cfg["at"], "event.at"), _number(cfg["fraction"], "event.fraction"),
                   scope, permanent, parse_duration(cfg.get("duration", 0.0), "event.duration"))

    def select(self, rng: np.random.Generator, n_hosts: int, *,
               subnet: NDArray[np.integer[Any]] | None = None,
               region: NDArray[np.integer[Any]] | None = None) -> IntArray:
        """Sorted indices (into ``0..n_hosts-1``) of the hosts this event hits.

        ``subnet`` / ``region``: the group of each host, needed for those scopes.
        """
        if self.scope == "random":
            count = min(n_hosts, int(round(self.fraction * n_hosts)))
            return np.sort(rng.choice(n_hosts, size=count, replace=False)).astype(np.int64)
        groups = subnet if self.scope == "subnet" else region
        if groups is None or len(groups) != n_hosts:
            raise ConfigError(f"a {self.scope!r} event needs the {self.scope} of every host")
        ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        order = rng.permutation(ids.size)
        target = self.fraction * n_hosts
        cum = np.cumsum(counts[order])
        take = int(np.searchsorted(cum, target - 1e-9)) + 1
        chosen = np.zeros(ids.size, dtype=bool)
        chosen[order[:take]] = True
        return np.flatnonzero(chosen[inverse]).astype(np.int64)

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at, "fraction": self.fraction, "scope": self.scope,
                               "permanent": self.permanent}
        if not self.permanent:
            out["duration"] = self.duration
        return out


def events_from_config(items: Any) -> tuple[CorrelatedFailure, ...]:
    """The ``[[events]]`` array of tables."""
    if items is None:
        return ()
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise ConfigError("events: expected an array of tables ([[events]])")
    return tuple(sorted((CorrelatedFailure.from_config(e) for e in items), key=lambda e: e.at))


# -- configuration -------------------------------------------------------------

_FAMILIES = ("exponential", "weibull", "lognormal")


def churn_from_config(cfg: Mapping[str, Any], *, base_dir: Path | str | None = None,
                      ignore: Iterable[str] = ()) -> ChurnModel:
    """See :meth:`ChurnModel.from_config`."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"churn: expected a table, got {type(cfg).__name__}")
    skip = set(ignore)
    cfg = {key: value for key, value in cfg.items() if key not in skip}
    model = cfg.get("model")
    diurnal = cfg.get("diurnal")
    base: ChurnModel
    if model == "trace":
        _check_keys(cfg, {"model", "path", "diurnal"}, "churn")
        path = cfg.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError("churn: a trace model needs 'path' (a CSV of node,join,leave)")
        p = Path(path)
        if base_dir is not None and not p.is_absolute():
            p = Path(base_dir) / p
        base = Trace.load(p)
    elif model is None or model == "renewal":
        _check_keys(cfg, {"model", "lifetime", "session", "downtime", "diurnal"}, "churn")
        session = distribution_from_config(cfg.get("session"), "churn.session")
        downtime = cfg.get("downtime")
        if session.mean != math.inf and downtime is None:
            raise ConfigError("churn: sessions are finite, so 'downtime' is needed too")
        base = RenewalChurn(distribution_from_config(cfg.get("lifetime"), "churn.lifetime"),
                            session,
                            distribution_from_config(downtime, "churn.downtime")
                            if downtime is not None else Fixed(0.0))
    elif model in _FAMILIES:
        allowed = {"model", "lifetime_mean", "session_mean", "downtime_mean", "diurnal"}
        if model == "weibull":
            allowed |= {"shape"}
        if model == "lognormal":
            allowed |= {"sigma"}
        _check_keys(cfg, allowed, "churn")
        if "lifetime_mean" not in cfg and "session_mean" not in cfg:
            raise ConfigError("churn: give lifetime_mean and/or session_mean (+ downtime_mean)")
        if ("session_mean" in cfg) != ("downtime_mean" in cfg):
            raise ConfigError("churn: session_mean and downtime_mean go together")

        def make(key: str) -> Distribution:
            if key not in cfg:
                return Never()
            where = f"churn.{key}"
            mean = parse_duration(cfg[key], where)
            if math.isinf(mean):
                return Never()
            if model == "exponential":
                return distribution_from_config({"dist": "exponential", "mean": mean}, where)
            if model == "weibull":
                return distribution_from_config(
                    {"dist": "weibull", "mean": mean, "shape": cfg.get("shape")}, where)
            return distribution_from_config(
                {"dist": "lognormal", "mean": mean, "sigma": cfg.get("sigma")}, where)

        sess = make("session_mean")
        base = RenewalChurn(make("lifetime_mean"), sess,
                            make("downtime_mean") if sess.mean != math.inf else Fixed(0.0))
    else:
        raise ConfigError(f"churn.model must be one of {', '.join(_FAMILIES + ('renewal', 'trace'))}, "
                          f"got {model!r}")
    if diurnal is None:
        return base
    _check_keys(diurnal, {"amplitude", "peak_hour"}, "churn.diurnal")
    return Diurnal(base, _number(diurnal.get("amplitude", 0.5), "churn.diurnal.amplitude"),
                   _number(diurnal.get("peak_hour", 20.0), "churn.diurnal.peak_hour"))


__all__ = [
    "ChurnModel", "RenewalChurn", "Diurnal", "Trace", "TraceSession", "parse_trace",
    "CorrelatedFailure", "events_from_config", "churn_from_config", "exponential_churn",
    "Distribution", "Exponential", "Weibull", "LogNormal", "Fixed", "Uniform", "Never",
    "Empirical", "distribution_from_config", "parse_duration",
    "MINUTE", "HOUR", "DAY", "WEEK", "YEAR",
]
