"""The asyncio adapter: real UDP sockets and the wall clock drive a core.

About the size of aioquic's ``asyncio/protocol.py``: feed datagrams and
``now`` in, send what the core wants sent, keep one ``call_at`` armed for the
core's next deadline. This module (and :mod:`xcore.node`) is where real time
comes from; the cores never read a clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from typing import Any, Callable, Mapping, TypeVar

from xcore.dht.operation import Operation
from xcore.errors import ConfigError, Timeout
from xcore.net.base import Address, DatagramEndpoint

log = logging.getLogger(__name__)
T = TypeVar("T")


def wall_clock() -> float:
    """Unix time in seconds: the clock production nodes inject."""
    return time.time()


CLOCK_SKEW_ENV = "XCORE_CLOCK_SKEW"
MAX_CLOCK_SKEW = 366 * 24 * 3600.0


def clock_from_env(environ: Mapping[str, str] | None = None) -> Callable[[], float]:
    """The wall clock, shifted by ``XCORE_CLOCK_SKEW`` seconds if that is set.

    Fault injection for tests and labs: a node whose clock is wrong by a
    known amount (``XCORE_CLOCK_SKEW=600 xcore node start ...`` runs ten
    minutes ahead). Everything the node does with time goes through it."""
    raw = (os.environ if environ is None else environ).get(CLOCK_SKEW_ENV, "").strip()
    if not raw:
        return wall_clock
    try:
        skew = float(raw)
    except ValueError:
        raise ConfigError(f"{CLOCK_SKEW_ENV}={raw!r}: expected seconds, e.g. 600 or -30.5") from None
    if not math.isfinite(skew) or abs(skew) > MAX_CLOCK_SKEW:
        raise ConfigError(f"{CLOCK_SKEW_ENV}={raw!r}: at most {MAX_CLOCK_SKEW:.0f} s either way")
    if skew == 0:
        return wall_clock

    def skewed() -> float:
        return time.time() + skew
    skewed.skew = skew  # type: ignore[attr-defined]
    return skewed


class DatagramDriver(asyncio.DatagramProtocol):
    def __init__(self, endpoint: DatagramEndpoint, clock: Callable[[], float] = wall_clock) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flush()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.endpoint.receive_datagram(data, (addr[0], addr[1]), self.clock())
        except Exception:  # a core bug must not kill the socket; it is logged and counted
            self.errors += 1
            log.exception("error handling datagram from %s", addr)
        self.flush()

    def error_received(self, exc: Exception) -> None:  # ICMP errors etc.
        log.debug("socket error: %s", exc)

    def call(self, fn: Callable[[float], T]) -> T:
        """Run ``fn(now)`` against the core and send what it produced."""
        result = fn(self.clock())
        self.flush()
        return result

    def flush(self) -> None:
        if self.transport is None:
            return
        for data, addr in self.endpoint.datagrams_to_send():
            try:
                self.transport.sendto(data, addr)
            except OSError as exc:
                log.debug("sendto %s failed: %s", addr, exc)
        deadline = self.endpoint.get_timer()
        if deadline is None or deadline == self._armed:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - self.clock())
        self._armed = deadline
        self._timer = loop.call_at(loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed = None
        try:
            self.endpoint.handle_timer(self.clock())
        except Exception:
            self.errors += 1
            log.exception("error in timer")
        self.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()


async def wait_op(op: Operation[T], timeout: float | None = None) -> T:
    """Await a sans-IO :class:`Operation`."""
    if not op.done:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done(_o: Operation[T]) -> None:
            if not fut.done():
                fut.set_result(None)
        op.add_done_callback(done)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as exc:
            raise Timeout(f"{op.name} timed out after {timeout}s") from exc
    return op.result()


LOOKUP_RETRY_DELAY = 0.5  # seconds before a DHT lookup nobody answered is tried again


async def dht_records(svc: Any, key: bytes, *, strict: bool = False, timeout: float = 60.0,
                      retried: Callable[[], None] | None = None) -> list[Any]:
    """The records under ``key`` as node ``svc`` finds them; [] when there are
    none. A lookup nobody answered (every request timed out: a busy network
    or a stalled moment) is tried once more, after ``LOOKUP_RETRY_DELAY``
    (``retried`` is called then); if that fails too, ``strict`` raises
    :class:`~xcore.errors.LookupFailed` instead of returning [], which would
    look like "nothing there"."""
    from xcore.errors import LookupFailed, NotFound
    for attempt in range(2):
        op = svc.driver.call(lambda t: svc.dht.get(key, t))
        try:
            return list((await wait_op(op, timeout)).records)
        except NotFound:
            return []
        except LookupFailed:
            if attempt == 0:
                if retried is not None:
                    retried()
                await asyncio.sleep(LOOKUP_RETRY_DELAY)
                continue
            if strict:
                raise
    return []


async def open_udp(endpoint: DatagramEndpoint, host: str, port: int,
                   clock: Callable[[], float] = wall_clock) -> tuple[DatagramDriver, Address]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: DatagramDriver(endpoint, clock), local_addr=(host, port))
    sock = transport.get_extra_info("sockname")
    return proto, (sock[0], sock[1])


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available (DESIGN.md defaults), else the stock loop."""
    try:
        import uvloop
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
