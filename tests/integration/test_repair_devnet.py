"""Owner-less repair on a real devnet (DESIGN.md principle 9, issue #5).

One module-scoped devnet of sixteen node processes (``xcore devnet up --nodes
16 --repair-interval 1 --repair-grace 8 --repair-claim-ttl 4 --repair-rate
128KiB``) and one more node, the owner's (``DIR/owner``, no disk offered),
whose keys put every file at 4/8 (repair threshold 6) through the running
node (``xcore put --data DIR/owner``). The tests run in file order and share
the devnet; each works on files of its own, put onto the hosts still alive
when its scenario starts:

* a host that comes back within the grace period (three of a segment's
  hosts stopped with SIGSTOP for less than the grace period, then SIGCONT)
  triggers no repair anywhere: every node's repair counters stay empty;
* the repair leader frozen (SIGSTOP) mid-repair, once ``xcore repair --json``
  shows it has claimed the segment and placed part of the lost shares: its
  claim expires, the next holder takes over after the grace period and
  finishes; then the old leader wakes up (SIGCONT) in the middle of its
  placements. No share is placed twice and no segment is left below its
  threshold;
* the owner's node stopped, then three hosts that hold shares of two
  segments killed with SIGKILL at once: both segments are repaired back to
  all n shares on distinct hosts while the owner's node stays down.

Ground truth is read from the hosts' disks (``DATA/shares/<h[:2]>/<h>`` and
the segment records in ``DATA/segments/``); the nodes' own view from their
control sockets (``xcore repair --json``). ``xcore devnet down`` runs in
teardown whatever happened; then no process started from the devnet's
directory may remain and no node log may hold a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.procs import Xcore, alive, processes_under

from xcore.contracts.segments import SegmentInfo, decode_segment_record
from xcore.control import call, is_running
from xcore.devnet import spawn, wait_joined

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NODES = 16
DIFFICULTY = 4
INTERVAL = 1.0  # --repair-interval
GRACE = 10.0  # --repair-grace: well over a probe of a stopped host takes to fail (5 s)
# plus a check round and a report on a loaded box (at 8 s the watchers were once late)
CLAIM_TTL = 4.0  # --repair-claim-ttl: shorter than the grace period
RATE = 128 * 1024  # --repair-rate: bytes/s, so a repair of 128 KiB shares takes seconds
NAMES = [f"n{i:02d}" for i in range(1, NODES + 1)]
CLIENT_ENV = {"XCORE_PASSPHRASE": "pw", "XCORE_ARGON2": "fast",
              "XCORE_DIFFICULTY": str(DIFFICULTY)}
KiB = 1024


# -- processes ----------------------------------------------------------------


xcore = Xcore(CLIENT_ENV, timeout=60.0)
ok_json = xcore.ok_json


def tracebacks(log: str) -> str:
    """The records of a node log that hold a traceback ('' if none)."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )", log)
    return "\n---\n".join(r[:3000] for r in records
                           if "Traceback" in r or "Task was destroyed" in r)


