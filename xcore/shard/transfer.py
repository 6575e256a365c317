"""The share transfer protocol: msgpack frames over a byte stream (TCP).

Frame layout::

    u32 big-endian length || msgpack [type:uint, field, ...]

Frames are at most :data:`MAX_FRAME` bytes; share data travels in DATA frames
of at most :data:`CHUNK` bytes, so neither side ever buffers more than one
share (<= 2 MiB) per connection.

Session (both ends authenticate with their node keys, principle 4)::

    client                                   server
    HELLO [1, client_pubkey, nonce_c]  ->
                                       <-  HELLO_ACK [server_pubkey, nonce_s, sig_s]
    AUTH [sig_c]                       ->
    then any number of requests, one at a time:
    PUT [hash, size, grant|nil, seg|nil] -> (grant: owner-signed storage grant;
                                              seg: the owner's signed segment record,
                                              which also authorises repairs, sent
                                              with the repairer's unexpired claim)
                                       <-  READY [need_data] | ERR
    DATA [bytes] ... (size bytes)      ->
                                       <-  OK [{}] | ERR
    GET [hash]                         ->
                                       <-  SIZE [size] DATA ... | ERR
    DELETE [hash, owner_pubkey, ts, sig] -> OK | ERR
    RENEW [hash, grant, seg|nil, contract|nil] -> OK [{contract?}] | ERR   (a later
                                              grant for a share the host has: no bytes)
    STAT []                            ->  OK [{capacity, free, shares}]
    HAS [hash]                         ->  OK [{has: bool, size}]
    AUDIT [challenge]                  ->  ANSWER [answer] | ERR   (xcore.contracts.audit)

A PUT may carry a fifth field, the owner-signed half of a storage contract
(xcore.contracts.contract); the host checks it against the bytes, adds its
signature and returns it in the OK: ``OK [{"contract": signed}]``. A repair
PUT (no grant) carries a sixth, the repairer's signed ``claim`` record on the
segment (xcore.contracts.repair), checked unexpired when the PUT arrives and
again when its bytes are in: a fencing token against a stalled leader.

``sig_s`` signs ``tag || "server" || nonce_c || nonce_s || client_pubkey`` and
``sig_c`` signs ``tag || "client" || nonce_s || nonce_c || server_pubkey``: each
side proves its key over the other's fresh nonce, so neither a replayed
handshake nor a relay to a third node passes. The client checks the server's
key against the node ID it meant to reach.

A storage grant is the owner's signature allowing this host to keep this
share until ``expires``; a delete must be signed by an owner of the share.
Hosts only ever see ciphertext shares.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from xcore.codec import as_bytes, as_int, as_list, as_str, canonical, expect, pack, unpack_bounded
from xcore.crypto.identity import ID_BYTES, PUBKEY_BYTES, SIG_BYTES, Identity, node_id_of, verify
from xcore.net.streams import TCP, StreamNet
from xcore.errors import (
    BadIdentity, BadSignature, CapacityExceeded, DiskFull, LocalProtocolError, MessageTooLarge,
    RemoteProtocolError, ShareCorrupted, ShareNotFound, Timeout, XcoreError,
)

VERSION = 1
TAG = b"xcore-transfer-v1"
GRANT_TAG = b"xcore-store-grant-v1"
DELETE_TAG = b"xcore-delete-v1"
CHUNK = 256 * 1024
MAX_FRAME = CHUNK + 1024
MAX_SHARE = 2 * 1024 * 1024
NONCE_BYTES = 32
HASH_BYTES = 32

HELLO, HELLO_ACK, AUTH = 1, 2, 3
PUT, READY, DATA, OK, ERR = 10, 11, 12, 14, 15
GET, SIZE = 20, 21
DELETE = 30
RENEW = 31
STAT = 40
HAS = 41
AUDIT, ANSWER = 50, 51

# error codes carried in ERR frames
E_BAD_REQUEST, E_CAPACITY, E_DISK_FULL, E_CORRUPT, E_NOT_FOUND, E_UNAUTHORIZED, E_BUSY = range(1, 8)
ERROR_CLASSES: dict[int, type[XcoreError]] = {
    E_BAD_REQUEST: RemoteProtocolError, E_CAPACITY: CapacityExceeded, E_DISK_FULL: DiskFull,
    E_CORRUPT: ShareCorrupted, E_NOT_FOUND: ShareNotFound, E_UNAUTHORIZED: BadSignature,
    E_BUSY: CapacityExceeded,
}


class HostRefused(XcoreError):
    """The host refused the request."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"host refused: {message}")
        self.code = code


