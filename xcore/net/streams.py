"""Byte-stream networks: real TCP, or in-memory pipes for the simulator.

The share-transfer protocol (``xcore.shard.transfer`` / ``xcore.shard.host``)
opens connections and listens through a :class:`StreamNet`, so the same
protocol code runs over real sockets and inside the protocol-level simulator
(:mod:`xcore.net.vloop`), where bytes take the simulated link's latency and
bandwidth and virtual time passes instead of real time.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Protocol

ClientCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener(Protocol):
    address: tuple[str, int]

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class StreamNet(Protocol):
    async def open_connection(self, host: str, port: int, *, limit: int
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    async def start_server(self, cb: ClientCallback, host: str, port: int, *,
                           limit: int) -> Listener: ...


class _TcpListener:
    def __init__(self, server: asyncio.AbstractServer) -> None:
        self.server = server
        sock = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        self.address = (sock[0], sock[1])

    def close(self) -> None:
        self.server.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


class TcpStreams:
    """Real TCP (asyncio)."""

    async def open_connection(self, host: str, port: int, *, limit: int
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, port, limit=limit)

    async def start_server(self, cb: ClientCallback, host: str, port: int, *,
                           limit: int) -> Listener:
        return _TcpListener(await asyncio.start_server(cb, host, port, limit=limit))


TCP = TcpStreams()


async def run_blocking(fn: Callable[..., Any], *args: Any, threads: bool = True) -> Any:
    """Run blocking disk work in a thread on a real loop, inline in a simulation
    (a virtual-time loop must not wait for threads)."""
    if threads:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
