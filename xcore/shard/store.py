"""The host's share store: content-addressed files, written atomically.

A share is stored under the SHA-256 of its bytes (DESIGN.md principle 6) and
checked against that name both when it is written and every time it is read.
Writes go to a temp file in the share's own directory, are hashed on the way,
fsynced and renamed into place (principle 10): a node killed at any moment
leaves either the whole share or a temp file, and temp files are removed the
next time the store is opened. Usage is recomputed by scanning on open, so
``shares`` and ``bytes_stored`` are exact across restarts; the two event
counters are kept in a small file (below).

On-disk layout (version 1)::

    <root>/store-stats           the counters file, below; its version byte is the store's
    <root>/<h[:2]>/<h>           one share: exactly its bytes; h = lowercase hex SHA-256 of them
    <root>/<h[:2]>/<h>.<n>.tmp   a share being written; deleted on open

Counters file: two 48-byte slots, A at offset 0 and B at 48 (integers big-endian)::

    offset  size  field
    0       4     magic b"xcST"
    4       1     version = 1
    5       3     zero
    8       8     seq: the valid slot with the higher seq holds the counts
    16      8     rejected_full: puts refused for lack of capacity or disk
    24      8     corrupt_reads: reads whose bytes did not match the name
    32      16    SHA-256(bytes 0..31)[:16], so a torn slot is recognised

An update overwrites the older slot in place and fsyncs. A torn write spoils
only that slot, and no new disk block is needed, so the store can still count
a :class:`~xcore.errors.DiskFull` on a full disk.

File system access for share writes goes through an injectable ``opener``
(see :class:`ShareFile`), so tests can simulate a full disk or a failing
fsync without patching ``os``.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import itertools
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

from xcore.directio import DirectWriter
from xcore.errors import (
    BadShareName,
    CapacityExceeded,
    ConfigError,
    DiskFull,
    InvalidParameter,
    MessageTooLarge,
    ShareCorrupted,
    ShareNotFound,
    StorageIOError,
    XcoreError,
)
from xcore.shard.erasure import MAX_SHARE_SIZE

HASH_SIZE = 32
CHUNK = 64 * 1024
STATS_FILE = "store-stats"
STATS_MAGIC = b"xcST"
STATS_VERSION = 1
_SLOT = struct.Struct(">4sB3xQQQ16s")
SLOT_SIZE = _SLOT.size  # 48
_NAME = re.compile(r"[0-9a-f]{64}")
_FANOUT = re.compile(r"[0-9a-f]{2}")
_TEMP = re.compile(r"[0-9a-f]{64}\.[0-9]{1,20}\.tmp")
_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def share_name(share_hash: bytes | str) -> str:
    """The file name of a share: 64 lowercase hex characters.

    Accepts the 32-byte SHA-256 digest or its lowercase hex form; anything
    else (upper case, path separators, "..", other lengths) raises
    :class:`~xcore.errors.BadShareName`, so a name can never become a path.
    """
    if isinstance(share_hash, (bytes, bytearray)):
        if len(share_hash) != HASH_SIZE:
            raise BadShareName(f"a share hash is {HASH_SIZE} bytes, got {len(share_hash)}")
        return bytes(share_hash).hex()
    if isinstance(share_hash, str) and _NAME.fullmatch(share_hash):
        return share_hash
    raise BadShareName(f"not a share name: {share_hash!r:.80}")


class ShareFile(Protocol):
    """A new file being written, as the store needs it."""

    def write(self, data: bytes | memoryview, /) -> int:
        """Write all of ``data`` (or raise OSError)."""

    def sync(self) -> None:
        """Flush to stable storage (fsync)."""

    def close(self) -> None:
        """Close; calling it twice is harmless."""


Opener = Callable[[Path], ShareFile]


class OsShareFile:
    """:class:`ShareFile` over a raw file descriptor, written around the page
    cache where the filesystem allows (:class:`~xcore.directio.DirectWriter`:
    a share is fsynced at once and seldom read soon, so caching it only costs
    CPU)."""

    __slots__ = ("_fd", "_writer")

    def __init__(self, fd: int, *, direct: bool = True) -> None:
        self._fd: int | None = fd
        self._writer = DirectWriter(fd, direct=direct)

    def _fileno(self) -> int:
        if self._fd is None:
            raise ValueError("file is closed")
        return self._fd

    def write(self, data: bytes | memoryview, /) -> int:
        self._fileno()
        return self._writer.write(data)

    def sync(self) -> None:
        fd = self._fileno()
        self._writer.finish()
        os.fsync(fd)

    def close(self) -> None:
        self._writer.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def os_opener(path: Path) -> ShareFile:
    """Create ``path`` exclusively (FileExistsError if it exists) for writing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return OsShareFile(os.open(path, flags, 0o600))


