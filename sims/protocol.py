"""Protocol-level simulation: the real node program under churn, in virtual time.

Every simulated node is a real :class:`xcore.node.NodeService` — the DHT
core, host service, transfer protocol, contracts, auditor and repairer — on
one :class:`xcore.net.vloop.VirtualTimeLoop`, talking over an in-memory
:class:`xcore.net.vloop.SimNet` with latency, loss, bandwidth and
partitions. Nothing is re-implemented for the simulation: the only
differences from a real deployment are what :class:`xcore.node.NodeEnv`
injects (virtual clock, seeded randomness, in-memory network, disk work
inline instead of in threads).

A run: ``nodes`` hosts start and join; an owner (a short-lived client, not a
host) uploads ``files`` random files; then the churn model takes hosts down
and (unless the departure is permanent) back up; correlated failures kill a
fraction of hosts at once; dishonest hosts (fault injection) drop data or
answer audits falsely. Every ``sample`` seconds the runner records, from the
ground truth on the hosts' disks: segments below the repair threshold,
segments lost (fewer than k live shares), repair bytes, lookup hops, audit
outcomes. At the end a fresh client tries to fetch every file.

Metrics files hold only virtual-time quantities, so the same seed gives
byte-identical files; wall-clock timings go to the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import tempfile
import time as _wall  # wall-clock timing for the log only, never in metrics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from xcore.bootstrap import format_seed
from xcore.client.files import Client
from xcore.client.keys import OwnerKeys
from xcore.contracts.segments import segment_id
from xcore.errors import XcoreError
from xcore.net.aio import wait_op
from xcore.net.vloop import SimNet, VirtualTimeLoop
from xcore.node import NodeEnv, NodeService, init_node
from xcore.shard.erasure import Redundancy

HOUR = 3600.0
DAY = 24 * HOUR
T = TypeVar("T")


@dataclass
class ProtocolConfig:
    nodes: int = 20
    duration: float = 1 * DAY
    sample: float = HOUR
    files: int = 2
    file_size: int = 2 << 20
    redundancy: str = "4/8"
    capacity: int = 256 << 20
    latency: tuple[float, float] = (0.005, 0.080)
    loss: float = 0.0
    bandwidth: float = 12.5e6
    churn: dict[str, Any] = field(default_factory=lambda: {"model": "none"})
    correlated: list[dict[str, Any]] = field(default_factory=list)
    dishonest_fraction: float = 0.0
    dishonest_mode: str = "delete"
    repair_interval: float = 300.0
    repair_grace: float = 1800.0
    audit_interval: float = 1800.0
    difficulty: int = 2

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "ProtocolConfig":
        from xcore.errors import ConfigError
        sim = dict(doc.get("sim", {}))
        net = dict(doc.get("network", {}))
        data = dict(doc.get("data", {}))
        rep = dict(doc.get("repair", {}))
        aud = dict(doc.get("audit", {}))
        dis = dict(doc.get("dishonest", {}))
        try:
            cfg = cls(
                nodes=int(sim.get("nodes", 20)),
                duration=float(sim.get("duration_days", 1)) * DAY,
                sample=float(sim.get("sample_hours", 1)) * HOUR,
                files=int(data.get("files", 2)),
                file_size=int(float(data.get("file_size_mib", 2)) * (1 << 20)),
                redundancy=str(data.get("redundancy", "4/8")),
                capacity=int(float(data.get("capacity_mib", 256)) * (1 << 20)),
                latency=tuple(float(x) / 1000 for x in net.get("latency_ms", [5, 80])),  # type: ignore[arg-type]
                loss=float(net.get("loss", 0.0)),
                bandwidth=float(net.get("bandwidth_mbps", 100)) * 1e6 / 8,
                churn=dict(doc.get("churn", {"model": "none"})),
                correlated=list(doc.get("events", [])),
                dishonest_fraction=float(dis.get("fraction", 0.0)),
                dishonest_mode=str(dis.get("mode", "delete")),
                repair_interval=float(rep.get("interval_minutes", 5)) * 60,
                repair_grace=float(rep.get("grace_minutes", 30)) * 60,
                audit_interval=float(aud.get("interval_minutes", 30)) * 60,
                difficulty=int(sim.get("difficulty", 2)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad protocol scenario: {exc}") from exc
        Redundancy.parse(cfg.redundancy)
        if cfg.nodes < 2 or cfg.duration <= 0 or cfg.sample <= 0:
            raise ConfigError("scenario needs nodes >= 2, duration > 0, sample > 0")
        if cfg.dishonest_mode not in ("delete", "corrupt", "hashes", "nonce"):
            raise ConfigError(f"unknown dishonest mode {cfg.dishonest_mode!r}")
        return cfg


@dataclass
class _Host:
    name: str
    ip: str
    data: Path
    svc: NodeService | None = None
    up: bool = False
    gone: bool = False  # departed for good
    fault: str = ""
    past: dict[str, int] = field(default_factory=dict)  # counters of earlier processes


# The node counters the metrics add up, and the part of a node keeping each.
# A node restarted by churn is a new process whose counters start at zero;
# the host keeps its earlier processes' totals (``_Host.past``), so the
# metrics stay cumulative.
CARRIED = (("repairer", "repairs"), ("repairer", "repair_bytes"),
           ("auditor", "audits_passed"), ("auditor", "audits_failed"), ("dht", "lookups"))


def node_counts(svc: NodeService | None) -> dict[str, int]:
    out = dict.fromkeys((name for _, name in CARRIED), 0)
    for part, name in CARRIED:
        obj = getattr(svc, part, None)
        if obj is not None:
            out[name] = int(obj.counters.get(name, 0))
    return out


def host_counts(h: _Host) -> dict[str, int]:
    """``h``'s counters over all its processes so far (a down host's last one included)."""
    now = node_counts(h.svc)
    return {name: now[name] + h.past.get(name, 0) for name in now}


class ProtocolSim:
    def __init__(self, cfg: ProtocolConfig, seed: int, workdir: Path,
                 log: Callable[[str], None] = lambda m: None) -> None:
        self.cfg = cfg
        self.seed = seed
        self.workdir = Path(workdir)
        self.log = log
        self.rng = random.Random(seed)
        self.loop = VirtualTimeLoop()
        self.start = self.loop.time()
        lo, hi = cfg.latency
        self.net = SimNet(self.loop, random.Random(seed * 7 + 1),
                          latency=lambda a, b, r: r.uniform(lo, hi), loss=cfg.loss,
                          bandwidth=cfg.bandwidth)
        self.hosts: list[_Host] = []
        self.rows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.segments: list[tuple[bytes, tuple[bytes, ...], int]] = []  # id, shares, k
        self.file_ids: list[tuple[bytes, str]] = []
        self.red = Redundancy.parse(cfg.redundancy)

    # -- nodes ------------------------------------------------------------------

    def _env(self, host: str, salt: int) -> NodeEnv:
        r = random.Random(f"{self.seed}/{host}/{salt}")
        return NodeEnv(clock=self.loop.time, rng=r, token_bytes=r.randbytes,
                       net=self.net.for_host(host), threads=False, control=False,
                       save_interval=6 * HOUR)

    async def _start(self, h: _Host, salt: int) -> None:
        if h.svc is not None:  # a restart: keep what the last process counted
            h.past = host_counts(h)
            h.svc = None
        self.net.revive_host(h.ip)
        svc = NodeService(h.data, env=self._env(h.ip, salt))
        await svc.start()
        try:
            await svc.join(timeout=120)
        except XcoreError as exc:
            self.log(f"{h.name} join: {exc}")
        svc.announce()
        h.svc, h.up = svc, True

    def _kill(self, h: _Host, permanent: bool) -> None:
        if h.svc is not None:
            h.svc.kill()
        self.net.kill_host(h.ip)
        h.up = False
        h.gone = permanent

    async def setup(self) -> None:
        cfg = self.cfg
        n_bad = int(round(cfg.dishonest_fraction * cfg.nodes))
        bad = set(self.rng.sample(range(1, cfg.nodes), min(n_bad, cfg.nodes - 1)))
        first_seed = None
        for i in range(cfg.nodes):
            ip = f"10.{i // 200}.{i % 200}.1"
            h = _Host(f"h{i:04d}", ip, self.workdir / f"h{i:04d}",
                      fault=cfg.dishonest_mode if i in bad else "")
            tb = random.Random(f"{self.seed}/id/{i}").randbytes
            extra: dict[str, Any] = {"audit_interval": cfg.audit_interval, "audit_rate": 4.0}
            if h.fault:
                extra["fault"] = h.fault
            init_node(h.data, host=ip, port=4000, capacity=cfg.capacity,
                      bootstrap=[first_seed] if first_seed else [], difficulty=cfg.difficulty,
                      repair_interval=cfg.repair_interval, repair_grace=cfg.repair_grace,
                      token_bytes=tb, extra=extra)
            await self._start(h, 0)
            if first_seed is None and h.svc is not None and h.svc.address is not None:
                first_seed = format_seed(h.svc.address, h.svc.identity.node_id)
            self.hosts.append(h)
        await asyncio.sleep(60)
        for h in self.hosts:
            if h.svc:
                h.svc.announce()
        await asyncio.sleep(60)
        self.seed_line = first_seed or ""

    async def _client(self, name: str) -> tuple[NodeService, Client]:
        d = self.workdir / name
        if not (d / "config.json").exists():
            init_node(d, host=f"10.250.{len(self.events) % 200}.9", port=4100, capacity=0,
                      bootstrap=[self.seed_line] + [
                          format_seed(h.svc.address, h.svc.identity.node_id)
                          for h in self.hosts[:8] if h.up and h.svc and h.svc.address],
                      difficulty=self.cfg.difficulty,
                      token_bytes=random.Random(f"{self.seed}/{name}").randbytes)
        from xcore.node import load_config
        ip = load_config(d)["host"]
        svc = NodeService(d, ephemeral=True, env=self._env(ip, len(self.events)))
        await svc.start()
        await svc.join(timeout=120)
        keys = OwnerKeys(hashlib.sha256(f"owner/{self.seed}".encode()).digest())
        return svc, Client(svc, keys, timeout=60.0)

    async def upload(self) -> None:
        svc, client = await self._client("owner")
        try:
            for j in range(self.cfg.files):
                path = self.workdir / f"file{j}.bin"
                r = random.Random(f"{self.seed}/file/{j}")
                path.write_bytes(r.randbytes(self.cfg.file_size))
                res = await client.put(path, self.red, name=path.name)
                fid = bytes.fromhex(res["file_id"])
                self.file_ids.append((fid, hashlib.sha256(path.read_bytes()).hexdigest()))
                man = await client.manifest(await client.find_entry(fid))
                for seg in man.segments:
                    hashes = tuple(s.hash for s in seg.shares)
                    self.segments.append((segment_id(list(hashes)), hashes, man.k))
                path.unlink()
        finally:
            client.close()
            await svc.stop()
        self.event("uploaded", files=len(self.file_ids), segments=len(self.segments))

    # -- churn ---------------------------------------------------------------------

    def event(self, kind: str, **kw: Any) -> None:
        self.events.append({"t": round(self.loop.time() - self.start, 3), "event": kind, **kw})

    def _churn_plan(self) -> list[tuple[float, str, int]]:
        """(time, "down"|"up"|"gone", host) for the whole run.

        Uses the same churn models as the model-level simulator
        (:mod:`sims.churn`): each host has a lifetime (then it leaves for
        good, shares lost) within which sessions and downtimes alternate;
        hosts start in the stationary state (residual lifetime). A trace
        replays measured events; ``[[events]]`` add correlated failures.
        """
        import numpy as np
        from sims.churn import ChurnModel, Trace, events_from_config
        spec = dict(self.cfg.churn)
        model = None if spec.get("model", "none") == "none" else ChurnModel.from_config(spec)
        plan: list[tuple[float, str, int]] = []
        gen = np.random.default_rng(self.seed)
        t0 = self.loop.time()
        n = len(self.hosts)
        if isinstance(model, Trace):
            for t, kind, i in model.events(n, self.cfg.duration):
                plan.append((t0 + float(t), str(kind), int(i)))
        elif model is not None:
            lives = model.sample_residual_lifetimes(gen, n)
            for i in range(n):
                end = min(float(lives[i]), self.cfg.duration)
                t = 0.0
                while model.transient:
                    t += float(model.sample_sessions(gen, 1, t)[0])
                    if t >= end:
                        break
                    plan.append((t0 + t, "down", i))
                    t += float(model.sample_downtimes(gen, 1, t)[0])
                    if t >= end:
                        break
                    plan.append((t0 + t, "up", i))
                if lives[i] < self.cfg.duration:
                    plan.append((t0 + float(lives[i]), "gone", i))
        for ev in events_from_config(self.cfg.correlated):
            k = max(1, int(round(ev.fraction * n)))
            victims = sorted(self.rng.sample(range(n), min(k, n)))
            for i in victims:
                plan.append((t0 + float(ev.at), "gone" if ev.permanent else "down", i))
                if not ev.permanent:
                    plan.append((t0 + float(ev.at) + float(ev.duration), "up", i))
        plan.sort(key=lambda e: (e[0], e[2], e[1]))
        return plan

    async def _apply(self, kind: str, i: int) -> None:
        h = self.hosts[i]
        if h.gone:
            return
        if kind in ("down", "gone") and h.up:
            self._kill(h, permanent=(kind == "gone"))
            self.event(kind, host=h.name)
        elif kind == "gone":
            h.gone = True
            self.event(kind, host=h.name)
        elif kind == "up" and not h.up:
            await self._start(h, len(self.events))
            self.event("up", host=h.name)

    # -- metrics ---------------------------------------------------------------------

    def holders(self) -> list[list[list[int]]]:
        """Ground truth from the hosts' disks: for each segment, for each share
        index, the hosts (indices into ``self.hosts``) that are up and hold it.
        A dishonest host in ``delete`` mode keeps the file but will not serve
        it, so it counts as holding nothing."""
        where: dict[bytes, list[int]] = {}
        for i, h in enumerate(self.hosts):
            if h.up and h.svc is not None and h.svc.host is not None and h.fault != "delete":
                for s in h.svc.host.store.iter_shares():
                    where.setdefault(s, []).append(i)
        return [[where.get(s, []) for s in shares] for _, shares, _ in self.segments]

    def ground_truth(self) -> dict[str, int]:
        below = lost = 0
        thr = self.red.repair_threshold
        for (_, _, k), held in zip(self.segments, self.holders()):
            live = sum(1 for hs in held if hs)
            if live < k:
                lost += 1
            if live < thr:
                below += 1
        return {"segments_below_threshold": below, "segments_lost": lost}

    def sample_row(self) -> dict[str, Any]:
        up = [h for h in self.hosts if h.up and h.svc is not None]
        total = dict.fromkeys((name for _, name in CARRIED), 0)
        for h in self.hosts:
            for name, n in host_counts(h).items():
                total[name] += n
        hops = sorted(x for h in up for x in h.svc.dht.lookup_hops)  # type: ignore[union-attr]
        row = {"t_hours": round((self.loop.time() - self.start) / HOUR, 4),
               "hosts_up": len(up), **self.ground_truth(), **total,  # (CARRIED's order)
               "hops_p50": hops[len(hops) // 2] if hops else 0,
               "hops_p90": hops[int(len(hops) * 0.9)] if hops else 0,
               "datagrams": self.net.stats.datagrams, "stream_bytes": self.net.stats.stream_bytes}
        return row

    async def fetch_all(self) -> tuple[int, int]:
        svc, client = await self._client("reader")
        ok = corrupt = 0
        try:
            for fid, want in self.file_ids:
                out = self.workdir / "fetched.bin"
                try:
                    res = await client.get(fid, out)
                    if res["sha256"] == want:
                        ok += 1
                    else:
                        corrupt += 1
                except XcoreError as exc:
                    self.event("fetch_failed", file=fid.hex(), error=str(exc)[:120])
                if out.exists():
                    out.unlink()
        finally:
            client.close()
            await svc.stop()
        return ok, corrupt

    async def run(self) -> dict[str, Any]:
        await self.setup()
        await self.upload()
        plan = self._churn_plan()
        end = self.start + (self.loop.time() - self.start) + self.cfg.duration
        next_sample = self.loop.time()
        pi = 0
        while True:
            now = self.loop.time()
            if now >= next_sample:
                self.rows.append(self.sample_row())
                next_sample = now + self.cfg.sample
            if now >= end:
                break
            nxt = min(next_sample, end, plan[pi][0] if pi < len(plan) else end)
            if nxt > now:
                await asyncio.sleep(nxt - now)
            while pi < len(plan) and plan[pi][0] <= self.loop.time():
                _, kind, i = plan[pi]
                pi += 1
                await self._apply(kind, i)
        ok, corrupt = await self.fetch_all()
        summary = {"seed": self.seed, "nodes": self.cfg.nodes, "files": len(self.file_ids),
                   "files_ok": ok, "files_lost": len(self.file_ids) - ok - corrupt,
                   "files_corrupt": corrupt, "segments": len(self.segments),
                   "virtual_hours": round(self.cfg.duration / HOUR, 3),
                   "final": self.rows[-1] if self.rows else {},
                   "events": len(self.events)}
        self.shutdown()
        return summary

    def shutdown(self) -> None:
        """Kill every node still running (the end of a run; metrics are taken)."""
        for h in self.hosts:
            if h.up and h.svc is not None:
                h.svc.kill()
                h.up = False


def run_sim(cfg: ProtocolConfig, seed: int, main: Callable[[ProtocolSim], Awaitable[T]],
            log: Callable[[str], None] = lambda m: None) -> tuple[ProtocolSim, T]:
    """Run ``main(sim)`` on a fresh :class:`ProtocolSim` in its own virtual-time
    loop and a temporary work directory; then kill every node and clean up."""
    work = Path(tempfile.mkdtemp(prefix="xcore-sim-"))
    sim = ProtocolSim(cfg, seed, work, log=log)
    try:
        asyncio.set_event_loop(sim.loop)
        result = sim.loop.run_until_complete(main(sim))
        sim.shutdown()
        # let cancelled tasks finish so the loop closes cleanly
        pending = [t for t in asyncio.all_tasks(sim.loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            sim.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    finally:
        sim.loop.close()
        asyncio.set_event_loop(None)
        shutil.rmtree(work, ignore_errors=True)
    return sim, result


def run_protocol(doc: dict[str, Any], seed: int, out: Path,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    cfg = ProtocolConfig.from_dict(doc)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall0 = _wall.monotonic()
    sim, summary = run_sim(cfg, seed, ProtocolSim.run, log=log)
    write_metrics(out, sim.rows, sim.events, summary)
    log(f"protocol simulation: {cfg.nodes} nodes, {cfg.duration / HOUR:.1f} virtual hours "
        f"in {_wall.monotonic() - wall0:.1f} s wall")
    return summary


def write_metrics(out: Path, rows: list[dict[str, Any]], events: list[dict[str, Any]],
                  summary: dict[str, Any]) -> None:
    import csv
    if rows:
        with open(out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    (out / "events.json").write_text(json.dumps(events, indent=1, sort_keys=True) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plot_rows(out, rows)


def plot_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [r["t_hours"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(t, [r["hosts_up"] for r in rows], label="hosts up")
    axes[0].set_ylabel("hosts")
    axes[1].plot(t, [r["segments_below_threshold"] for r in rows], label="below threshold")
    axes[1].plot(t, [r["segments_lost"] for r in rows], label="lost")
    axes[1].set_ylabel("segments")
    axes[2].plot(t, [r["repair_bytes"] / 1e6 for r in rows], label="repair MB (cumulative)")
    axes[2].set_ylabel("MB")
    axes[2].set_xlabel("virtual hours")
    for ax in axes:
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "protocol.png", dpi=90, metadata={"Software": None})
    plt.close(fig)
