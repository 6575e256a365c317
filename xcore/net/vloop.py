"""Virtual time for the real asyncio code: the protocol-level simulator's engine.

How it works
------------
:class:`VirtualTimeLoop` is a stock asyncio selector loop whose clock is a
number and whose selector never waits: when every task is blocked, the loop
"sleeps" by jumping its clock straight to the next timer (as trio's
``MockClock(autojump_threshold=0)`` does). Nothing in it touches a real
socket. :class:`SimNet` gives the nodes running on that loop an in-memory
network:

* datagrams (for the DHT core) are delivered after the link's latency, or
  lost, or cut by a partition;
* byte streams (for share transfer, audits and repair) are pairs of
  in-memory transports whose bytes arrive after the latency plus their
  serialisation time at the link's bandwidth.

So the *real* node program — :class:`xcore.node.NodeService` with its DHT
core, host service, client, auditor and repairer — runs unchanged, only
faster than real time and reproducibly: all randomness comes from seeded
generators and events are ordered by (time, sequence).
"""

from __future__ import annotations

import asyncio
import random
import selectors
from dataclasses import dataclass, field
from typing import Any, Callable

from xcore.net.aio import DatagramDriver
from xcore.net.base import Address, DatagramEndpoint
from xcore.net.streams import ClientCallback, Listener


class _NullSelector(selectors.BaseSelector):
    """Registers nothing real; 'waiting' advances the loop's virtual clock."""

    def __init__(self) -> None:
        self._map: dict[Any, selectors.SelectorKey] = {}
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(),
                                    events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self._map.pop(fileobj, None)
        return self.register(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[Any]:
        assert self.loop is not None
        if timeout is None:
            raise SimulationStalled("nothing left to run and no timer set: the simulation is stuck")
        if timeout > 0:
            # jump exactly to the next timer: adding the float timeout to a
            # clock near 1.7e9 can round below it and spin forever
            nxt = self.loop._scheduled[0]._when if self.loop._scheduled else None  # type: ignore[attr-defined]
            if nxt is not None and nxt - self.loop.time() <= timeout + 1e-6:
                self.loop.advance_to(nxt)
            else:
                self.loop.advance(timeout)
        return []

    def close(self) -> None:
        self._map.clear()

    def get_map(self) -> Any:
        return self._map


class SimulationStalled(RuntimeError):
    pass


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 1_750_000_000.0) -> None:
        sel = _NullSelector()
        self._vt = start
        super().__init__(selector=sel)
        sel.loop = self
        self.slept = 0.0
        # a clock near 1.7e9 s has a float step of ~2.4e-7 s: timers closer
        # than that to "now" must count as due, or the loop spins
        self._clock_resolution = 1e-6

    def time(self) -> float:
        return self._vt

    def advance(self, seconds: float) -> None:
        self._vt += seconds
        self.slept += seconds

    def advance_to(self, when: float) -> None:
        if when > self._vt:
            self.slept += when - self._vt
            self._vt = when


# -- datagrams ---------------------------------------------------------------


class _SimDatagramTransport(asyncio.DatagramTransport):
    def __init__(self, net: "SimNet", addr: Address) -> None:
        super().__init__()
        self.net = net
        self.addr = addr
        self.closed = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self.closed:
            self.net._send_datagram(bytes(data), self.addr, (addr[0], addr[1]))

    def close(self) -> None:
        self.closed = True
        self.net.udp.pop(self.addr, None)

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.addr if name == "sockname" else default

    def abort(self) -> None:
        self.close()


# -- streams -----------------------------------------------------------------