class ConnectionClosed(RemoteProtocolError):
    """The connection was closed."""


def error_for(code: int, message: str) -> XcoreError:
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        return HostRefused(code, message)
    err = cls(f"host refused: {message}")
    err.refusal = True  # type: ignore[attr-defined]  # a clean ERR frame: the stream is fine
    return err


# -- frames ------------------------------------------------------------------


def encode_frame(ftype: int, *fields: Any) -> bytes:
    body = pack([ftype, *fields])
    if len(body) > MAX_FRAME:
        raise LocalProtocolError("frame too large")
    return struct.pack(">I", len(body)) + body


def data_frame_head(n: int) -> bytes:
    """The length prefix and msgpack header of the frame ``[DATA, <n bytes>]``,
    byte for byte what :func:`encode_frame` makes: a chunk is sent as this
    header followed by the chunk itself, never copied into a frame."""
    if n < 1 << 8:
        head = b"\xc4" + n.to_bytes(1, "big")
    elif n < 1 << 16:
        head = b"\xc5" + n.to_bytes(2, "big")
    else:
        head = b"\xc6" + n.to_bytes(4, "big")
    head = bytes((0x92, DATA)) + head  # fixarray of 2, DATA as a positive fixint
    return struct.pack(">I", len(head) + n) + head


_BIN_LENGTH_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin 8 / 16 / 32


def _data_width(lead: bytes) -> int | None:
    """If the first 3 bytes of a frame body open ``[DATA, bin]``: how many
    bytes the bin's length takes (1, 2 or 4); None for anything else."""
    if len(lead) < 3 or lead[0] != 0x92 or lead[1] != DATA:  # fixarray of 2, DATA
        return None
    return _BIN_LENGTH_BYTES.get(lead[2])


def _data_chunk(body: bytes) -> memoryview | None:
    """The chunk of a DATA frame's body, without copying it, if the body is
    exactly ``[DATA, bin]``; None for anything else (decoded the slow way)."""
    width = _data_width(body[:3])
    if width is None:
        return None
    start = 3 + width
    if len(body) < start or int.from_bytes(body[3:start], "big") != len(body) - start:
        return None
    return memoryview(body)[start:]


def decode_frame(body: bytes) -> tuple[int, list[Any]]:
    doc = as_list(unpack_bounded(body, MAX_FRAME, 16), "frame", 8)
    expect(len(doc) >= 1, "frame: empty")
    return as_int(doc[0], "frame type", 0, 255), doc[1:]


