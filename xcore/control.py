"""The local control socket: how `xcore` commands talk to a running node.

A Unix socket ``control.sock`` in the node's data directory (mode 0600, so
only the node's owner can drive it). Frames are a 4-byte big-endian length
then a msgpack map; at most :data:`MAX_FRAME` bytes.

Request:  ``{"op": str, "args": map}``
Response: ``{"ok": true, "result": any}`` or ``{"ok": false, "error": str, "type": str}``,
optionally preceded by any number of ``{"progress": any}`` frames for long
operations (handlers that accept a ``progress`` keyword get a callback).

Operations are looked up in a table the node registers; a name that is not
in it gets an error, never an attribute lookup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

from xcore.codec import pack, unpack_bounded
from xcore.errors import ConfigError, NodeNotRunning, RemoteProtocolError, XcoreError

log = logging.getLogger(__name__)
MAX_FRAME = 1 << 20
SOCKET_NAME = "control.sock"
Handler = Callable[..., Awaitable[Any]]


def socket_path(data_dir: Path) -> Path:
    path = Path(data_dir).resolve() / SOCKET_NAME
    if len(os.fsencode(str(path))) > 100:
        raise ConfigError(f"data directory path too long for a control socket: {path}")
    return path


async def read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(4)
    (size,) = struct.unpack(">I", head)
    if size > MAX_FRAME:
        raise RemoteProtocolError(f"control frame of {size} bytes is too large")
    return unpack_bounded(await reader.readexactly(size), MAX_FRAME)


def write_frame(writer: asyncio.StreamWriter, obj: Any) -> None:
    data = pack(obj)
    writer.write(struct.pack(">I", len(data)) + data)


class ControlServer:
    def __init__(self, data_dir: Path, handlers: dict[str, Handler]) -> None:
        self.path = socket_path(data_dir)
        self.handlers = handlers
        self.server: asyncio.AbstractServer | None = None
        self.dropped_callers = 0  # callers that hung up before their answer
        self._callers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.path.exists():
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        # Server.wait_closed() does not wait for open connections (3.11):
        # end the callers' handlers here, before the loop goes away.
        for task in list(self._callers):
            task.cancel()
        await asyncio.gather(*self._callers, return_exceptions=True)
        try:
            self.path.unlink()
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._callers.add(task)
            task.add_done_callback(self._callers.discard)
        try:
            while True:
                try:
                    req = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except RemoteProtocolError as exc:
                    write_frame(writer, {"ok": False, "error": str(exc), "type": "RemoteProtocolError"})
                    return
                def progress(obj: Any) -> None:
                    write_frame(writer, {"progress": obj})
                write_frame(writer, await self._dispatch(req, progress))
                try:
                    await writer.drain()
                except ConnectionError:  # the caller went away (timed out, killed)
                    self.dropped_callers += 1
                    log.debug("control caller left before its answer")
                    return
        except asyncio.CancelledError:
            # close() ends us; finishing normally (not "cancelled") keeps
            # asyncio's stream callback from logging the cancellation as an error
            return
        finally:
            writer.close()

    async def _dispatch(self, req: Any, progress: Callable[[Any], None]) -> dict[str, Any]:
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "malformed request", "type": "RemoteProtocolError"}
        handler = self.handlers.get(req["op"])
        if handler is None:
            return {"ok": False, "error": f"unknown operation {req['op']!r}", "type": "LocalProtocolError"}
        args = req.get("args") or {}
        if not isinstance(args, dict):
            return {"ok": False, "error": "args must be a map", "type": "RemoteProtocolError"}
        try:
            if getattr(handler, "wants_progress", False):
                return {"ok": True, "result": await handler(args, progress=progress)}
            return {"ok": True, "result": await handler(args)}
        except XcoreError as exc:
            return {"ok": False, "error": str(exc), "type": type(exc).__name__}
        except Exception as exc:  # reported, never fatal to the node
            log.exception("control op %s failed", req["op"])
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}",
                    "type": "InternalError"}


def with_progress(fn: Handler) -> Handler:
    """Mark a handler as taking a ``progress`` callback."""
    fn.wants_progress = True  # type: ignore[attr-defined]
    return fn


class ControlError(XcoreError):
    """The node refused the request."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


async def call(data_dir: Path, op: str, args: dict[str, Any] | None = None,
               timeout: float = 120.0, on_progress: Callable[[Any], None] | None = None) -> Any:
    """Send one request to the node running on ``data_dir``."""
    path = socket_path(data_dir)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NodeNotRunning(f"no node is running on {data_dir}") from exc
    try:
        write_frame(writer, {"op": op, "args": args or {}})
        await writer.drain()
        while True:
            resp = await asyncio.wait_for(read_frame(reader), timeout)
            if isinstance(resp, dict) and "progress" in resp and "ok" not in resp:
                if on_progress is not None:
                    on_progress(resp["progress"])
                continue
            break
    except asyncio.IncompleteReadError as exc:
        raise NodeNotRunning(f"the node on {data_dir} closed the connection") from exc
    finally:
        writer.close()
    if not isinstance(resp, dict) or "ok" not in resp:
        raise RemoteProtocolError("malformed control response")
    if not resp["ok"]:
        raise ControlError(str(resp.get("error")), str(resp.get("type")))
    return resp.get("result")


def is_running(data_dir: Path) -> bool:
    try:
        path = socket_path(data_dir)
    except ConfigError:
        return False
    if not path.exists():
        return False
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