class _SimStreamTransport(asyncio.Transport):
    def __init__(self, net: "SimNet", local: Address, remote: Address) -> None:
        super().__init__()
        self.net = net
        self.local = local
        self.remote = remote
        self.peer: _SimStreamTransport | None = None
        self.protocol: asyncio.Protocol | None = None
        self.closed = False
        self.busy_until = 0.0  # serialisation of this direction at the link's bandwidth
        self.lat = net.latency_of(local, remote)  # fixed per connection: bytes stay in order

    def write(self, data: Any) -> None:
        if self.closed or self.peer is None:
            return
        data = bytes(data)
        if not data:
            return
        when = self.net._stream_arrival(self, len(data))
        peer = self.peer
        self.net.loop.call_at(when, peer._receive, data)
        self.net.stats.stream_bytes += len(data)

    def _receive(self, data: bytes) -> None:
        if not self.closed and self.protocol is not None:
            self.protocol.data_received(data)

    def _eof(self, exc: Exception | None) -> None:
        if self.closed or self.protocol is None:
            return
        self.closed = True
        self.net.streams_open.discard(self)
        if exc is None:
            self.protocol.eof_received()
        self.protocol.connection_lost(exc)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.net.streams_open.discard(self)
        if self.peer is not None and not self.peer.closed:
            when = max(self.net.loop.time(), self.busy_until) + self.lat
            self.net.loop.call_at(when, self.peer._eof, None)
        if self.protocol is not None:
            self.net.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        """The host died: the other end sees a reset."""
        if self.closed:
            return
        self.closed = True
        self.net.streams_open.discard(self)
        if self.peer is not None and not self.peer.closed:
            self.net.loop.call_at(self.net.loop.time() + self.lat,
                                  self.peer._eof, ConnectionResetError("peer died"))
        if self.protocol is not None:
            self.net.loop.call_soon(self.protocol.connection_lost, ConnectionResetError("aborted"))

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.remote
        if name == "sockname":
            return self.local
        return default

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _SimListener:
    def __init__(self, net: "SimNet", address: Address) -> None:
        self.net = net
        self.address = address

    def close(self) -> None:
        self.net.listeners.pop(self.address, None)

    async def wait_closed(self) -> None:
        return None


@dataclass
class SimStats:
    datagrams: int = 0
    datagram_bytes: int = 0
    lost: int = 0
    partitioned: int = 0
    to_dead: int = 0
    stream_bytes: int = 0
    connections: int = 0
    refused: int = 0


