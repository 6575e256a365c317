"""A multi-host lab on one Linux machine: one network namespace per node.

Layout (all names carry a per-run tag, ``xcn<pid>``, so parallel runs do not
clash, and a run that died leaves names a later run recognises and removes)::

    root namespace                       namespace <tag>-n03
    bridge <tag>b  198.19.255.254/15 ---- veth <tag>3h === veth <tag>3n  198.18.2.11/15
                   |                                                   node process n03
                   |-- veth ... (one per node)
                   |
                   '-- veth <tag>Rh === <tag>-n09r (router ns, proxy ARP)
                                         tun <tag>9b <- relay process -> tun <tag>9a
                                                                        (in <tag>-n09, the node's
                                                                         address: 198.18.7.11/15)

Addresses come from 198.18.0.0/15 (the benchmarking range), one or two nodes
per /24 and several /24s, so the host-selection and routing-table /24 rules
see real diversity. Every address is on-link (/15), so no routing is needed
between /24s; the test process reaches every node through the bridge, and
every node's control socket (a Unix socket in its data directory: the file
system is shared) from the root namespace.

Faults: SIGKILL, SIGSTOP/SIGCONT, restart, link down/up (``ip link set``
on the node's root-side veth), a small tmpfs as a node's data directory
(disk full), flipped bytes in stored shares, a skewed clock
(``XCORE_CLOCK_SKEW``), and a relay (``tests/netns/relay.py``) that drops,
delays, duplicates and reorders one node's datagrams.

:meth:`Lab.close` removes everything this run created (processes, relay,
mounts, namespaces, veths, bridge), whatever state it was left in, and
returns what it could not remove.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.procs import alive

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "xcn"
BRIDGE_ADDR = "198.19.255.254/15"
NODE_PORT = 7000
DIFFICULTY = 4
CLIENT_ENV = {"XCORE_PASSPHRASE": "pw", "XCORE_ARGON2": "fast",
              "XCORE_DIFFICULTY": str(DIFFICULTY)}


class LabError(Exception):
    """A lab command failed (the message is the command and its error)."""


class LabUnavailable(LabError):
    """Namespaces cannot be made here (not root, no `ip`, no permission)."""


def run(*cmd: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", *args, check=check)


def check_available() -> None:
    """Raise :class:`LabUnavailable` (with the failing command's error) unless
    this process can create namespaces, veths and bridges."""
    if os.geteuid() != 0:
        raise LabUnavailable("network namespaces need root (euid is %d)" % os.geteuid())
    if shutil.which("ip") is None:
        raise LabUnavailable("no `ip` command (iproute2) on PATH")
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except LabError as exc:
        raise LabUnavailable(str(exc)) from None
    ip("netns", "del", probe, check=False)


def remove_stale() -> list[str]:
    """Remove namespaces and links left by earlier runs whose process is gone."""
    removed = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)-.*", name)
        if m and not alive(int(m.group(1))):
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        m = re.match(rf"\d+: ({PREFIX}(\d+)[a-zA-Z0-9]*)[@:]", line)
        if m and not alive(int(m.group(2))):
            ip("link", "del", m.group(1), check=False)
            removed.append(m.group(1))
    return removed


@dataclass
class Node:
    name: str
    index: int
    addr: str
    ns: str
    data: Path
    log: Path
    link: str                  # the root-side interface: down/up cuts the node off
    tmpfs: bool = False
    relay: subprocess.Popen[bytes] | None = None
    relay_stats: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    node_id: str = ""
    stopped: bool = False      # SIGSTOPped

    @property
    def group(self) -> str:
        return ".".join(self.addr.split(".")[:3])

    port: int = NODE_PORT

    @property
    def seed(self) -> str:
        return f"{self.addr}:{self.port} {self.node_id}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Lab:
    """Namespaces, links and node processes of one run (use as a context manager)."""

    def __init__(self, top: Path, tag: str | None = None, netns: bool = True) -> None:
        self.top = Path(top)
        self.netns = netns  # False: every node on 127.0.0.1, no link faults (no root needed)
        self.tag = tag or f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.tag}b"
        self.nodes: dict[str, Node] = {}
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.mounts: list[Path] = []
        self.relays: list[subprocess.Popen[bytes]] = []
        self.closed = False
        (self.top / "logs").mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- building -----------------------------------------------------------------

    def setup(self) -> None:
        if not self.netns:
            return
        remove_stale()
        ip("link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        ip("addr", "add", BRIDGE_ADDR, "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def _netns(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def _veth(self, ns: str, root_name: str, ns_name: str, addr: str) -> None:
        ip("link", "add", root_name, "type", "veth", "peer", "name", ns_name)
        self.links.append(root_name)
        ip("link", "set", ns_name, "netns", ns)
        ip("link", "set", root_name, "master", self.bridge, "up")
        ip("-n", ns, "addr", "add", f"{addr}/15", "dev", ns_name)
        ip("-n", ns, "link", "set", ns_name, "up")

    def add_node(self, name: str, addr: str, *, tmpfs: str | None = None,
                 relay: dict[str, float] | None = None, seed: int = 0) -> Node:
        """A namespace holding ``addr``, and a data directory (on a tmpfs of
        size ``tmpfs``, e.g. "1536k", if given). ``relay``: put a relay with
        these faults (loss, dup, delay, jitter) between the node and the rest."""
        i = len(self.nodes) + 1
        data = self.top / name
        data.mkdir(parents=True)
        if not self.netns:
            node = Node(name, i, "127.0.0.1", "", data, self.top / "logs" / f"{name}.log", "")
            self.nodes[name] = node
            return node
        ns = self._netns(name)
        if relay is None:
            link = f"{self.tag}{i}h"
            self._veth(ns, link, f"{self.tag}{i}n", addr)
        else:
            link = self._relayed(name, i, ns, addr, relay, seed)
        node = Node(name, i, addr, ns, data, self.top / "logs" / f"{name}.log", link)
        if relay is not None:
            node.relay = self.relays[-1]
            node.relay_stats = self.top / "logs" / f"{name}.relay.json"
        if tmpfs:
            run("mount", "-t", "tmpfs", "-o", f"size={tmpfs},mode=0700", "tmpfs", str(data))
            self.mounts.append(data)
            node.tmpfs = True
        self.nodes[name] = node
        return node

    def _relayed(self, name: str, i: int, ns: str, addr: str, faults: dict[str, float],
                 seed: int) -> str:
        """Node namespace <- tun A -- relay process -- tun B -> router ns -> bridge."""
        router = self._netns(f"{name}r")
        link = f"{self.tag}{i}h"
        ip("link", "add", link, "type", "veth", "peer", "name", f"{self.tag}{i}n")
        self.links.append(link)
        ip("link", "set", f"{self.tag}{i}n", "netns", router)
        ip("link", "set", link, "master", self.bridge, "up")
        ip("-n", router, "addr", "add", f"198.19.254.{i}/15", "dev", f"{self.tag}{i}n")
        ip("-n", router, "link", "set", f"{self.tag}{i}n", "up")
        run("ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
            f"net.ipv4.conf.{self.tag}{i}n.proxy_arp=1")
        tun_a, tun_b = f"{self.tag}{i}a", f"{self.tag}{i}b"
        stats = self.top / "logs" / f"{name}.relay.json"
        args = [sys.executable, "-m", "tests.netns.relay", "--tun-a", tun_a, "--tun-b", tun_b,
                "--seed", str(seed), "--stats", str(stats)]
        for k in ("loss", "dup", "delay", "jitter"):
            args += [f"--{k}", str(faults.get(k, 0.0))]
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=open(self.top / "logs" / f"{name}.relay.log", "ab"),
                                stdin=subprocess.DEVNULL, env=self._env({}))
        self.relays.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise LabError(f"relay for {name} did not start: {line!r}")
        ip("link", "set", tun_a, "netns", ns)
        ip("link", "set", tun_b, "netns", router)
        ip("-n", ns, "addr", "add", f"{addr}/15", "dev", tun_a)
        ip("-n", ns, "link", "set", tun_a, "up")
        ip("-n", router, "link", "set", tun_b, "up")
        ip("-n", router, "route", "add", f"{addr}/32", "dev", tun_b)
        return link

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ, **CLIENT_ENV, **extra)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    # -- nodes ---------------------------------------------------------------------

    def init(self, name: str, *, bootstrap: list[str] | None = None, capacity: int = 1 << 30,
             extra: dict[str, Any] | None = None) -> str:
        from xcore.crypto.identity import Identity
        from xcore.node import KEY_NAME, init_node
        node = self.nodes[name]
        info = init_node(node.data, host=node.addr, port=NODE_PORT if self.netns else 0,
                         capacity=capacity,
                         bootstrap=bootstrap or [], difficulty=DIFFICULTY, extra=extra)
        if not bootstrap:
            (node.data / "bootstrap_nodes.txt").write_text("# the first node of the lab\n")
        node.node_id = Identity.load(node.data / KEY_NAME).node_id.hex()
        node.port = int(info["port"])
        assert node.node_id == info["node_id"]
        return node.node_id

    def start(self, name: str, env: dict[str, str] | None = None) -> Node:
        node = self.nodes[name]
        assert not node.alive(), f"{name} is running"
        if env is not None:
            node.env = dict(env)
        log = open(node.log, "ab")
        try:
            wrap = ["ip", "netns", "exec", node.ns] if self.netns else []
            node.proc = subprocess.Popen(
                [*wrap, sys.executable, "-m", "xcore", "node", "start", "--data", str(node.data)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=ROOT, env=self._env(node.env))
        finally:
            log.close()
        node.stopped = False
        return node

    def wait_ready(self, names: list[str], timeout: float = 60.0,
                   joined: bool = True) -> dict[str, dict[str, Any]]:
        """Wait until each node answers ``status`` (and has joined)."""
        end = time.monotonic() + timeout
        out: dict[str, dict[str, Any]] = {}
        left = list(names)
        while left:
            for name in list(left):
                node = self.nodes[name]
                if node.proc is not None and node.proc.poll() is not None:
                    raise LabError(f"{name} exited with {node.proc.returncode}:\n"
                                   + node.log.read_text(errors="replace")[-3000:])
                st = self.status(name, timeout=3)
                if st is not None and (st["joined"] or not joined):
                    node.port = int(str(st["address"]).rsplit(":", 1)[1])
                    out[name] = st
                    left.remove(name)
            if left:
                if time.monotonic() > end:
                    raise LabError(f"nodes {left} not ready after {timeout}s")
                time.sleep(0.2)
        return out

    def status(self, name: str, timeout: float = 10.0) -> dict[str, Any] | None:
        from xcore.control import call, is_running
        from xcore.errors import XcoreError
        node = self.nodes[name]
        if not is_running(node.data):
            return None
        try:
            return asyncio.run(call(node.data, "status", timeout=timeout))  # type: ignore[no-any-return]
        except (XcoreError, OSError, asyncio.TimeoutError):
            return None

    def call(self, name: str, op: str, args: dict[str, Any] | None = None,
             timeout: float = 120.0) -> Any:
        from xcore.control import call
        return asyncio.run(call(self.nodes[name].data, op, args, timeout=timeout))

    def xcore(self, *args: str, timeout: float = 180.0,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real `xcore` command, run from the root namespace."""
        return subprocess.run([sys.executable, "-m", "xcore", *args], cwd=ROOT, text=True,
                              env=self._env({}), capture_output=True, timeout=timeout,
                              input=stdin if stdin is not None else "")

    # -- faults -----------------------------------------------------------------------

    def signal(self, name: str, sig: int) -> None:
        node = self.nodes[name]
        if node.proc is None or node.proc.poll() is not None:
            return
        os.kill(node.proc.pid, sig)
        if sig == signal.SIGSTOP:
            node.stopped = True
        elif sig == signal.SIGCONT:
            node.stopped = False

    def kill(self, name: str) -> None:
        """SIGKILL, and reap it (the control socket file stays behind, as after a crash)."""
        node = self.nodes[name]
        if node.proc is None:
            return
        if node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=30)
        node.stopped = False

    def stop_node(self, name: str, grace: float = 15.0) -> None:
        node = self.nodes[name]
        if node.proc is None or node.proc.poll() is not None:
            return
        if node.stopped:
            os.kill(node.proc.pid, signal.SIGCONT)
        node.proc.terminate()
        try:
            node.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(timeout=30)
        node.stopped = False

    def link(self, name: str, up: bool) -> None:
        if not self.netns:
            raise LabError("link faults need network namespaces")
        ip("link", "set", self.nodes[name].link, "up" if up else "down")

    def share_files(self, name: str) -> list[Path]:
        root = self.nodes[name].data / "shares"
        if not root.is_dir():
            return []
        return sorted(p for p in root.glob("??/*") if re.fullmatch(r"[0-9a-f]{64}", p.name))

    def flip(self, name: str, rng: random.Random, nbytes: int = 1) -> Path | None:
        """Flip ``nbytes`` random bytes of one random share stored by ``name``."""
        files = self.share_files(name)
        if not files:
            return None
        path = rng.choice(files)
        raw = bytearray(path.read_bytes())
        if not raw:
            return None
        for _ in range(nbytes):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(raw))
        return path

    def relay_stats(self, name: str) -> dict[str, int]:
        path = self.nodes[name].relay_stats
        assert path is not None, f"{name} has no relay"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    # -- teardown ---------------------------------------------------------------------

    def close(self) -> list[str]:
        """Remove everything; return what is left (should be [])."""
        if self.closed:
            return self.leftovers()
        self.closed = True
        procs = [n.proc for n in self.nodes.values() if n.proc is not None and n.proc.poll() is None]
        for p in procs:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)
        for p in self.relays:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=30)
            if p.stdout is not None:
                p.stdout.close()
        for m in reversed(self.mounts):
            run("umount", str(m), check=False)
            if os.path.ismount(m):
                run("umount", "-l", str(m), check=False)
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        for link in reversed(self.links):
            if ip("link", "show", link, check=False).returncode == 0:
                ip("link", "del", link, check=False)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        left = []
        if not self.netns:
            return [f"pid {n.proc.pid} ({n.name})" for n in self.nodes.values()
                    if n.proc is not None and alive(n.proc.pid)]
        names = {line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines()
                 if line.split()}
        left += [f"netns {ns}" for ns in self.namespaces if ns in names]
        for _ in range(50):  # veths of a deleted namespace go away asynchronously
            links = [link for link in self.links
                     if ip("link", "show", link, check=False).returncode == 0]
            if not links:
                break
            time.sleep(0.1)
        left += [f"link {link}" for link in links]
        left += [f"mount {m}" for m in self.mounts if os.path.ismount(m)]
        left += [f"pid {n.proc.pid} ({n.name})" for n in self.nodes.values()
                 if n.proc is not None and alive(n.proc.pid)]
        left += [f"relay pid {p.pid}" for p in self.relays if alive(p.pid)]
        return left
