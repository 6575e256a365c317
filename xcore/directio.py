"""Writing new files around the page cache (``O_DIRECT``), where the OS allows it.

A host writes every share it accepts once and fsyncs it at once; nobody is
likely to read it again soon. ``xcore get`` writes its output once and
fsyncs it before renaming it into place. Through the page cache, each such
byte is first copied into a freshly allocated cache page and then written
out by the fsync anyway. On the 2-core VM of ``bench/README.md`` that copy is
the dearest part of the write: pages the guest has not touched recently cost
about 4 ms of kernel CPU per MiB to fault in (``dd`` of 256 MiB: 1.07 s of
system time buffered, 0.05 s with ``oflag=direct``); a get of 256 MiB spent
0.96 of its 1.4 CPU s in ``write``.

:class:`DirectWriter` stages bytes in a reusable page-aligned buffer and
writes them with ``O_DIRECT`` in whole 4 KiB blocks; the last block goes out
zero-padded and the file is then truncated to its real size. Where the
filesystem refuses ``O_DIRECT`` (``fcntl`` says EINVAL: tmpfs, some network
filesystems) or the platform has none, or a direct write is refused for its
alignment, it falls back to ordinary writes for the rest of the file. The
bytes on disk are the same either way; only the CPU cost differs.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading

ALIGN = 4096  # covers 512-byte and 4 KiB logical blocks
STAGE = 1 << 20  # bytes staged per direct write
_POOL_MAX = 8  # idle stage buffers kept for reuse (8 MiB)
_O_DIRECT = getattr(os, "O_DIRECT", 0)

_pool: list[mmap.mmap] = []
_pool_lock = threading.Lock()


def _take_buffer() -> mmap.mmap:
    with _pool_lock:
        if _pool:
            return _pool.pop()
    # anonymous mappings are page-aligned; private, because a shared one
    # (mmap's default) would be the same memory in a forked child, and two
    # processes staging writes in it would corrupt each other's files
    return mmap.mmap(-1, STAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _forget_pool() -> None:
    """In a forked child: start with no buffers of the parent's."""
    global _pool_lock
    _pool.clear()
    _pool_lock = threading.Lock()  # the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _give_buffer(buf: mmap.mmap) -> None:
    with _pool_lock:
        if len(_pool) < _POOL_MAX:
            _pool.append(buf)
            return
    buf.close()


def set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False if the OS or filesystem refuses."""
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))
    except OSError:
        return False
    return True


class DirectWriter:
    """Sequential writes to a new, empty file open for writing on ``fd``.

    Call :meth:`finish` before fsyncing: it writes what is still staged and
    sets the file's size. :meth:`close` returns the stage buffer (it does not
    close ``fd``). Counters: ``direct_bytes`` went around the page cache,
    ``buffered_bytes`` through it.
    """

    __slots__ = ("fd", "direct", "size", "direct_bytes", "buffered_bytes", "_buf", "_view", "_fill")

    def __init__(self, fd: int, *, direct: bool = True) -> None:
        self.fd = fd
        self.size = 0
        self.direct_bytes = 0
        self.buffered_bytes = 0
        self._fill = 0
        self.direct = bool(direct) and set_direct(fd, True)
        self._buf: mmap.mmap | None = _take_buffer() if self.direct else None
        self._view = memoryview(self._buf) if self._buf is not None else None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        src = memoryview(data).cast("B")
        n = len(src)
        self.size += n
        while src:
            if self._view is None:
                self._write_all(src, direct=False)
                break
            take = min(len(src), STAGE - self._fill)
            self._view[self._fill:self._fill + take] = src[:take]
            self._fill += take
            src = src[take:]
            if self._fill == STAGE:
                self._flush(STAGE)
        return n

    def _flush(self, length: int) -> None:
        """Write the first ``length`` staged bytes (a multiple of ALIGN while direct)."""
        assert self._view is not None
        self._write_all(self._view[:length], direct=self.direct)
        self._fill = 0

    def _write_all(self, view: memoryview, *, direct: bool) -> None:
        while view:
            try:
                n = os.write(self.fd, view)
            except OSError as exc:
                if direct and exc.errno == errno.EINVAL:
                    self._fall_back()  # the device wants another alignment: go buffered
                    direct = False
                    continue
                raise
            if direct:
                self.direct_bytes += n
            else:
                self.buffered_bytes += n
            view = view[n:]

    def _fall_back(self) -> None:
        set_direct(self.fd, False)
        self.direct = False

    def finish(self) -> None:
        """Write the staged tail and give the file its exact size."""
        if self._view is None or not self._fill:
            self.close()
            return
        tail = self._fill
        if not self.direct:  # fell back half-way: what is staged goes out as it is
            self._flush(tail)
        else:
            padded = -(-tail // ALIGN) * ALIGN
            self._view[tail:padded] = bytes(padded - tail)
            self._flush(padded)
            if padded != tail:
                os.ftruncate(self.fd, self.size)
                if self.direct:  # the padding is not data (counted where it went)
                    self.direct_bytes -= padded - tail
                else:
                    self.buffered_bytes -= padded - tail
        self.close()

    def __enter__(self) -> DirectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._buf is not None:
            view, buf = self._view, self._buf
            self._view = self._buf = None
            assert view is not None
            view.release()
            _give_buffer(buf)
