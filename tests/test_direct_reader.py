"""xcore.net.streams.DirectReader: real TCP on 127.0.0.1, read like a
StreamReader or straight into the caller's buffer, with flow control."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Callable

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from xcore.net.streams import TCP, DirectReader

LIMIT = 1 << 16  # the smallest buffer: a sender soon fills it (pause, resume)
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(loop_name: str, main: Callable[[], Awaitable[Any]]) -> Any:
    loop = LOOPS[loop_name]()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        left = asyncio.all_tasks(loop)  # server handlers still waiting
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.close()


async def pair(serve: Callable[[Any, asyncio.StreamWriter], Awaitable[None]]
               ) -> tuple[Any, DirectReader, asyncio.StreamWriter]:
    """A server running ``serve`` and a client connection to it."""
    server = await TCP.start_server(serve, "127.0.0.1", 0, limit=LIMIT)
    reader, writer = await TCP.open_connection(*server.address, limit=LIMIT)
    assert isinstance(reader, DirectReader)
    return server, reader, writer


@settings(max_examples=20, deadline=None)
@given(writes=st.lists(st.integers(1, 300_000), min_size=1, max_size=8),
       reads=st.lists(st.tuples(st.booleans(), st.integers(1, 400_000)), min_size=1, max_size=12),
       loop_name=st.sampled_from(sorted(LOOPS)))
def test_any_mix_of_reads_returns_the_stream_in_order(writes: list[int],
                                                      reads: list[tuple[bool, int]],
                                                      loop_name: str) -> None:
    data = os.urandom(sum(writes))

    async def serve(_r: Any, w: asyncio.StreamWriter) -> None:
        at = 0
        for n in writes:
            w.write(data[at:at + n])
            at += n
            await w.drain()
        w.close()

    async def main() -> bytes:
        server, reader, writer = await pair(serve)
        got = bytearray()
        try:
            for into, n in reads:
                n = min(n, len(data) - len(got))
                if n == 0:
                    break
                if into:
                    buf = bytearray(n)
                    await reader.readinto_exactly(memoryview(buf))
                    got += buf
                else:
                    got += await reader.readexactly(n)
                await asyncio.sleep(0)  # let the buffer fill up between reads
            rest = len(data) - len(got)
            if rest:
                got += await reader.readexactly(rest)
            with pytest.raises(asyncio.IncompleteReadError):
                await reader.readexactly(1)
            assert reader.at_eof()
        finally:
            writer.close()
            server.close()
        return bytes(got)

    assert run(loop_name, main) == data


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("into", [False, True])
def test_eof_in_the_middle_of_a_read_is_an_incomplete_read(loop_name: str, into: bool) -> None:
    async def serve(_r: Any, w: asyncio.StreamWriter) -> None:
        w.write(b"x" * 1000)
        await w.drain()
        w.close()

    async def main() -> asyncio.IncompleteReadError:
        server, reader, writer = await pair(serve)
        try:
            with pytest.raises(asyncio.IncompleteReadError) as info:
                if into:
                    await reader.readinto_exactly(memoryview(bytearray(5000)))
                else:
                    await reader.readexactly(5000)
            return info.value
        finally:
            writer.close()
            server.close()

    err = run(loop_name, main)
    assert err.partial == b"x" * 1000 and err.expected == 5000


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_read_cancelled_half_way_leaves_the_stream_refusing_reads(loop_name: str) -> None:
    """Part of the bytes went into the caller's buffer: resuming would hand
    out the rest as if it were the next message, so later reads fail."""
    async def serve(_r: Any, w: asyncio.StreamWriter) -> None:
        w.write(b"y" * 3000)  # then silence, connection open
        await w.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        server, reader, writer = await pair(serve)
        try:
            await reader.readexactly(1000)  # let the first bytes arrive; 2000 stay buffered
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.readinto_exactly(memoryview(bytearray(10_000))), 0.3)
            with pytest.raises(ConnectionError):
                await reader.readexactly(1)
        finally:
            writer.close()
            server.close()

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_handler_that_fails_drops_its_connection_and_the_server_serves_on(loop_name: str) -> None:
    calls = []

    async def serve(r: Any, w: asyncio.StreamWriter) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        w.write(await r.readexactly(3))
        await w.drain()

    async def main() -> bytes:
        server = await TCP.start_server(serve, "127.0.0.1", 0, limit=LIMIT)
        try:
            r1, w1 = await TCP.open_connection(*server.address, limit=LIMIT)
            with pytest.raises(asyncio.IncompleteReadError):
                await r1.readexactly(1)  # closed by the server
            w1.close()
            r2, w2 = await TCP.open_connection(*server.address, limit=LIMIT)
            w2.write(b"abc")
            echo = await r2.readexactly(3)
            w2.close()
            await w2.wait_closed()
            return bytes(echo)
        finally:
            server.close()

    assert run(loop_name, main) == b"abc"