def wait_for(what: str, timeout: float, probe: Callable[[], Any], every: float = 0.5,
             explain: Callable[[], Any] | None = None) -> Any:
    """Poll ``probe()`` until it returns something true; fail after ``timeout`` s
    (with what ``explain()`` says, if given)."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > end:
            said = f"\n{explain()}" if explain is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{said}")
        time.sleep(every)


# -- the devnet -------------------------------------------------------------------


@dataclass
class Devnet:
    dir: Path
    info: dict[str, Any]
    dead: set[str] = field(default_factory=set)  # SIGKILLed
    frozen: set[str] = field(default_factory=set)  # SIGSTOPped right now
    owner_proc: subprocess.Popen[bytes] | None = None

    def data(self, name: str) -> Path:
        return self.dir / name

    def pid(self, name: str) -> int:
        return int(next(n["pid"] for n in self.info["nodes"] if n["name"] == name))

    def id_of(self, name: str) -> str:
        return str(next(n["node_id"] for n in self.info["nodes"] if n["name"] == name))

    def name_of(self, node_id: str) -> str:
        return str(next(n["name"] for n in self.info["nodes"] if n["node_id"] == node_id))

    def up(self) -> list[str]:
        """Hosts whose process runs and answers (not killed, not stopped)."""
        return [n for n in NAMES if n not in self.dead and n not in self.frozen]

    def kill(self, names: list[str]) -> None:
        for n in names:
            os.kill(self.pid(n), signal.SIGKILL)
            self.dead.add(n)
        for n in names:
            wait_for(f"{n} to die", 10, lambda n=n: not alive(self.pid(n)), 0.05)

    def freeze(self, name: str) -> None:
        os.kill(self.pid(name), signal.SIGSTOP)
        self.frozen.add(name)

    def thaw(self, name: str) -> None:
        os.kill(self.pid(name), signal.SIGCONT)
        self.frozen.discard(name)

    # -- the nodes' own view (control sockets) --

    def reports(self, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """``xcore repair --json`` of every running host (or of ``names``)."""
        names = self.up() if names is None else names

        async def one(n: str) -> Any:
            try:
                return await call(self.data(n), "repair", {}, timeout=10)
            except Exception:  # a node busy or gone this instant: ask again next poll
                return None

        async def run() -> list[Any]:
            return await asyncio.gather(*(one(n) for n in names))
        return {n: r for n, r in zip(names, asyncio.run(run())) if r is not None}

    # -- ground truth (the hosts' disks) --

    def has_share(self, name: str, share_hash: bytes) -> bool:
        h = share_hash.hex()
        return (self.data(name) / "shares" / h[:2] / h).is_file()

    def placement(self, seg: SegmentInfo, among: list[str] | None = None) -> dict[int, list[str]]:
        """Share index -> the hosts (running, or ``among``) that hold it on disk."""
        hosts = [n for n in NAMES if n not in self.dead] if among is None else among
        return {i: [n for n in hosts if self.has_share(n, h)] for i, h in enumerate(seg.shares)}

    def segments_on_disk(self, data_only: bool = False) -> dict[bytes, SegmentInfo]:
        """Every segment record any host keeps (each host keeps those of its
        shares); ``data_only``: leave out the mirrored (k = 1) segments of the
        metadata blobs (sealed manifests and index), since files go up at 4/8."""
        out: dict[bytes, SegmentInfo] = {}
        now = time.time()
        for n in NAMES:
            for p in sorted((self.data(n) / "segments").glob("*")):
                if bytes.fromhex(p.name) not in out:
                    info = decode_segment_record(p.read_bytes(), now)[1]
                    if info.k > 1 or not data_only:
                        out[bytes.fromhex(p.name)] = info
        return out


@pytest.fixture(scope="module")
def devnet() -> Iterator[Devnet]:
    # short: DIR/nNN/control.sock must stay under the 100-byte socket path limit
    directory = Path(tempfile.mkdtemp(prefix="xc-", dir="/tmp"))
    net: Devnet | None = None
    try:
        r = xcore("devnet", "up", "--nodes", str(NODES), "--dir", str(directory),
                  "--difficulty", str(DIFFICULTY), "--repair-interval", str(INTERVAL),
                  "--repair-grace", str(GRACE), "--repair-claim-ttl", str(CLAIM_TTL),
                  "--repair-rate", f"{RATE // KiB}KiB", "--json", timeout=120)
        assert r.returncode == 0, f"devnet up failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        info = json.loads(r.stdout)
        assert [n["name"] for n in info["nodes"]] == NAMES
        net = Devnet(directory, info)
        yield net
    finally:
        if net is not None:
            for n in list(net.frozen):  # a stopped process cannot act on SIGTERM
                net.thaw(n)
        running = {p: p.stat().st_size for p in directory.glob("*/node.log")}
        down = xcore("devnet", "down", "--dir", str(directory), timeout=120)
        if net is not None and net.owner_proc is not None:
            try:
                net.owner_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                net.owner_proc.kill()
                net.owner_proc.wait()
        leaked: list[int] = []
        end = time.monotonic() + 10
        while time.monotonic() < end:
            leaked = processes_under(directory)
            if not leaked:
                break
            time.sleep(0.1)
        for pid in leaked:  # ours: started from this test's directory
            os.kill(pid, signal.SIGKILL)
        logs = {p.parent.name: p.read_bytes()[:size].decode(errors="replace")
                for p, size in running.items()}
        if os.environ.get("XCORE_KEEP_DEVNET"):
            print(f"devnet kept in {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        assert down.returncode == 0, f"devnet down failed:\n{down.stdout}\n{down.stderr}"
        assert not leaked, f"node processes left after devnet down: {leaked}"
        crashed = {n: t for n, log in logs.items() if (t := tracebacks(log))}
        assert not crashed, f"tracebacks in node logs: {crashed}"


# -- the owner: a node of its own that offers no disk, down while repair runs ----------


def owner_start(net: Devnet) -> Path:
    from xcore.node import init_node
    d = net.data("owner")
    fresh = not (d / "config.json").exists()
    seeds = [f"{n['address']} {n['node_id']}" for n in net.info["nodes"] if n["name"] in net.up()]
    init_node(d, capacity=0, bootstrap=seeds, difficulty=DIFFICULTY, force=not fresh)
    if fresh:
        ok_json("keys", "new", "--data", str(d))
    net.owner_proc = spawn(d)
    wait_joined(d, net.owner_proc, time.monotonic() + 30)
    return d


def owner_stop(net: Devnet) -> None:
    d = net.data("owner")
    r = xcore("node", "stop", "--data", str(d))
    assert r.returncode == 0, r.stderr
    assert net.owner_proc is not None
    assert net.owner_proc.wait(timeout=20) == 0
    assert not is_running(d)


def put_files(net: Devnet, sizes: list[int]) -> list[SegmentInfo]:
    """Put one file per size from the owner's node (started if it is not running);
    return the segments they made, read from the hosts' disks."""
    before = net.segments_on_disk(data_only=True)
    d = net.data("owner")
    if not is_running(d):
        owner_start(net)
    for i, size in enumerate(sizes):
        path = net.dir / f"file-{len(before)}-{i}.bin"
        path.write_bytes(os.urandom(size))
        res = ok_json("put", "--data", str(d), "--redundancy", "4/8", str(path))
        assert res["segments"] == 1 and res["shares"] == 8, res
    new = [s for sid, s in net.segments_on_disk(data_only=True).items() if sid not in before]
    assert len(new) == len(sizes), new
    for seg in new:
        assert (seg.k, seg.n, seg.threshold) == (4, 8, 6)
        assert_placed_once(net, seg, want_all=True)
    return new


