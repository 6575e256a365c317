"""The chaos run: a network of real node processes under random faults while
files go up; at the end every acknowledged file is fetched and compared.

Setup: ``nodes`` node processes (12 by default), each in its own network
namespace on one bridge, over eight /24s of 198.18.0.0/15 (the lab of
``tests/netns/harness.py``); where namespaces cannot be made, all on
127.0.0.1 (then without link faults). Repair and audits run fast (repair
checks every 2 s with a 6 s grace; audits every 15 s). Node ``c01`` is the
owner's node: it is never faulted and runs every put and get.

While the run lasts, two threads:

* the putter puts files one after the other from c01 (random sizes from
  20 kB to 3 MB, 4/8): a put that returns a file ID is *acknowledged*;
* the fault thread, every 1.5-3.5 s, picks one of (from one seeded
  ``random.Random``, so ``--seed`` replays the choices):
  ``kill`` (SIGKILL, restarted 3-12 s later), ``stop`` (SIGSTOP, SIGCONT
  2-6 s later), ``link`` (the node's veth down, up 2-6 s later; netns only),
  ``flip`` (flip one byte of one stored share: permanent). At most two nodes
  are down, stopped or cut off at any time.

At the end every fault is undone (killed nodes restarted, stopped nodes
continued, links up; flipped bytes stay), and every acknowledged file is
fetched from c01 and compared byte for byte: *lost* = could not be fetched,
*corrupt* = fetched but different. Both must be 0. *Repairs* is the sum of
the nodes' repair counters (read before every kill and at the end).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tests.netns.harness import Lab, LabError, LabUnavailable, check_available

CLIENT = "c01"
REDUNDANCY = "4/8"
SIZES = (20_000, 150_000, 600_000, 1_500_000, 3_000_000)
MAX_IMPAIRED = 2
NODE_CONFIG = {"repair_interval": 2.0, "repair_grace": 6.0, "audit_interval": 15.0,
               "audit_rate": 86400.0 / 15.0}


def address(i: int) -> str:
    """Node i (0-based): eight /24s, then a second node in each."""
    return f"198.18.{1 + i % 8}.{11 + i // 8}"


@dataclass
class Report:
    seed: int
    nodes: int
    netns: bool
    seconds: float = 0.0
    acknowledged: int = 0
    put_failures: int = 0
    bytes_acknowledged: int = 0
    lost: int = 0
    corrupt: int = 0
    repairs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (f"chaos seed={self.seed} nodes={self.nodes} "
                f"{'netns' if self.netns else 'loopback'} {self.seconds:.0f}s: "
                f"acknowledged {self.acknowledged} ({self.bytes_acknowledged / 1e6:.1f} MB), "
                f"put failures {self.put_failures}, lost {self.lost}, corrupt {self.corrupt}, "
                f"repairs {self.repairs}, faults {sum(self.faults.values())} ({faults})")

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "nodes": self.nodes, "netns": self.netns,
                "seconds": round(self.seconds, 1), "acknowledged": self.acknowledged,
                "put_failures": self.put_failures, "bytes_acknowledged": self.bytes_acknowledged,
                "lost": self.lost, "corrupt": self.corrupt, "repairs": self.repairs,
                "faults": dict(self.faults), "faults_total": sum(self.faults.values()),
                "errors": self.errors[:20]}


class Chaos:
    def __init__(self, lab: Lab, names: list[str], seed: int, report: Report,
                 log: Callable[[str], None]) -> None:
        self.lab = lab
        self.names = names
        self.rng = random.Random(seed)
        self.file_rng = random.Random(seed + 1)
        self.report = report
        self.log = log
        self.master = random.Random(seed + 2).randbytes(32)
        self.acked: list[tuple[str, str, Path]] = []  # (file_id, sha256, path)
        self.impaired: dict[str, str] = {}  # node -> fault
        self.undo: list[tuple[float, int, str, str]] = []  # (when, n, fault, node)
        self.repairs_seen: dict[str, int] = {}  # node -> repairs of incarnations gone
        self.stop = threading.Event()
        self.lock = threading.Lock()

    # -- the putter ------------------------------------------------------------

    def putter(self) -> None:
        n = 0
        files = self.lab.top / "files"
        files.mkdir(exist_ok=True)
        while not self.stop.is_set():
            n += 1
            size = self.file_rng.choice(SIZES)
            path = files / f"f{n:04d}.bin"
            data = self.file_rng.randbytes(size)
            path.write_bytes(data)
            try:
                res = self.lab.call(CLIENT, "put", {"master": self.master, "path": str(path),
                                                    "redundancy": REDUNDANCY}, timeout=120)
            except Exception as exc:  # noqa: BLE001 - a failed put is counted, not fatal
                self.report.put_failures += 1
                self.report.errors.append(f"put {path.name}: {type(exc).__name__}: {exc}"[:300])
                continue
            self.acked.append((str(res["file_id"]), hashlib.sha256(data).hexdigest(), path))
            self.report.acknowledged += 1
            self.report.bytes_acknowledged += size

    # -- faults ---------------------------------------------------------------------

    def _remember_repairs(self, name: str) -> None:
        st = self.lab.status(name, timeout=3)
        if st and st.get("repair"):
            self.repairs_seen[name] = self.repairs_seen.get(name, 0) + int(
                st["repair"].get("repairs", 0))

    def inject(self) -> None:
        hosts = [n for n in self.names if n != CLIENT]
        kinds = ["kill", "stop", "flip"] + (["link"] if self.lab.netns else [])
        kind = self.rng.choice(kinds)
        free = [n for n in hosts if n not in self.impaired]
        name = self.rng.choice(free if kind != "flip" else hosts)
        if kind != "flip" and len(self.impaired) >= MAX_IMPAIRED:
            kind = "flip"
        now = time.monotonic()
        if kind == "kill":
            self._remember_repairs(name)
            self.lab.kill(name)
            self._later(now + self.rng.uniform(3, 12), "restart", name)
        elif kind == "stop":
            self.lab.signal(name, signal.SIGSTOP)
            self._later(now + self.rng.uniform(2, 6), "cont", name)
        elif kind == "link":
            self.lab.link(name, up=False)
            self._later(now + self.rng.uniform(2, 6), "link_up", name)
        else:  # (a killed node's files are still on disk: flipping them works too)
            if self.lab.flip(name, self.rng) is None:
                return  # holds nothing yet
        if kind != "flip":
            self.impaired[name] = kind
        self.report.faults[kind] += 1
        self.log(f"  fault: {kind} {name}")

    def _later(self, when: float, what: str, name: str) -> None:
        heapq.heappush(self.undo, (when, len(self.undo) + self.report.faults.total(), what, name))

    def _undo(self, what: str, name: str) -> None:
        if what == "restart":
            self.lab.start(name)
        elif what == "cont":
            self.lab.signal(name, signal.SIGCONT)
        elif what == "link_up":
            self.lab.link(name, up=True)
        self.impaired.pop(name, None)

    def faults(self, until: float) -> None:
        next_fault = time.monotonic() + self.rng.uniform(1.5, 3.5)
        while time.monotonic() < until:
            now = time.monotonic()
            while self.undo and self.undo[0][0] <= now:
                _, _, what, name = heapq.heappop(self.undo)
                self._undo(what, name)
            if now >= next_fault:
                try:
                    self.inject()
                except (LabError, OSError) as exc:
                    self.report.errors.append(f"fault: {exc}"[:300])
                next_fault = now + self.rng.uniform(1.5, 3.5)
            time.sleep(0.1)

    def heal(self) -> None:
        while self.undo:
            _, _, what, name = heapq.heappop(self.undo)
            self._undo(what, name)
        self.lab.wait_ready(self.names, 120)

    # -- the check ----------------------------------------------------------------------

    def check(self) -> None:
        out = self.lab.top / "out"
        out.mkdir(exist_ok=True)
        for file_id, digest, path in self.acked:
            target = out / path.name
            got = None
            for attempt in range(3):
                try:
                    self.lab.call(CLIENT, "get", {"master": self.master, "file_id": file_id,
                                                  "out": str(target)}, timeout=180)
                    got = hashlib.sha256(target.read_bytes()).hexdigest()
                    break
                except Exception as exc:  # noqa: BLE001 - counted as lost after 3 tries
                    self.report.errors.append(f"get {path.name} (try {attempt + 1}): "
                                              f"{type(exc).__name__}: {exc}"[:300])
                    time.sleep(2)
            if got is None:
                self.report.lost += 1
            elif got != digest:
                self.report.corrupt += 1
        total = 0
        for name in self.names:
            st = self.lab.status(name)
            if st and st.get("repair"):
                total += int(st["repair"].get("repairs", 0))
        self.report.repairs = total + sum(self.repairs_seen.values())


def run(seed: int = 7, seconds: float = 30.0, nodes: int = 12, netns: bool | None = None,
        log: Callable[[str], None] = print, keep: bool = False) -> Report:
    """Build the network, run the chaos for ``seconds``, check, tear down."""
    if netns is None:
        try:
            check_available()
            netns = True
        except LabUnavailable as exc:
            log(f"no network namespaces ({exc}): all nodes on 127.0.0.1, no link faults")
            netns = False
    report = Report(seed, nodes, netns)
    top = Path(tempfile.mkdtemp(prefix="xc-", dir="/tmp"))
    lab = Lab(top, netns=netns)
    t0 = time.monotonic()
    try:
        lab.setup()
        names = [f"c{i + 1:02d}" for i in range(nodes)]
        for i, name in enumerate(names):
            lab.add_node(name, address(i))
        lab.init(names[0], extra=NODE_CONFIG)
        lab.start(names[0])
        lab.wait_ready(names[:1], 60)
        seed_line = lab.nodes[names[0]].seed
        for name in names[1:]:
            lab.init(name, bootstrap=[seed_line], extra=NODE_CONFIG)
            lab.start(name)
        lab.wait_ready(names, 120)
        log(f"{nodes} nodes up in {time.monotonic() - t0:.1f}s ({'netns' if netns else 'loopback'})")
        end = time.monotonic() + 60  # the owner's node must know the hosts before the first put
        while len(lab.call(names[0], "hosts")) < min(8, nodes - 1) and time.monotonic() < end:
            time.sleep(1)
        chaos = Chaos(lab, names, seed, report, log)
        putter = threading.Thread(target=chaos.putter, name="putter", daemon=True)
        start = time.monotonic()
        putter.start()
        try:
            chaos.faults(start + seconds)
        finally:
            chaos.stop.set()
            chaos.heal()
            putter.join(timeout=300)
        report.seconds = time.monotonic() - start
        log(f"chaos over after {report.seconds:.0f}s; healing done, checking "
            f"{len(chaos.acked)} files")
        chaos.check()
    finally:
        left = lab.close()
        if left:
            report.errors.append(f"teardown left {left}")
        if not keep:
            shutil.rmtree(top, ignore_errors=True)
    return report
