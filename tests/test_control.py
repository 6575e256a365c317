"""The control socket: a real Unix socket, real frames."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest

from xcore.control import ControlError, ControlServer, call, read_frame, socket_path, write_frame


def _run(coro: Any) -> Any:
    errors: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        return loop.run_until_complete(coro), errors
    finally:
        loop.close()


@pytest.fixture
def data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="xc-", dir="/tmp"))


def test_a_request_gets_its_answer_and_errors_are_typed(data_dir: Path) -> None:
    async def echo(args: dict[str, Any]) -> Any:
        return args["x"]

    async def main() -> tuple[Any, str]:
        server = ControlServer(data_dir, {"echo": echo})
        await server.start()
        try:
            got = await call(data_dir, "echo", {"x": [1, "a"]})
            with pytest.raises(ControlError) as err:
                await call(data_dir, "nope")
            return got, str(err.value)
        finally:
            await server.close()

    (got, message), errors = _run(main())
    assert got == [1, "a"]
    assert "unknown operation" in message
    assert errors == []


def test_a_caller_that_hangs_up_before_its_answer_is_counted_not_a_traceback(
        data_dir: Path) -> None:
    """Seen in CI: a test's poll timed out, closed its socket, and the node
    logged "Unhandled exception in client_connected_cb" for every such caller."""
    started = asyncio.Event

    async def main() -> int:
        began = started()

        async def slow(args: dict[str, Any]) -> Any:
            began.set()
            await asyncio.sleep(0.2)
            return b"x" * 200_000  # larger than the socket buffer: drain must wait

        server = ControlServer(data_dir, {"slow": slow})
        await server.start()
        try:
            for _ in range(3):
                began.clear()
                reader, writer = await asyncio.open_unix_connection(str(socket_path(data_dir)))
                write_frame(writer, {"op": "slow", "args": {}})
                await writer.drain()
                await began.wait()
                writer.transport.abort()  # RST, no goodbye
                await asyncio.sleep(0.4)
            # the server still answers the next caller
            reader, writer = await asyncio.open_unix_connection(str(socket_path(data_dir)))
            write_frame(writer, {"op": "slow", "args": {}})
            resp = await read_frame(reader)
            writer.close()
            assert resp["ok"] and len(resp["result"]) == 200_000
            return server.dropped_callers
        finally:
            await server.close()

    dropped, errors = _run(main())
    assert errors == []
    assert dropped == 3