def assert_placed_once(net: Devnet, seg: SegmentInfo, want_all: bool = False,
                       ignore: set[str] = frozenset()) -> dict[int, list[str]]:  # type: ignore[assignment]
    """No share of ``seg`` on two running hosts, no host with two of its shares
    (hosts in ``ignore`` are left out); all n shares held if ``want_all``."""
    where = net.placement(seg)
    twice = {i: hs for i, hs in where.items() if len(set(hs) - ignore) > 1}
    assert not twice, f"segment {seg.segment_id.hex()[:12]}: shares placed twice: {twice}"
    per_host: dict[str, list[int]] = {}
    for i, hs in where.items():
        for h in set(hs) - ignore:
            per_host.setdefault(h, []).append(i)
    crowded = {h: ix for h, ix in per_host.items() if len(ix) > 1}
    assert not crowded, f"segment {seg.segment_id.hex()[:12]}: hosts with two shares: {crowded}"
    if want_all:
        assert all(where.values()), f"segment {seg.segment_id.hex()[:12]}: {where}"
    return where


def share_size(net: Devnet, seg: SegmentInfo) -> int:
    for n in NAMES:
        for h in seg.shares:
            if net.has_share(n, h):
                return (net.data(n) / "shares" / h.hex()[:2] / h.hex()).stat().st_size
    raise AssertionError("no share of the segment anywhere")


def held(net: Devnet, seg: SegmentInfo) -> int:
    """How many of ``seg``'s share indices some running host holds (for a
    mirror, k = 1, whose indices all name one hash: how many distinct hosts
    hold a copy, at most n)."""
    where = net.placement(seg)
    return sum(min(len(g), len({h for i in g for h in where[i]})) for g in seg.groups)


