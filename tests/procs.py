"""Process helpers shared by the tests that start real node processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


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


ROOT = Path(__file__).resolve().parents[1]


class Xcore:
    """The real `xcore` command (``python -m xcore`` from the repository root)
    as the integration tests run it: ``env`` added to (and ``unset`` removed
    from) the environment, stdin closed unless given, output captured.

    ``xcore(*args)`` returns the completed process; ``xcore.ok(*args)`` its
    stdout and fails the test on a non-zero exit; ``xcore.ok_json(*args)``
    adds ``--json`` and parses stdout. Keyword ``env`` entries given to a call
    override the instance's for that call."""

    def __init__(self, env: dict[str, str] | None = None, timeout: float = 60.0,
                 unset: tuple[str, ...] = ()) -> None:
        self.env = dict(env or {})
        self.timeout = timeout
        self.unset = unset

    def __call__(self, *args: str, stdin: str | None = None, timeout: float | None = None,
                 **env: str) -> subprocess.CompletedProcess[str]:
        e = {k: v for k, v in os.environ.items() if k not in self.unset}
        e.update(self.env)
        e.update(env)
        return subprocess.run([sys.executable, "-m", "xcore", *args], cwd=ROOT, text=True,
                              capture_output=True, env=e, input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL,
                              timeout=self.timeout if timeout is None else timeout)

    def ok(self, *args: str, **kw: Any) -> str:
        r = self(*args, **kw)
        assert r.returncode == 0, f"xcore {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def ok_json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.ok(*args, "--json", **kw))
