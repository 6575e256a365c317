"""Byte-stream networks: real TCP, or in-memory pipes for the simulator.

The share-transfer protocol (``xcore.shard.transfer`` / ``xcore.shard.host``)
opens connections and listens through a :class:`StreamNet`, so the same
protocol code runs over real sockets and inside the protocol-level simulator
(:mod:`xcore.net.vloop`), where bytes take the simulated link's latency and
bandwidth and virtual time passes instead of real time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Awaitable, Callable, Protocol, Union

log = logging.getLogger(__name__)


class ByteReader(Protocol):
    """What the protocols read with: :class:`asyncio.StreamReader` has it, and so
    has :class:`DirectReader` (which can also read straight into a buffer)."""

    async def readexactly(self, n: int) -> bytes: ...

    def at_eof(self) -> bool: ...


Reader = Union[asyncio.StreamReader, "DirectReader"]
ClientCallback = Callable[[Any, asyncio.StreamWriter], Awaitable[None]]


class Listener(Protocol):
    address: tuple[str, int]

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class StreamNet(Protocol):
    async def open_connection(self, host: str, port: int, *, limit: int
                              ) -> tuple[Any, asyncio.StreamWriter]: ...

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


BUFFER = 1 << 16  # DirectReader's own buffer, bytes


class DirectReader:
    """A TCP connection's incoming bytes, read by :class:`_DirectProtocol`.

    It reads like :class:`asyncio.StreamReader` (``readexactly``, ``at_eof``)
    and adds :meth:`readinto_exactly`: while the caller waits for a buffer to
    fill, the kernel copies the socket's bytes straight into it. A
    ``StreamReader`` instead copies every byte three times on the way
    (the loop's read buffer to a new ``bytes``, that into its own buffer,
    that into another new ``bytes`` for ``readexactly``) and the transfer
    code then copied it once more into the share's buffer: receiving 256 MiB
    that way cost 0.36-0.39 CPU s on the 2-core box of ``bench/README.md``,
    into the caller's buffer 0.08-0.16 s.

    Bytes nobody asked for yet wait in a buffer of :data:`BUFFER` bytes (or
    ``limit``, if smaller); when it is full the transport stops reading until
    a reader takes some (flow control, as ``StreamReader`` does it), and the
    socket's own buffers hold the rest. A ``readexactly`` larger than that
    reads into a buffer of its own. So an idle connection holds 64 KiB, not
    the largest frame twice over (a host may have 128 connections).
    """

    def __init__(self, protocol: _DirectProtocol, limit: int) -> None:
        self._proto = protocol
        self._cap = max(4096, min(limit, BUFFER))
        self._buf = bytearray(self._cap)
        self._start = self._end = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._target: memoryview | None = None  # a readinto_exactly being filled
        self._filled = 0
        self._into_target = False  # the last get_buffer handed out the target
        self._paused = False

    # -- protocol side ------------------------------------------------------

    def _get_buffer(self) -> memoryview:
        if self._target is not None and self._start == self._end:
            self._into_target = True
            return self._target[self._filled:]
        self._into_target = False
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == self._cap:  # move what is left to the front
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start:self._end]
            self._start, self._end = 0, n
        return memoryview(self._buf)[self._end:]

    def _buffer_updated(self, n: int) -> None:
        if self._into_target:
            self._into_target = False
            self._filled += n
            assert self._target is not None
            if self._filled == len(self._target):
                self._target = None  # full: later bytes go to the buffer
                self._wake()
            return
        self._end += n
        if self._end - self._start == self._cap and not self._paused:
            self._paused = True
            self._proto.pause()
        self._wake()

    def _feed_eof(self, exc: BaseException | None = None) -> None:
        self._eof = True
        if exc is not None and self._exc is None:
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- reader side --------------------------------------------------------

    def at_eof(self) -> bool:
        return self._eof and self._start == self._end

    def exception(self) -> BaseException | None:
        return self._exc

    async def _wait(self) -> None:
        if self._exc is not None:
            raise self._exc
        if self._paused:  # the caller needs more than is buffered: read on
            self._paused = False
            self._proto.resume()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _took(self, n: int) -> None:
        self._start += n
        if self._paused and self._end - self._start < self._cap // 2:
            self._paused = False
            self._proto.resume()

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`asyncio.IncompleteReadError` at EOF first."""
        if n > self._cap:
            out = bytearray(n)
            await self.readinto_exactly(memoryview(out))
            return bytes(out)
        while self._end - self._start < n:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                partial = bytes(self._buf[self._start:self._end])
                self._took(len(partial))
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait()  # (the next _get_buffer moves what is left to the front)
        with memoryview(self._buf) as view:
            data = bytes(view[self._start:self._start + n])
        self._took(n)
        return data

    async def readinto_exactly(self, view: memoryview) -> None:
        """Fill ``view`` with the next ``len(view)`` bytes of the stream.

        If the wait is cancelled (a timeout) part of the bytes may already be
        in ``view``: the stream cannot be resumed in step, so every later
        read raises :class:`ConnectionError`."""
        need = len(view)
        have = min(need, self._end - self._start)
        if have:
            view[:have] = self._buf[self._start:self._start + have]
            self._took(have)
        if have == need:
            return
        self._target, self._filled = view[have:], 0
        try:
            while self._target is not None:
                if self._exc is not None:
                    raise self._exc
                if self._eof:
                    raise asyncio.IncompleteReadError(bytes(view[:have + self._filled]), need)
                await self._wait()
        except asyncio.CancelledError:
            if have or self._filled:
                self._exc = ConnectionError("a read was cancelled half-way: the stream is out of step")
            raise
        finally:
            self._target, self._filled, self._into_target = None, 0, False


