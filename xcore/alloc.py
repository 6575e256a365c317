"""Allocator settings for xcore processes.

glibc malloc gives each thread that allocates its own arena (up to 8 per
core), and memory freed into one arena is not reused by another. The data
path hands multi-MiB buffers between the event loop and worker threads
(zfec, SHA-256, Merkle roots, AES-CTR run in threads), so with the default
every worker thread keeps its own few hundred MiB high-water mark. Measured
on the 2-core box of bench/README.md, ``xcore get`` of a 256 MiB file at
10/30 from 32 nodes peaked at 381 MB RSS with the default and 249 MB with at
most two arenas, at the same speed (99.4 and 96.9 MB/s, within the noise of
that box). :func:`limit_arenas` sets that limit for the current process
(``mallopt(M_ARENA_MAX, 2)``), unless ``MALLOC_ARENA_MAX`` is set in the
environment (glibc then applied it at start-up). A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc malloc arenas for this process; True if it took effect."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
