"""Per-peer transfer limits for a host: byte token buckets and connection caps.

How it works
------------
Every request that makes a host move or read share bytes costs that many
bytes: a PUT's data (charged before the host says READY, so refused bytes are
never sent), a GET's share, an AUDIT's share (the host reads and hashes all of
it). The cost is taken from two token buckets at once: the peer's (its node
ID, authenticated by the transfer handshake) and its source address's (so one
operator cannot multiply its allowance by grinding node IDs). A bucket refills
at ``rate`` bytes/s up to ``burst``.

A request may take a bucket into debt: the host then delays it until both
buckets are back at zero (an honest peer briefly over its rate is slowed, not
failed). If that wait would be longer than ``max_wait`` the request is
refused instead and costs nothing, so a flooding peer is mostly refused and
is served at most ``burst + rate × (t + max_wait)`` bytes in ``t`` seconds,
while every other peer keeps its own full allowance.

Connections are capped per source address (checked on accept, before the
handshake's signature work) and per node ID (after it), under the host's
global cap. Each connection carries one request at a time, so the number of
requests waiting for tokens is bounded by the connection caps; the bucket
tables are bounded too (``max_entries``; full buckets, i.e. idle peers, go
first, then the stalest quarter).

Loopback sources are exempt from the per-address limits (a devnet on one
machine is one address); they are still limited per node ID.

Pure: no I/O, time is passed in (``now``, from the node's injected clock).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)

MiB = 1 << 20


@dataclass(frozen=True)
class TransferLimits:
    """A host's per-peer limits (config keys ``transfer_*``, see ``from_config``)."""

    peer_rate: float = 32 * MiB      # bytes/s per peer node ID
    peer_burst: float = 64 * MiB
    ip_rate: float = 64 * MiB        # bytes/s per source address
    ip_burst: float = 128 * MiB
    max_wait: float = 5.0            # longest a request is delayed before it is refused
    # A busy node (several puts through its control socket at once, plus its
    # auditor and repairer) holds one connection per client per host: 8 was
    # too few (seen in tests/datapath/test_client.py).
    conns_per_peer: int = 32
    conns_per_ip: int = 64
    max_entries: int = 4096          # buckets kept per table
    exempt_loopback: bool = True     # per-address limits skip 127.0.0.0/8 and ::1

    @classmethod
    def from_config(cls, config: dict[str, object]) -> "TransferLimits":
        """Overrides from a node's config.json (``transfer_peer_rate`` etc.)."""
        base = cls()
        values: dict[str, float | int | bool] = {}
        for name in ("peer_rate", "peer_burst", "ip_rate", "ip_burst", "max_wait"):
            v = config.get(f"transfer_{name}")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                values[name] = float(v)
        if isinstance(config.get("transfer_exempt_loopback"), bool):
            values["exempt_loopback"] = config["transfer_exempt_loopback"]  # type: ignore[assignment]
        for name in ("conns_per_peer", "conns_per_ip", "max_entries"):
            v = config.get(f"transfer_{name}")
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                values[name] = v
        return cls(**{**base.__dict__, **values})


class TokenBucket:
    """``tokens`` bytes available at ``stamp``; may go negative (debt)."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_after(self, cost: float) -> float:
        """Seconds until the bucket is out of debt once ``cost`` is taken."""
        return max(0.0, (cost - self.tokens) / self.rate)


class BucketTable(Generic[K]):
    """Buckets by key, at most ``max_entries`` of them."""

    def __init__(self, rate: float, burst: float, max_entries: int) -> None:
        self.rate, self.burst, self.max_entries = rate, burst, max_entries
        self.buckets: dict[K, TokenBucket] = {}

    def get(self, key: K, now: float) -> TokenBucket:
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) >= self.max_entries:
                self._shrink(now)
            b = self.buckets[key] = TokenBucket(self.rate, self.burst, now)
        b.refill(now)
        return b

    def _shrink(self, now: float) -> None:
        for k, b in list(self.buckets.items()):  # idle peers first: forgetting them is free
            b.refill(now)
            if b.tokens >= b.burst:
                del self.buckets[k]
        if len(self.buckets) >= self.max_entries:
            stale = sorted(self.buckets.items(), key=lambda kb: kb[1].stamp)
            for k, _ in stale[: max(1, len(stale) // 4)]:
                del self.buckets[k]


def limited_ip(ip: str | None, exempt_loopback: bool = True) -> bool:
    """Whether per-address limits apply to ``ip`` (not to an unknown one, nor
    to loopback unless ``exempt_loopback`` is off)."""
    if not ip:
        return False
    try:
        return not (exempt_loopback and ipaddress.ip_address(ip).is_loopback)
    except ValueError:
        return True


class PeerLimits:
    """The host's tables: byte buckets and connection counts, per peer and per address."""

    def __init__(self, limits: TransferLimits | None = None) -> None:
        self.limits = lim = limits or TransferLimits()
        self.peers: BucketTable[bytes] = BucketTable(lim.peer_rate, lim.peer_burst, lim.max_entries)
        self.ips: BucketTable[str] = BucketTable(lim.ip_rate, lim.ip_burst, lim.max_entries)
        self.conns_by_peer: dict[bytes, int] = {}
        self.conns_by_ip: dict[str, int] = {}

    def _limited(self, ip: str | None) -> bool:
        return limited_ip(ip, self.limits.exempt_loopback)

    # -- bytes --------------------------------------------------------------

    def reserve(self, peer: bytes, ip: str | None, cost: int, now: float) -> tuple[float, str]:
        """Take ``cost`` bytes for a request. Returns ``(wait, "")``: serve it
        after ``wait`` seconds; or ``(-1, which)``: refuse it ("peer" or "ip"
        names the exhausted bucket), and nothing was taken."""
        pb = self.peers.get(peer, now)
        ib = self.ips.get(ip, now) if self._limited(ip) and ip is not None else None
        wait_p = pb.wait_after(cost)
        wait_i = ib.wait_after(cost) if ib is not None else 0.0
        if wait_p > self.limits.max_wait:
            return -1.0, "peer"
        if wait_i > self.limits.max_wait:
            return -1.0, "ip"
        pb.tokens -= cost
        if ib is not None:
            ib.tokens -= cost
        return max(wait_p, wait_i), ""

    # -- connections ----------------------------------------------------------

    def open_ip(self, ip: str | None) -> bool:
        if ip is None or not self._limited(ip):
            return True
        n = self.conns_by_ip.get(ip, 0)
        if n >= self.limits.conns_per_ip:
            return False
        self.conns_by_ip[ip] = n + 1
        return True

    def close_ip(self, ip: str | None) -> None:
        if ip is None or ip not in self.conns_by_ip:
            return
        n = self.conns_by_ip[ip] - 1
        if n > 0:
            self.conns_by_ip[ip] = n
        else:
            del self.conns_by_ip[ip]

    def open_peer(self, peer: bytes) -> bool:
        n = self.conns_by_peer.get(peer, 0)
        if n >= self.limits.conns_per_peer:
            return False
        self.conns_by_peer[peer] = n + 1
        return True

    def close_peer(self, peer: bytes) -> None:
        n = self.conns_by_peer.get(peer, 0) - 1
        if n > 0:
            self.conns_by_peer[peer] = n
        else:
            self.conns_by_peer.pop(peer, None)