def closest(seg: SegmentInfo, net: Devnet, names: list[str]) -> str:
    x = int.from_bytes(seg.segment_id, "big")
    return min(names, key=lambda n: int(net.id_of(n), 16) ^ x)


def views(net: Devnet, seg: SegmentInfo) -> str:
    """What the running hosts say about ``seg`` (for failure messages)."""
    sid = seg.segment_id.hex()
    lines = [f"placement: {net.placement(seg)}; dead {sorted(net.dead)}, frozen {sorted(net.frozen)}"]
    for n, r in net.reports().items():
        for s in r["segments"]:
            if s["segment"] == sid:
                lines.append(f"{n}: {s['healthy']}/{s['n']} missing {s['missing']} grace {s['grace']} "
                             f"{s['action']} leader {net.name_of(s['leader']) if s['leader'] else None}")
        if r["counters"] or r["active"]:
            lines.append(f"{n}: counters {r['counters']} active {r['active']} "
                         f"events {[(e['segment'][:8], e['ok'], e['error']) for e in r['events']]}")
    return "\n".join(lines)


def repair_counters(reports: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {n: r["counters"] for n, r in reports.items() if r["counters"] or r["events"]}


# -- the tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_files(devnet: Devnet) -> dict[str, SegmentInfo]:
    """File A (for the grace test) and file D (for the leader test), 512 KiB each:
    one segment of 8 shares of 128 KiB. (The owner's node, which holds no
    shares, stays up until the files of the last test are put.)"""
    a, d = put_files(devnet, [512 * KiB, 512 * KiB])
    return {"A": a, "D": d}


def test_the_devnet_flags_reach_every_node(devnet: Devnet) -> None:
    """--repair-claim-ttl and --repair-rate land in each node's config and its repairer."""
    for n in NAMES:
        cfg = json.loads((devnet.data(n) / "config.json").read_text())
        assert (cfg["repair_interval"], cfg["repair_grace"]) == (INTERVAL, GRACE)
        assert (cfg["repair_claim_ttl"], cfg["repair_rate"]) == (CLAIM_TTL, RATE)
    for n, rep in devnet.reports().items():
        assert (rep["interval"], rep["grace"], rep["claim_ttl"], rep["rate"]) == (
            INTERVAL, GRACE, CLAIM_TTL, RATE), n


def test_a_host_back_within_the_grace_period_triggers_no_repair(
        devnet: Devnet, first_files: dict[str, SegmentInfo]) -> None:
    seg = first_files["A"]
    sid = seg.segment_id.hex()
    where = assert_placed_once(devnet, seg, want_all=True)
    stopped = sorted(hs[0] for hs in where.values())[:3]  # 5 of 8 left: below threshold 6
    lost = sorted(i for i, hs in where.items() if hs[0] in stopped)
    watchers = [hs[0] for hs in where.values() if hs[0] not in stopped]
    t0 = time.monotonic()
    for n in stopped:
        devnet.freeze(n)
    try:
        # the watchers notice: probes of a stopped host time out (5 s), its
        # shares are counted healthy only because of the grace period
        def noticed() -> list[str]:
            return [n for n, r in devnet.reports(watchers).items()
                    for s in r["segments"] if s["segment"] == sid and set(lost) <= set(s["grace"])]
        seen = wait_for("the watchers to see the stopped hosts fail",
                        GRACE - 0.5 - (time.monotonic() - t0), noticed, 0.2)
        noticed_after = time.monotonic() - t0
    finally:
        for n in stopped:
            devnet.thaw(n)
    stopped_for = time.monotonic() - t0
    assert stopped_for < GRACE, stopped_for
    # wait past the moment they would have counted as lost, until all is well again
    time.sleep(max(0.0, noticed_after + GRACE + 2 * INTERVAL - (time.monotonic() - t0)))

    def calm() -> bool:
        reps = devnet.reports(watchers + stopped)
        views = [s for r in reps.values() for s in r["segments"] if s["segment"] == sid]
        return len(reps) == 8 and all(s["healthy"] == 8 and not s["grace"] for s in views)
    wait_for("every holder to see the segment healthy", 15, calm,
             explain=lambda: views(devnet, seg))
    reps = devnet.reports()
    assert len(reps) == NODES
    assert repair_counters(reps) == {}, repair_counters(reps)  # no claim, no byte moved
    assert not any(r["active"] for r in reps.values())
    assert len(seen) >= 1 and stopped_for < GRACE
    assert devnet.placement(seg) == where  # nothing regenerated, nothing moved


def test_a_leader_frozen_mid_repair_is_replaced_and_places_nothing_twice(
        devnet: Devnet, first_files: dict[str, SegmentInfo]) -> None:
    seg = first_files["D"]
    sid = seg.segment_id.hex()
    where = assert_placed_once(devnet, seg, want_all=True)
    holders = [hs[0] for hs in where.values()]
    x = int.from_bytes(seg.segment_id, "big")
    victims = sorted(holders, key=lambda n: int(devnet.id_of(n), 16) ^ x)[-3:]  # the farthest
    leader = closest(seg, devnet, [h for h in holders if h not in victims])
    devnet.kill(victims)

    def mid_repair() -> dict[str, Any] | None:
        rep = devnet.reports([leader]).get(leader)
        act = (rep or {}).get("active", {}).get(sid)
        # claimed, shares fetched and regenerated, at most one placed: left
        # below the threshold (5 of 8 once its own share counts as lost too)
        if act and act["phase"] == "placing" and len(act["placed"]) <= 1:
            return act
        done = [e for e in (rep or {}).get("events", []) if e["segment"] == sid]
        assert not done, f"{leader} finished before it could be caught mid-repair: {done}"
        return None
    act = wait_for(f"leader {leader} to be mid-repair", GRACE + 30, mid_repair, 0.05)
    devnet.freeze(leader)
    frozen_at = time.time()
    assert act["claim_expires"] > act["started"]

    # another holder takes over once the leader has been silent past the grace
    # period; by then the leader's claim has expired
    others = [n for n in devnet.up() if n != leader]

    def taken_over() -> list[tuple[str, dict[str, Any]]]:
        return [(n, e) for n, r in devnet.reports(others).items() for e in r["events"]
                if e["segment"] == sid and e["ok"]]
    done = wait_for("another node to finish the repair", 5 + 2 * GRACE + 45, taken_over,
                    explain=lambda: views(devnet, seg))
    assert len(done) == 1, done  # one successor, one repair
    successor, ev = done[0]
    assert ev["leader"] == devnet.id_of(successor)
    assert ev["started"] >= act["claim_expires"], (ev, act)
    assert ev["started"] >= frozen_at + GRACE - 1, (ev, frozen_at)

    # the old leader wakes up in the middle of its placements
    devnet.thaw(leader)

    def leader_done() -> list[dict[str, Any]]:
        rep = devnet.reports([leader]).get(leader)
        if rep is None or sid in rep["active"]:
            return []
        return [e for e in rep["events"] if e["segment"] == sid]
    wait_for(f"{leader} to end its repair", 30, leader_done)
    # the successor re-created the leader's share while it was silent: that copy
    # is the only one allowed next to the leader's own
    assert_placed_once(devnet, seg, ignore={leader})
    assert held(devnet, seg) == 8

    # no segment is left below its threshold (the kills hit other files too,
    # and the metadata blobs: manifests and the owner's index, mirrored k = 1)
    segs = devnet.segments_on_disk()
    assert any(s.k == 1 for s in segs.values())
    wait_for("every segment back at or above its threshold", 40,
             lambda: all(held(devnet, s) >= s.threshold for s in segs.values()),
             explain=lambda: "\n".join(views(devnet, s) for s in segs.values()
                                       if held(devnet, s) < s.threshold))
    for s in segs.values():  # (the leader held shares of others, re-created while it was silent)
        if s.segment_id != seg.segment_id and s.k > 1:
            assert_placed_once(devnet, s, ignore={leader})


@pytest.fixture(scope="module")
def two_segments_lost(devnet: Devnet) -> dict[str, Any]:
    """Two files put on the hosts alive now, the owner's node stopped, then three
    hosts holding shares of both killed at once; wait until both are whole."""
    b1, b2 = put_files(devnet, [96 * KiB, 64 * KiB])
    owner_stop(devnet)
    owner = devnet.data("owner")
    assert not is_running(owner) and devnet.owner_proc is not None
    assert not alive(devnet.owner_proc.pid)
    w1, w2 = devnet.placement(b1), devnet.placement(b2)
    both = sorted({hs[0] for hs in w1.values()} & {hs[0] for hs in w2.values()})
    assert len(both) >= 3, (w1, w2)  # 8 + 8 shares on at most 13 hosts
    victims = both[:3]
    t0 = time.time()
    devnet.kill(victims)
    wait_for("both segments back to 8 shares on 8 hosts", GRACE + 40,
             lambda: held(devnet, b1) == 8 and held(devnet, b2) == 8)
    took = time.time() - t0
    sids = {b1.segment_id.hex(), b2.segment_id.hex()}

    def logged() -> dict[str, list[dict[str, Any]]] | None:
        """(A leader logs its repair once its last upload is acknowledged:
        just after the share is on the new host's disk.)"""
        evs = {n: [e for e in r["events"] if e["ok"]] for n, r in devnet.reports().items()}
        done = {e["segment"] for es in evs.values() for e in es}
        return evs if sids <= done else None
    events = wait_for("the leaders to log their repairs", 20, logged,
                      explain=lambda: views(devnet, b1) + "\n" + views(devnet, b2))
    return {"segments": (b1, b2), "victims": victims, "before": (w1, w2), "events": events,
            "took": took, "owner_running": is_running(owner)}


def test_killed_hosts_are_repaired_without_the_owner(
        devnet: Devnet, two_segments_lost: dict[str, Any]) -> None:
    got = two_segments_lost
    assert not got["owner_running"]
    for seg, before in zip(got["segments"], got["before"]):
        lost = [i for i, hs in before.items() if set(hs) & set(got["victims"])]
        assert len(lost) == 3  # 5 of 8 left: below the threshold of 6
        where = assert_placed_once(devnet, seg, want_all=True)
        for i in lost:  # the lost shares live again, on hosts that held none of the segment
            assert where[i][0] not in {hs[0] for hs in before.values()}, (i, where, before)
        for i in set(range(8)) - set(lost):
            assert where[i] == before[i]
    assert got["took"] >= GRACE  # lazy: not before the grace period
    assert not is_running(devnet.data("owner"))


def test_two_segments_losing_hosts_at_once_are_both_repaired(
        devnet: Devnet, two_segments_lost: dict[str, Any]) -> None:
    got = two_segments_lost
    by_seg: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for n, evs in got["events"].items():
        for e in evs:
            by_seg.setdefault(e["segment"], []).append((n, e))
    for seg, before in zip(got["segments"], got["before"]):
        sid = seg.segment_id.hex()
        assert len(by_seg.get(sid, [])) == 1, by_seg.get(sid)  # one repair per segment
        name, ev = by_seg[sid][0]
        survivors = [hs[0] for hs in before.values() if hs[0] not in got["victims"]]
        assert name == closest(seg, devnet, survivors)  # the deterministic leader
        lost = sorted(i for i, hs in before.items() if set(hs) & set(got["victims"]))
        assert sorted(int(i) for i in ev["placed"]) == lost and len(lost) == 3
        # On a loaded box a live holder may miss probes past the grace period
        # and be counted missing too; the leader asks it again before placing,
        # finds its share and places nothing twice: it still holds it.
        extra = set(ev["missing"]) - set(lost)
        assert set(lost) <= set(ev["missing"]), ev
        now = devnet.placement(seg)
        assert all(now[i] == before[i] for i in extra), (extra, now, before)
        # the leader holds one share: it downloads k - 1 = 3 and uploads the 3 lost
        size = share_size(devnet, seg)
        assert (ev["bytes_down"], ev["bytes_up"]) == (3 * size, 3 * size), (ev, size)


def test_node_logs_have_no_tracebacks(devnet: Devnet) -> None:
    """(Last: the module's teardown checks the logs again up to the shutdown.)"""
    for n in NAMES + ["owner"]:
        log = (devnet.data(n) / "node.log").read_text(errors="replace")
        assert not tracebacks(log), (n, tracebacks(log))
