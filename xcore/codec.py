"""Canonical msgpack encoding and bounded decoding.

Everything signed is signed over :func:`canonical` bytes: msgpack with
``use_bin_type=True``, maps with their keys sorted, no floats. Everything that
comes from outside is decoded with :func:`unpack_bounded`, which caps the
input size and every container and string length, and turns any msgpack
failure into :class:`~xcore.errors.RemoteProtocolError`.
"""

from __future__ import annotations

from typing import Any

import msgpack

from xcore.errors import MessageTooLarge, RemoteProtocolError


def _sort_maps(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _sort_maps(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_sort_maps(v) for v in obj]
    return obj


def canonical(obj: Any) -> bytes:
    """Deterministic msgpack bytes of ``obj`` (maps sorted by key)."""
    return msgpack.packb(_sort_maps(obj), use_bin_type=True)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_bounded(data: bytes, max_size: int, max_items: int = 4096) -> Any:
    """Decode one msgpack object from ``data``, refusing anything unbounded.

    Raises :class:`RemoteProtocolError` (or :class:`MessageTooLarge`) on any
    problem; never another exception.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError("expected bytes")
    if len(data) > max_size:
        raise MessageTooLarge(f"{len(data)} bytes > {max_size}")
    try:
        return msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_items,
            max_map_len=max_items,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError, OverflowError, RecursionError) as exc:
        raise RemoteProtocolError(f"undecodable msgpack: {type(exc).__name__}") from exc
    except Exception as exc:  # msgpack raises a few oddities; none may escape
        raise RemoteProtocolError(f"undecodable msgpack: {type(exc).__name__}") from exc


def expect(cond: bool, what: str) -> None:
    """Raise :class:`RemoteProtocolError` with ``what`` unless ``cond``."""
    if not cond:
        raise RemoteProtocolError(what)


# The validators below build their error message only on failure: they run
# several times per datagram, and formatting the message up front was a
# measurable share of a DHT node's time.

def as_bytes(v: Any, what: str, *, size: int | None = None, max_size: int | None = None) -> bytes:
    if not isinstance(v, bytes):
        raise RemoteProtocolError(f"{what}: expected bytes")
    if size is not None and len(v) != size:
        raise RemoteProtocolError(f"{what}: expected {size} bytes")
    if max_size is not None and len(v) > max_size:
        raise RemoteProtocolError(f"{what}: longer than {max_size} bytes")
    return v


def as_int(v: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise RemoteProtocolError(f"{what}: expected int")
    if not lo <= v <= hi:
        raise RemoteProtocolError(f"{what}: out of range")
    return v


def as_str(v: Any, what: str, max_len: int) -> str:
    if not isinstance(v, str):
        raise RemoteProtocolError(f"{what}: expected str")
    if len(v) > max_len:
        raise RemoteProtocolError(f"{what}: longer than {max_len}")
    return v


def as_list(v: Any, what: str, max_len: int) -> list[Any]:
    if not isinstance(v, list):
        raise RemoteProtocolError(f"{what}: expected list")
    if len(v) > max_len:
        raise RemoteProtocolError(f"{what}: more than {max_len} items")
    return v
