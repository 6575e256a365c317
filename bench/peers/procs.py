"""Process plumbing for the peer benchmarks: ports, memory, timed children, cleanup.

Memory figures are peak resident set sizes. For a child that runs one
command (``xcore put``, ``tahoe put``) it is the kernel's own figure,
``ru_maxrss`` from ``wait4`` on that child. For long-running processes (nodes,
Tahoe's client node) the peak is per operation: before the operation the
kernel's high-water mark is reset (``echo 5 > /proc/PID/clear_refs``, Linux
4.0+, needs the right to write there), ``VmRSS`` is polled every 50 ms while
it runs, and the larger of the polled peak and ``VmHWM`` afterwards is kept.
Where the reset is refused, only the polled peak is used (it can miss spikes
shorter than the poll interval).

CPU time is counted the same way: the child's own ``ru_utime + ru_stime``, and
for long-running processes the growth of ``utime + stime`` in
``/proc/PID/stat`` over the operation. On a shared machine wall-clock rates
move with the load; the CPU seconds an operation costs move much less.

Everything started here is started in its own session so that it can be
stopped by its process-group ID, and :class:`Procs` stops what it started
(SIGTERM, then SIGKILL after a grace period) even when the benchmark fails.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

MiB = 1 << 20
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` just now (and not handed out before)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in bytes (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def reset_peak(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssWatch:
    """Peak RSS and CPU time per pid over a ``with`` block (see the module docstring)."""

    def __init__(self, pids: Sequence[int], interval: float = 0.05) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peaks: dict[int, int] = {p: 0 for p in self.pids}
        self.reset_ok: dict[int, bool] = {}
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for p in self.pids:
            rss = proc_status(p).get("VmRSS", 0)
            if rss > self.peaks[p]:
                self.peaks[p] = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "RssWatch":
        for p in self.pids:
            self.reset_ok[p] = reset_peak(p)
            self.cpu[p] = cpu_seconds(p)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        for p in self.pids:
            self.cpu[p] = max(0.0, cpu_seconds(p) - self.cpu[p])
            if self.reset_ok.get(p):
                self.peaks[p] = max(self.peaks[p], proc_status(p).get("VmHWM", 0))


@dataclass
class Timed:
    """One child command, run to completion."""

    cmd: list[str]
    returncode: int
    wall: float
    stdout: str
    stderr: str
    maxrss: int  # bytes, the child's own peak (wait4 ru_maxrss)
    cpu: float  # seconds of user + system CPU the child used
    watched: dict[int, int] = field(default_factory=dict)  # pid -> peak RSS during the run
    watched_cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU s during the run

    def check(self) -> "Timed":
        if self.returncode != 0:
            raise RuntimeError(f"{' '.join(self.cmd[:4])}... exited with {self.returncode}:\n"
                               f"{self.stderr[-3000:]}\n{self.stdout[-1000:]}")
        return self


def run_timed(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None, timeout: float = 600.0,
              watch: Sequence[int] = ()) -> Timed:
    """Run ``cmd`` and time it from spawn to exit; peak RSS of it and of ``watch``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with RssWatch(watch) as w:
            t0 = time.perf_counter()
            p = subprocess.Popen(list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 env=dict(env) if env is not None else None, cwd=cwd,
                                 start_new_session=True)
            result: list[tuple[float, int, int, float]] = []  # wall, status, maxrss, cpu

            def reap() -> None:
                _pid, status, usage = os.wait4(p.pid, 0)
                result.append((time.perf_counter() - t0, status, usage.ru_maxrss * 1024,
                               usage.ru_utime + usage.ru_stime))

            th = threading.Thread(target=reap, daemon=True)
            th.start()
            try:
                th.join(timeout)
                if th.is_alive():
                    raise TimeoutError(f"{' '.join(cmd[:4])}... did not finish in {timeout:.0f} s")
            except BaseException:  # timeout, SIGTERM, ^C: the child must not outlive us
                if not result:  # not reaped yet, so its process group is still its own
                    _killpg(p.pid, signal.SIGKILL)
                    th.join(30)
                p.returncode = -9
                raise
            wall, status, maxrss, cpu = result[0]
            p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Timed(list(cmd), p.returncode, wall, out.read().decode(errors="replace"),
                     err.read().decode(errors="replace"), maxrss, cpu, dict(w.peaks), dict(w.cpu))


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Procs:
    """Long-running processes this benchmark started, and their stopping."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as fh:
            p = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=dict(env) if env else None,
                                 cwd=cwd, start_new_session=True)
        self.procs.append(p)
        return p

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every process group we started, SIGKILL what is left after ``grace``."""
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            _killpg(p.pid, signal.SIGTERM)
        end = time.monotonic() + grace
        for p in live:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in live:
            if p.poll() is None:
                _killpg(p.pid, signal.SIGKILL)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.clear()


def make_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256 hex."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(MiB, left))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")
