"""Seed-node lists: ``bootstrap_nodes.txt`` and ``--bootstrap`` values.

Format, one seed a line::

    # comment
    host:port node_id_hex
    host:port              (ID unknown: the first answer from there is trusted)

IPv6 hosts are written in brackets: ``[::1]:4000``.
"""

from __future__ import annotations

from pathlib import Path

from xcore.crypto.identity import ID_BYTES
from xcore.errors import ConfigError

Seed = tuple[tuple[str, int], bytes | None]

MAX_LINES = 10_000


def parse_address(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"bad address {text!r}: expected [v6]:port")
        port_s = rest[1:]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ConfigError(f"bad address {text!r}: expected host:port")
        if ":" in host:
            raise ConfigError(f"bad address {text!r}: write IPv6 addresses as [addr]:port")
    if not host or len(host) > 253 or any(c.isspace() for c in host):
        raise ConfigError(f"bad address {text!r}: bad host")
    if (not (port_s.isascii() and port_s.isdigit()) or len(port_s) > 5
            or not 1 <= int(port_s) <= 65535):
        raise ConfigError(f"bad address {text!r}: port must be 1-65535")
    return host, int(port_s)


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_seed(line: str) -> Seed:
    parts = line.split()
    if not 1 <= len(parts) <= 2:
        raise ConfigError(f"bad seed {line!r}: expected 'host:port [node_id_hex]'")
    addr = parse_address(parts[0])
    node_id = None
    if len(parts) == 2:
        try:
            node_id = bytes.fromhex(parts[1])
        except ValueError:
            raise ConfigError(f"bad seed {line!r}: node ID is not hex") from None
        if len(node_id) != ID_BYTES:
            raise ConfigError(f"bad seed {line!r}: node ID must be {ID_BYTES * 2} hex digits")
    return addr, node_id


def parse_bootstrap(text: str, source: str = "bootstrap list") -> list[Seed]:
    seeds: list[Seed] = []
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise ConfigError(f"{source}: more than {MAX_LINES} lines")
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            seeds.append(parse_seed(line))
        except ConfigError as exc:
            raise ConfigError(f"{source}, line {n}: {exc}") from None
    return seeds


def load_bootstrap(path: Path) -> list[Seed]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if len(raw) > 1 << 20:
        raise ConfigError(f"{path}: larger than 1 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8") from None
    return parse_bootstrap(text, str(path))


def format_seed(addr: tuple[str, int], node_id: bytes | None) -> str:
    return format_address(addr) + (f" {node_id.hex()}" if node_id else "")