def _fsync_dir(path: Path) -> None:
    # Makes a rename or unlink durable. Not every platform can open a
    # directory; the data itself was already fsynced, so failing here is not fatal.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ShareReader:
    """A stored share opened for reading; verified against its name at the end.

    Bytes come out as they are read, so they are trusted only once the read
    that reaches the end has returned: if the share is corrupt, that read
    raises :class:`~xcore.errors.ShareCorrupted` instead.
    """

    def __init__(self, f: BinaryIO, name: str, on_corrupt: Callable[[], None]) -> None:
        self._f = f
        self._name = name
        self._on_corrupt = on_corrupt
        self._hash = hashlib.sha256()
        self._pos = 0
        self._verified = False
        self.size: int = os.fstat(f.fileno()).st_size

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all the rest if ``n`` < 0); b"" at the end."""
        try:
            data = self._f.read() if n < 0 else self._f.read(n)
        except OSError as e:
            raise StorageIOError(f"cannot read share {self._name}: {e}") from e
        if self._verified:
            if data:
                self._corrupt("share grew while it was read")
            return data
        self._hash.update(data)
        self._pos += len(data)
        if (not data and n != 0) or self._pos >= self.size:
            self._verified = True
            if not hmac.compare_digest(self._hash.digest(), bytes.fromhex(self._name)):
                self._corrupt("bytes do not match the share's hash")
        return data

    def _corrupt(self, why: str) -> None:
        self._on_corrupt()
        raise ShareCorrupted(f"stored share {self._name}: {why}")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ShareReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Counters:
    """The two event counters, persisted in the A/B slot file of the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seq = 0
        self.rejected_full = 0
        self.corrupt_reads = 0
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self._create()
            return
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
        best: tuple[int, int, int] | None = None
        for i in range(2):
            slot = raw[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]
            if len(slot) != SLOT_SIZE:
                continue
            magic, version, seq, full, corrupt, check = _SLOT.unpack(slot)
            if magic != STATS_MAGIC or not hmac.compare_digest(check, _slot_check(slot)):
                continue
            if version != STATS_VERSION:
                raise ConfigError(f"{path}: share store format version {version} is not supported")
            if best is None or seq > best[0]:
                best = (seq, full, corrupt)
        if best is None:
            raise ConfigError(
                f"{path} is not a valid share store counters file; "
                "delete it to reset the counters (shares are not affected)"
            )
        self.seq, self.rejected_full, self.corrupt_reads = best

    def _slot(self) -> bytes:
        body = _SLOT.pack(
            STATS_MAGIC, STATS_VERSION, self.seq, self.rejected_full, self.corrupt_reads, bytes(16)
        )
        return body[:32] + _slot_check(body)

    def _create(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        slot = self._slot()
        try:
            with open(tmp, "wb") as f:
                f.write(slot + slot)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise ConfigError(f"cannot create {self.path}: {e}") from e
        _fsync_dir(self.path.parent)

    def save(self) -> None:
        """Write the counts over the older slot. A failure keeps them in memory only."""
        self.seq += 1
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError:
            return
        try:
            os.lseek(fd, (self.seq % 2) * SLOT_SIZE, os.SEEK_SET)
            os.write(fd, self._slot())
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _slot_check(slot: bytes) -> bytes:
    return hashlib.sha256(slot[:32]).digest()[:16]


class ShareStore:
    """Shares on local disk, within ``capacity`` bytes.

    Thread-safe: a lock guards the counters and the space reserved by writes
    in progress, so concurrent puts cannot together overrun ``capacity``.
    """

    def __init__(
        self,
        root: Path,
        capacity: int,
        *,
        opener: Opener = os_opener,
        max_share_size: int = MAX_SHARE_SIZE,
    ) -> None:
        if capacity < 0:
            raise InvalidParameter(f"capacity must be >= 0, got {capacity}")
        if max_share_size <= 0:
            raise InvalidParameter(f"max share size must be positive, got {max_share_size}")
        self.root = Path(root)
        self.capacity = capacity
        self.max_share_size = max_share_size
        self._opener = opener
        self._lock = threading.Lock()
        self._temp_seq = itertools.count()
        self._inflight: set[str] = set()
        self._reserved = 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot use {self.root} as a share store: {e}") from e
        self._counters = _Counters(self.root / STATS_FILE)
        self._shares, self._used = self._scan()

    # -- opening ----------------------------------------------------------

    def _scan(self) -> tuple[int, int]:
        """Count shares and bytes; delete temp files left by a crash."""
        shares = used = 0
        try:
            for sub in os.scandir(self.root):
                if not (_FANOUT.fullmatch(sub.name) and sub.is_dir(follow_symlinks=False)):
                    continue
                for entry in os.scandir(sub.path):
                    if _TEMP.fullmatch(entry.name):
                        try:
                            os.unlink(entry.path)
                        except FileNotFoundError:
                            pass
                    elif (
                        _NAME.fullmatch(entry.name)
                        and entry.name[:2] == sub.name
                        and entry.is_file(follow_symlinks=False)
                    ):
                        shares += 1
                        used += entry.stat(follow_symlinks=False).st_size
        except OSError as e:
            raise ConfigError(f"cannot scan share store {self.root}: {e}") from e
        return shares, used

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / name

    # -- writing ----------------------------------------------------------

    def put(self, share_hash: bytes | str, data: bytes | bytearray | BinaryIO,
            size: int | None = None) -> bool:
        """Store a share; True if it was written, False if it was already here.

        ``data`` is the share's bytes or a binary stream of exactly ``size``
        bytes (``size`` is required for a stream). The bytes are hashed as they
        are written; the share appears under its name only once complete,
        verified and fsynced.

        Raises :class:`~xcore.errors.MessageTooLarge` above ``max_share_size``,
        :class:`~xcore.errors.CapacityExceeded` (before writing anything) if it
        does not fit, :class:`~xcore.errors.ShareCorrupted` if the bytes do not
        match the name, :class:`~xcore.errors.DiskFull` on ENOSPC; in every
        failure no file is left behind.
        """
        name = share_name(share_hash)
        if isinstance(data, (bytes, bytearray, memoryview)):
            if size is not None and size != len(data):
                raise InvalidParameter(f"size {size} given for {len(data)} bytes")
            size = len(data)
        elif size is None:
            raise InvalidParameter("put() of a stream needs its size")
        if size < 0:
            raise InvalidParameter(f"share size must be >= 0, got {size}")
        if size > self.max_share_size:
            raise MessageTooLarge(f"share of {size} bytes exceeds {self.max_share_size}")
        final = self._path(name)
        with self._lock:
            if name in self._inflight or final.exists():
                return False
            if self._used + self._reserved + size > self.capacity:
                self._count_rejected_full()
                raise CapacityExceeded(
                    f"share of {size} bytes does not fit: "
                    f"{max(0, self.capacity - self._used - self._reserved)} bytes free"
                )
            self._reserved += size
            self._inflight.add(name)
        stored = False
        try:
            self._write(name, final, data, size)
            stored = True
        finally:
            with self._lock:
                self._reserved -= size
                self._inflight.discard(name)
                if stored:
                    self._used += size
                    self._shares += 1
        return True

    def _count_rejected_full(self) -> None:
        self._counters.rejected_full += 1
        self._counters.save()

    def _os_error(self, e: OSError, what: str) -> XcoreError:
        if e.errno in _FULL_ERRNOS:
            with self._lock:
                self._count_rejected_full()
            return DiskFull()
        return StorageIOError(f"{what}: {e}")

    def _write(self, name: str, final: Path, data: bytes | bytearray | BinaryIO,
               size: int) -> None:
        directory = final.parent
        try:
            if not directory.is_dir():
                directory.mkdir(exist_ok=True)
                _fsync_dir(self.root)
        except OSError as e:
            raise self._os_error(e, f"cannot create {directory}") from e
        tmp, f = self._open_temp(name, directory)
        try:
            digest = hashlib.sha256()
            written = 0
            for chunk in _chunks(data, size):
                digest.update(chunk)
                try:
                    f.write(chunk)
                except OSError as e:
                    raise self._os_error(e, f"cannot write {tmp}") from e
                written += len(chunk)
            if written != size:
                raise ShareCorrupted(f"share {name}: stream ended after {written} of {size} bytes")
            if not hmac.compare_digest(digest.digest(), bytes.fromhex(name)):
                raise ShareCorrupted(f"share {name}: bytes do not match the name")
            try:
                f.sync()
                f.close()
                os.replace(tmp, final)
            except OSError as e:
                raise self._os_error(e, f"cannot store {final}") from e
        except BaseException:
            try:
                f.close()
            except OSError:
                pass
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(directory)

    def _open_temp(self, name: str, directory: Path) -> tuple[Path, ShareFile]:
        for _ in range(1000):
            tmp = directory / f"{name}.{next(self._temp_seq)}.tmp"
            try:
                return tmp, self._opener(tmp)
            except FileExistsError:
                continue
            except OSError as e:
                raise self._os_error(e, f"cannot create {tmp}") from e
        raise StorageIOError(f"cannot create a temp file in {directory}")

    # -- reading ----------------------------------------------------------

    def open(self, share_hash: bytes | str) -> ShareReader:
        """Open a share for streaming; see :class:`ShareReader` for verification."""
        name = share_name(share_hash)
        try:
            f = open(self._path(name), "rb")
        except FileNotFoundError as e:
            raise ShareNotFound(f"share {name} is not stored here") from e
        except OSError as e:
            raise StorageIOError(f"cannot open share {name}: {e}") from e
        try:
            return ShareReader(f, name, self._count_corrupt)
        except OSError as e:
            f.close()
            raise StorageIOError(f"cannot open share {name}: {e}") from e

    def get(self, share_hash: bytes | str) -> bytes:
        """The share's bytes, verified against its name."""
        with self.open(share_hash) as reader:
            return reader.read()

    def _count_corrupt(self) -> None:
        with self._lock:
            self._counters.corrupt_reads += 1
            self._counters.save()

    def has(self, share_hash: bytes | str) -> bool:
        return self._path(share_name(share_hash)).is_file()

    def size_of(self, share_hash: bytes | str) -> int:
        """The stored size of a share in bytes."""
        name = share_name(share_hash)
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError as e:
            raise ShareNotFound(f"share {name} is not stored here") from e
        except OSError as e:
            raise StorageIOError(f"cannot stat share {name}: {e}") from e

    def delete(self, share_hash: bytes | str) -> bool:
        """Remove a share; True if it was here."""
        name = share_name(share_hash)
        path = self._path(name)
        with self._lock:
            try:
                size = path.stat().st_size
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError as e:
                raise StorageIOError(f"cannot delete share {name}: {e}") from e
            self._used -= size
            self._shares -= 1
        _fsync_dir(path.parent)
        return True

    def iter_shares(self) -> Iterator[bytes]:
        """The 32-byte hashes of the stored shares, in order, without a full list in memory."""
        try:
            subs = sorted(
                e.name
                for e in os.scandir(self.root)
                if _FANOUT.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
            )
            for sub in subs:
                names = sorted(
                    e.name
                    for e in os.scandir(self.root / sub)
                    if _NAME.fullmatch(e.name) and e.name[:2] == sub
                )
                for name in names:
                    yield bytes.fromhex(name)
        except OSError as e:
            raise StorageIOError(f"cannot list share store {self.root}: {e}") from e

    def list(self) -> list[bytes]:
        """The 32-byte hashes of all stored shares, sorted."""
        return [*self.iter_shares()]

    # -- accounting -------------------------------------------------------

    @property
    def used(self) -> int:
        """Bytes held by stored shares."""
        return self._used

    @property
    def free(self) -> int:
        """Bytes still offered: capacity minus stored and in-flight shares."""
        with self._lock:
            return max(0, self.capacity - self._used - self._reserved)

    def stats(self) -> dict[str, int]:
        """Counters for monitoring and the CLI."""
        with self._lock:
            return {
                "shares": self._shares,
                "bytes_stored": self._used,
                "bytes_free": max(0, self.capacity - self._used - self._reserved),
                "capacity": self.capacity,
                "rejected_full": self._counters.rejected_full,
                "corrupt_reads": self._counters.corrupt_reads,
            }


def _chunks(data: bytes | bytearray | BinaryIO, size: int) -> Iterator[bytes | memoryview]:
    """``data`` in CHUNK pieces (views of a buffer, not copies); a stream is
    read for at most ``size`` bytes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            yield view[i : i + CHUNK]
        return
    left = size
    while left > 0:
        chunk = data.read(min(CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield bytes(chunk)