@dataclass
class SimNet:
    """Datagrams and streams between nodes on one :class:`VirtualTimeLoop`."""

    loop: VirtualTimeLoop
    rng: random.Random
    latency: Callable[[Address, Address, random.Random], float] = (
        lambda a, b, r: r.uniform(0.005, 0.080))
    loss: float = 0.0
    bandwidth: float = 12.5e6  # bytes/s per connection direction (100 Mbit/s)
    udp: dict[Address, DatagramDriver] = field(default_factory=dict)
    listeners: dict[Address, tuple[ClientCallback, int]] = field(default_factory=dict)
    streams_open: set[_SimStreamTransport] = field(default_factory=set)
    groups: dict[str, int] = field(default_factory=dict)  # host -> partition group
    stats: SimStats = field(default_factory=SimStats)
    _ports: dict[str, int] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)

    def latency_of(self, a: Address, b: Address) -> float:
        return self.latency(a, b, self.rng)

    def _port(self, host: str, port: int) -> int:
        if port:
            return port
        nxt = self._ports.get(host, 40000) + 1
        self._ports[host] = nxt
        return nxt

    def _cut(self, a: str, b: str) -> bool:
        return bool(self.groups) and self.groups.get(a, -1) != self.groups.get(b, -1)

    def partition(self, groups: list[list[str]]) -> None:
        self.groups = {h: i for i, g in enumerate(groups) for h in g}

    def heal(self) -> None:
        self.groups = {}

    # datagrams

    async def open_udp(self, endpoint: DatagramEndpoint, host: str, port: int,
                       clock: Callable[[], float]) -> tuple[DatagramDriver, Address]:
        addr = (host, self._port(host, port))
        if addr in self.udp:
            raise OSError(98, "address in use")
        driver = DatagramDriver(endpoint, clock)
        driver.connection_made(_SimDatagramTransport(self, addr))
        self.udp[addr] = driver
        return driver, addr

    def _send_datagram(self, data: bytes, src: Address, dst: Address) -> None:
        if src[0] in self.dead:
            return
        if self.loss and self.rng.random() < self.loss:
            self.stats.lost += 1
            return
        if self._cut(src[0], dst[0]):
            self.stats.partitioned += 1
            return
        self.loop.call_at(self.loop.time() + self.latency_of(src, dst), self._deliver, data, src, dst)

    def _deliver(self, data: bytes, src: Address, dst: Address) -> None:
        driver = self.udp.get(dst)
        if driver is None:
            self.stats.to_dead += 1
            return
        self.stats.datagrams += 1
        self.stats.datagram_bytes += len(data)
        driver.datagram_received(data, src)

    # streams

    def _stream_arrival(self, t: _SimStreamTransport, nbytes: int) -> float:
        now = self.loop.time()
        start = max(now, t.busy_until)
        t.busy_until = start + nbytes / self.bandwidth
        return t.busy_until + t.lat

    def for_host(self, host: str) -> "HostNet":
        """The stream network as seen from ``host`` (client ends carry its address)."""
        return HostNet(self, host)

    async def connect(self, local_host: str, host: str, port: int, *, limit: int
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = self.loop
        remote = (host, port)
        await asyncio.sleep(self.latency_of(remote, remote))  # SYN
        entry = self.listeners.get(remote)
        if entry is None or self._cut(local_host, host) or not self.alive(local_host):
            self.stats.refused += 1
            raise ConnectionRefusedError(111, f"connection refused by {host}:{port}")
        cb, slimit = entry
        local = (local_host, self._port(local_host, 0))
        await asyncio.sleep(self.latency_of(remote, remote))  # SYN-ACK
        if self.listeners.get(remote) is None or not self.alive(local_host):
            raise ConnectionRefusedError(111, f"connection refused by {host}:{port}")
        a = _SimStreamTransport(self, local, remote)
        b = _SimStreamTransport(self, remote, local)
        a.peer, b.peer = b, a
        self.streams_open.update((a, b))
        self.stats.connections += 1
        creader = asyncio.StreamReader(limit=limit, loop=loop)
        cproto = asyncio.StreamReaderProtocol(creader, loop=loop)
        a.protocol = cproto
        cproto.connection_made(a)
        cwriter = asyncio.StreamWriter(a, cproto, creader, loop)
        sreader = asyncio.StreamReader(limit=slimit, loop=loop)
        sproto = asyncio.StreamReaderProtocol(sreader, cb, loop=loop)
        b.protocol = sproto
        sproto.connection_made(b)
        return creader, cwriter

    async def listen(self, cb: ClientCallback, host: str, port: int, *, limit: int) -> Listener:
        addr = (host, self._port(host, port))
        if addr in self.listeners:
            raise OSError(98, "address in use")
        self.listeners[addr] = (cb, limit)
        return _SimListener(self, addr)

    def alive(self, host: str) -> bool:
        return host not in self.dead

    def kill_host(self, host: str) -> None:
        """Everything of ``host`` vanishes at once, as with SIGKILL."""
        self.dead.add(host)
        for addr in [a for a in self.udp if a[0] == host]:
            self.udp.pop(addr).close()
        for addr in [a for a in self.listeners if a[0] == host]:
            del self.listeners[addr]
        for t in list(self.streams_open):
            if t.local[0] == host:
                t.abort()

    def revive_host(self, host: str) -> None:
        self.dead.discard(host)


class HostNet:
    """A :class:`~xcore.net.streams.StreamNet` for one simulated host."""

    def __init__(self, net: SimNet, host: str) -> None:
        self.net = net
        self.host = host

    async def open_connection(self, host: str, port: int, *, limit: int
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.net.connect(self.host, host, port, limit=limit)

    async def start_server(self, cb: ClientCallback, host: str, port: int, *,
                           limit: int) -> Listener:
        return await self.net.listen(cb, host, port, limit=limit)

    async def open_udp(self, endpoint: DatagramEndpoint, host: str, port: int,
                       clock: Callable[[], float]) -> tuple[DatagramDriver, Address]:
        return await self.net.open_udp(endpoint, host, port, clock)
