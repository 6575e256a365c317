"""An in-memory network with virtual time, for tests and the simulator.

How it works: one event heap of ``(time, seq, action)``. Delivering a
datagram or waking a timer calls the real protocol core with the virtual
``now``, then pulls what the core wants to send (each datagram is scheduled
for delivery after the link's latency, unless the link loses it or a
partition separates the two ends) and when it wants to wake next. When
nothing is runnable the clock jumps to the next event, so an hour of DHT
maintenance costs only the work done in it. All randomness comes from the
``rng`` given, so a seed replays a run exactly (as trio's fake network and
MockClock do).
"""

from __future__ import annotations

import functools
import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from xcore.dht.operation import Operation
from xcore.net.base import Address, DatagramEndpoint

LatencyModel = Callable[[Address, Address, random.Random], float]


def uniform_latency(lo: float = 0.005, hi: float = 0.080) -> LatencyModel:
    def model(src: Address, dst: Address, rng: random.Random) -> float:
        return rng.uniform(lo, hi)
    return model


@dataclass
class SimStats:
    delivered: int = 0
    lost: int = 0
    partitioned: int = 0
    to_dead: int = 0
    bytes: int = 0
    events: int = 0


@dataclass
class _Host:
    endpoint: DatagramEndpoint
    alive: bool = True
    armed: float | None = None
    group: int = 0


class SimNetwork:
    """Datagram delivery between in-process endpoints under virtual time."""

    def __init__(self, rng: random.Random, *, start: float = 1_750_000_000.0,
                 latency: LatencyModel | None = None, loss: float = 0.0) -> None:
        self.rng = rng
        self.now = start
        self.latency = latency or uniform_latency()
        self.loss = loss
        self.hosts: dict[Address, _Host] = {}
        self.stats = SimStats()
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._partitioned = False
        self.route_hook: Callable[[bytes, Address, Address], list[tuple[bytes, float]] | None] | None = None

    # -- topology ---------------------------------------------------------

    def add(self, addr: Address, endpoint: DatagramEndpoint) -> None:
        self.hosts[addr] = _Host(endpoint)
        self._pump(addr)

    def kill(self, addr: Address) -> None:
        """The host stops: datagrams to it vanish, its timers never fire."""
        host = self.hosts.get(addr)
        if host is not None:
            host.alive = False

    def revive(self, addr: Address, endpoint: DatagramEndpoint | None = None) -> None:
        host = self.hosts[addr]
        host.alive = True
        host.armed = None
        if endpoint is not None:
            host.endpoint = endpoint
        self._pump(addr)

    def partition(self, groups: list[list[Address]]) -> None:
        """Split the network: only hosts in the same group reach each other."""
        for h in self.hosts.values():
            h.group = -1
        for i, g in enumerate(groups):
            for a in g:
                self.hosts[a].group = i
        self._partitioned = True

    def heal(self) -> None:
        self._partitioned = False

    def alive(self) -> list[Address]:
        return [a for a, h in self.hosts.items() if h.alive]

    # -- events -----------------------------------------------------------

    def schedule(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, action))

    def call(self, addr: Address, fn: Callable[[float], Any]) -> Any:
        """Run ``fn(now)`` against a host's core (e.g. start an operation),
        then deliver what it produced."""
        result = fn(self.now)
        self._pump(addr)
        return result

    def _pump(self, addr: Address) -> None:
        host = self.hosts[addr]
        if not host.alive:
            return
        for data, dst in host.endpoint.datagrams_to_send():
            self._route(data, addr, dst)
        deadline = host.endpoint.get_timer()
        if deadline is not None and (host.armed is None or deadline < host.armed):
            host.armed = deadline
            self.schedule(max(deadline, self.now), functools.partial(self._wake, addr, deadline))

    def _wake(self, addr: Address, deadline: float) -> None:
        host = self.hosts[addr]
        if not host.alive or host.armed != deadline:
            return  # superseded by an earlier wake-up
        host.armed = None
        host.endpoint.handle_timer(self.now)
        self._pump(addr)

    def _route(self, data: bytes, src: Address, dst: Address) -> None:
        deliveries: list[tuple[bytes, float]] | None = None
        if self.route_hook is not None:
            deliveries = self.route_hook(data, src, dst)
        if deliveries is None:
            if self.loss and self.rng.random() < self.loss:
                self.stats.lost += 1
                return
            deliveries = [(data, self.latency(src, dst, self.rng))]
        for payload, delay in deliveries:
            self.schedule(self.now + delay, functools.partial(self._deliver, payload, src, dst))

    def _deliver(self, data: bytes, src: Address, dst: Address) -> None:
        host = self.hosts.get(dst)
        if host is None or not host.alive:
            self.stats.to_dead += 1
            return
        if self._partitioned:
            s = self.hosts.get(src)
            if s is None or s.group != host.group:
                self.stats.partitioned += 1
                return
        self.stats.delivered += 1
        self.stats.bytes += len(data)
        host.endpoint.receive_datagram(data, src, self.now)
        self._pump(dst)

    def inject(self, data: bytes, src: Address, dst: Address, delay: float = 0.0) -> None:
        """Send raw bytes as if from ``src`` (for fuzzing and flood tests)."""
        self.schedule(self.now + delay, lambda: self._deliver(data, src, dst))

    def step(self) -> bool:
        if not self._events:
            return False
        when, _, action = heapq.heappop(self._events)
        if when > self.now:
            self.now = when
        self.stats.events += 1
        action()
        return True

    def run(self, until: float | None = None, *, stop: Callable[[], bool] | None = None,
            max_events: int | None = None) -> None:
        """Process events until ``until`` (virtual time), ``stop()`` or no events."""
        n = 0
        while self._events:
            if stop is not None and stop():
                return
            if until is not None and self._events[0][0] > until:
                self.now = until
                return
            if max_events is not None and n >= max_events:
                return
            self.step()
            n += 1
        if until is not None and self.now < until:
            self.now = until

    def run_for(self, seconds: float) -> None:
        self.run(until=self.now + seconds)

    def wait(self, op: Operation[Any], timeout: float = 3600.0) -> Any:
        """Run until ``op`` is done; return its result (or raise its error)."""
        deadline = self.now + timeout
        self.run(until=deadline, stop=lambda: op.done)
        if not op.done:
            raise TimeoutError(f"{op!r} not done after {timeout} virtual seconds")
        return op.result()

    def wait_all(self, ops: list[Operation[Any]], timeout: float = 3600.0) -> None:
        deadline = self.now + timeout
        left = [len(ops)]

        def one_done(_op: Operation[Any]) -> None:
            left[0] -= 1
        for op in ops:  # count completions rather than poll every op per event
            op.add_done_callback(one_done)
        self.run(until=deadline, stop=lambda: left[0] <= 0)