class _DirectProtocol(asyncio.BufferedProtocol):
    """One TCP connection: a :class:`DirectReader` for its incoming bytes and
    an :class:`asyncio.StreamWriter`, whose ``drain`` waits on the flow
    control below (what ``StreamReaderProtocol`` inherits from asyncio's
    ``FlowControlMixin``). Not that mixin itself: it is an
    ``asyncio.Protocol``, and uvloop then feeds ``data_received`` (a no-op
    here) instead of ``get_buffer``: the connection would hang."""

    def __init__(self, limit: int, cb: ClientCallback | None = None) -> None:
        self.reader = DirectReader(self, limit)
        self.writer: asyncio.StreamWriter | None = None
        self._cb = cb
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._write_paused = False
        self._lost = False
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self._closed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self._transport = transport  # type: ignore[assignment]
        self._closed = loop.create_future()
        self.writer = asyncio.StreamWriter(transport, self, None, loop)  # type: ignore[arg-type]
        if self._cb is not None:
            self._task = loop.create_task(self._serve(self._cb))

    async def _serve(self, cb: ClientCallback) -> None:
        assert self.writer is not None
        try:
            await cb(self.reader, self.writer)
        except Exception:  # as asyncio's start_server: log it, drop the connection
            log.exception("connection handler failed")
            self.writer.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader._get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.reader._buffer_updated(nbytes)

    def eof_received(self) -> bool:
        self.reader._feed_eof()
        return True  # keep the transport open for writing, as StreamReaderProtocol does

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.reader._feed_eof(exc)
        for w in self._drain_waiters:  # writers waiting in drain
            if not w.done():
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(exc)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def pause(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # what asyncio.StreamWriter expects of its protocol
    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)

    async def _drain_helper(self) -> None:
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._write_paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            self._drain_waiters.remove(waiter)

    def _get_close_waiter(self, stream: object) -> asyncio.Future[None]:
        assert self._closed is not None
        return self._closed


class TcpStreams:
    """Real TCP (asyncio), read with :class:`DirectReader`."""

    async def open_connection(self, host: str, port: int, *, limit: int
                              ) -> tuple[Any, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _DirectProtocol(limit), host, port)
        assert proto.writer is not None
        return proto.reader, proto.writer

    async def start_server(self, cb: ClientCallback, host: str, port: int, *,
                           limit: int) -> Listener:
        loop = asyncio.get_running_loop()
        return _TcpListener(await loop.create_server(lambda: _DirectProtocol(limit, cb), host, port))


TCP = TcpStreams()


async def run_blocking(fn: Callable[..., Any], *args: Any, threads: bool = True) -> Any:
    """Run blocking disk work in a thread on a real loop, inline in a simulation
    (a virtual-time loop must not wait for threads)."""
    if threads:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
