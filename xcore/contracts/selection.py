"""Host selection: whom to give a share to.

Each candidate gets a weight from what we know of it:

* free capacity (log-scaled, so a huge host is not picked for everything),
* measured latency (round-trip time of DHT requests; unknown counts as 0.2 s),
* uptime (time since the host's announced start, saturating at a week),
* a reputation factor in [0, 1] (audit history; 1.0 until audits land, and
  hosts marked bad are excluded outright).

Hosts are then drawn without replacement with probability proportional to
weight (Efraimidis & Spirakis' weighted reservoir keys ``u ** (1/w)``), so
good hosts are preferred but load still spreads. Within a segment no host
repeats, and while enough distinct /24 networks exist, no /24 repeats either.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Iterable

from xcore.contracts.hosts import HostInfo
from xcore.dht.routing import ip_group

WEEK = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Weights:
    free: float = 0.4
    latency: float = 0.3
    uptime: float = 0.3


def host_weight(h: HostInfo, now: float, rtt: float | None, reputation: float,
                w: Weights = Weights()) -> float:
    free = min(1.0, math.log2(1 + h.free / (1 << 20)) / 20.0)  # 1 TiB ~ 1.0
    lat = 1.0 / (1.0 + 10.0 * (0.2 if rtt is None else rtt))
    up = min(1.0, max(0.0, now - h.since) / WEEK)
    base = w.free * free + w.latency * lat + w.uptime * up
    return max(1e-6, base * max(0.0, min(1.0, reputation)))


def select_hosts(candidates: Iterable[HostInfo], count: int, *, rng: random.Random, now: float,
                 need_bytes: int = 0, exclude: set[bytes] = frozenset(),  # type: ignore[assignment]
                 rtt: Callable[[bytes], float | None] = lambda _id: None,
                 reputation: Callable[[bytes], float] = lambda _id: 1.0,
                 weights: Weights = Weights()) -> list[HostInfo]:
    """Pick up to ``count`` distinct hosts, best-weighted first."""
    pool = []
    for h in candidates:
        if h.node_id in exclude or h.free < need_bytes:
            continue
        rep = reputation(h.node_id)
        if rep <= 0.0:
            continue
        wt = host_weight(h, now, rtt(h.node_id), rep, weights)
        key = rng.random() ** (1.0 / wt)
        pool.append((key, h))
    pool.sort(key=lambda kh: (-kh[0], kh[1].node_id))
    groups = {ip_group(h.addr[0]) or h.addr[0] for _, h in pool}
    spread = len(groups) >= min(count, len(pool))
    chosen: list[HostInfo] = []
    used_groups: set[str] = set()
    seen: set[bytes] = set()
    for _, h in pool:
        if len(chosen) >= count:
            break
        if h.node_id in seen:
            continue
        g = ip_group(h.addr[0])
        if spread and g is not None and g in used_groups:
            continue
        chosen.append(h)
        seen.add(h.node_id)
        if g is not None:
            used_groups.add(g)
    if len(chosen) < count:  # relax the /24 rule rather than fail
        for _, h in pool:
            if len(chosen) >= count:
                break
            if h.node_id not in seen:
                chosen.append(h)
                seen.add(h.node_id)
    return chosen
