"""Process helpers shared by the tests that start real node processes."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Running (not a zombie) according to /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def processes_under(directory: Path) -> list[int]:
    """Live processes with an argument inside ``directory`` (our node processes)."""
    prefix = str(directory)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = [a.decode(errors="replace")
                    for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if any(a == prefix or a.startswith(prefix + "/") for a in args) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found