class FrameStream:
    """Frames over an asyncio stream pair, with timeouts and size bounds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float = 30.0) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.bytes_in = 0
        self.bytes_out = 0

    async def _read_body(self) -> bytes:
        head = await self.reader.readexactly(4)
        (size,) = struct.unpack(">I", head)
        if size > MAX_FRAME:
            raise MessageTooLarge(f"frame of {size} bytes")
        return await self.reader.readexactly(size)

    async def _recv_body(self) -> bytes:
        try:
            body = await asyncio.wait_for(self._read_body(), self.timeout)
        except asyncio.TimeoutError as exc:
            raise Timeout("peer went silent") from exc
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ConnectionClosed("connection closed") from exc
        self.bytes_in += 4 + len(body)
        return body

    async def recv(self) -> tuple[int, list[Any]]:
        return decode_frame(await self._recv_body())

    async def recv_data(self) -> bytes | memoryview:
        """The next frame, which must be a non-empty DATA frame: its chunk (a
        view of the frame, not a copy). An ERR frame raises its error."""
        return self._data_of(await self._recv_body())

    def _data_of(self, body: bytes) -> bytes | memoryview:
        """The chunk of a frame body that must be a non-empty DATA frame."""
        chunk: bytes | memoryview | None = _data_chunk(body)
        if chunk is None:
            ftype, fields = decode_frame(body)
            fields = self._check(ftype, fields, (DATA,))
            chunk = as_bytes(fields[0] if fields else None, "data", max_size=CHUNK)
        if not chunk or len(chunk) > CHUNK:
            raise RemoteProtocolError("DATA: expected 1 to CHUNK bytes")
        return chunk

    async def recv_exactly(self, size: int, too_much: str) -> bytearray:
        """``size`` bytes of DATA frames, gathered into one buffer of that size
        (:class:`RemoteProtocolError` ``too_much`` if a frame overshoots).
        Over a :class:`~xcore.net.streams.DirectReader` each chunk is read
        straight into its place; otherwise it is copied there once."""
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        direct = getattr(self.reader, "readinto_exactly", None)
        while got < size:
            if direct is not None:
                got += await self._recv_data_into(view, got, too_much, direct)
                continue
            chunk = await self.recv_data()
            end = got + len(chunk)
            if end > size:
                raise RemoteProtocolError(too_much)
            view[got:end] = chunk
            got = end
        return buf

    async def _recv_data_into(self, view: memoryview, at: int, too_much: str,
                              readinto: Callable[[memoryview], Awaitable[None]]) -> int:
        """Read one DATA frame's chunk straight into ``view[at:]``; its length.
        A frame in any other form (an ERR frame; a DATA frame encoded
        otherwise) is read whole and handled as :meth:`recv_data` does: its
        error raised, or its chunk copied into place."""
        async def read() -> int | bytes:
            """The chunk's length once it is in place, or a body to decode."""
            head = await self.reader.readexactly(4)
            (size,) = struct.unpack(">I", head)
            if size > MAX_FRAME:
                raise MessageTooLarge(f"frame of {size} bytes")
            if size < 4:  # too short for [DATA, bin]
                return await self.reader.readexactly(size)
            lead = await self.reader.readexactly(3)
            width = _data_width(lead)
            if width is None or size < 3 + width:
                return lead + await self.reader.readexactly(size - 3)
            tail = await self.reader.readexactly(width)
            n = int.from_bytes(tail, "big")
            if n != size - 3 - width:
                return lead + tail + await self.reader.readexactly(size - 3 - width)
            if not 1 <= n <= CHUNK or at + n > len(view):
                await self.reader.readexactly(n)  # the bad frame is consumed whole, as
                # the slow path does, so the error frame reaches the peer (closing
                # a socket with unread bytes makes the kernel reset it instead)
                raise RemoteProtocolError("DATA: expected 1 to CHUNK bytes" if not 1 <= n <= CHUNK
                                          else too_much)
            await readinto(view[at:at + n])
            self.bytes_in += 4 + size
            return n

        try:
            got = await asyncio.wait_for(read(), self.timeout)
        except asyncio.TimeoutError as exc:
            raise Timeout("peer went silent") from exc
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ConnectionClosed("connection closed") from exc
        if isinstance(got, int):
            return got
        body = got
        self.bytes_in += 4 + len(body)
        chunk = self._data_of(body)
        if at + len(chunk) > len(view):
            raise RemoteProtocolError(too_much)
        view[at:at + len(chunk)] = chunk
        return len(chunk)

    def _write(self, *parts: bytes | memoryview) -> None:
        if self.writer.is_closing():
            raise ConnectionClosed("connection closed")
        try:
            for part in parts:
                self.writer.write(part)
        except (RuntimeError, ConnectionError) as exc:  # uvloop raises RuntimeError on a closed transport
            raise ConnectionClosed("connection closed") from exc

    async def _drain(self) -> None:
        if not self.writer.transport.get_write_buffer_size():
            return  # the kernel took it all: nothing to wait for
        try:
            await asyncio.wait_for(self.writer.drain(), self.timeout)  # back-pressure
        except asyncio.TimeoutError as exc:
            raise Timeout("peer stopped reading") from exc
        except ConnectionError as exc:
            raise ConnectionClosed("connection closed") from exc

    async def send(self, ftype: int, *fields: Any) -> None:
        data = encode_frame(ftype, *fields)
        self.bytes_out += len(data)
        self._write(data)
        await self._drain()

    async def send_data(self, chunk: bytes | memoryview) -> None:
        """One DATA frame carrying ``chunk`` (at most :data:`CHUNK` bytes),
        written as a header and the chunk itself (no copy)."""
        if len(chunk) > CHUNK:
            raise LocalProtocolError("DATA chunk larger than CHUNK")
        head = data_frame_head(len(chunk))
        self.bytes_out += len(head) + len(chunk)
        self._write(head, chunk)
        await self._drain()

    async def expect(self, *types: int) -> list[Any]:
        ftype, fields = await self.recv()
        return self._check(ftype, fields, types)

    @staticmethod
    def _check(ftype: int, fields: list[Any], types: tuple[int, ...]) -> list[Any]:
        if ftype == ERR and ERR not in types:
            code = as_int(fields[0] if fields else 0, "error code", 0, 255)
            msg = as_str(fields[1] if len(fields) > 1 else "", "error message", 1000)
            raise error_for(code, msg)
        if ftype not in types:
            raise RemoteProtocolError(f"unexpected frame type {ftype}")
        return fields

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # pragma: no cover - closing a dead socket
            pass


