"""Model-level simulator: durability and repair bandwidth of a whole network, in numpy.

The protocol-level simulator runs the real node code and tops out at a few
hundred nodes; this model keeps only what decides durability and repair cost,
so it runs 1,000,000 hosts for 5 years in minutes. It applies the same policy
as the nodes (:mod:`xcore.contracts.repair`, :mod:`xcore.repairer`):

* a segment has ``n`` shares on ``n`` distinct hosts; any ``k`` rebuild it;
* a share is *healthy* while its host is online or has been away for less
  than ``grace`` seconds (:class:`~xcore.contracts.repair.RepairPlanner`);
* when fewer than ``threshold`` shares are healthy (default
  ``Redundancy(k, n).repair_threshold = k + ceil((n - k) / 3)``) and at least
  ``k`` are online, the *leader* (the online holder whose node ID is closest
  to the segment ID by XOR) downloads ``k - 1`` shares (it holds one),
  regenerates every missing share and uploads each to a random online host
  that holds none of the segment: ``(k - 1 + missing) * share_size`` bytes;
* each leader moves at most ``rate`` bytes/s (the :class:`~xcore.contracts.repair.TokenBucket`
  of :class:`~xcore.repairer.Repairer`); repairs that do not fit wait;
* a share whose host comes back after it was declared missing and replaced
  is garbage; if it was not replaced yet it is healthy again.

How it works
------------
Time advances in steps of ``step`` seconds (default one hour); host events
keep their exact times. A host slot is either *cycling* (online, or in a
short absence ``[off_start, off_end)``) or *away* (an absence that outlasts
the grace period while the host holds shares, or that ends in departure).
When a session ends, the model draws the downtime at once: a short absence
needs no event of its own (the host is simply offline during the interval,
for placement and leader choice), so the common event touches no share; an
away host gets events when its grace period ends (its shares are declared
gone), when it comes back, or when it leaves for good (lifetime over; its
slot is then taken by a new, empty host). ``wake_step`` holds the step of
each host's next event; each step scans it and handles the hosts due in
vectorised rounds (one event per host per round), drawing new durations
from the :class:`~sims.churn.ChurnModel`.

Shares are *records* ``(cell, host)``; ``cell = segment * n + index`` and
``cell_rec[cell]`` is the current record of each share index. The records
of each host are found through a CSR index (rebuilt now and then) plus short
per-host linked lists for records added since (``head``, ``rec_next``), so
an event touches only that host's records and the lookup is vectorised over
all hosts of a round. A record replaced by repair stays in its old host's
list but no longer matches ``cell_rec`` and is skipped; storage is compacted
when it runs out. Per segment the model keeps two counters, updated with
``np.add.at``: ``n_exist`` (shares on hosts that have not left: fewer than
``k`` means lost) and ``n_healthy`` (online or within grace: fewer than
``threshold`` triggers repair). At the end of a step lost segments are
marked, segments below threshold are queued, and the queue is repaired
within the leaders' bandwidth (the online holders of a queued segment are
counted then, from its cells).

What it leaves out: network latency and the protocol itself; repair
decisions happen at step ends (so the effective grace is rounded up to a
step); a transfer completes in the step it starts, and only the leader's
bandwidth is limited; host capacity is unlimited; placement is uniform over
online hosts (the real selection weighs reputation and avoids /24
crowding); a correlated outage that hits a host already in a short absence
restarts its absence (and grace timer) at the event.

Closed forms
------------
:func:`durability_binomial` and :func:`durability_poisson` (Storj v3
whitepaper, sec. 3.4), :func:`lazy_repair_bandwidth` (Storj v3 whitepaper,
sec. 7.1 "Object repair costs", after Giroire, Monteiro & Perennes, "Peer-to-peer
storage systems: a practical guideline to be lazy", IEEE GLOBECOM 2010; plus
the exact harmonic-sum version for this threshold rule, derived there), and
:func:`lazy_repair_chain`, an exact Markov chain of the model with exponential
lifetimes and no grace, used by the tests to validate the simulator.

References: Storj Labs, "Storj: A Decentralized Cloud Storage Network
Framework", v3.0, 30 Oct 2018 (https://github.com/storj/whitepaper);
F. Giroire, J. Monteiro, S. Perennes, "Peer-to-Peer Storage Systems: a
Practical Guideline to be Lazy", IEEE GLOBECOM 2010; S. M. Ross,
*Stochastic Processes*, 2nd ed., 1996, sec. 3.6 (renewal-reward).

Run ``python -m sims.model [config.toml] --out DIR`` for a summary and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sims.churn import (
    DAY,
    HOUR,
    YEAR,
    ChurnModel,
    CorrelatedFailure,
    Exponential,
    LogNormal,
    RenewalChurn,
    churn_from_config,
    events_from_config,
    parse_duration,
)
from xcore.errors import ConfigError, InvalidParameter
from xcore.shard.erasure import MAX_SHARE_SIZE, Redundancy

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

_FAR = float(1 << 40)  # leader score of a holder that cannot lead
UNAVAILABLE_SAMPLE = 5_000


def default_churn() -> ChurnModel:
    """Placeholder churn until measured: hosts stay 2 years on average
    (exponential), sessions of 3 days, log-normal downtimes with a 2-hour
    median (sigma 1.5: about 5% of absences last more than a day)."""
    return RenewalChurn(Exponential(2 * YEAR), Exponential(3 * DAY), LogNormal.from_median(2 * HOUR, 1.5))


# -- configuration -------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Parameters of a model run. Times are seconds; ``rate`` bytes/s.

    ``k``, ``n``, ``threshold``, ``grace`` and ``rate`` mean what they mean for
    the nodes (:class:`~xcore.shard.erasure.Redundancy`,
    :class:`~xcore.contracts.repair.RepairPlanner`, :class:`~xcore.repairer.Repairer`);
    ``threshold`` defaults to ``Redundancy(k, n).repair_threshold`` and
    ``rate=None`` means unlimited repair bandwidth. ``segments`` is the number
    of segments *sampled* (each with ``n`` shares of ``share_size`` bytes):
    durability and bandwidth per stored byte do not depend on it, only their
    precision does. ``churn`` gives lifetimes (permanent departures) and
    sessions/downtimes (transient absences). ``warm_start``: start hosts in
    the churn model's equilibrium (a network that has been running for a long
    time) rather than all freshly joined. ``replace_departed``: a host that
    leaves is replaced at once by a new empty host (steady population).
    ``repair=False`` turns repair off (durability of untouched data).
    ``events`` are correlated failures; hosts fall into ``/24`` subnets of
    ``hosts_per_subnet`` and ``regions`` regions for their scopes.
    """

    hosts: int = 1_000_000
    years: float = 5.0
    k: int = 10
    n: int = 30
    threshold: int | None = None
    grace: float = DAY
    step: float = HOUR
    segments: int = 100_000
    share_size: int = MAX_SHARE_SIZE
    rate: float | None = 50e6
    churn: ChurnModel = field(default_factory=default_churn)
    events: tuple[CorrelatedFailure, ...] = ()
    repair: bool = True
    warm_start: bool = True
    replace_departed: bool = True
    hosts_per_subnet: int = 4
    regions: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hosts", "k", "n", "segments", "share_size", "hosts_per_subnet", "regions",
                     "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"model.{name} must be an integer, got {v!r}")
        try:
            red = Redundancy(int(self.k), int(self.n))
        except InvalidParameter as exc:
            raise ConfigError(f"model: {exc}") from None
        threshold = red.repair_threshold if self.threshold is None else self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) \
                or not self.k <= threshold <= self.n:
            raise ConfigError(f"model.threshold must be an integer in [k, n] = [{self.k}, {self.n}], "
                              f"got {threshold!r}")
        object.__setattr__(self, "threshold", int(threshold))
        if self.hosts < self.n:
            raise ConfigError(f"model.hosts ({self.hosts}) must be at least n ({self.n})")
        if self.hosts >= 2**31 or self.segments * self.n >= 2**31:
            raise ConfigError("model: hosts and segments * n must stay below 2**31")
        if self.segments < 1 or self.share_size < 1 or self.hosts_per_subnet < 1 or self.regions < 1:
            raise ConfigError("model: segments, share_size, hosts_per_subnet and regions must be >= 1")
        for name in ("years", "step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ConfigError(f"model.{name} must be a positive number, got {v!r}")
        if isinstance(self.grace, bool) or not isinstance(self.grace, (int, float)) \
                or not 0 <= self.grace < math.inf:
            raise ConfigError(f"model.grace must be a finite number of seconds >= 0, got {self.grace!r}")
        if self.rate is not None and (isinstance(self.rate, bool) or not isinstance(self.rate, (int, float))
                                      or not self.rate > 0):
            raise ConfigError(f"model.rate must be a positive number of bytes/s or none, got {self.rate!r}")
        if not isinstance(self.churn, ChurnModel):
            raise ConfigError("model.churn must be a ChurnModel")
        if self.years * YEAR / self.step > 10_000_000:
            raise ConfigError("model: more than 10,000,000 steps; use a longer step")
        object.__setattr__(self, "events", tuple(sorted(self.events, key=lambda e: e.at)))

    @property
    def redundancy(self) -> Redundancy:
        return Redundancy(self.k, self.n)

    @property
    def m(self) -> int:
        """The repair threshold (resolved)."""
        assert self.threshold is not None
        return self.threshold

    @property
    def duration(self) -> float:
        return self.years * YEAR

    @classmethod
    def from_toml_dict(cls, doc: Mapping[str, Any], *, base_dir: Path | str | None = None
                       ) -> ModelConfig:
        """Build a config from a parsed TOML document (or its ``[model]`` table).

        Keys: ``hosts``, ``years``, ``redundancy = "10/30"`` or ``k`` and ``n``,
        ``threshold``, ``grace``, ``step`` (durations: seconds or ``"36h"``),
        ``segments``, ``share_size``, ``rate`` (bytes/s, or ``"none"``),
        ``repair``, ``warm_start``, ``replace_departed``, ``hosts_per_subnet``,
        ``regions``, ``seed``; a ``[churn]`` table
        (:meth:`~sims.churn.ChurnModel.from_config`) and ``[[events]]``
        (:class:`~sims.churn.CorrelatedFailure`). ``[churn]`` and ``[[events]]``
        may sit at the top level next to ``[model]``. Unknown keys raise
        :class:`~xcore.errors.ConfigError`.
        """
        if not isinstance(doc, Mapping):
            raise ConfigError("model config: expected a table")
        if isinstance(doc.get("model"), Mapping):
            table = dict(doc["model"])
            for extra in ("churn", "events"):
                if extra in doc and extra not in table:
                    table[extra] = doc[extra]
        else:
            table = dict(doc)
        allowed = {"hosts", "years", "redundancy", "k", "n", "threshold", "grace", "step", "segments",
                   "share_size", "rate", "repair", "warm_start", "replace_departed",
                   "hosts_per_subnet", "regions", "seed", "churn", "events"}
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"model: unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        kw: dict[str, Any] = {}
        if "redundancy" in table:
            if "k" in table or "n" in table:
                raise ConfigError("model: give either redundancy = \"k/n\" or k and n, not both")
            if not isinstance(table["redundancy"], str):
                raise ConfigError("model.redundancy must be a string like \"10/30\"")
            try:
                red = Redundancy.parse(table["redundancy"])
            except InvalidParameter as exc:
                raise ConfigError(f"model: {exc}") from None
            kw["k"], kw["n"] = red.k, red.n
        for name in ("hosts", "k", "n", "threshold", "segments", "share_size", "hosts_per_subnet",
                     "regions", "seed"):
            if name in table:
                v = table[name]
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ConfigError(f"model.{name} must be an integer, got {v!r}")
                kw[name] = v
        if "years" in table:
            v = table["years"]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"model.years must be a number, got {v!r}")
            kw["years"] = float(v)
        for name in ("grace", "step"):
            if name in table:
                kw[name] = parse_duration(table[name], f"model.{name}")
        if "rate" in table:
            v = table["rate"]
            if isinstance(v, str) and v.strip().lower() in ("none", "unlimited", "inf"):
                kw["rate"] = None
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"model.rate must be bytes/s or \"none\", got {v!r}")
            else:
                kw["rate"] = float(v)
        for name in ("repair", "warm_start", "replace_departed"):
            if name in table:
                if not isinstance(table[name], bool):
                    raise ConfigError(f"model.{name} must be true or false, got {table[name]!r}")
                kw[name] = table[name]
        if "churn" in table:
            kw["churn"] = churn_from_config(table["churn"], base_dir=base_dir)
        if "events" in table:
            kw["events"] = events_from_config(table["events"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {"hosts": self.hosts, "years": self.years, "k": self.k, "n": self.n,
                "threshold": self.threshold, "grace": self.grace, "step": self.step,
                "segments": self.segments, "share_size": self.share_size, "rate": self.rate,
                "churn": self.churn.to_config(), "events": [e.to_config() for e in self.events],
                "repair": self.repair, "warm_start": self.warm_start,
                "replace_departed": self.replace_departed, "seed": self.seed}


# -- result --------------------------------------------------------------------


@dataclass
class ModelResult:
    """Time series and totals of a run.

    Per step (``times`` are the step ends): ``below_threshold``, ``lost``,
    ``repairs``, ``repair_bytes``, ``hosts_alive``. Per day (``days`` are the
    day starts; the last day may be partial): ``repair_bytes_per_day``,
    ``hosts_online_per_day`` and ``unavailable_per_day`` (both at the end of
    the day). Per segment:
    ``lost_at``, ``repairs_per_segment``, ``repair_bytes_per_segment``.
    """

    config: ModelConfig
    times: FloatArray  # end of each step, seconds
    below_threshold: IntArray  # segments (not lost) under the threshold, before the step's repairs
    lost: IntArray  # segments lost so far (cumulative)
    repairs: IntArray  # repairs done in the step
    repair_bytes: FloatArray  # bytes moved by repairs in the step
    hosts_alive: IntArray  # host slots whose host has not left (= hosts if replace_departed)
    days: FloatArray  # start of each day, seconds
    repair_bytes_per_day: FloatArray
    hosts_online_per_day: IntArray
    unavailable_per_day: FloatArray  # fraction of segments (not lost) with < k shares online,
    # estimated on the first UNAVAILABLE_SAMPLE segments
    lost_at: FloatArray  # per segment: end of the step it was lost in (inf: never)
    repairs_per_segment: IntArray
    repair_bytes_per_segment: FloatArray
    departures: int  # permanent host departures
    absences: int  # transient absences begun
    wall_seconds: float

    @property
    def duration(self) -> float:
        """Simulated seconds (``years`` rounded up to whole steps)."""
        return float(self.times[-1]) if self.times.size else 0.0

    @property
    def segments(self) -> int:
        return int(self.lost_at.size)

    @property
    def segments_lost(self) -> int:
        return int(np.count_nonzero(np.isfinite(self.lost_at)))

    @property
    def durability(self) -> float:
        """1 - lost / segments over the whole run."""
        return 1.0 - self.segments_lost / self.segments

    @property
    def total_repair_bytes(self) -> float:
        return float(self.repair_bytes.sum())

    @property
    def stored_byte_years(self) -> float:
        """User bytes (``k * share_size`` per segment) times the years they were kept (until lost)."""
        cfg = self.config
        kept = float(np.minimum(self.lost_at, self.duration).sum()) / YEAR
        return kept * cfg.k * cfg.share_size

    @property
    def repair_per_stored_byte_year(self) -> float:
        """Repair bytes per byte of user data stored, per year: the ``B_R`` of the
        Storj whitepaper, per year (:func:`lazy_repair_bandwidth`). Times the
        user data stored, it is the network's repair traffic."""
        sby = self.stored_byte_years
        return self.total_repair_bytes / sby if sby > 0 else 0.0

    @property
    def repair_per_raw_byte_year(self) -> float:
        """The same per byte held on hosts (``n`` shares per segment, not ``k``)."""
        return self.repair_per_stored_byte_year * self.config.k / self.config.n

    def summary(self) -> dict[str, Any]:
        """Totals as plain numbers (JSON-ready)."""
        return {
            "hosts": self.config.hosts, "years": self.config.years, "segments": self.segments,
            "redundancy": f"{self.config.k}/{self.config.n}", "threshold": self.config.threshold,
            "grace_s": self.config.grace, "segments_lost": self.segments_lost,
            "durability": self.durability, "repairs": int(self.repairs.sum()),
            "repair_bytes": self.total_repair_bytes,
            "repair_per_stored_byte_year": self.repair_per_stored_byte_year,
            "repair_per_raw_byte_year": self.repair_per_raw_byte_year,
            "max_below_threshold": int(self.below_threshold.max(initial=0)),
            "mean_unavailable": float(self.unavailable_per_day.mean()) if self.days.size else 0.0,
            "departures": self.departures, "absences": self.absences,
            "wall_seconds": round(self.wall_seconds, 3),
        }


# -- the simulation ------------------------------------------------------------

_NEVER = np.iinfo(np.int32).max
MAX_ROUNDS = 100_000  # events of one host in one step: more means zero-length sessions


class _Model:
    """Mutable state of one run; see the module docstring.

    Host slot ``h`` is either *cycling* (``away[h]`` false: online, or in a
    short absence ``[off_start, off_end)`` that needs no event; its next event
    is the end of its session ``t_off <= depart``) or *away* (an absence
    that outlasts the grace period while it holds shares, or that ends in
    departure; events at ``t_expire``, ``t_back``, ``depart``).
    ``wake_step`` is the step of the next event.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.churn = cfg.churn
        H, S, n = cfg.hosts, cfg.segments, cfg.n
        self.H, self.S, self.n, self.k, self.m = H, S, n, cfg.k, cfg.m
        self.dt = float(cfg.step)
        self.steps = max(1, int(math.ceil(cfg.duration / self.dt - 1e-9)))
        self.T = self.steps * self.dt
        self.grace = float(cfg.grace)
        rng = self.rng

        # hosts
        if cfg.warm_start:
            online, remaining = self.churn.sample_initial_state(rng, H)
            depart = self.churn.sample_residual_lifetimes(rng, H)
        else:
            online = np.ones(H, dtype=bool)
            remaining = self.churn.sample_sessions(rng, H, np.zeros(H))
            depart = self.churn.sample_lifetimes(rng, H, np.zeros(H))
        self.depart = np.asarray(depart, dtype=float).copy()
        self.alive = np.ones(H, dtype=bool)
        self.away = np.zeros(H, dtype=bool)
        self.lapsed = np.zeros(H, dtype=bool)  # away past the grace period: shares declared gone
        self.t_off = np.full(H, math.inf)
        self.off_start = np.full(H, -math.inf)
        self.off_end = np.full(H, -math.inf)
        self.t_back = np.full(H, math.inf)
        self.t_expire = np.full(H, math.inf)  # hosts offline at the start hold no shares
        self.forced = np.zeros(H)  # end of a correlated outage
        self.has_outages = any(not e.permanent for e in cfg.events)
        self.busy = np.zeros(H)
        on = np.flatnonzero(online)
        self.t_off[on] = np.minimum(remaining[on], self.depart[on])
        off = np.flatnonzero(~online)
        back = remaining[off]
        returning = back < self.depart[off]
        cyc, gone = off[returning], off[~returning]
        self.off_start[cyc] = 0.0
        self.off_end[cyc] = back[returning]
        self.t_off[cyc] = np.minimum(
            back[returning] + self.churn.sample_sessions(rng, cyc.size, back[returning]),
            self.depart[cyc])
        self.away[gone] = True
        self.off_start[gone] = 0.0
        self.wake_step = self._step_of(self._when(np.arange(H)))
        self.key = rng.integers(0, 2**32, H, dtype=np.uint32)  # stand-in for node IDs
        self.subnet = np.arange(H, dtype=np.int64) // cfg.hosts_per_subnet
        self.region = rng.integers(0, cfg.regions, H)
        self.hosts_alive = H
        self.online_frac = max(on.size / H, 1e-3)

        # shares: initial placement on distinct online hosts
        if on.size < n:
            raise ConfigError(f"model: only {on.size} hosts online at the start, need n = {n}")
        M = on[rng.integers(0, on.size, (S, n))]
        for _ in range(1000):
            srt = np.sort(M, axis=1)
            dup = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
            if dup.size == 0:
                break
            M[dup] = on[rng.integers(0, on.size, (dup.size, n))]
        self.seg_key = rng.integers(0, 2**32, S, dtype=np.uint32)
        cap = int(S * n * 1.5) + 1024
        self.cap = cap
        self.rec_cell = np.zeros(cap, dtype=np.int64)
        self.rec_host = np.zeros(cap, dtype=np.int64)
        self.rec_next = np.full(cap, -1, dtype=np.int64)
        self.rec_gone = np.zeros(cap, dtype=bool)
        self.rec_dead = np.zeros(cap, dtype=bool)
        self.n_rec = S * n
        self.rec_cell[: S * n] = np.arange(S * n)
        self.rec_host[: S * n] = M.ravel()
        self.cell_rec = np.arange(S * n, dtype=np.int64)
        self.head = np.full(H, -1, dtype=np.int64)  # overflow lists: records added since _reindex
        self.n_overflow = 0
        self._reindex()

        # segments
        self.n_exist = np.full(S, n, dtype=np.int64)
        self.n_healthy = np.full(S, n, dtype=np.int64)
        self.lost = np.zeros(S, dtype=bool)
        self.lost_at = np.full(S, math.inf)
        self.pending = np.zeros(S, dtype=bool)
        self.queue = np.empty(0, dtype=np.int64)
        self.repairs_seg = np.zeros(S, dtype=np.int64)
        self.bytes_seg = np.zeros(S)

        # scratch
        self.expiry: dict[int, list[IntArray]] = {}
        self.touched_exist: list[IntArray] = []
        self.touched_health: list[IntArray] = []
        self.step_index = 0
        self.step_repairs = 0
        self.step_bytes = 0.0
        self.departures = 0
        self.absences = 0
        self.n_lost = 0

    # -- time ----------------------------------------------------------------

    def _step_of(self, t: FloatArray) -> NDArray[np.int32]:
        return np.floor(np.minimum(t / self.dt, _NEVER)).astype(np.int32)

    def _when(self, h: IntArray) -> FloatArray:
        """Time of the next event of hosts ``h``."""
        away = np.minimum(np.minimum(self.t_expire[h], self.t_back[h]), self.depart[h])
        return np.where(self.away[h], away, self.t_off[h])

    def _is_online(self, h: IntArray, t: float) -> BoolArray:
        in_gap = (self.off_start[h] <= t) & (t < self.off_end[h])
        return self.alive[h] & ~self.away[h] & ~in_gap

    # -- records -------------------------------------------------------------

    def _link(self, recs: IntArray, hosts: IntArray) -> None:
        """Push ``recs`` onto the front of their hosts' overflow lists (hosts may repeat)."""
        if recs.size == 0:
            return
        order = np.argsort(hosts, kind="stable")
        hs = hosts[order]
        rs = recs[order]
        brk = hs[1:] != hs[:-1]
        last = np.append(brk, True)
        first = np.insert(brk, 0, True)
        nxt = np.empty_like(rs)
        nxt[:-1] = rs[1:]
        nxt[last] = self.head[hs[last]]
        self.rec_next[rs] = nxt
        self.head[hs[first]] = rs[first]
        self.n_overflow += recs.size

    def _reindex(self) -> None:
        """Rebuild the per-host index (CSR) from the current records; empty the overflow lists."""
        ids = self.cell_rec[~self.rec_dead[self.cell_rec]]
        hosts = self.rec_host[ids]
        order = np.argsort(hosts, kind="stable")
        self.csr_recs = ids[order]
        self.csr_count = np.bincount(hosts, minlength=self.H).astype(np.int64)
        self.csr_start = np.cumsum(self.csr_count) - self.csr_count
        self.head.fill(-1)
        self.n_overflow = 0

    def _holds(self, h: IntArray) -> BoolArray:
        """Whether hosts ``h`` may hold shares (cheap; may say yes for replaced ones)."""
        return (self.csr_count[h] > 0) | (self.head[h] >= 0)

    def _records(self, hosts: IntArray) -> tuple[IntArray, IntArray]:
        """Current records on ``hosts`` and the position in ``hosts`` of each one's host."""
        rs: list[IntArray] = []
        ps: list[IntArray] = []
        cnt = self.csr_count[hosts]
        total = int(cnt.sum())
        if total:
            pos = np.repeat(np.arange(hosts.size), cnt)
            ends = np.cumsum(cnt)
            offs = np.arange(total) - np.repeat(ends - cnt, cnt)
            rs.append(self.csr_recs[self.csr_start[hosts][pos] + offs])
            ps.append(pos)
        if self.n_overflow:
            cur = self.head[hosts]
            keep = cur >= 0
            if keep.any():
                pos = np.flatnonzero(keep)
                cur = cur[keep]
                while cur.size:
                    rs.append(cur)
                    ps.append(pos)
                    cur = self.rec_next[cur]
                    keep = cur >= 0
                    cur, pos = cur[keep], pos[keep]
        if not rs:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        recs = np.concatenate(rs) if len(rs) > 1 else rs[0]
        where = np.concatenate(ps) if len(ps) > 1 else ps[0]
        valid = self.cell_rec[self.rec_cell[recs]] == recs
        return recs[valid], where[valid]

    def _alloc(self, count: int) -> IntArray:
        if self.n_rec + count > self.cap:
            self._compact(count)
        ids = np.arange(self.n_rec, self.n_rec + count, dtype=np.int64)
        self.n_rec += count
        return ids

    def _compact(self, extra: int) -> None:
        """Drop records no cell points to any more; renumber; rebuild the index."""
        keep = np.sort(self.cell_rec)
        live = keep.size
        cap = self.cap
        if live + extra > 0.6 * cap:
            cap = int((live + extra) * 1.6) + 1024
        new_id = np.full(self.cap, -1, dtype=np.int64)
        new_id[keep] = np.arange(live, dtype=np.int64)

        def take(a: NDArray[Any], fill: Any) -> NDArray[Any]:
            out = np.full(cap, fill, dtype=a.dtype)
            out[:live] = a[keep]
            return out

        self.rec_cell = take(self.rec_cell, 0)
        self.rec_host = take(self.rec_host, 0)
        self.rec_gone = take(self.rec_gone, False)
        self.rec_dead = take(self.rec_dead, False)
        self.rec_next = np.full(cap, -1, dtype=np.int64)
        self.cell_rec = new_id[self.cell_rec]
        self.cap = cap
        self.n_rec = live
        self._reindex()
        for step, parts in self.expiry.items():
            mapped = [new_id[p] for p in parts]
            self.expiry[step] = [p[p >= 0] for p in mapped]

    def _segments(self, recs: IntArray) -> IntArray:
        return self.rec_cell[recs] // self.n

    # -- host events ---------------------------------------------------------

    def _process(self, idx: IntArray) -> None:
        """One event for each host in ``idx`` (all due in this step)."""
        aw = self.away[idx]
        h = idx[~aw]
        if h.size:
            t = self.t_off[h]
            dep = self.depart[h] <= t
            if dep.any():
                self._depart(h[dep], t[dep])
            if not dep.all():
                self._go_offline(h[~dep], t[~dep])
        h = idx[aw]
        if h.size:
            te, tb, td = self.t_expire[h], self.t_back[h], self.depart[h]
            t = np.minimum(np.minimum(te, tb), td)
            exp = te <= t
            dep = ~exp & (td <= t)
            back = ~exp & ~dep
            if exp.any():
                self._expire(h[exp])
            if dep.any():
                self._depart(h[dep], t[dep])
            if back.any():
                self._return(h[back], t[back])

    def _go_offline(self, h: IntArray, t: FloatArray) -> None:
        self.absences += h.size
        ret = t + self.churn.sample_downtimes(self.rng, h.size, t)
        if self.has_outages:
            forced = self.forced[h]
            ret = np.where(forced > t, forced, ret)
        dep = self.depart[h]
        leaving = ret >= dep
        holds = self._holds(h)
        long = leaving | (holds & (ret - t >= self.grace))
        short = ~long
        if short.any():
            # back within the grace period, or nothing to lose: no event until the next session ends
            hs, ts, rs = h[short], t[short], ret[short]
            self.off_start[hs] = ts
            self.off_end[hs] = rs
            nxt = np.minimum(rs + self.churn.sample_sessions(self.rng, hs.size, rs), dep[short])
            self.t_off[hs] = nxt
            self.wake_step[hs] = self._step_of(nxt)
        if long.any():
            hl, tl = h[long], t[long]
            self.away[hl] = True
            self.off_start[hl] = tl
            self.off_end[hl] = math.inf
            self.t_off[hl] = math.inf
            self.t_back[hl] = np.where(leaving[long], math.inf, ret[long])
            self.t_expire[hl] = np.where(holds[long], tl + self.grace, math.inf)
            self.wake_step[hl] = self._step_of(self._when(hl))

    def _expire(self, h: IntArray) -> None:
        self.lapsed[h] = True
        recs, _ = self._records(h)
        recs = recs[~self.rec_gone[recs]]
        if recs.size:
            self.rec_gone[recs] = True
            segs = self._segments(recs)
            np.subtract.at(self.n_healthy, segs, 1)
            self.touched_health.append(segs)
        self.t_expire[h] = math.inf
        self.wake_step[h] = self._step_of(self._when(h))

    def _return(self, h: IntArray, t: FloatArray) -> None:
        late = h[self.lapsed[h]]
        if late.size:
            # back after the grace period: shares not replaced meanwhile are healthy again
            self.lapsed[late] = False
            recs, _ = self._records(late)
            recs = recs[self.rec_gone[recs]]
            if recs.size:
                np.add.at(self.n_healthy, self._segments(recs), 1)
                self.rec_gone[recs] = False
        self.away[h] = False
        self.off_end[h] = t
        self.t_back[h] = math.inf
        self.t_expire[h] = math.inf
        nxt = np.minimum(t + self.churn.sample_sessions(self.rng, h.size, t), self.depart[h])
        self.t_off[h] = nxt
        self.wake_step[h] = self._step_of(nxt)

    def _depart(self, h: IntArray, t: FloatArray) -> None:
        recs, pos = self._records(h)
        if recs.size:
            segs = self._segments(recs)
            np.subtract.at(self.n_exist, segs, 1)
            self.touched_exist.append(segs)
            self.rec_dead[recs] = True
            waiting = ~self.rec_gone[recs]
            if waiting.any():
                # still healthy until the grace period since the host was last seen ends
                start, end = self.off_start[h], self.off_end[h]
                seen = np.where(self.away[h] | ((start <= t) & (t < end)), start, t)
                when = seen + self.grace
                self._schedule_expiry(recs[waiting], when[pos[waiting]])
        self.departures += h.size
        self.head[h] = -1
        self.csr_count[h] = 0
        if self.cfg.replace_departed:
            self._join(h, t)
        else:
            self.alive[h] = False
            self.away[h] = True
            self.hosts_alive -= h.size
            for a in (self.t_off, self.t_back, self.t_expire, self.depart):
                a[h] = math.inf
            self.wake_step[h] = _NEVER

    def _join(self, h: IntArray, t: FloatArray) -> None:
        """New, empty hosts take slots ``h`` at times ``t``."""
        dep = t + self.churn.sample_lifetimes(self.rng, h.size, t)
        self.depart[h] = dep
        self.away[h] = False
        self.lapsed[h] = False
        self.off_start[h] = -math.inf
        self.off_end[h] = -math.inf
        self.t_back[h] = math.inf
        self.t_expire[h] = math.inf
        self.forced[h] = 0.0
        self.busy[h] = 0.0
        self.key[h] = self.rng.integers(0, 2**32, h.size, dtype=np.uint32)
        nxt = np.minimum(t + self.churn.sample_sessions(self.rng, h.size, t), dep)
        self.t_off[h] = nxt
        self.wake_step[h] = self._step_of(nxt)

    def _schedule_expiry(self, recs: IntArray, when: FloatArray) -> None:
        steps = np.maximum(self._step_of(when).astype(np.int64), self.step_index)
        keep = steps < self.steps
        recs, steps = recs[keep], steps[keep]
        if recs.size == 0:
            return
        uniq, inv = np.unique(steps, return_inverse=True)
        for j, s in enumerate(uniq.tolist()):
            self.expiry.setdefault(s, []).append(recs[inv == j])

    def _expire_records(self, step: int) -> None:
        parts = self.expiry.pop(step, None)
        if not parts:
            return
        recs = np.concatenate(parts)
        recs = recs[(self.cell_rec[self.rec_cell[recs]] == recs) & ~self.rec_gone[recs]]
        if recs.size:
            self.rec_gone[recs] = True
            segs = self._segments(recs)
            np.subtract.at(self.n_healthy, segs, 1)
            self.touched_health.append(segs)

    def _apply_events(self, t0: float, t1: float) -> None:
        for ev in self.cfg.events:
            if not t0 <= ev.at < t1:
                continue
            sel = ev.select(self.rng, self.H, subnet=self.subnet, region=self.region)
            sel = sel[self.alive[sel]]
            aw = self.away[sel]
            cycling, away = sel[~aw], sel[aw]
            self.t_off[cycling] = np.minimum(self.t_off[cycling], ev.at)  # an event at ``at``
            if ev.permanent:
                self.depart[sel] = np.minimum(self.depart[sel], ev.at)
            else:
                until = ev.at + ev.duration
                self.forced[sel] = np.maximum(self.forced[sel], until)
                tb = self.t_back[away]
                self.t_back[away] = np.where(np.isfinite(tb), np.maximum(tb, until), tb)
            self.wake_step[sel] = self._step_of(self._when(sel))

    # -- repair --------------------------------------------------------------

    def _sample_online(self, count: int, t: float) -> IntArray | None:
        out: list[IntArray] = []
        need = count
        for _ in range(100):
            if need <= 0:
                break
            draw = self.rng.integers(0, self.H, int(need / self.online_frac * 1.2) + 16)
            draw = draw[self._is_online(draw, t)][:need]
            out.append(draw)
            need -= draw.size
        if need > 0:
            return None
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def _place(self, hosts: IntArray, gone: BoolArray, t: float) -> IntArray | None:
        """New hosts for the ``gone`` cells: online, distinct within each row."""
        M = hosts.copy()
        picked = self._sample_online(int(gone.sum()), t)
        if picked is None:
            return None
        M[gone] = picked
        for _ in range(100):
            srt = np.sort(M, axis=1)
            dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
            if not dup.any():
                break
            fix = gone & dup[:, None]
            picked = self._sample_online(int(fix.sum()), t)
            if picked is None:
                return None
            M[fix] = picked
        return M[gone]

    def _repair(self, queue: IntArray, t: float) -> BoolArray:
        """Repair what can be repaired in ``queue`` at time ``t``; which were."""
        done = np.zeros(queue.size, dtype=bool)
        n, k = self.n, self.k
        cells = queue[:, None] * n + np.arange(n)
        recs = self.cell_rec[cells]
        gone = self.rec_gone[recs]
        hosts = self.rec_host[recs]
        live = ~gone & ~self.rec_dead[recs] & self._is_online(hosts, t)
        can = np.flatnonzero(live.sum(axis=1) >= k)  # the leader has one and fetches k - 1
        if can.size == 0:
            return done
        C = queue[can]
        cells, recs, gone, hosts, live = cells[can], recs[can], gone[can], hosts[can], live[can]
        score = (self.key[hosts] ^ self.seg_key[C][:, None]).astype(np.float64)
        score[~live] = _FAR
        leader = hosts[np.arange(C.size), np.argmin(score, axis=1)]
        missing = gone.sum(axis=1)
        cost = (k - 1 + missing) * float(self.cfg.share_size)
        ok = np.ones(C.size, dtype=bool)
        if self.cfg.rate is not None:
            # each leader works through its repairs at ``rate`` bytes/s; start those it
            # can start before the next step
            rate = float(self.cfg.rate)
            order = np.argsort(leader, kind="stable")
            L, c = leader[order], cost[order]
            first = np.insert(L[1:] != L[:-1], 0, True)
            before = np.cumsum(c) - c
            before = before - before[first][np.cumsum(first) - 1]
            start = np.maximum(self.busy[L], t) + before / rate
            acc = start < t + self.dt
            np.maximum.at(self.busy, L[acc], start[acc] + c[acc] / rate)
            ok[order] = acc
        if not ok.any():
            return done
        C, cells, recs, gone, hosts = C[ok], cells[ok], recs[ok], gone[ok], hosts[ok]
        missing, cost = missing[ok], cost[ok]
        new_hosts = self._place(hosts, gone, t)
        if new_hosts is None:
            return done
        old = recs[gone]
        still = ~self.rec_dead[old]  # replaced copies on hosts that are only away
        np.subtract.at(self.n_exist, np.repeat(C, missing)[still], 1)
        new = self._alloc(old.size)  # may renumber records: ``recs``/``old`` are stale after this
        new_cells = cells[gone]
        self.rec_cell[new] = new_cells
        self.rec_host[new] = new_hosts
        self.rec_gone[new] = False
        self.rec_dead[new] = False
        self.cell_rec[new_cells] = new
        self._link(new, new_hosts)
        self.n_exist[C] += missing
        self.n_healthy[C] += missing
        self.repairs_seg[C] += 1
        self.bytes_seg[C] += cost
        self.step_repairs = int(C.size)
        self.step_bytes = float(cost.sum())
        done[can[ok]] = True
        return done

    # -- the loop ------------------------------------------------------------

    def _settle(self, t1: float) -> int:
        """End of a step: mark losses, queue segments below threshold, repair.
        Returns how many were below threshold before repair."""
        if self.touched_exist:
            segs = np.concatenate(self.touched_exist)
            self.touched_exist = []
            segs = segs[(self.n_exist[segs] < self.k) & ~self.lost[segs]]
            if segs.size:
                segs = np.unique(segs)
                self.lost[segs] = True
                self.lost_at[segs] = t1
                self.n_lost += segs.size
        if self.touched_health:
            segs = np.unique(np.concatenate(self.touched_health))
            self.touched_health = []
            new = segs[(self.n_healthy[segs] < self.m) & ~self.pending[segs] & ~self.lost[segs]]
            if new.size:
                self.pending[new] = True
                self.queue = np.concatenate([self.queue, new])
        if self.queue.size:
            keep = (self.n_healthy[self.queue] < self.m) & ~self.lost[self.queue]
            self.pending[self.queue[~keep]] = False
            self.queue = self.queue[keep]
        below = int(self.queue.size)
        self.step_repairs = 0
        self.step_bytes = 0.0
        if self.cfg.repair and self.queue.size:
            done = self._repair(self.queue, t1)
            if done.any():
                self.pending[self.queue[done]] = False
                self.queue = self.queue[~done]
        return below

    def _count_online(self, t: float) -> int:
        in_gap = (self.off_start <= t) & (t < self.off_end)
        return int(np.count_nonzero(self.alive & ~self.away & ~in_gap))

    def _unavailable(self, t: float) -> float:
        """Fraction of (not lost) segments with fewer than k shares online at ``t``,
        estimated on the first ``UNAVAILABLE_SAMPLE`` segments (they are exchangeable)."""
        S = min(self.S, UNAVAILABLE_SAMPLE)
        recs = self.cell_rec[: S * self.n]
        up = self._is_online(self.rec_host[recs], t) & ~self.rec_gone[recs] & ~self.rec_dead[recs]
        count = up.reshape(S, self.n).sum(axis=1)
        ok = ~self.lost[:S]
        alive = int(np.count_nonzero(ok))
        return int(np.count_nonzero((count < self.k) & ok)) / max(1, alive)

    def run(self, progress: Callable[[float], None] | None = None) -> ModelResult:
        started = time.perf_counter()
        steps = self.steps
        times = ((np.arange(steps) + 1) * self.dt).astype(np.float64)
        below = np.zeros(steps, dtype=np.int64)
        lost = np.zeros(steps, dtype=np.int64)
        repairs = np.zeros(steps, dtype=np.int64)
        rbytes = np.zeros(steps)
        alive = np.zeros(steps, dtype=np.int64)
        n_days = int(math.ceil(self.T / DAY - 1e-9))
        online_day = np.zeros(n_days, dtype=np.int64)
        unavailable = np.zeros(n_days)
        report_every = max(1, steps // 200)
        for i in range(steps):
            self.step_index = i
            t0 = i * self.dt
            t1 = t0 + self.dt
            if self.cfg.events:
                self._apply_events(t0, t1)
            idx = np.flatnonzero(self.wake_step <= i)
            rounds = 0
            while idx.size:
                self._process(idx)
                idx = idx[self.wake_step[idx] <= i]
                rounds += 1
                if rounds > MAX_ROUNDS:
                    raise ConfigError("model: a host had more than 100,000 events in one step; "
                                      "does the churn model produce zero-length sessions?")
            self._expire_records(i)
            below[i] = self._settle(t1)
            if self.n_overflow > 0.1 * self.S * self.n + 1000:
                self._reindex()
            lost[i] = self.n_lost
            repairs[i] = self.step_repairs
            rbytes[i] = self.step_bytes
            alive[i] = self.hosts_alive
            day = int(t0 // DAY)
            if i == steps - 1 or int(t1 // DAY) != day:
                count = self._count_online(t1)
                self.online_frac = max(count / self.H, 1e-3)
                online_day[min(day, n_days - 1)] = count
                unavailable[min(day, n_days - 1)] = self._unavailable(t1)
            if progress is not None and (i % report_every == 0 or i == steps - 1):
                progress((i + 1) / steps)
        day_of_step = np.minimum((np.arange(steps) * self.dt // DAY).astype(np.int64), n_days - 1)
        per_day = np.bincount(day_of_step, weights=rbytes, minlength=n_days).astype(np.float64)
        return ModelResult(
            config=self.cfg, times=times, below_threshold=below, lost=lost, repairs=repairs,
            repair_bytes=rbytes, hosts_alive=alive,
            days=(np.arange(n_days) * DAY).astype(np.float64),
            repair_bytes_per_day=per_day, hosts_online_per_day=online_day,
            unavailable_per_day=unavailable, lost_at=self.lost_at.copy(),
            repairs_per_segment=self.repairs_seg.copy(),
            repair_bytes_per_segment=self.bytes_seg.copy(), departures=self.departures,
            absences=self.absences, wall_seconds=time.perf_counter() - started)


def run_model(cfg: ModelConfig, *, progress: Callable[[float], None] | None = None) -> ModelResult:
    """Simulate ``cfg``; the same config (seed included) gives identical arrays."""
    return _Model(cfg).run(progress)


# -- closed forms --------------------------------------------------------------


def _binom_pmf(c: int, p: float) -> FloatArray:
    """P(X = j), j = 0..c, for X ~ Binomial(c, p) (exact integer coefficients)."""
    j = np.arange(c + 1)
    coef = np.array([math.comb(c, int(x)) for x in j], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = coef * np.power(p, j) * np.power(1 - p, c - j)
    clean: FloatArray = np.nan_to_num(out)
    return clean


def _resolve_m(k: int, n: int, m: int | None) -> int:
    red = Redundancy(k, n)
    m = red.repair_threshold if m is None else m
    if not k <= m <= n:
        raise InvalidParameter(f"need k <= m <= n, got k={k}, m={m}, n={n}")
    return m


def durability_binomial(p_host_loss_in_window: float, k: int, n: int, m: int | None = None) -> float:
    """Probability that a segment is lost between repairs (a *loss* probability).

    Each share is lost independently with probability ``p`` within one window
    (the time from losing a share to having repaired it: grace period plus
    detection plus transfer; or the whole horizon if there is no repair). With
    lazy repair a segment sits anywhere between ``n`` and ``m`` healthy shares
    between repairs; in the worst case it starts the window with ``m`` (the
    threshold) and is lost if more than ``m - k`` of them go before the repair
    lands::

        P(loss) = P[Binomial(m, p) > m - k] = sum_{i=m-k+1}^{m} C(m, i) p^i (1-p)^(m-i)

    ``m`` defaults to ``Redundancy(k, n).repair_threshold``; pass ``m = n`` for
    data that is never repaired (starting complete). This is the exact binomial
    form of the Poisson approximation in the Storj v3 whitepaper (sec. 3.4,
    ``P(D) = e^-l sum_{i<=n-k} l^i / i!``, ``l = p n``), see
    :func:`durability_poisson`; the ``m - k`` margin is the whitepaper's
    "safety buffer ... between the time we recognize the data requires a
    repair and the actual repair" (sec. 4.7 there).
    """
    p = float(p_host_loss_in_window)
    if not 0 <= p <= 1:
        raise InvalidParameter(f"p must be a probability, got {p}")
    m = _resolve_m(k, n, m)
    pmf = _binom_pmf(m, p)
    return float(pmf[m - k + 1:].sum())


def durability_poisson(p_host_loss_in_window: float, k: int, n: int, m: int | None = None) -> float:
    """The Storj v3 whitepaper's approximation of :func:`durability_binomial`
    (sec. 3.4): losses ~ Poisson(``p * m``), lost if more than ``m - k``. Returns
    the loss probability ``1 - P(D)``."""
    p = float(p_host_loss_in_window)
    if not 0 <= p <= 1:
        raise InvalidParameter(f"p must be a probability, got {p}")
    m = _resolve_m(k, n, m)
    lam = p * m
    keep = sum(math.exp(-lam) * lam**i / math.factorial(i) for i in range(m - k + 1))
    return max(0.0, 1.0 - keep)


def lazy_repair_bandwidth(alpha: float, k: int, n: int, m: int | None = None, *,
                          exact: bool = True) -> float:
    """Long-run repair traffic per byte of user data per unit time (Storj's ``B_R``).

    ``alpha`` is the rate at which a share's host leaves for good
    (``1 / MTTF``, exponential lifetimes); the result is in the same time unit
    (pass ``1 / mean_seconds * YEAR`` for "per year"). Transient absences
    shorter than the grace period cost nothing and are not in it.

    Derivation (renewal-reward). After a repair a segment has ``n`` healthy
    shares; each is lost at rate ``alpha``, so with ``i`` left the next loss
    comes after ``Exp(i alpha)``. Repair is triggered when fewer than ``m``
    are left, i.e. at ``m - 1``, so a cycle lasts on average
    ``sum_{i=m}^{n} 1 / (i alpha) = (H_n - H_{m-1}) / alpha`` (``H`` the
    harmonic numbers). Each repair moves ``k - 1`` shares to the leader (it
    holds one) and ``n - m + 1`` regenerated shares out: ``n - m + k`` shares
    of ``segment / k`` bytes. Per byte of segment and unit time::

        B_R = alpha (n - m + k) / (k (H_n - H_{m-1}))          (exact=True)

    The Storj v3 whitepaper (sec. 7.1, "Object repair costs", following
    Giroire, Monteiro & Perennes, GLOBECOM 2010) gives
    ``B_R = alpha (n - m + k) / (k ln(n / m))`` (``exact=False``): the same
    numerator (its repairer downloads ``k`` and restores ``n - m`` pieces when
    ``m`` remain) with the cycle length approximated by ``ln(n/m) / alpha``,
    i.e. ``H_n - H_m``. For this rule (repair *below* ``m``) that leaves out
    the ``1/m`` term: for 10/30 with m = 17 it overstates the bandwidth by 9%.
    """
    if not alpha >= 0:
        raise InvalidParameter(f"alpha must be >= 0, got {alpha}")
    m = _resolve_m(k, n, m)
    if exact:
        cycle = sum(1.0 / i for i in range(m, n + 1))
    else:
        if m == n:
            raise InvalidParameter("ln(n/m) is 0 for m = n; use exact=True")
        cycle = math.log(n / m)
    return alpha * (n - m + k) / (k * cycle)


@dataclass(frozen=True)
class ChainResult:
    """Expected values of :func:`lazy_repair_chain`, per step."""

    lost: FloatArray  # P(segment lost by the end of step i)
    repairs: FloatArray  # expected repairs in step i
    shares: FloatArray  # expected shares moved in step i (k - 1 + regenerated per repair)


def _chain_matrix(p_step: float, k: int, n: int, m: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Transition matrix over states [m..n, lost], and per-state expected repairs / shares."""
    size = n - m + 2
    P = np.zeros((size, size))
    rep = np.zeros(size)
    sh = np.zeros(size)
    L = size - 1
    for c in range(m, n + 1):
        pmf = _binom_pmf(c, 1.0 - p_step)  # survivors
        row = c - m
        for s in range(c + 1):
            if s < k:
                P[row, L] += pmf[s]
            elif s < m:
                P[row, n - m] += pmf[s]
                rep[row] += pmf[s]
                sh[row] += pmf[s] * (k - 1 + n - s)
            else:
                P[row, s - m] += pmf[s]
    P[L, L] = 1.0
    return P, rep, sh


def lazy_repair_chain(p_step: float, k: int, n: int, m: int | None = None, steps: int = 1
                      ) -> ChainResult:
    """Exact expected loss and repair traffic of one segment, step by step.

    The model with exponential lifetimes, no transient absences, ``grace = 0``
    and unlimited bandwidth is a Markov chain on the healthy count ``c`` at
    the start of a step (``m <= c <= n``, plus "lost"): each share survives the
    step with probability ``1 - p_step`` (``p_step = 1 - exp(-step / MTTF)``),
    independently because shares sit on distinct hosts with memoryless
    lifetimes. With ``s`` survivors: ``s < k`` is a loss, ``k <= s < m``
    a repair back to ``n`` moving ``k - 1 + n - s`` shares, else ``c = s``.
    Starting from ``n``, this returns the expected per-step values for
    ``steps`` steps; as ``p_step -> 0`` the traffic per unit time tends to
    :func:`lazy_repair_bandwidth` (exact form).
    """
    m = _resolve_m(k, n, m)
    if not 0 <= p_step <= 1:
        raise InvalidParameter(f"p_step must be a probability, got {p_step}")
    P, rep, sh = _chain_matrix(p_step, k, n, m)
    dist = np.zeros(P.shape[0])
    dist[n - m] = 1.0
    lost = np.empty(steps)
    repairs = np.empty(steps)
    shares = np.empty(steps)
    for i in range(steps):
        repairs[i] = dist @ rep
        shares[i] = dist @ sh
        dist = dist @ P
        lost[i] = dist[-1]
    return ChainResult(lost, repairs, shares)


def lazy_repair_stationary(p_step: float, k: int, n: int, m: int | None = None
                           ) -> tuple[float, float]:
    """Long-run ``(repairs, shares moved)`` per step of :func:`lazy_repair_chain`,
    with a lost segment replaced by a fresh one (stationary distribution)."""
    m = _resolve_m(k, n, m)
    P, rep, sh = _chain_matrix(p_step, k, n, m)
    P = P.copy()
    P[-1, :] = 0.0
    P[-1, n - m] = 1.0  # a lost segment is re-uploaded
    size = P.shape[0]
    A = np.vstack([(P.T - np.eye(size))[:-1], np.ones(size)])
    b = np.zeros(size)
    b[-1] = 1.0
    pi = np.linalg.solve(A, b)
    return float(pi @ rep), float(pi @ sh)


# -- plots and command line ----------------------------------------------------


def plot_model(result: ModelResult, out_dir: Path | str) -> list[Path]:
    """Write PNG plots of ``result`` into ``out_dir`` (created); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = result.config
    days = result.times / DAY
    title = (f"{cfg.hosts:,} hosts, {cfg.k}/{cfg.n} (repair below {cfg.threshold}), "
             f"grace {cfg.grace / HOUR:g} h, {result.segments:,} segments sampled")
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        p = out / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    fig, ax = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax[0].plot(days, result.below_threshold, lw=0.7)
    ax[0].set_ylabel("segments below threshold")
    ax[1].plot(days, result.lost, lw=1.0, color="C3")
    ax[1].set_ylabel("segments lost (cumulative)")
    ax[1].set_xlabel("day")
    save(fig, "segments.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    per_stored = result.repair_bytes_per_day / max(result.segments * cfg.k * cfg.share_size, 1)
    ax.plot(result.days / DAY, per_stored * 100, lw=0.7)
    ax.set_ylabel("repair traffic per day\n(% of user data)")
    ax.set_xlabel("day")
    save(fig, "repair_bandwidth.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(result.days / DAY + 1, result.hosts_online_per_day, lw=0.7, label="online")
    ax.plot(days, result.hosts_alive, lw=0.7, label="not departed")
    ax.set_ylabel("hosts")
    ax.set_xlabel("day")
    ax.legend()
    save(fig, "hosts.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    counts = np.bincount(result.repairs_per_segment)
    ax.bar(np.arange(counts.size), counts)
    ax.set_xlabel("repairs per segment over the run")
    ax.set_ylabel("segments")
    save(fig, "repairs_per_segment.png")
    return paths


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        raise ConfigError("reading a TOML config needs Python 3.11 or newer") from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sims.model", description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="TOML file ([model], [churn], [[events]])")
    ap.add_argument("--out", default=None, help="directory for PNG plots")
    ap.add_argument("--hosts", type=int)
    ap.add_argument("--years", type=float)
    ap.add_argument("--segments", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        doc: dict[str, Any] = {}
        base = None
        if args.config:
            path = Path(args.config)
            doc = _load_toml(path)
            base = path.parent
        cfg = ModelConfig.from_toml_dict(doc, base_dir=base)
        over = {k: v for k, v in (("hosts", args.hosts), ("years", args.years),
                                  ("segments", args.segments), ("seed", args.seed)) if v is not None}
        if over:
            cfg = dataclasses.replace(cfg, **over)

        def show(frac: float) -> None:
            print(f"\r{frac:6.1%}", end="", file=sys.stderr, flush=True)

        result = run_model(cfg, progress=None if args.quiet else show)
        if not args.quiet:
            print(file=sys.stderr)
        summary = result.summary()
        if args.out:
            summary["plots"] = [str(p) for p in plot_model(result, args.out)]
        print(json.dumps(summary, indent=2))
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = [
    "ModelConfig", "ModelResult", "run_model", "plot_model", "default_churn",
    "durability_binomial", "durability_poisson", "lazy_repair_bandwidth", "lazy_repair_chain",
    "lazy_repair_stationary", "ChainResult",
]

if __name__ == "__main__":
    sys.exit(main())
