"""The client's data path: put, get, ls and rm of whole files.

put: plaintext is read a segment at a time (k x 2 MiB), encrypted with
AES-256-CTR under a per-file key (HKDF of the owner's master secret and a
random file ID), erasure-coded into n shares (zfec), each share hashed
(SHA-256 names it; a Merkle root over its 1 KiB audit blocks goes into its
storage contract) and uploaded to its own host, chosen by
:mod:`xcore.contracts.selection`. Encoding and hashing run in a worker thread
(zfec and SHA-256 of whole shares release the GIL), so the next segment is
prepared while the last one uploads. Failed uploads move to another host
(long tail). Three segments are in flight at once (two for codes with
k + n > 16), so memory stays bounded (about 3 x (k + n) x 2 MiB) whatever the
file size. The manifest (name,
size, segments, share hashes and hosts) is sealed with the owner's key,
stored mirrored on several hosts, and listed in the owner's index, itself a
sealed blob that a signed DHT record points to. Both blobs are mirrored
segments (k = 1) with a seg record, so hosts repair them like data
(:meth:`Client.store_blob`).

get: the manifest is fetched and opened, then for each segment k shares
are requested in parallel from their hosts (fewest failures and fastest
first); if they have not all arrived after ``hedge_after`` seconds, one more
is requested from another holder. Every share is checked against its
SHA-256; a failure or mismatch counts against that host and the next holder
is tried (including holders found through ``loc`` records). k good shares
are decoded, decrypted and appended to a temporary file (in a worker thread,
while the next segments download) that is renamed over the output only when
complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from xcore.client.index import (
    Index, IndexEntry, IndexPointer, best_index_record, index_key, make_index_record,
    open_index, read_index_record, seal_index,
)
from xcore.client.keys import OwnerKeys
from xcore.client.manifest import Manifest, SegmentRef, ShareRef, open_manifest, seal_manifest
from xcore.contracts.hosts import HostInfo, loc_address, loc_key, read_hosts
from xcore.contracts.contract import AUDIT_BLOCK, Contract, SignedContract, share_merkle_root
from xcore.contracts.segments import make_segment_record
from xcore.directio import DirectWriter
from xcore.contracts.selection import select_hosts
from xcore.crypto.stream import CtrStream
from xcore.dht.records import Record
from xcore.errors import (
    CapacityExceeded, LookupFailed, NotEnoughShares, NotFound, ShareCorrupted, ShareNotFound,
    XcoreError,
)
from xcore.shard.erasure import Redundancy, encode_segment, segment_pieces, segment_size
from xcore.net.streams import TCP, run_blocking
from xcore.shard.transfer import Grant, HostConnection

GRANT_TERM = 365 * 24 * 3600
REPAIR_PRICE_CAP = 20_000  # micro-euros per GB-month a repair may agree (the appendix's 0.02 EUR)
INDEX_TTL = 30 * 24 * 3600
UNDO_TIMEOUT = 30.0  # seconds a failed put spends deleting what it placed
BLOB_COPIES = 5  # n - k + 1 at the default 4/8: metadata survives what data survives
MAX_BLOB = 2 * 1024 * 1024
RENEW_SEGMENTS_IN_FLIGHT = 4  # segments renewed at once, of any files (each: n lookups, n RENEWs)
RENEW_FILES_IN_FLIGHT = 4  # files being renewed at once (their manifests fetched, segments queued)
Progress = Callable[[dict[str, Any]], None]


RTT_BAND = 0.02  # seconds: hosts this close in round-trip time count as equally near
UNKNOWN_RTT = 0.2


def fetch_order(candidates: list[tuple[ShareRef, bytes, str]], k: int,
                failures: Callable[[bytes], int], rtt: Callable[[bytes], float | None]
                ) -> list[tuple[ShareRef, bytes, str]]:
    """The order to try (share, host, address) candidates in: hosts that failed
    this client less often first, then nearer ones (by RTT bands of
    :data:`RTT_BAND`); among equally near hosts, primary shares (index < k)
    first, because k primaries rebuild a segment by concatenation while any
    other share costs a zfec decode (0.5 of the client's 3.4 CPU s per
    256 MiB get at 4/8 when the nearest hosts held secondaries)."""
    def key(q: tuple[ShareRef, bytes, str]) -> tuple[int, int, bool, float]:
        ref, host_id, _ = q
        r = rtt(host_id)
        r = UNKNOWN_RTT if r is None else r
        return (failures(host_id), int(r / RTT_BAND), ref.index >= k, r)
    return sorted(candidates, key=key)


class NotEnoughHosts(CapacityExceeded):
    """Not enough hosts with free space are known to place every share."""


@dataclass
class HostStats:
    failures: dict[bytes, int] = field(default_factory=dict)
    successes: dict[bytes, int] = field(default_factory=dict)

    def fail(self, host_id: bytes) -> None:
        self.failures[host_id] = self.failures.get(host_id, 0) + 1

    def ok(self, host_id: bytes) -> None:
        self.successes[host_id] = self.successes.get(host_id, 0) + 1


class Client:
    """Runs the data path on top of a started, joined :class:`NodeService`."""

    def __init__(self, svc: Any, keys: OwnerKeys, *, rng: random.Random | None = None,
                 token_bytes: Callable[[int], bytes] | None = None,
                 parallel_segments: int | None = None, timeout: float = 30.0,
                 hedge_after: float = 1.0) -> None:
        self.svc = svc
        self.keys = keys
        env = getattr(svc, "env", None)
        self.rng = rng or (env.rng if env is not None else random.SystemRandom())
        self.token_bytes = token_bytes or (env.token_bytes if env is not None else os.urandom)
        # CPU work on whole segments (zfec, SHA-256, Merkle roots) runs in a
        # worker thread on a real loop, inline in a simulation
        self.threads = bool(getattr(env, "threads", True))
        self.streams = getattr(svc, "streams", None) or TCP
        self.parallel_segments = parallel_segments  # None: :meth:`segments_in_flight`
        # a segment's k downloads that have not all finished after this many
        # seconds get one more, from another holder (hedged request)
        self.hedge_after = hedge_after
        self.hedged_downloads = 0
        self.timeout = timeout
        self.stats = HostStats()
        self._conns: dict[bytes, HostConnection] = {}
        self._conn_locks: dict[bytes, asyncio.Lock] = {}
        self._hosts: list[HostInfo] | None = None
        self.contracts: dict[bytes, bytes] = {}
        self.lookup_retries = 0
        self.contracts_missing = 0
        self.undone_shares = 0  # shares deleted again after a failed put

    # -- plumbing --------------------------------------------------------------

    def now(self) -> float:
        return float(self.svc.clock())

    async def dht_get(self, key: bytes, strict: bool = False) -> list[Record]:
        """Records under ``key``; [] when there are none (a lookup nobody
        answered is tried once more; then ``strict`` raises, see
        :func:`xcore.net.aio.dht_records`)."""
        from xcore.net.aio import dht_records
        return await dht_records(self.svc, key, strict=strict, retried=self._lookup_retried)

    def _lookup_retried(self) -> None:
        self.lookup_retries += 1

    async def dht_publish(self, rec: Record) -> int:
        from xcore.net.aio import wait_op
        op = self.svc.driver.call(lambda t: self.svc.dht.publish(rec, t))
        return int(await wait_op(op, 60))

    def _segment_record(self, hashes: list[bytes], red: Redundancy, length: int, until: int
                        ) -> tuple[bytes, asyncio.Task[None]]:
        """The owner-signed ``seg`` record of a segment (its repair
        authorisation until ``until``), encoded as sent with each share, and
        a task publishing it to the DHT (await it once the shares are placed)."""
        rec = make_segment_record(self.keys.signing, hashes, red.k, red.n, length, until,
                                  REPAIR_PRICE_CAP, self.now())
        return rec.encode(), asyncio.create_task(self._publish_quietly(rec))

    async def _publish_quietly(self, rec: Record) -> None:
        try:
            await self.dht_publish(rec)
        except XcoreError:
            pass  # the hosts hold the record too, and republish it for repair

    async def hosts(self, refresh: bool = False) -> list[HostInfo]:
        """Every host announced in the DHT (newest announcement per host)."""
        if self._hosts is not None and not refresh:
            return self._hosts
        best = await read_hosts(self.dht_get, self.svc.dht.config.difficulty)
        self._hosts = sorted(best.values(), key=lambda h: h.node_id)
        return self._hosts

    def rtt(self, host_id: bytes) -> float | None:
        c = self.svc.dht.routing.get(host_id)
        return c.rtt if c is not None else None

    def reputation(self, host_id: bytes) -> float:
        """Selection factor: the node's audit-based reputation (0 for hosts
        marked bad), discounted by transfer failures seen by this client."""
        fails = self.stats.failures.get(host_id, 0)
        rep = getattr(self.svc, "reputation", None)
        base = rep.selection_factor(host_id) if rep is not None else 1.0
        return base / (1.0 + fails)

    async def connect(self, host_id: bytes, addr: tuple[str, int]) -> HostConnection:
        lock = self._conn_locks.setdefault(host_id, asyncio.Lock())
        async with lock:
            conn = self._conns.get(host_id)
            if conn is not None and conn.usable:
                return conn
            if conn is not None:
                conn.close()
            conn = await HostConnection.connect(addr, self.svc.identity, host_id,
                                                self.token_bytes, self.timeout,
                                                streams=self.streams)
            self._conns[host_id] = conn
            return conn

    def segments_in_flight(self, red: Redundancy) -> int:
        """Segments put or fetched at once: 3, or 2 for wide codes (k + n > 16,
        e.g. 10/30, where one segment holds 40 shares of up to 2 MiB), so the
        client's memory stays near 200 MB whatever the file size."""
        if self.parallel_segments is not None:
            return max(1, self.parallel_segments)
        return 3 if red.k + red.n <= 16 else 2

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    async def _upload(self, host: HostInfo, share_hash: bytes, data: bytes,
                      seg_blob: bytes | None = None, red: Redundancy | None = None,
                      root: bytes | None = None) -> None:
        conn = await self.connect(host.node_id, host.addr)
        now = int(self.now())
        grant = Grant.create(self.keys.signing, share_hash, host.node_id, now + GRANT_TERM)
        half = None
        if red is not None:  # a storage contract, signed by us first (xcore.contracts.contract)
            c = Contract.for_share(data, k=red.k, n=red.n, start=now, end=now + GRANT_TERM,
                                   price=REPAIR_PRICE_CAP, host_pubkey=host.pubkey,
                                   owner_pubkey=self.keys.pubkey, share_hash=share_hash,
                                   merkle_root=root)
            half = SignedContract(c).sign_as_owner(self.keys.signing).encode()
        signed = await conn.put_share(share_hash, data, grant, seg_blob, half)
        if half is not None:
            if signed is None:
                self.contracts_missing += 1
            else:
                self.contracts[share_hash] = signed

    async def _download(self, host_id: bytes, addr: tuple[str, int], share_hash: bytes) -> bytes:
        conn = await self.connect(host_id, addr)
        data = await conn.get_share(share_hash)
        if await run_blocking(_sha256, data, threads=self.threads) != share_hash:
            raise ShareCorrupted(f"share {share_hash.hex()[:16]} from {addr[0]}:{addr[1]} is corrupt")
        return data

    async def place(self, share_hash: bytes, data: bytes, candidates: list[HostInfo],
                    avoid: set[bytes], attempts: int = 8, seg_blob: bytes | None = None,
                    red: Redundancy | None = None, last: Exception | None = None,
                    root: bytes | None = None,
                    tried: list[tuple[bytes, HostInfo]] | None = None) -> HostInfo:
        """Upload one share to the first candidate that takes it (each host
        tried is added to ``tried``: a cancelled upload may still have landed)."""
        for _ in range(attempts):
            pick = select_hosts(candidates, 1, rng=self.rng, now=self.now(), need_bytes=len(data),
                                exclude=avoid, rtt=self.rtt, reputation=self.reputation)
            if not pick:
                break
            host = pick[0]
            avoid.add(host.node_id)
            if tried is not None:
                tried.append((share_hash, host))
            try:
                await self._upload(host, share_hash, data, seg_blob, red, root)
                self.stats.ok(host.node_id)
                return host
            except (XcoreError, OSError, asyncio.TimeoutError) as exc:
                self.stats.fail(host.node_id)
                last = exc
        raise NotEnoughHosts(f"could not place share {share_hash.hex()[:16]}: {last or 'no host left'}")

    # -- blobs (manifests, index) --------------------------------------------------

    async def store_blob(self, blob: bytes, copies: int = BLOB_COPIES, contracts: bool = True
                         ) -> tuple[bytes, list[tuple[bytes, str]]]:
        """Mirror a metadata blob on ``copies`` hosts. A file's manifest gets
        at least n - k + 1 copies, so it survives whatever its data survives.

        The blob is a mirrored segment of its own (k = 1, n = copies: its
        hash n times in an owner-signed seg record, sent with every copy and
        published), so its hosts watch it and repair lost copies without the
        owner, like data. ``contracts``: each copy also gets a storage
        contract (audited and paid like a data share); the index blob, replaced
        on every put and rm, goes without (a contract outlives a deleted share
        for its whole term, and its audits would count against the host)."""
        if len(blob) > MAX_BLOB:
            raise CapacityExceeded(f"metadata blob of {len(blob)} bytes exceeds {MAX_BLOB}")
        h = hashlib.sha256(blob).digest()
        hosts = await self.hosts()
        n = min(copies, len(hosts))
        if n < 1:
            raise NotEnoughHosts("no host is known to take the metadata blob")
        red = Redundancy(1, n)
        seg_blob, publish = self._segment_record([h] * n, red, len(blob),
                                                 int(self.now()) + GRANT_TERM)
        root = share_merkle_root(blob) if contracts else None
        avoid: set[bytes] = set()
        try:
            placed = await asyncio.gather(*(self.place(h, blob, hosts, avoid, seg_blob=seg_blob,
                                                       red=red if contracts else None, root=root)
                                            for _ in range(n)),
                                          return_exceptions=True)
        except BaseException:
            publish.cancel()
            raise
        await publish
        where = [(p.node_id, f"{p.addr[0]}:{p.addr[1]}") for p in placed if isinstance(p, HostInfo)]
        if not where:
            raise NotEnoughHosts("no host took the metadata blob")
        return h, where

    async def delete_blob(self, blob_hash: bytes, hosts: Iterable[tuple[bytes, str]]) -> int:
        """Delete a metadata blob from ``hosts`` and from every host that
        announced a copy (repair may have placed copies elsewhere): a copy
        left behind would be repaired back to n copies by its holder (k = 1)."""
        return await self._delete_everywhere(
            blob_hash, (await self.holders_and(blob_hash, hosts)).items())

    async def holders_and(self, share_hash: bytes, listed: Iterable[tuple[bytes, str]]
                          ) -> dict[bytes, str]:
        """``listed`` (host ID, address) pairs, plus every host that announced
        holding ``share_hash`` since (repair places copies elsewhere)."""
        where = dict(listed)
        for host_id, addr in await self.holders(share_hash):
            where.setdefault(host_id, addr)
        return where

    async def fetch_blob(self, blob_hash: bytes, hosts: Iterable[tuple[bytes, str]]) -> bytes:
        from xcore.bootstrap import parse_address
        tried: set[bytes] = set()
        listed = list(hosts)
        for round_ in range(2):
            if round_ == 1:  # the listed hosts failed: ask the DHT who holds it now
                listed = await self.holders(blob_hash)
            for host_id, addr in listed:
                if host_id in tried:
                    continue
                tried.add(host_id)
                try:
                    data = await self._download(host_id, parse_address(addr), blob_hash)
                    self.stats.ok(host_id)
                    return data
                except (XcoreError, OSError, asyncio.TimeoutError):
                    self.stats.fail(host_id)
        raise NotFound(f"no host could return blob {blob_hash.hex()[:16]}")

    async def holders(self, share_hash: bytes) -> list[tuple[bytes, str]]:
        """Hosts that announced holding ``share_hash`` (``loc`` records)."""
        out = []
        for rec in await self.dht_get(loc_key(share_hash)):
            try:
                a = loc_address(rec)
            except XcoreError:
                continue
            out.append((rec.signer_id, f"{a[0]}:{a[1]}"))
        return out

    # -- index -------------------------------------------------------------------

    async def read_index(self) -> tuple[Index, int, IndexPointer | None]:
        recs = await self.dht_get(index_key(self.keys), strict=True)
        best = best_index_record(recs, self.keys)
        if best is None:
            return Index(()), 0, None
        pointer = read_index_record(best, self.keys)
        blob = await self.fetch_blob(pointer.blob_hash, pointer.hosts)
        return open_index(blob, self.keys), best.seq, pointer

    async def write_index(self, index: Index, seq: int, old: IndexPointer | None) -> None:
        blob = seal_index(index, self.keys)
        h, where = await self.store_blob(blob, contracts=False)
        pointer = IndexPointer(h, len(blob), tuple(where))
        seq = max(seq + 1, int(self.now() * 1000))
        rec = make_index_record(self.keys, pointer, seq, self.now(), INDEX_TTL)
        await self.dht_publish(rec)
        if old is not None and old.blob_hash != h:
            await self.delete_blob(old.blob_hash, old.hosts)

    async def _delete_everywhere(self, share_hash: bytes, hosts: Iterable[tuple[bytes, str]]) -> int:
        from xcore.bootstrap import parse_address
        done = 0
        for host_id, addr in hosts:
            try:
                conn = await self.connect(host_id, parse_address(addr))
                await conn.delete_share(share_hash, self.keys.signing, int(self.now()))
                done += 1
            except (XcoreError, OSError, asyncio.TimeoutError):
                continue
        return done

    # -- put -----------------------------------------------------------------------

    async def put(self, path: Path, red: Redundancy, name: str | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
        """Encrypt, encode and place ``path``; add it to the owner's index.

        A put that fails deletes the shares it placed (else they would hold
        the hosts' space for the grant's whole term with no index entry
        pointing at them); what cannot be reached expires with its grant.
        """
        tried: list[tuple[bytes, HostInfo]] = []  # (share, host) pairs sent
        try:
            return await self._put(Path(path), red, name, progress, tried)
        except Exception:
            await self._undo_placements(tried)
            raise

    async def _undo_placements(self, tried: list[tuple[bytes, HostInfo]]) -> int:
        by_share: dict[bytes, dict[bytes, str]] = {}
        for h, host in tried:
            by_share.setdefault(h, {})[host.node_id] = f"{host.addr[0]}:{host.addr[1]}"
        try:
            counts = await asyncio.wait_for(asyncio.gather(*(
                self._delete_everywhere(h, hosts.items()) for h, hosts in by_share.items())),
                UNDO_TIMEOUT)
        except asyncio.TimeoutError:
            return 0
        self.undone_shares += sum(counts)
        return sum(counts)

    async def _put(self, path: Path, red: Redundancy, name: str | None,
                   progress: Progress | None, tried: list[tuple[bytes, HostInfo]]
                   ) -> dict[str, Any]:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise NotFound(f"cannot read {path}: {exc.strerror}") from exc
        started = self.now()
        hosts = await self.hosts(refresh=True)
        usable = [h for h in hosts if h.free > 0 and self.reputation(h.node_id) > 0]
        if len(usable) < red.n:
            raise NotEnoughHosts(f"{len(usable)} hosts with free space are known; "
                                 f"redundancy {red} needs {red.n}")
        file_id = self.token_bytes(16)
        key, nonce = self.keys.file_key(file_id)
        ctr = CtrStream(key, nonce)
        seg_len = segment_size(red)
        segments: dict[int, SegmentRef] = {}
        sem = asyncio.Semaphore(self.segments_in_flight(red))
        done = {"bytes": 0}
        tasks: list[asyncio.Task[None]] = []

        async def upload_segment(index: int, ciphertext: bytes) -> None:
            try:
                shares, hashes, roots = await run_blocking(prepare_segment, ciphertext, red,
                                                           threads=self.threads)
                seg_blob, publish = self._segment_record(hashes, red, len(ciphertext),
                                                         int(self.now()) + GRANT_TERM)
                refs: list[ShareRef | None] = [None] * red.n
                avoid: set[bytes] = set()
                chosen = select_hosts(usable, red.n, rng=self.rng, now=self.now(),
                                      need_bytes=len(shares[0]), rtt=self.rtt,
                                      reputation=self.reputation)

                async def one(i: int, data: bytes, first: HostInfo | None) -> None:
                    h, root = hashes[i], roots[i]
                    host: HostInfo | None = None
                    first_error: Exception | None = None
                    if first is not None:
                        avoid.add(first.node_id)
                        tried.append((h, first))
                        try:
                            await self._upload(first, h, data, seg_blob, red, root)
                            self.stats.ok(first.node_id)
                            host = first
                        except (XcoreError, OSError, asyncio.TimeoutError) as exc:
                            self.stats.fail(first.node_id)
                            first_error = exc
                    if host is None:
                        host = await self.place(h, data, usable, avoid, seg_blob=seg_blob, red=red,
                                                last=first_error, root=root, tried=tried)
                    refs[i] = ShareRef(i, h, len(data), root, host.node_id,
                                       f"{host.addr[0]}:{host.addr[1]}")
                try:
                    await asyncio.gather(*(one(i, s, chosen[i] if i < len(chosen) else None)
                                           for i, s in enumerate(shares)))
                except BaseException:
                    # a segment that could not be placed is not authorised for
                    # repair: its record is not published (its shares are undone)
                    publish.cancel()
                    await asyncio.gather(publish, return_exceptions=True)
                    raise
                await publish
                segments[index] = SegmentRef(index, len(ciphertext),
                                             tuple(r for r in refs if r is not None))
                done["bytes"] += len(ciphertext)
                if progress:
                    progress({"op": "put", "done": done["bytes"], "total": size})
            finally:
                sem.release()

        with open(path, "rb") as f:
            index = 0
            while True:
                await sem.acquire()
                chunk = f.read(seg_len)
                if not chunk:
                    sem.release()
                    break
                tasks.append(asyncio.create_task(upload_segment(index, ctr.update(chunk))))
                index += 1
                if len(chunk) < seg_len:
                    break
                # surface failures early instead of uploading the rest
                failed = next((t for t in tasks if t.done() and not t.cancelled()
                               and t.exception() is not None), None)
                if failed is not None:
                    break
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        manifest = Manifest(1, file_id, name or path.name, size, int(self.now()), red.k, red.n,
                            seg_len, tuple(segments[i] for i in range(len(segments))))
        blob = seal_manifest(manifest, self.keys)
        mhash, mhosts = await self.store_blob(blob, manifest_copies(red))
        index_doc, seq, old = await self.read_index()
        entry = IndexEntry(file_id, manifest.name, size, manifest.created, mhash, tuple(mhosts),
                           len(blob), int(started) + GRANT_TERM)
        await self.write_index(index_doc.add(entry), seq, old)
        elapsed = max(1e-9, self.now() - started)
        return {"file_id": file_id.hex(), "name": manifest.name, "size": size,
                "segments": len(segments), "shares": sum(len(s.shares) for s in segments.values()),
                "redundancy": str(red), "seconds": round(elapsed, 3),
                "mb_per_s": round(size / elapsed / 1e6, 2)}

    # -- get -----------------------------------------------------------------------

    async def find_entry(self, file_id: bytes) -> IndexEntry:
        index_doc, _, _ = await self.read_index()
        for e in index_doc.entries:
            if e.file_id == file_id:
                return e
        raise NotFound(f"no file {file_id.hex()} in this owner's index")

    async def manifest(self, entry: IndexEntry) -> Manifest:
        return open_manifest(await self._manifest_blob(entry), self.keys, entry.file_id)

    async def _manifest_blob(self, entry: IndexEntry) -> bytes:
        try:
            return await self.fetch_blob(entry.manifest_hash, entry.manifest_hosts)
        except NotFound as exc:
            until = entry.until or entry.created + GRANT_TERM
            if until <= self.now():
                raise NotFound(
                    f"{entry.name} ({entry.file_id.hex()}): its term ended "
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(until))} and hosts "
                    f"have dropped it (renew files before their term ends: xcore renew)"
                ) from exc
            raise NotFound(f"{entry.name} ({entry.file_id.hex()}): no host returned its "
                           f"manifest ({exc})") from exc

    async def fetch_segment(self, seg: SegmentRef, red: Redundancy) -> list[bytes | memoryview]:
        """A segment's ciphertext, as pieces to be read in order (:func:`segment_pieces`)."""
        from xcore.bootstrap import parse_address
        queue = fetch_order([(s, s.host_id, s.host_addr) for s in seg.shares], red.k,
                            lambda h: self.stats.failures.get(h, 0), self.rtt)
        good: dict[int, bytes] = {}
        tried: set[tuple[int, bytes]] = set()
        asked_loc: set[int] = set()
        running: dict[asyncio.Task[bytes], tuple[ShareRef, bytes]] = {}

        def launch() -> bool:
            """Start one download for a share index not yet good nor in flight."""
            busy = {r.index for r, _ in running.values()}
            queue[:] = [q for q in queue if q[0].index not in good and (q[0].index, q[1]) not in tried]
            for j, (ref, host_id, addr) in enumerate(queue):
                if ref.index in busy:
                    continue
                del queue[j]
                tried.add((ref.index, host_id))
                task = asyncio.create_task(self._download(host_id, parse_address(addr), ref.hash))
                running[task] = (ref, host_id)
                return True
            return False

        hedged = False  # one download beyond k, once the first k are slow
        try:
            while len(good) < red.k:
                while len(running) < red.k + hedged - len(good) and launch():
                    pass
                if not running:
                    # exhausted the manifest's hosts: ask the DHT who holds what is missing
                    missing = [s for s in seg.shares if s.index not in good and s.index not in asked_loc]
                    if not missing:
                        break
                    found = await asyncio.gather(*(self.holders(s.hash) for s in missing))
                    for s, holders in zip(missing, found):
                        asked_loc.add(s.index)
                        for host_id, addr in holders:
                            queue.append((s, host_id, addr))
                    continue
                finished, _ = await asyncio.wait(
                    list(running), return_when=asyncio.FIRST_COMPLETED,
                    timeout=None if hedged else self.hedge_after)
                if not finished:
                    hedged = True
                    self.hedged_downloads += 1
                    continue
                for task in finished:
                    ref, host_id = running.pop(task)
                    try:
                        good[ref.index] = task.result()
                        self.stats.ok(host_id)
                    except (XcoreError, OSError, asyncio.TimeoutError):
                        self.stats.fail(host_id)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        if len(good) < red.k:
            raise NotEnoughShares(f"segment {seg.index}: only {len(good)} of {red.k} shares could be fetched")
        return await run_blocking(segment_pieces, good, red, seg.length, threads=self.threads)

    async def get(self, file_id: bytes, out: Path, progress: Progress | None = None) -> dict[str, Any]:
        started = self.now()
        entry = await self.find_entry(file_id)
        man = await self.manifest(entry)
        red = Redundancy(man.k, man.n)
        key, nonce = self.keys.file_key(man.file_id)
        ctr = CtrStream(key, nonce)
        out = Path(out)
        tmp = out.with_name(f".{out.name}.xcore-partial")
        digest = hashlib.sha256()
        written = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                         0o666)
            try:
                with DirectWriter(fd) as f:  # around the page cache: the output is fsynced anyway
                    pending: list[asyncio.Task[list[bytes | memoryview]]] = []
                    segs = list(man.segments)
                    for i in range(min(self.segments_in_flight(red), len(segs))):
                        pending.append(asyncio.create_task(self.fetch_segment(segs[i], red)))
                    nxt = len(pending)

                    def emit(pieces: list[bytes | memoryview]) -> int:
                        n = 0
                        for cipher in pieces:
                            plain = ctr.update(cipher)
                            f.write(plain)
                            digest.update(plain)
                            n += len(plain)
                        return n

                    try:
                        while pending:
                            pieces = await pending.pop(0)
                            if nxt < len(segs):
                                pending.append(asyncio.create_task(self.fetch_segment(segs[nxt], red)))
                                nxt += 1
                            # decrypt, write and hash in a thread while the next segments arrive
                            written += await run_blocking(emit, pieces, threads=self.threads)
                            if progress:
                                progress({"op": "get", "done": written, "total": man.size})
                    finally:
                        for task in pending:
                            task.cancel()
                        if pending:
                            await asyncio.gather(*pending, return_exceptions=True)
                    f.finish()
                    os.fsync(fd)
            finally:
                os.close(fd)
            if written != man.size:
                raise ShareCorrupted(f"rebuilt {written} bytes, manifest says {man.size}")
            os.replace(tmp, out)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
        elapsed = max(1e-9, self.now() - started)
        return {"file_id": file_id.hex(), "name": man.name, "size": man.size, "out": str(out),
                "sha256": digest.hexdigest(), "seconds": round(elapsed, 3),
                "mb_per_s": round(man.size / elapsed / 1e6, 2),
                "host_failures": sum(self.stats.failures.values()),
                "hedged_downloads": self.hedged_downloads}

    # -- ls / rm ---------------------------------------------------------------------

    async def ls(self) -> list[dict[str, Any]]:
        index_doc, _, _ = await self.read_index()
        return [{"file_id": e.file_id.hex(), "name": e.name, "size": e.size, "created": e.created,
                 "until": e.until or e.created + GRANT_TERM}
                for e in index_doc.entries]

    async def rm(self, file_id: bytes) -> dict[str, Any]:
        index_doc, seq, old = await self.read_index()
        entry = next((e for e in index_doc.entries if e.file_id == file_id), None)
        if entry is None:
            raise NotFound(f"no file {file_id.hex()} in this owner's index")
        man = await self.manifest(entry)
        await self.write_index(index_doc.remove(file_id), seq, old)
        shares = [s for seg in man.segments for s in seg.shares]
        found = await asyncio.gather(*(self.holders_and(s.hash, [(s.host_id, s.host_addr)])
                                       for s in shares))
        counts = await asyncio.gather(*(self._delete_everywhere(s.hash, where.items())
                                        for s, where in zip(shares, found)))
        deleted = sum(counts)
        deleted += await self.delete_blob(entry.manifest_hash, entry.manifest_hosts)
        return {"file_id": file_id.hex(), "name": entry.name, "shares_deleted": deleted}

    # -- renew ---------------------------------------------------------------------

    async def renew(self, file_ids: Iterable[bytes] | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
        """Extend the owner's hold on its files (all of them by default) for
        another grant term from now: every host holding a share, or a copy
        of a manifest, gets a later grant, a new contract and a later segment
        record (so repair stays authorised), without the bytes moving. The
        index is rewritten, which renews it too. Run it before the term of
        the last put or renew ends: hosts drop shares once every grant for
        them has expired.

        Shares a host no longer holds are left to repair; ``not_held`` counts
        them, ``failed`` counts holders that could not be reached."""
        index_doc, seq, old = await self.read_index()
        wanted = None if file_ids is None else set(file_ids)
        entries = [e for e in index_doc.entries if wanted is None or e.file_id in wanted]
        if wanted is not None and len(entries) < len(wanted):
            lost = sorted(wanted - {e.file_id for e in entries})
            raise NotFound(f"no file {lost[0].hex()} in this owner's index")
        until = int(self.now()) + GRANT_TERM
        hosts = {h.node_id: h for h in await self.hosts(refresh=True)}
        tally = {"renewed": 0, "contracts": 0, "not_held": 0, "failed": 0}
        # segments of every file share RENEW_SEGMENTS_IN_FLIGHT lanes, and
        # RENEW_FILES_IN_FLIGHT files are open at once, so an owner of many
        # small files is not renewed one file after another
        lanes = asyncio.Semaphore(RENEW_SEGMENTS_IN_FLIGHT)
        open_files = asyncio.Semaphore(RENEW_FILES_IN_FLIGHT)
        done = 0

        async def segment(shares: list[tuple[bytes, int, bytes, list[tuple[bytes, str]]]],
                          red: Redundancy, length: int) -> None:
            async with lanes:
                await self._renew_segment(shares, red, length, until, hosts, tally)

        async def renew_file(entry: IndexEntry) -> None:
            nonlocal done
            async with open_files:
                blob = await self._manifest_blob(entry)
                man = open_manifest(blob, self.keys, entry.file_id)
                red = Redundancy(man.k, man.n)
                # the manifest: a mirrored segment of as many copies as put made
                copies = min(manifest_copies(red), len(hosts))
                root = await run_blocking(share_merkle_root, blob, threads=self.threads)
                item = (entry.manifest_hash, len(blob), root, list(entry.manifest_hosts))
                jobs = [segment([(s.hash, s.size, s.merkle_root, [(s.host_id, s.host_addr)])
                                 for s in seg.shares], red, seg.length) for seg in man.segments]
                jobs.append(segment([item] * copies, Redundancy(1, copies), len(blob)))
                await _all(jobs)
            done += 1
            if progress:
                progress({"op": "renew", "done": done, "total": len(entries), "unit": "files"})

        await _all(renew_file(e) for e in entries)
        for entry in entries:  # (the index is rewritten anyway: that renews it too)
            index_doc = index_doc.add(replace(entry, until=until))
        await self.write_index(index_doc, seq, old)
        return {"files": len(entries), "until": until, **tally}

    async def _renew_segment(self, shares: list[tuple[bytes, int, bytes, list[tuple[bytes, str]]]],
                             red: Redundancy, length: int, until: int,
                             hosts: dict[bytes, HostInfo], tally: dict[str, int]) -> None:
        """Renew one segment: ``shares`` = (hash, size, Merkle root, hosts
        listed for it) per index; a mirror lists its hash at every index."""
        from xcore.bootstrap import parse_address
        seg_blob, publish = self._segment_record([h for h, _, _, _ in shares], red, length, until)
        distinct = {h: (size, root, listed) for h, size, root, listed in shares}
        found = await asyncio.gather(*(self.holders_and(h, listed)
                                       for h, (_, _, listed) in distinct.items()))

        async def one(h: bytes, size: int, root: bytes, host_id: bytes, addr: str) -> None:
            now = int(self.now())
            grant = Grant.create(self.keys.signing, h, host_id, until)
            host = hosts.get(host_id)
            half = None
            if host is not None:
                c = Contract(h, size, root, AUDIT_BLOCK, red.k, red.n, now, until,
                             REPAIR_PRICE_CAP, host_id, host.pubkey, self.keys.pubkey)
                half = SignedContract(c).sign_as_owner(self.keys.signing).encode()
            try:
                conn = await self.connect(host_id, parse_address(addr))
                signed = await conn.renew_share(h, grant, seg_blob, half)
            except ShareNotFound:
                tally["not_held"] += 1
                return
            except (XcoreError, OSError, asyncio.TimeoutError):
                tally["failed"] += 1
                return
            tally["renewed"] += 1
            if signed is not None:
                tally["contracts"] += 1
                self.contracts[h] = signed

        await asyncio.gather(*(one(h, size, root, host_id, addr)
                               for (h, (size, root, _)), where in zip(distinct.items(), found)
                               for host_id, addr in where.items()))
        await publish


async def _all(aws: Iterable[Awaitable[Any]]) -> None:
    """Await every one of ``aws`` to its end, then raise the first failure
    (none is left running when the caller moves on)."""
    failures = [r for r in await asyncio.gather(*aws, return_exceptions=True)
                if isinstance(r, BaseException)]
    if failures:
        raise failures[0]


def manifest_copies(red: Redundancy) -> int:
    """How many copies of a file's manifest are kept: at least n - k + 1, so
    the manifest survives whatever the file's data survives."""
    return min(16, max(BLOB_COPIES, red.n - red.k + 1))


def prepare_segment(ciphertext: bytes, red: Redundancy
                    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """A segment's shares, their SHA-256 names and the Merkle roots of their
    1 KiB audit blocks (as in the contract). zfec and SHA-256 of whole shares
    release the GIL, so on a real loop this runs beside the transfers."""
    shares = encode_segment(ciphertext, red)
    hashes = [hashlib.sha256(sh).digest() for sh in shares]
    roots: dict[bytes, bytes] = {}  # mirrors (k = 1) are n copies of one share
    for h, sh in zip(hashes, shares):
        if h not in roots:
            roots[h] = share_merkle_root(sh)
    return shares, hashes, [roots[h] for h in hashes]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def parse_file_id(text: str) -> bytes:
    try:
        fid = bytes.fromhex(text)
    except ValueError:
        raise LookupFailed(f"bad file ID {text!r}: expected hex") from None
    if len(fid) != 16:
        raise LookupFailed(f"bad file ID {text!r}: expected 32 hex digits")
    return fid


async def host_table(svc: Any) -> list[dict[str, Any]]:
    """Known hosts with what selection weighs (for `xcore hosts`)."""
    from xcore.contracts.selection import host_weight
    client = Client(svc, _NoKeys())  # type: ignore[arg-type]
    now = client.now()
    rows = []
    auditor = getattr(svc, "auditor", None)
    for h in await client.hosts(refresh=True):
        rtt = client.rtt(h.node_id)
        rep = auditor.reputation.score(h.node_id) if auditor else None
        passed, failed = auditor.host_audits.get(h.node_id, [0, 0]) if auditor else (0, 0)
        rows.append({"node_id": h.node_id.hex(), "address": f"{h.addr[0]}:{h.addr[1]}",
                     "capacity": h.capacity, "free": h.free,
                     "uptime": max(0, int(now - h.since)),
                     "latency_ms": None if rtt is None else round(rtt * 1000, 2),
                     "reputation": None if rep is None else round(rep, 4),
                     "bad": bool(auditor and auditor.reputation.is_bad(h.node_id)),
                     "audits_passed": passed, "audits_failed": failed,
                     "score": round(host_weight(h, now, rtt, client.reputation(h.node_id)), 4)})
    return sorted(rows, key=lambda r: -r["score"])


class _NoKeys:
    """Stands in for owner keys where none are needed (listing hosts)."""