# -- grants ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """The owner's permission for ``host_id`` to store ``share_hash`` until ``expires``."""

    share_hash: bytes
    host_id: bytes
    expires: int
    owner_pubkey: bytes
    signature: bytes

    @staticmethod
    def signing_bytes(share_hash: bytes, host_id: bytes, expires: int, owner_pubkey: bytes) -> bytes:
        return GRANT_TAG + canonical([share_hash, host_id, expires, owner_pubkey])

    @classmethod
    def create(cls, owner: Identity, share_hash: bytes, host_id: bytes, expires: int) -> "Grant":
        sig = owner.sign(cls.signing_bytes(share_hash, host_id, expires, owner.pubkey))
        return cls(share_hash, host_id, expires, owner.pubkey, sig)

    def encode(self) -> list[Any]:
        return [self.share_hash, self.host_id, self.expires, self.owner_pubkey, self.signature]

    @classmethod
    def decode(cls, v: Any) -> "Grant":
        v = as_list(v, "grant", 5)
        expect(len(v) == 5, "grant: expected 5 fields")
        return cls(as_bytes(v[0], "grant hash", size=HASH_BYTES),
                   as_bytes(v[1], "grant host", size=ID_BYTES),
                   as_int(v[2], "grant expires", 0, 2**40),
                   as_bytes(v[3], "grant owner", size=PUBKEY_BYTES),
                   as_bytes(v[4], "grant signature", size=SIG_BYTES))

    def verify(self) -> None:
        verify(self.owner_pubkey,
               self.signing_bytes(self.share_hash, self.host_id, self.expires, self.owner_pubkey),
               self.signature)


def delete_signing_bytes(share_hash: bytes, host_id: bytes, ts: int, owner_pubkey: bytes) -> bytes:
    return DELETE_TAG + canonical([share_hash, host_id, ts, owner_pubkey])


# -- handshake ---------------------------------------------------------------


def _server_proof(nonce_c: bytes, nonce_s: bytes, client_pub: bytes) -> bytes:
    return TAG + b"server" + nonce_c + nonce_s + client_pub


def _client_proof(nonce_s: bytes, nonce_c: bytes, server_pub: bytes) -> bytes:
    return TAG + b"client" + nonce_s + nonce_c + server_pub


