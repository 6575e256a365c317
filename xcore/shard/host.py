"""The host side: serve the share store to authenticated peers over TCP.

A host keeps shares (named by their SHA-256) in a :class:`ShareStore` within
the capacity its operator offers, and remembers, per share, which owners hold
a storage grant for it (``owners/<hash>`` files, msgpack ``{owner_pubkey:
expires}``, written atomically). A share is deleted when its last owner asks
for it (with a signed DELETE) or when every grant has expired. The segment
record that came with a share (``segments/<id>``: what the repairer watches)
is dropped when the owner deletes the last share of that segment here.

Each peer is held to its own share of the host (:mod:`xcore.shard.throttle`):
bytes/s per node ID and per source address, and a few connections each, so a
peer that floods the host is throttled while the others are served.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable

from xcore.codec import as_bytes, as_int, pack, unpack_bounded
from xcore.crypto.identity import PUBKEY_BYTES, SIG_BYTES, Identity, node_id_of, verify
from xcore.errors import (
    BadSignature, CapacityExceeded, DiskFull, RemoteProtocolError, ShareCorrupted,
    ShareNotFound, Timeout, XcoreError,
)
from xcore.contracts.audit import Challenge, answer_challenge
from xcore.contracts.contract import SignedContract
from xcore.contracts.repair import parse_claim
from xcore.contracts.segments import SegmentInfo, decode_segment_record
from xcore.dht.records import decode_and_validate
from xcore.errors import InvalidParameter, RecordRejected, StorageIOError
from xcore.fsutil import atomic_write
from xcore.net.streams import TCP, Listener, StreamNet, run_blocking
from xcore.shard.store import ShareStore, share_name
from xcore.shard.throttle import PeerLimits, TransferLimits
from xcore.shard.transfer import (
    CHUNK, DATA, DELETE, E_BAD_REQUEST, E_BUSY, E_CAPACITY, E_CORRUPT, E_DISK_FULL,
    E_NOT_FOUND, E_UNAUTHORIZED, ERR, GET, HASH_BYTES, MAX_FRAME, MAX_SHARE, OK, PUT,
    ANSWER, AUDIT, HAS, READY, RENEW, SIZE, STAT, ConnectionClosed, FrameStream, Grant, delete_signing_bytes, server_handshake,
)

log = logging.getLogger(__name__)
DELETE_SKEW = 600
ORPHAN_AGE = 24 * 3600  # a share with no owners file this long was never acknowledged
EXPIRE_BATCH = 256  # shares checked per hold of the owners-file lock


def _contract_reply(signed: SignedContract | None) -> dict[str, Any]:
    """The OK of a PUT or RENEW: the countersigned contract, if any."""
    return {"contract": signed.encode()} if signed is not None else {}


class HostService:
    def __init__(self, data_dir: Path, identity: Identity, capacity: int, *,
                 clock: Callable[[], float], token_bytes: Callable[[int], bytes],
                 max_connections: int = 128, timeout: float = 30.0, fault: str = "",
                 streams: StreamNet = TCP, threads: bool = True,
                 limits: TransferLimits | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.identity = identity
        self.capacity = capacity
        self.clock = clock
        self.token_bytes = token_bytes
        self.store = ShareStore(self.data_dir / "shares", capacity)
        self.owners_dir = self.data_dir / "owners"
        self.owners_dir.mkdir(parents=True, exist_ok=True)
        self.max_connections = max_connections
        self.timeout = timeout
        self.connections = 0
        self.limits = PeerLimits(limits)
        self.server: Listener | None = None
        self.streams = streams
        self.threads = threads
        self._meta_lock = asyncio.Lock()
        self.address: tuple[str, int] | None = None
        self.counters: dict[str, int] = {}
        # a share is stored (or its contract renewed): publish where it is and
        # under which contract (None: a repair's copy, no contract yet)
        self.on_stored: Callable[[bytes, SignedContract | None], None] | None = None
        self.on_deleted: Callable[[bytes], None] | None = None
        self._orphans: dict[bytes, float] = {}  # shares seen with no owners file, since
        # an owner's signed DELETE: (share, owner key, ts, signature, whether
        # the share is still held for other owners), the proof that ends the
        # owner's contract for it early
        self.on_owner_deleted: Callable[[bytes, bytes, int, bytes, bool], None] | None = None
        self.segment_of: dict[bytes, bytes] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        # Fault injection for tests and simulations of dishonest hosts
        # (config key "fault"): "delete" drops shares after accepting them,
        # "corrupt" serves flipped bytes, "hashes" answers audits without the
        # blocks, "nonce" answers for another challenge. Empty for real hosts.
        self.fault = fault

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    async def start(self, host: str, port: int) -> tuple[str, int]:
        try:
            self.server = await self.streams.start_server(self._serve, host, port,
                                                          limit=MAX_FRAME * 2)
        except OSError:
            if port == 0:
                raise
            self.server = await self.streams.start_server(self._serve, host, 0, limit=MAX_FRAME * 2)
        self.address = self.server.address
        return self.address

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self._writers):  # a stopped node serves nothing more
            w.close()
        self._writers.clear()
        if self.server is not None:
            await self.server.wait_closed()
        # The handlers see their connection closed and end; wait for them so
        # that none is left pending when the node's loop stops. One stuck in
        # a disk write gets a few seconds, then is cancelled.
        if self._handlers:
            _, stuck = await asyncio.wait(set(self._handlers), timeout=5.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    # -- owners -------------------------------------------------------------

    def _owners_path(self, share_hash: bytes) -> Path:
        name = share_name(share_hash)
        return self.owners_dir / name[:2] / name

    def owners(self, share_hash: bytes) -> dict[bytes, int]:
        """Owner key -> grant expiry for ``share_hash`` ({} if none or unreadable)."""
        try:
            return self._read_owners(share_hash) or {}
        except FileNotFoundError:
            return {}

    def _read_owners(self, share_hash: bytes) -> dict[bytes, int] | None:
        """The owners file's entries; None if it cannot be read (raises
        FileNotFoundError if there is none)."""
        try:
            doc = unpack_bounded(self._owners_path(share_hash).read_bytes(), 1 << 20)
        except FileNotFoundError:
            raise
        except (OSError, RemoteProtocolError):
            return None
        if not isinstance(doc, dict):
            return None
        return {k: v for k, v in doc.items() if isinstance(k, bytes) and isinstance(v, int)}

    def _set_owners(self, share_hash: bytes, owners: dict[bytes, int]) -> None:
        path = self._owners_path(share_hash)
        if owners:
            atomic_write(path, pack(owners))
        else:
            try:
                path.unlink()
            except OSError:
                pass

    def expire_grants(self, shares: list[bytes] | None = None) -> list[bytes]:
        """Drop the shares (of ``shares``, default all held) whose every grant
        (or repair authorisation) has expired, and orphans: shares with no
        owners file for ``ORPHAN_AGE`` (a crash between writing a share and
        recording its owner; the uploader never got an OK). A share whose
        owners file cannot be read is kept. Returns the hashes dropped.

        Blocking file work: call :meth:`expire` (which holds the lock PUTs
        and DELETEs update owners files under) unless nothing else runs."""
        now = self.clock()
        dropped = []
        for h in self.store.list() if shares is None else shares:
            why = self._expiry(h, now)
            if why is None:
                continue
            self._count(why)
            self._orphans.pop(h, None)
            self.store.delete(h)
            self._set_owners(h, {})
            self._forget_segment(h)
            dropped.append(h)
        return dropped

    def _expiry(self, share_hash: bytes, now: float) -> str | None:
        """Why ``share_hash`` goes now (the counter to bump), or None to keep it."""
        try:
            owners = self._read_owners(share_hash)
        except FileNotFoundError:
            # maybe a PUT between its write and its owner: only a share seen
            # without owners for ORPHAN_AGE (by our clock) is dropped
            since = self._orphans.setdefault(share_hash, now)
            return "orphans_dropped" if now - since >= ORPHAN_AGE else None
        self._orphans.pop(share_hash, None)
        if owners is None:
            self._count("owners_unreadable")  # kept: never guess data away
            return None
        live = {k: v for k, v in owners.items() if v > now}
        if not live:
            return "grants_expired"
        if live != owners:
            self._set_owners(share_hash, live)
        return None

    async def expire(self, batch: int = EXPIRE_BATCH) -> int:
        """:meth:`expire_grants` off the event loop, ``batch`` shares at a
        time under the owners-file lock (so a host with many shares does not
        hold up PUTs and DELETEs for the whole scan), then the
        ``on_deleted`` callbacks (the node stops announcing what went)."""
        held = await run_blocking(self.store.list, threads=self.threads)
        for h in set(self._orphans) - set(held):
            del self._orphans[h]
        dropped = 0
        for i in range(0, len(held), batch):
            async with self._meta_lock:
                gone = await run_blocking(self.expire_grants, held[i:i + batch],
                                          threads=self.threads)
            for h in gone:
                if self.on_deleted:
                    self.on_deleted(h)
            dropped += len(gone)
        return dropped

    def stats(self) -> dict[str, Any]:
        st: dict[str, Any] = dict(self.store.stats())
        st.update({"address": f"{self.address[0]}:{self.address[1]}" if self.address else None,
                   "connections": self.connections, "counters": dict(sorted(self.counters.items())),
                   "peers_connected": len(self.limits.conns_by_peer)})
        return st

    # -- serving ------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        fs = FrameStream(reader, writer, self.timeout)
        peername = writer.get_extra_info("peername")
        ip = str(peername[0]) if isinstance(peername, (tuple, list)) and peername else None
        if self.connections >= self.max_connections:
            self._count("refused_busy")
            await self._refuse(fs, "too many connections")
            return
        if not self.limits.open_ip(ip):
            self._count("refused_conns_ip")
            await self._refuse(fs, "too many connections from your address")
            return
        self._writers.add(writer)
        self.connections += 1
        peer_id: bytes | None = None
        try:
            try:
                peer = await server_handshake(fs, self.identity, self.token_bytes)
            except (XcoreError, asyncio.TimeoutError):
                self._count("handshakes_failed")
                return
            if not self.limits.open_peer(node_id_of(peer)):
                self._count("refused_conns_peer")
                await fs.send(ERR, E_BUSY, "too many connections from your node")
                return
            peer_id = node_id_of(peer)
            while True:
                try:
                    ftype, fields = await fs.recv()
                except Timeout:
                    return
                except ConnectionClosed:
                    return
                except RemoteProtocolError:
                    self._count("bad_frames")
                    return
                try:
                    await self._request(fs, peer_id, ip, ftype, fields)
                except ConnectionClosed:
                    return  # the client hung up (normal: it had its k shares)
                except RemoteProtocolError as exc:
                    self._count("bad_requests")
                    try:
                        await fs.send(ERR, E_BAD_REQUEST, str(exc)[:200])
                    except XcoreError:
                        pass
                    return
        except (XcoreError, ConnectionError, asyncio.TimeoutError):
            return
        except asyncio.CancelledError:
            # close() gave up waiting: end normally, so asyncio's stream
            # callback does not log the cancellation as an error
            self._count("handlers_cancelled")
            return
        except Exception:
            self._count("internal_errors")
            log.exception("error serving a transfer connection")
        finally:
            self.connections -= 1
            self.limits.close_ip(ip)
            if peer_id is not None:
                self.limits.close_peer(peer_id)
            self._writers.discard(writer)
            fs.close()

    async def _refuse(self, fs: FrameStream, why: str) -> None:
        """Turn a connection away before the handshake, politely."""
        try:
            fs.timeout = 2.0
            await fs.recv()  # the HELLO: unread input would turn our close into a reset
            await fs.send(ERR, E_BUSY, why)
            fs.writer.write_eof()
        except (XcoreError, OSError, RuntimeError):
            pass
        fs.close()

    async def _throttle(self, fs: FrameStream, peer: bytes, ip: str | None, cost: int) -> bool:
        """Charge ``cost`` bytes to the peer and its address; wait if they are
        over their rate, or refuse (E_BUSY) and return False if they are far over."""
        if cost <= 0:
            return True
        wait, which = self.limits.reserve(peer, ip, cost, self.clock())
        if wait < 0:
            self._count(f"refused_rate_{which}")
            await fs.send(ERR, E_BUSY, f"rate limited ({which}): retry later")
            return False
        if wait > 0:
            self._count("throttled")
            self._count("throttle_wait_ms", int(wait * 1000))
            await asyncio.sleep(wait)
        return True

    def _size(self, share_hash: bytes) -> int:
        try:
            return self.store.size_of(share_hash)
        except XcoreError:
            return 0  # not here: the request costs no share bytes (and is answered so)

    async def _request(self, fs: FrameStream, peer: bytes, ip: str | None, ftype: int,
                       f: list[Any]) -> None:
        if ftype == PUT:
            await self._put(fs, f, peer, ip)
        elif ftype == GET:
            await self._get(fs, f, peer, ip)
        elif ftype == RENEW:
            await self._renew(fs, f)
        elif ftype == DELETE:
            await self._delete(fs, f)
        elif ftype == AUDIT:
            await self._audit(fs, f, peer, ip)
        elif ftype == HAS:
            if len(f) != 1:
                raise RemoteProtocolError("HAS: expected 1 field")
            h = as_bytes(f[0], "hash", size=HASH_BYTES)
            has = self.store.has(h)
            await fs.send(OK, {"has": has, "size": self.store.size_of(h) if has else 0})
        elif ftype == STAT:
            st = self.store.stats()
            await fs.send(OK, {"capacity": st["capacity"], "free": st["bytes_free"],
                               "shares": st["shares"]})
        else:
            raise RemoteProtocolError(f"unknown request type {ftype}")

    async def _put(self, fs: FrameStream, f: list[Any], peer: bytes, ip: str | None) -> None:
        if len(f) not in (3, 4, 5, 6):
            raise RemoteProtocolError("PUT: expected 3 to 6 fields")
        share_hash = as_bytes(f[0], "hash", size=HASH_BYTES)
        size = as_int(f[1], "size", 0, MAX_SHARE)
        grant = Grant.decode(f[2]) if f[2] is not None else None
        seg_blob = f[3] if len(f) >= 4 else None
        half: SignedContract | None = None
        if len(f) >= 5 and f[4] is not None:
            half = SignedContract.decode(as_bytes(f[4], "contract", max_size=4096))
        if seg_blob is not None:
            seg_blob = as_bytes(seg_blob, "seg record", max_size=16 * 1024)
        claim = as_bytes(f[5], "claim", max_size=1024) if len(f) == 6 and f[5] is not None else None
        try:
            owner, expires, seg_info = self._authorize(share_hash, size, grant, seg_blob, half)
            if grant is None and seg_info is not None:  # a repair: only by the leader,
                self._check_claim(claim, seg_info, peer)     # while its claim holds
                # and never a second share of one segment here (the repairer
                # avoids the holders it knows of; one whose loc record it
                # missed is caught here)
                other = next((i for i, x in enumerate(seg_info.shares)
                              if x != share_hash and self.store.has(x)), None)
                if other is not None:
                    self._count("puts_second_share")
                    raise BadSignature(f"this host already holds share {other} of the segment")
        except BadSignature as exc:
            self._count("puts_unauthorized")
            await fs.send(ERR, E_UNAUTHORIZED, str(exc))
            return
        if seg_blob is not None and seg_info is not None:
            await self._meta(self._remember_segment, share_hash, seg_info, seg_blob)
        if self.store.has(share_hash):
            await fs.send(READY, 0)
            await self._meta(self._add_owner, share_hash, owner, expires)
            self._count("puts_deduplicated")
            signed = self._sign_contract(half, None)
            await fs.send(OK, _contract_reply(signed))
            if signed is not None and self.on_stored:
                self.on_stored(share_hash, signed)
            return
        if size > self.store.free:
            self._count("puts_refused_capacity")
            await fs.send(ERR, E_CAPACITY, f"no room: {self.store.free} bytes free")
            return
        if not await self._throttle(fs, peer, ip, size):
            return
        await fs.send(READY, 1)
        data = await fs.recv_exactly(size, "more data than announced")
        if grant is None and seg_info is not None:
            try:  # again: the sender may have stalled while its bytes came in
                self._check_claim(claim, seg_info, peer)
            except BadSignature as exc:
                self._count("puts_stale_claim")
                await fs.send(ERR, E_UNAUTHORIZED, str(exc))
                return
        contract = half.contract if half is not None else None

        def store_and_check() -> tuple[bool, bool | None]:
            # off the event loop: the hash check, write and fsync, and the
            # contract's Merkle root (the one per-byte cost the host adds)
            written = self.store.put(share_hash, data)
            return written, (contract.matches(data) if contract is not None and written else None)

        try:
            written, matched = await run_blocking(store_and_check, threads=self.threads)
            if not written and not self.store.has(share_hash):
                # the same share is being written by another connection: it may
                # still fail its hash check, so do not claim we hold it
                self._count("puts_busy")
                await fs.send(ERR, E_BUSY, "this share is being written; retry")
                return
        except ShareCorrupted:
            self._count("puts_corrupt")
            await fs.send(ERR, E_CORRUPT, "bytes do not match the share hash")
            return
        except DiskFull:
            self._count("puts_disk_full")
            await fs.send(ERR, E_DISK_FULL, "disk full")
            return
        except CapacityExceeded as exc:
            self._count("puts_refused_capacity")
            await fs.send(ERR, E_CAPACITY, str(exc))
            return
        await self._meta(self._add_owner, share_hash, owner, expires)
        self._count("puts")
        self._count("bytes_in", size)
        signed = self._sign_contract(half, data, matched)
        await fs.send(OK, _contract_reply(signed))
        if self.on_stored:
            self.on_stored(share_hash, signed)
        if self.fault == "delete":  # fault injection: pretend to store, then drop the bytes
            self.store.delete(share_hash)
        elif self.fault == "corrupt" and size:  # fault injection: rot one byte on disk
            name = share_name(share_hash)
            path = self.store.root / name[:2] / name
            raw = bytearray(path.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            path.write_bytes(bytes(raw))

    def _authorize(self, share_hash: bytes, size: int, grant: Grant | None,
                   seg_blob: bytes | None, half: SignedContract | None
                   ) -> tuple[bytes, int, SegmentInfo | None]:
        """Who may store ``share_hash`` here, until when: (owner key, expiry,
        segment info). The owner's grant, else (a repair) the owner's segment
        record; a contract offered with it must be the owner's, for this
        share and this host. Raises :class:`BadSignature`."""
        now = self.clock()
        seg_info: SegmentInfo | None = None
        if seg_blob is not None:
            try:
                _, seg_info = decode_segment_record(seg_blob, now)
            except (RecordRejected, RemoteProtocolError) as exc:
                raise BadSignature(f"bad segment record: {exc}") from exc
            if share_hash not in seg_info.shares:
                raise BadSignature("segment record does not list this share")
            if seg_info.until <= now:
                raise BadSignature("segment repair authorisation has expired")
        if grant is not None:
            if grant.share_hash != share_hash or grant.host_id != self.identity.node_id:
                raise BadSignature("grant is for another share or host")
            if grant.expires <= now:
                raise BadSignature("grant has expired")
            grant.verify()
            owner, expires = grant.owner_pubkey, grant.expires
        elif seg_info is not None:
            owner, expires = seg_info.owner_pubkey, seg_info.until
        else:
            raise BadSignature("a PUT needs a grant or a segment record")
        if seg_info is not None and seg_info.owner_pubkey != owner:
            raise BadSignature("segment record and grant are from different owners")
        if half is not None:
            c = half.contract
            if (c.share_hash != share_hash or c.size != size
                    or c.host_pubkey != self.identity.pubkey or c.owner_pubkey != owner):
                raise BadSignature("contract does not match this share, host or owner")
            half.verify_owner()
        return owner, expires, seg_info

    def _check_claim(self, blob: bytes | None, info: SegmentInfo, peer: bytes) -> None:
        """A repair PUT carries its sender's (``peer``: node ID from the
        handshake) ``claim`` record on the segment (xcore.contracts.repair):
        a fencing token. A leader that stalled past its claim (a successor
        may have taken over since) is refused here, not only by its own check
        before each step. Raises :class:`BadSignature`."""
        if blob is None:
            raise BadSignature("a repair needs the repairer's claim on the segment")
        now = self.clock()
        try:
            rec = decode_and_validate(blob, now)  # (an expired record fails here)
            if rec.kind != "claim" or parse_claim(rec) != info.segment_id:
                raise BadSignature("the claim is for another segment")
        except (RecordRejected, RemoteProtocolError) as exc:
            raise BadSignature(f"repair claim: {exc}") from exc
        if rec.signer_id != peer:
            raise BadSignature("the claim is not the sender's")

    async def _renew(self, fs: FrameStream, f: list[Any]) -> None:
        """RENEW [hash, grant, seg record | nil, contract | nil]: the owner
        extends its hold on a share this host already has (a later grant, a
        later segment record for repair, a new contract); no bytes move."""
        if len(f) != 4:
            raise RemoteProtocolError("RENEW: expected 4 fields")
        share_hash = as_bytes(f[0], "hash", size=HASH_BYTES)
        grant = Grant.decode(f[1])
        seg_blob = as_bytes(f[2], "seg record", max_size=16 * 1024) if f[2] is not None else None
        half = (SignedContract.decode(as_bytes(f[3], "contract", max_size=4096))
                if f[3] is not None else None)
        if not self.store.has(share_hash):
            self._count("renewals_not_found")
            await fs.send(ERR, E_NOT_FOUND, "no such share")
            return
        try:
            owner, expires, seg_info = self._authorize(share_hash, self.store.size_of(share_hash),
                                                       grant, seg_blob, half)
        except BadSignature as exc:
            self._count("renewals_unauthorized")
            await fs.send(ERR, E_UNAUTHORIZED, str(exc))
            return
        if seg_blob is not None and seg_info is not None:
            await self._meta(self._remember_segment, share_hash, seg_info, seg_blob)
        await self._meta(self._add_owner, share_hash, owner, expires)
        self._count("renewals")
        signed: SignedContract | None = None
        if half is not None:
            offer = half.contract

            def read_and_check() -> tuple[bytes | None, bool]:
                try:
                    data = self.store.get(share_hash)
                except XcoreError:
                    return None, False
                return data, offer.matches(data)
            data, matched = await run_blocking(read_and_check, threads=self.threads)
            signed = self._sign_contract(half, data, matched)
        await fs.send(OK, _contract_reply(signed))
        if signed is not None and self.on_stored:
            self.on_stored(share_hash, signed)

    async def _meta(self, fn: Callable[..., None], *args: Any) -> None:
        """Run an owners/segment file update (an fsynced atomic write) off the
        event loop, one at a time: they read, modify and rename shared files
        (a DELETE takes the same lock)."""
        async with self._meta_lock:
            await run_blocking(fn, *args, threads=self.threads)

    def _sign_contract(self, half: SignedContract | None, data: bytes | bytearray | None,
                       matched: bool | None = None) -> SignedContract | None:
        """Countersign the owner's contract once the bytes are known to match it
        (``matched``: already checked against ``data``)."""
        if half is None:
            return None
        if data is None:
            try:
                data = self.store.get(half.contract.share_hash)
            except XcoreError:
                return None
        if not (matched if matched is not None else half.contract.matches(data)):
            self._count("contracts_refused")
            return None
        signed = half.sign_as_host(self.identity)
        self._count("contracts_signed")
        return signed

    # -- audits ----------------------------------------------------------------

    async def _audit(self, fs: FrameStream, f: list[Any], peer: bytes, ip: str | None) -> None:
        if len(f) != 1:
            raise RemoteProtocolError("AUDIT: expected 1 field")
        challenge = Challenge.decode(as_bytes(f[0], "challenge", max_size=4096))
        if not await self._throttle(fs, peer, ip, self._size(challenge.share_hash)):
            return  # answering reads and hashes the whole share
        self._count("audits_answered")
        try:
            if self.fault == "corrupt":
                data = self._raw_share(challenge.share_hash)
            else:
                data = await run_blocking(self.store.get, challenge.share_hash,
                                          threads=self.threads)
        except ShareNotFound:
            self._count("audits_not_found")
            await fs.send(ERR, E_NOT_FOUND, "no such share")
            return
        except (ShareCorrupted, StorageIOError):
            self._count("audits_corrupt")
            await fs.send(ERR, E_CORRUPT, "stored share is corrupt")
            return
        if self.fault == "hashes":
            # a host that kept only block hashes: it cannot produce the blocks
            data = bytes(len(data))
        try:
            answer = answer_challenge(data, challenge, self.identity)
        except InvalidParameter as exc:
            await fs.send(ERR, E_BAD_REQUEST, str(exc)[:200])
            return
        if self.fault == "nonce":
            # answer for another challenge (a replayed or pre-computed answer)
            stale = Challenge(challenge.share_hash, bytes(32), challenge.indices,
                              challenge.challenger_pubkey, challenge.issued)
            answer = answer_challenge(data, stale, self.identity)
        await fs.send(ANSWER, answer.encode())

    def _raw_share(self, share_hash: bytes) -> bytes:
        """The bytes on disk, unverified (fault injection: serve what is there)."""
        name = share_name(share_hash)
        path = self.store.root / name[:2] / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ShareNotFound() from None

    def _add_owner(self, share_hash: bytes, owner: bytes, expires: int) -> None:
        owners = self.owners(share_hash)
        owners[owner] = max(owners.get(owner, 0), expires)
        self._set_owners(share_hash, owners)

    # -- segments (for owner-less repair) ------------------------------------

    def _segment_path(self, seg_id: bytes) -> Path:
        return self.data_dir / "segments" / seg_id.hex()

    def _remember_segment(self, share_hash: bytes, info: SegmentInfo, blob: bytes) -> None:
        """Keep the segment record (the first one, or the owner's renewal of it:
        a record from the same owner that authorises repair for longer)."""
        path = self._segment_path(info.segment_id)
        try:
            _, held = decode_segment_record(path.read_bytes(), self.clock())
            newer = held.owner_pubkey == info.owner_pubkey and info.until > held.until
        except FileNotFoundError:
            newer = True
        except (OSError, RecordRejected, RemoteProtocolError):
            newer = True  # unreadable or expired: the new one is better
        if newer:
            atomic_write(path, blob)
        self.segment_of[share_hash] = info.segment_id

    def segments(self) -> dict[bytes, tuple[bytes, SegmentInfo]]:
        """Segment records of the shares this host holds: seg_id -> (record blob, info)."""
        out: dict[bytes, tuple[bytes, SegmentInfo]] = {}
        seg_dir = self.data_dir / "segments"
        if not seg_dir.is_dir():
            return out
        now = self.clock()
        for path in seg_dir.iterdir():
            try:
                blob = path.read_bytes()
                _, info = decode_segment_record(blob, now)
            except (OSError, RecordRejected, RemoteProtocolError):
                continue
            held = [h for h in info.shares if self.store.has(h)]
            if held:
                out[info.segment_id] = (blob, info)
                for h in held:  # (after a restart: so that a DELETE finds it)
                    self.segment_of.setdefault(h, info.segment_id)
        return out

    def _forget_segment(self, share_hash: bytes) -> None:
        """The owner deleted ``share_hash``: drop its segment record once this
        host holds no share of that segment, so nothing keeps it (an old index
        blob, say) on the repair watch list or on disk."""
        seg_id = self.segment_of.pop(share_hash, None)
        if seg_id is None:
            return
        path = self._segment_path(seg_id)
        try:
            _, info = decode_segment_record(path.read_bytes(), self.clock())
            if any(self.store.has(h) for h in info.shares):
                return
        except (OSError, RecordRejected, RemoteProtocolError):
            pass
        try:
            path.unlink()
        except OSError:
            pass

    async def _get(self, fs: FrameStream, f: list[Any], peer: bytes, ip: str | None) -> None:
        if len(f) != 1:
            raise RemoteProtocolError("GET: expected 1 field")
        share_hash = as_bytes(f[0], "hash", size=HASH_BYTES)
        if not await self._throttle(fs, peer, ip, self._size(share_hash)):
            return
        try:
            data = await run_blocking(self.store.get, share_hash, threads=self.threads)
        except ShareNotFound:
            self._count("gets_not_found")
            await fs.send(ERR, E_NOT_FOUND, "no such share")
            return
        except ShareCorrupted:
            self._count("gets_corrupt")
            await fs.send(ERR, E_CORRUPT, "stored share is corrupt")
            return
        await fs.send(SIZE, len(data))
        view = memoryview(data)
        for off in range(0, len(data), CHUNK):
            await fs.send_data(view[off:off + CHUNK])
        self._count("gets")
        self._count("bytes_out", len(data))

    async def _delete(self, fs: FrameStream, f: list[Any]) -> None:
        if len(f) != 4:
            raise RemoteProtocolError("DELETE: expected 4 fields")
        share_hash = as_bytes(f[0], "hash", size=HASH_BYTES)
        owner = as_bytes(f[1], "owner", size=PUBKEY_BYTES)
        ts = as_int(f[2], "ts", 0, 2**40)
        sig = as_bytes(f[3], "signature", size=SIG_BYTES)
        refused: str | None = None
        async with self._meta_lock:  # PUTs update owners files in a worker thread
            owners = self.owners(share_hash)
            try:
                if abs(ts - self.clock()) > DELETE_SKEW:
                    raise BadSignature("delete request is stale")
                verify(owner, delete_signing_bytes(share_hash, self.identity.node_id, ts, owner),
                       sig)
                if owner not in owners:
                    raise BadSignature("not an owner of this share")
            except BadSignature as exc:
                refused = str(exc)
            else:
                del owners[owner]
                self._set_owners(share_hash, owners)
                if not owners:
                    self.store.delete(share_hash)
                    self._forget_segment(share_hash)
        if refused is not None:
            self._count("deletes_unauthorized")
            await fs.send(ERR, E_UNAUTHORIZED, refused)
            return
        if self.on_owner_deleted:
            self.on_owner_deleted(share_hash, owner, ts, sig, bool(owners))
        self._count("deletes")
        await fs.send(OK, {})
