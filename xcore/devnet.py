"""A local devnet: N node processes on 127.0.0.1, one data dir each.

``DIR/<name>/`` holds each node's data dir and ``node.log``;
``DIR/bootstrap_nodes.txt`` names the first node; ``DIR/devnet.json`` lists
the nodes. This is tooling (it starts processes and waits in real time), not
protocol code.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from xcore.bootstrap import format_seed, parse_address
from xcore.control import call, is_running
from xcore.errors import ConfigError, Timeout, XcoreError
from xcore.fsutil import atomic_write
from xcore.node import PID_NAME, init_node

ROOT = Path(__file__).resolve().parent.parent


def node_command(data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "xcore", "node", "start", "--data", str(data_dir)]


def spawn(data_dir: Path) -> subprocess.Popen[bytes]:
    """Start one node process, detached, logging to DATA/node.log."""
    log = open(Path(data_dir) / "node.log", "ab")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        return subprocess.Popen(node_command(data_dir), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                cwd=str(ROOT))
    finally:
        log.close()


def _status(data_dir: Path) -> dict[str, Any] | None:
    if not is_running(data_dir):
        return None
    try:
        return asyncio.run(call(data_dir, "status", timeout=5))  # type: ignore[no-any-return]
    except (XcoreError, OSError, asyncio.TimeoutError):
        return None


def wait_joined(data_dir: Path, proc: subprocess.Popen[bytes] | None, deadline: float,
                need_joined: bool = True) -> dict[str, Any]:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = (Path(data_dir) / "node.log").read_text(errors="replace")[-2000:]
            raise ConfigError(f"node in {data_dir} exited with {proc.returncode}:\n{tail}")
        st = _status(data_dir)
        if st is not None and (st["joined"] or not need_joined):
            return st
        time.sleep(0.1)
    raise Timeout(f"node in {data_dir} did not join in time")


def up(directory: Path, count: int, *, difficulty: int, capacity: int = 1 << 30,
       timeout: float = 60.0, progress: Callable[[str], None] | None = None,
       prefix: str = "n", repair_interval: float = 60.0,
       repair_grace: float = 900.0, audit_interval: float = 300.0,
       faults: dict[str, str] | None = None, repair_claim_ttl: float | None = None,
       repair_rate: float | None = None) -> dict[str, Any]:
    if count < 1:
        raise ConfigError("a devnet needs at least one node")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    names = [f"{prefix}{i:02d}" for i in range(1, count + 1)]
    repair: dict[str, float] = {}
    if repair_claim_ttl is not None:
        repair["repair_claim_ttl"] = float(repair_claim_ttl)
    if repair_rate is not None:
        repair["repair_rate"] = float(repair_rate)
    nodes: list[dict[str, Any]] = []
    first = directory / names[0]
    if not (first / "config.json").exists():
        init_node(first, port=0, capacity=capacity, difficulty=difficulty, diversity=False,
                  repair_interval=repair_interval, repair_grace=repair_grace)
        _tune(first, audit_interval, (faults or {}).get(names[0], ""), repair)
    proc = spawn(first)
    st = wait_joined(first, proc, deadline)
    seed = format_seed(parse_address(st["address"]), bytes.fromhex(st["node_id"]))
    atomic_write(directory / "bootstrap_nodes.txt",
                 f"# devnet seed (xcore devnet up)\n{seed}\n".encode())
    nodes.append({"name": names[0], "data": str(first), "pid": proc.pid,
                  "node_id": st["node_id"], "address": st["address"]})
    if progress:
        progress(f"{names[0]} up at {st['address']}")
    procs = []
    for name in names[1:]:
        d = directory / name
        if not (d / "config.json").exists():
            init_node(d, port=0, capacity=capacity, bootstrap=[seed], difficulty=difficulty,
                      diversity=False, repair_interval=repair_interval, repair_grace=repair_grace)
            _tune(d, audit_interval, (faults or {}).get(name, ""), repair)
        procs.append((name, d, spawn(d)))
    for name, d, p in procs:
        st = wait_joined(d, p, deadline)
        nodes.append({"name": name, "data": str(d), "pid": p.pid, "node_id": st["node_id"],
                      "address": st["address"]})
        if progress:
            progress(f"{name} up at {st['address']} ({st['peers']} peers)")
    info = {"dir": str(directory), "seed": seed, "nodes": nodes}
    atomic_write(directory / "devnet.json", json.dumps(info, indent=2).encode())
    return info


def _tune(data_dir: Path, audit_interval: float, fault: str,
          repair: dict[str, float] | None = None) -> None:
    """Devnet-only settings: audit pace, repair claim TTL and bandwidth
    (``repair_claim_ttl``, ``repair_rate``), fault injection (dishonest hosts)."""
    path = Path(data_dir) / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(repair or {})
    cfg["audit_interval"] = audit_interval
    if audit_interval < 300:
        cfg["audit_rate"] = 86400.0 / max(1.0, audit_interval)  # every contract each round
    if fault:
        cfg["fault"] = fault
    atomic_write(path, (json.dumps(cfg, indent=2) + "\n").encode())


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, waiting for its reaper, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_node_of(pid: int, data_dir: Path) -> bool:
    """Guard against pid reuse: is ``pid`` really `xcore node start --data data_dir`?"""
    try:
        args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return _pid_alive(pid)
    want = os.fsencode(str(Path(data_dir).resolve()))
    return b"start" in args and any(os.fsencode(str(Path(os.fsdecode(a)).resolve())) == want
                                    for a in args if a.startswith(b"/"))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM them all, wait for all against one deadline, SIGKILL the rest."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace
    left = list(pids)
    while left and time.monotonic() < end:
        for pid in left:
            _reap(pid)
        left = [p for p in left if _pid_alive(p)]
        if left:
            time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid)


def stop_pid(pid: int, grace: float = 10.0) -> None:
    stop_pids([pid], grace)


def down(directory: Path) -> dict[str, Any]:
    directory = Path(directory)
    pids = []
    for pidfile in sorted(directory.glob(f"*/{PID_NAME}")):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(pid) and _is_node_of(pid, pidfile.parent):
            pids.append(pid)
    stop_pids(pids)
    return {"dir": str(directory), "stopped": len(pids)}