async def client_handshake(fs: FrameStream, identity: Identity, expected_id: bytes | None,
                           token_bytes: Callable[[int], bytes]) -> bytes:
    """Authenticate both ways; returns the server's public key."""
    nonce_c = token_bytes(NONCE_BYTES)
    await fs.send(HELLO, VERSION, identity.pubkey, nonce_c)
    f = await fs.expect(HELLO_ACK)
    expect(len(f) == 3, "HELLO_ACK: expected 3 fields")
    server_pub = as_bytes(f[0], "server key", size=PUBKEY_BYTES)
    nonce_s = as_bytes(f[1], "server nonce", size=NONCE_BYTES)
    sig = as_bytes(f[2], "server proof", size=SIG_BYTES)
    if expected_id is not None and node_id_of(server_pub) != expected_id:
        raise BadIdentity("the host's key does not match the node ID we meant to reach")
    verify(server_pub, _server_proof(nonce_c, nonce_s, identity.pubkey), sig)
    await fs.send(AUTH, identity.sign(_client_proof(nonce_s, nonce_c, server_pub)))
    return server_pub


async def server_handshake(fs: FrameStream, identity: Identity,
                           token_bytes: Callable[[int], bytes]) -> bytes:
    """Authenticate both ways; returns the client's public key."""
    f = await fs.expect(HELLO)
    expect(len(f) == 3, "HELLO: expected 3 fields")
    expect(f[0] == VERSION, "HELLO: unsupported version")
    client_pub = as_bytes(f[1], "client key", size=PUBKEY_BYTES)
    nonce_c = as_bytes(f[2], "client nonce", size=NONCE_BYTES)
    nonce_s = token_bytes(NONCE_BYTES)
    await fs.send(HELLO_ACK, identity.pubkey, nonce_s,
                  identity.sign(_server_proof(nonce_c, nonce_s, client_pub)))
    f = await fs.expect(AUTH)
    expect(len(f) == 1, "AUTH: expected 1 field")
    verify(client_pub, _client_proof(nonce_s, nonce_c, identity.pubkey),
           as_bytes(f[0], "client proof", size=SIG_BYTES))
    return client_pub


# -- client ------------------------------------------------------------------


def _countersigned(ok: list[Any]) -> bytes | None:
    """The host-signed contract in an ``OK [{"contract": ...}]`` frame, if any."""
    info = ok[0] if ok and isinstance(ok[0], dict) else {}
    signed = info.get("contract")
    return signed if isinstance(signed, bytes) else None


class HostConnection:
    """An authenticated connection to one host."""

    def __init__(self, fs: FrameStream, host_id: bytes, host_pubkey: bytes) -> None:
        self.fs = fs
        self.host_id = host_id
        self.host_pubkey = host_pubkey
        self.lock = asyncio.Lock()
        self.broken = False

    @property
    def usable(self) -> bool:
        """Still worth sending a request on: not broken, and not hung up by
        the host (hosts close connections idle past their timeout; a reused
        connection must not turn that into a failure of the host)."""
        return (not self.broken and not self.fs.writer.is_closing()
                and not self.fs.reader.at_eof())

    @classmethod
    async def connect(cls, addr: tuple[str, int], identity: Identity, expected_id: bytes | None,
                      token_bytes: Callable[[int], bytes], timeout: float = 10.0,
                      streams: StreamNet = TCP) -> "HostConnection":
        try:
            reader, writer = await asyncio.wait_for(
                streams.open_connection(addr[0], addr[1], limit=MAX_FRAME * 2), timeout)
        except asyncio.TimeoutError as exc:
            raise Timeout(f"connecting to {addr[0]}:{addr[1]} timed out") from exc
        except OSError as exc:
            raise RemoteProtocolError(f"cannot connect to {addr[0]}:{addr[1]}: {exc.strerror or exc}") from exc
        fs = FrameStream(reader, writer, timeout)
        try:
            pub = await client_handshake(fs, identity, expected_id, token_bytes)
        except BaseException:
            fs.close()
            raise
        return cls(fs, node_id_of(pub), pub)

    async def _guard(self, coro: Any) -> Any:
        try:
            async with self.lock:
                if self.broken:
                    raise RemoteProtocolError("connection is broken")
                try:
                    return await coro
                except (RemoteProtocolError, Timeout, asyncio.CancelledError) as exc:
                    if getattr(exc, "refusal", False):
                        raise  # the host said no in an ERR frame; the stream is still in step
                    self.broken = True
                    self.fs.close()
                    raise
        finally:
            # (a no-op once it ran; if we were cancelled waiting for the lock,
            # it never started and must not be left unawaited)
            coro.close()

    async def put_share(self, share_hash: bytes, data: bytes, grant: Grant | None = None,
                        seg_record: bytes | None = None,
                        contract: bytes | None = None, claim: bytes | None = None
                        ) -> bytes | None:
        """Store a share. ``grant`` is the owner's direct permission; a repair
        sends ``seg_record`` (the owner's signed segment record) instead, with
        its ``claim`` record on the segment (the host refuses a repair whose
        claim has expired), and an upload sends both grant and segment
        record so the host learns the segment for repair."""
        async def run() -> bytes | None:
            if len(data) > MAX_SHARE:
                raise LocalProtocolError("share larger than 2 MiB")
            if grant is None and seg_record is None:
                raise LocalProtocolError("a PUT needs a grant or a segment record")
            fields: list[Any] = [share_hash, len(data),
                                 grant.encode() if grant is not None else None, seg_record]
            if contract is not None or claim is not None:
                fields.append(contract)
            if claim is not None:
                fields.append(claim)
            await self.fs.send(PUT, *fields)
            ready = await self.fs.expect(READY)
            if not (ready and ready[0] == 0):  # 0: the host has these bytes already
                view = memoryview(data)
                for off in range(0, len(data), CHUNK):
                    await self.fs.send_data(view[off:off + CHUNK])
            return _countersigned(await self.fs.expect(OK))
        return await self._guard(run())  # type: ignore[no-any-return]

    async def audit(self, challenge: bytes) -> bytes:
        """Send an audit challenge; returns the host's encoded answer."""
        async def run() -> bytes:
            await self.fs.send(AUDIT, challenge)
            f = await self.fs.expect(ANSWER)
            return as_bytes(f[0] if f else None, "answer", max_size=MAX_FRAME)
        return await self._guard(run())  # type: ignore[no-any-return]

    async def get_share(self, share_hash: bytes, max_size: int = MAX_SHARE) -> bytes:
        async def run() -> bytes:
            await self.fs.send(GET, share_hash)
            f = await self.fs.expect(SIZE)
            size = as_int(f[0] if f else -1, "share size", 0, max_size)
            return bytes(await self.fs.recv_exactly(size, "host sent more bytes than announced"))
        try:
            return await self._guard(run())  # type: ignore[no-any-return]
        except (ShareNotFound, HostRefused):
            raise

    async def delete_share(self, share_hash: bytes, owner: Identity, ts: int) -> None:
        async def run() -> None:
            sig = owner.sign(delete_signing_bytes(share_hash, self.host_id, ts, owner.pubkey))
            await self.fs.send(DELETE, share_hash, owner.pubkey, ts, sig)
            await self.fs.expect(OK)
        await self._guard(run())

    async def renew_share(self, share_hash: bytes, grant: Grant, seg_record: bytes | None = None,
                          contract: bytes | None = None) -> bytes | None:
        """Extend the owner's hold on a share the host already has (a later
        grant; a later segment record; a new contract, returned countersigned).
        Raises :class:`~xcore.errors.ShareNotFound` if the host lacks it."""
        async def run() -> bytes | None:
            await self.fs.send(RENEW, share_hash, grant.encode(), seg_record, contract)
            return _countersigned(await self.fs.expect(OK))
        return await self._guard(run())  # type: ignore[no-any-return]

    async def stat(self) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            await self.fs.send(STAT)
            f = await self.fs.expect(OK)
            info = f[0] if f else None
            expect(isinstance(info, dict), "STAT: expected a map")
            return dict(info)  # type: ignore[arg-type]
        return await self._guard(run())  # type: ignore[no-any-return]

    async def has_share(self, share_hash: bytes) -> bool:
        async def run() -> bool:
            await self.fs.send(HAS, share_hash)
            f = await self.fs.expect(OK)
            info = f[0] if f else None
            expect(isinstance(info, dict), "HAS: expected a map")
            return bool(info.get("has"))  # type: ignore[union-attr]
        return await self._guard(run())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.fs.close()
