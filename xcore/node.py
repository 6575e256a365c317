"""The node program: one OS process that is a DHT peer (and, as later parts
land, a host, a client and an auditor).

This is the I/O shell around the sans-IO cores: it reads the data directory,
owns the sockets (through :mod:`xcore.net.aio`), the wall clock and the
system RNG, saves state atomically, and serves the control socket.

Data directory layout::

    config.json      operator settings (host, port, capacity, bootstrap, difficulty)
    identity.key     Ed25519 seed, mode 0600 (xcore.crypto.identity)
    dht.state        msgpack snapshot: contacts, records, own published records
    control.sock     control socket while the node runs (xcore.control)
    node.pid         pid of the running node
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from xcore.bootstrap import Seed, format_address, load_bootstrap, parse_seed
from xcore.codec import pack, unpack_bounded
from xcore.control import ControlServer, is_running, with_progress
from xcore.crypto.identity import Identity
from xcore.dht.protocol import DHTConfig, DHTNode, new_record
from xcore.dht.records import dht_key
from xcore.errors import ConfigError, NoPeers, RecordRejected, RemoteProtocolError, XcoreError
from xcore.fsutil import atomic_write
import xcore.kinds  # noqa: F401  registers every record kind this node accepts
from xcore.contracts.contract import SignedContract
from xcore.contracts.hosts import host_record, loc_contract, loc_key, loc_record
from xcore.net.aio import DatagramDriver, clock_from_env, open_udp, wait_op
from xcore.net.streams import TCP
from xcore.shard.host import HostService
from xcore.shard.throttle import TransferLimits

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
KEY_NAME = "identity.key"
STATE_NAME = "dht.state"
PID_NAME = "node.pid"
CONFIG_VERSION = 1
DEFAULT_DIFFICULTY = 12
SAVE_INTERVAL = 30.0
ANNOUNCE_INTERVAL = 60.0
DEFAULT_REPAIR_INTERVAL = 60.0
DEFAULT_REPAIR_GRACE = 900.0
DEFAULT_REPAIR_CLAIM_TTL = 120.0  # seconds a leader's claim holds unless renewed
DEFAULT_REPAIR_RATE = 50e6  # bytes/s of repair traffic per node
DEFAULT_AUDIT_INTERVAL = 300.0
DEFAULT_AUDIT_RATE = 4.0  # audits per contract per day
DEFAULT_EXPIRE_INTERVAL = 3600.0  # how often a host drops shares whose grants all expired
MAX_STATE_BYTES = 256 << 20
PACKAGE_BOOTSTRAP = Path(__file__).resolve().parent.parent / "bootstrap_nodes.txt"

UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2,
         "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40,
         "tb": 1000**4, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """'10GiB', '500MB', '1g', '1048576' -> bytes."""
    s = text.strip().lower().replace(" ", "")
    i = 0
    while i < len(s) and (s[i].isdigit() or s[i] == "."):
        i += 1
    num, unit = s[:i], s[i:]
    if not num or unit not in UNITS:
        raise ConfigError(f"bad size {text!r}: use e.g. 500MiB, 10GB, 1TiB")
    try:
        value = float(num) * UNITS[unit]
    except ValueError:
        raise ConfigError(f"bad size {text!r}") from None
    if value < 0 or value > 1 << 60:
        raise ConfigError(f"size {text!r} out of range")
    return int(value)


def load_config(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / CONFIG_NAME
    try:
        if path.stat().st_size > 1 << 20:
            raise ConfigError(f"{path} is larger than 1 MiB")
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{data_dir} is not a node data directory: run `xcore node init --data {data_dir}`") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != CONFIG_VERSION:
        raise ConfigError(f"{path}: unknown config version")
    for key, typ in (("host", str), ("port", int), ("capacity", int), ("bootstrap", list),
                     ("difficulty", int)):
        if not isinstance(doc.get(key), typ):
            raise ConfigError(f"{path}: '{key}' missing or not a {typ.__name__}")
    return doc


def init_node(data_dir: Path, *, host: str = "127.0.0.1", port: int = 0, capacity: int = 0,
              bootstrap: list[str] | None = None, difficulty: int = DEFAULT_DIFFICULTY,
              diversity: bool = True, force: bool = False,
              repair_interval: float = DEFAULT_REPAIR_INTERVAL,
              repair_grace: float = DEFAULT_REPAIR_GRACE,
              token_bytes: Callable[[int], bytes] = secrets.token_bytes,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create a node data directory: identity (solving the ID puzzle) and config."""
    data_dir = Path(data_dir)
    if (data_dir / CONFIG_NAME).exists() and not force:
        raise ConfigError(f"{data_dir} is already initialised")
    for b in bootstrap or []:
        parse_seed(b)  # validate early
    if not 0 <= port <= 65535:
        raise ConfigError("port must be 0-65535")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    key_path = data_dir / KEY_NAME
    if key_path.exists():
        identity = Identity.load(key_path)  # --force rewrites the config, never the identity
    else:
        identity = Identity.generate(difficulty, token_bytes)
        identity.save(key_path)
    config = {"version": CONFIG_VERSION, "host": host, "port": port, "capacity": capacity,
              "bootstrap": list(bootstrap or []), "difficulty": difficulty,
              "diversity": diversity, "repair_interval": float(repair_interval),
              "repair_grace": float(repair_grace), **(extra or {})}
    atomic_write(data_dir / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return {"node_id": identity.node_id.hex(), "data": str(data_dir), **config}


def seeds_for(data_dir: Path, config: dict[str, Any]) -> list[Seed]:
    """Seeds: config's --bootstrap values, else the data dir's
    bootstrap_nodes.txt, else the one shipped at the top of the package."""
    if config["bootstrap"]:
        return [parse_seed(b) for b in config["bootstrap"]]
    local = Path(data_dir) / "bootstrap_nodes.txt"
    if local.exists():
        return load_bootstrap(local)
    if PACKAGE_BOOTSTRAP.exists():
        return load_bootstrap(PACKAGE_BOOTSTRAP)
    return []


@dataclass
class NodeEnv:
    """What a node takes from the world: time, randomness, the network.

    Production uses the defaults (wall clock, the system RNG, real sockets).
    The protocol-level simulator passes a virtual clock, seeded generators and
    an in-memory network (:class:`xcore.net.vloop.SimNet`), and runs disk work
    inline instead of in threads.
    """

    clock: Callable[[], float] = field(default_factory=clock_from_env)  # XCORE_CLOCK_SKEW
    rng: random.Random = field(default_factory=random.SystemRandom)
    token_bytes: Callable[[int], bytes] = secrets.token_bytes
    net: Any = None  # has open_udp/open_connection/start_server; None: real sockets
    threads: bool = True
    control: bool = True  # serve the control socket and write node.pid
    save_interval: float = SAVE_INTERVAL


class NodeService:
    """A running node (long-lived with :meth:`serve_forever`, or a
    short-lived client: ``async with NodeService(dir, ephemeral=True)``)."""

    def __init__(self, data_dir: Path, *, ephemeral: bool = False,
                 extra_seeds: list[Seed] | None = None, env: NodeEnv | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.config = load_config(self.data_dir)
        self.identity = Identity.load(self.data_dir / KEY_NAME)
        self.ephemeral = ephemeral
        self.extra_seeds = extra_seeds or []
        self.env = env or NodeEnv()
        self.clock = self.env.clock
        self.rng = self.env.rng
        self.streams: Any = self.env.net if self.env.net is not None else TCP
        dcfg = DHTConfig(difficulty=self.config["difficulty"],
                         diversity=bool(self.config.get("diversity", True)),
                         client=ephemeral)
        self.dht = DHTNode(self.identity, config=dcfg, rng=self.rng, now=self.clock())
        self.driver: DatagramDriver | None = None
        self.address: tuple[str, int] | None = None
        self.control: ControlServer | None = None
        self._stop = asyncio.Event()
        self._saver: asyncio.Task[None] | None = None
        self.joined = False
        self.join_error: str | None = None
        self.host: HostService | None = None
        self.tcp_address: tuple[str, int] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self._expirer: asyncio.Task[None] | None = None
        self._repair_task: asyncio.Task[None] | None = None
        self.repairer: Any = None
        self._audit_task: asyncio.Task[None] | None = None
        self.auditor: Any = None
        self.reputation: Any = None

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        if not self.ephemeral and self.env.control and is_running(self.data_dir):
            raise ConfigError(f"a node is already running on {self.data_dir}")
        self._load_state()
        port = 0 if self.ephemeral else self.config["port"]
        opener = self.env.net.open_udp if self.env.net is not None else open_udp
        try:
            self.driver, self.address = await opener(self.dht, self.config["host"], port,
                                                     self.clock)
        except OSError as exc:
            raise ConfigError(f"cannot bind UDP {self.config['host']}:{port}: {exc.strerror}") from exc
        if not self.ephemeral:
            self.host = HostService(self.data_dir, self.identity, self.config["capacity"],
                                    clock=self.clock, token_bytes=self.env.token_bytes,
                                    fault=str(self.config.get("fault", "")),
                                    streams=self.streams, threads=self.env.threads,
                                    limits=TransferLimits.from_config(self.config))
            self.host.on_stored = self._share_stored
            self.host.on_deleted = self._share_deleted
            self.host.on_owner_deleted = self._contract_ended
            self.tcp_address = await self.host.start(self.config["host"], self.address[1])
            if self.config["port"] == 0:
                # keep the port the OS chose so peers find us after a restart
                self.config["port"] = self.address[1]
                atomic_write(self.data_dir / CONFIG_NAME,
                             (json.dumps(self.config, indent=2) + "\n").encode())
            if self.env.control:
                self.control = ControlServer(self.data_dir, self._handlers())
                await self.control.start()
                atomic_write(self.data_dir / PID_NAME, f"{os.getpid()}\n".encode())
            self._saver = asyncio.create_task(self._save_loop())
            self._announcer = asyncio.create_task(self._announce_loop())
            self._expirer = asyncio.create_task(self._expire_loop(
                float(self.config.get("expire_interval", DEFAULT_EXPIRE_INTERVAL))))
            from xcore.repairer import Repairer
            self.repairer = Repairer(
                self, interval=float(self.config.get("repair_interval", DEFAULT_REPAIR_INTERVAL)),
                grace=float(self.config.get("repair_grace", DEFAULT_REPAIR_GRACE)),
                claim_ttl=float(self.config.get("repair_claim_ttl", DEFAULT_REPAIR_CLAIM_TTL)),
                rate=float(self.config.get("repair_rate", DEFAULT_REPAIR_RATE)))
            self._repair_task = asyncio.create_task(self.repairer.run())
            from xcore.auditor import Auditor
            self.auditor = Auditor(
                self, interval=float(self.config.get("audit_interval", DEFAULT_AUDIT_INTERVAL)),
                rate=float(self.config.get("audit_rate", DEFAULT_AUDIT_RATE)))
            self.reputation = self.auditor.reputation
            self._audit_task = asyncio.create_task(self.auditor.run())
        log.info("node %s listening on %s", self.identity.node_id.hex(),
                 format_address(self.address))

    async def join(self, timeout: float = 30.0) -> int:
        seeds = [s for s in seeds_for(self.data_dir, self.config) + self.extra_seeds
                 if s[1] != self.identity.node_id and s[0] != self.address]
        assert self.driver is not None
        op = self.driver.call(lambda now: self.dht.join(seeds, now))
        try:
            n = await wait_op(op, timeout)
        except NoPeers as exc:
            self.join_error = str(exc)
            if not seeds:
                # the first node of a network has nobody to join: that's fine
                self.joined = True
                self.join_error = None
                return 0
            window = int(self.dht.config.replay_window)
            stale = self.dht.counters.get("dropped_stale", 0)
            hint = (f"; {stale} message(s) from peers were dropped as stale: this machine's "
                    f"clock is probably more than {window} s off"
                    if stale else
                    f"; peers also ignore a node whose clock is more than {window} s off")
            self.join_error = f"none of {len(seeds)} seed(s) answered{hint}"
            raise NoPeers(f"No peers could be reached: {self.join_error}.") from exc
        self.joined = True
        self.join_error = None
        return n

    async def serve_forever(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    def kill(self) -> None:
        """Die at once, as with SIGKILL (used by the simulator): tasks stop,
        nothing is saved; the network side is cut by the simulated network."""
        for task in (self._saver, self._announcer, self._expirer, self._repair_task,
                     self._audit_task):
            if task is not None:
                task.cancel()
        if self.driver is not None:
            self.driver.close()

    async def stop(self) -> None:
        tasks = [t for t in (self._saver, self._announcer, self._expirer, self._repair_task,
                             self._audit_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.host is not None:
            await self.host.close()
        self.save_state()
        if self.control is not None:
            await self.control.close()
        if self.driver is not None:
            self.driver.close()
        if not self.ephemeral and self.env.control:
            try:
                (self.data_dir / PID_NAME).unlink()
            except OSError:
                pass

    async def __aenter__(self) -> "NodeService":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- hosting ------------------------------------------------------------

    def announce(self) -> None:
        """Publish (or refresh) this node's host record."""
        if self.host is None or self.tcp_address is None or self.driver is None:
            return
        now = self.clock()
        rec = host_record(self.identity, self.tcp_address, self.config["capacity"],
                          self.host.store.free, self.dht.started, now)
        self.driver.call(lambda t: self.dht.publish(rec, t))

    async def _announce_loop(self) -> None:
        last_free = -1
        while True:
            if self.joined and self.host is not None:
                free = self.host.store.free
                if free != last_free:
                    self.announce()
                    last_free = free
            await asyncio.sleep(ANNOUNCE_INTERVAL if last_free >= 0 else 0.5)

    async def _expire_loop(self, interval: float) -> None:
        """Hosts keep a share while some owner's grant (or a repair's segment
        authorisation) for it runs; afterwards the space is free again."""
        while True:
            await asyncio.sleep(interval)
            if self.host is None:
                continue
            try:
                dropped = await self.host.expire()
            except OSError as exc:
                log.error("cannot expire shares: %s", exc)
                continue
            if dropped:  # (the announce loop publishes the space freed)
                log.info("dropped %d share(s) whose grants expired", dropped)

    def _share_stored(self, share_hash: bytes, contract: SignedContract | None) -> None:
        """Say where the share is and under which contract: one ``loc`` record
        (xcore.contracts.hosts). Without a new contract (a repair's copy, a
        share sent again) the one already published stays."""
        if self.driver is None or self.tcp_address is None:
            return
        if contract is None:
            contract = self._published_contract(share_hash)
        rec = loc_record(self.identity, share_hash, self.tcp_address, self._loc_now(share_hash),
                         contract)
        self.driver.call(lambda t: self.dht.publish(rec, t))

    def _loc_now(self, share_hash: bytes) -> float:
        """The time to stamp a new loc record with: now, but later than the
        one it replaces (its seq is in milliseconds; an equal seq with other
        content would be refused as a conflict)."""
        prev = self.dht.published.get(("loc", loc_key(share_hash)))
        now = self.clock()
        return now if prev is None or int(now * 1000) > prev.seq else (prev.seq + 1) / 1000

    def _published_contract(self, share_hash: bytes) -> SignedContract | None:
        rec = self.dht.published.get(("loc", loc_key(share_hash)))
        try:
            return loc_contract(rec) if rec is not None else None
        except RecordRejected:
            return None

    def _share_deleted(self, share_hash: bytes) -> None:
        self.dht.unpublish("loc", loc_key(share_hash))

    def _contract_ended(self, share_hash: bytes, owner: bytes, ts: int, sig: bytes,
                        held: bool) -> None:
        """The owner deleted ``share_hash``: publish our contract for it with
        the owner's signed DELETE attached, so auditors stop challenging us for
        it and payouts end there (xcore.contracts.contract, "Ending early").
        If nobody else keeps the share, that is a tombstone: a loc record with
        no address, put once for its TTL and not renewed, which replaces the
        copies auditors hold."""
        sc = self._published_contract(share_hash)
        ended: SignedContract | None = None
        if sc is not None and sc.contract.owner_pubkey == owner and not sc.delete_sig:
            try:
                ended = sc.ended_by(ts, sig)
            except XcoreError as exc:  # (a DELETE the host checked: should not happen)
                log.warning("cannot end the contract for %s: %s", share_hash.hex()[:12], exc)
        if held:
            if ended is not None:
                self._share_stored(share_hash, ended)
            return
        when = self._loc_now(share_hash)
        self.dht.unpublish("loc", loc_key(share_hash))
        if ended is not None and self.driver is not None:
            tomb = loc_record(self.identity, share_hash, None, when, ended)
            self.driver.call(lambda t: self.dht.put(tomb, t))

    # -- state ----------------------------------------------------------------

    def _load_state(self) -> None:
        path = self.data_dir / STATE_NAME
        if not path.exists():
            return
        try:
            raw = path.read_bytes()
            snap = unpack_bounded(raw, MAX_STATE_BYTES, 1 << 20)
        except (OSError, RemoteProtocolError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return
        self.dht.restore(snap, self.clock())

    def save_state(self) -> None:
        atomic_write(self.data_dir / STATE_NAME, pack(self.dht.snapshot()), mode=0o600)

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(self.env.save_interval)
            try:
                self.save_state()
            except OSError as exc:
                log.error("cannot save state: %s", exc)

    # -- operations (also the control socket's table) ---------------------------

    def status(self) -> dict[str, Any]:
        st = self.dht.status()
        counters = st["counters"]
        st.update({
            "address": format_address(self.address) if self.address else None,
            "data": str(self.data_dir),
            "pid": os.getpid(),
            "joined": self.joined,
            "join_error": self.join_error,
            "capacity": self.config["capacity"],
            "dropped": sum(v for k, v in counters.items() if k.startswith("dropped_")),
            "uptime": self.clock() - self.dht.started,
            "clock": self.clock(),
            "tcp_address": format_address(self.tcp_address) if self.tcp_address else None,
            "host": self.host.stats() if self.host else None,
            "repair": self.repairer.counters if self.repairer else None,
            "audit": self.auditor.counters if self.auditor else None,
        })
        return st

    async def dht_put(self, key: str, value: bytes, ttl: int = 24 * 3600) -> dict[str, Any]:
        assert self.driver is not None
        now = self.clock()
        rec = new_record(self.identity, "text", dht_key(key), value, now, ttl=ttl)
        op = self.driver.call(lambda t: self.dht.publish(rec, t))
        acks = await wait_op(op, 60)
        self.save_state()
        return {"key": key, "dht_key": rec.key.hex(), "stored_at": acks, "seq": rec.seq}

    async def dht_get(self, key: str) -> dict[str, Any]:
        assert self.driver is not None
        op = self.driver.call(lambda t: self.dht.get(dht_key(key), t))
        res = await wait_op(op, 60)
        recs = [{"signer": r.signer_id.hex(), "seq": r.seq, "expires": r.expires,
                 "value": r.value.decode("utf-8", "replace")} for r in res.records]
        return {"key": key, "value": recs[0]["value"], "records": recs, "hops": res.hops}

    def _handlers(self) -> dict[str, Any]:
        async def status(args: dict[str, Any]) -> Any:
            return self.status()

        async def dht_put(args: dict[str, Any]) -> Any:
            key, value = args.get("key"), args.get("value")
            if not isinstance(key, str) or not isinstance(value, (str, bytes)):
                raise ConfigError("dht_put needs key (str) and value")
            return await self.dht_put(key, value.encode() if isinstance(value, str) else value)

        async def dht_get(args: dict[str, Any]) -> Any:
            key = args.get("key")
            if not isinstance(key, str):
                raise ConfigError("dht_get needs key (str)")
            return await self.dht_get(key)

        async def stop(args: dict[str, Any]) -> Any:
            asyncio.get_running_loop().call_later(0.05, self.request_stop)
            return {"stopping": True}

        def client_for(args: dict[str, Any]) -> Any:
            from xcore.client.files import Client
            from xcore.client.keys import OwnerKeys
            master = args.get("master")
            if not isinstance(master, bytes) or len(master) != 32:
                raise ConfigError("this operation needs the owner's master secret")
            return Client(self, OwnerKeys(master))

        @with_progress
        async def put(args: dict[str, Any], progress: Any = None) -> Any:
            from xcore.shard.erasure import Redundancy
            client = client_for(args)
            try:
                return await client.put(Path(str(args.get("path"))),
                                        Redundancy.parse(str(args.get("redundancy", "4/8"))),
                                        name=args.get("name"), progress=progress)
            finally:
                client.close()

        @with_progress
        async def get(args: dict[str, Any], progress: Any = None) -> Any:
            from xcore.client.files import parse_file_id
            client = client_for(args)
            try:
                return await client.get(parse_file_id(str(args.get("file_id"))),
                                        Path(str(args.get("out"))), progress=progress)
            finally:
                client.close()

        async def ls(args: dict[str, Any]) -> Any:
            client = client_for(args)
            try:
                return await client.ls()
            finally:
                client.close()

        async def rm(args: dict[str, Any]) -> Any:
            from xcore.client.files import parse_file_id
            client = client_for(args)
            try:
                return await client.rm(parse_file_id(str(args.get("file_id"))))
            finally:
                client.close()

        @with_progress
        async def renew(args: dict[str, Any], progress: Any = None) -> Any:
            from xcore.client.files import parse_file_id
            client = client_for(args)
            ids = args.get("file_ids") or []
            try:
                return await client.renew([parse_file_id(str(f)) for f in ids] or None,
                                          progress=progress)
            finally:
                client.close()

        async def hosts(args: dict[str, Any]) -> Any:
            from xcore.client.files import host_table
            return await host_table(self)

        async def repair(args: dict[str, Any]) -> Any:
            if self.repairer is None:
                raise ConfigError("this node does not run repair")
            if args.get("now"):
                await self.repairer.check_all()
            return self.repairer.report()

        async def audit(args: dict[str, Any]) -> Any:
            if self.auditor is None:
                raise ConfigError("this node does not audit")
            host = args.get("host")
            host_id = bytes.fromhex(host) if isinstance(host, str) and host else None
            done = await self.auditor.round(host=host_id, force=True)
            return {"audits": done, **self.auditor.report()}

        async def payout(args: dict[str, Any]) -> Any:
            from xcore.auditor import payout_table
            return await asyncio.to_thread(payout_table, self.data_dir,
                                           str(args.get("period") or ""),
                                           dict(args.get("inxt") or {}))

        return {"status": status, "dht_put": dht_put, "dht_get": dht_get, "stop": stop,
                "put": put, "get": get, "ls": ls, "rm": rm, "renew": renew, "hosts": hosts, "repair": repair,
                "audit": audit, "payout": payout}


async def run_node(data_dir: Path) -> None:
    """`xcore node start`: run until SIGTERM/SIGINT or a control `stop`."""
    import signal
    svc = NodeService(data_dir)
    await svc.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, svc.request_stop)
    try:
        try:
            await svc.join()
        except XcoreError as exc:
            svc.join_error = str(exc)
            log.warning("join failed: %s (will keep serving and retry)", exc)
            asyncio.create_task(_rejoin(svc))
        await svc.serve_forever()
    finally:
        await svc.stop()


async def _rejoin(svc: NodeService) -> None:
    delay = 2.0
    while not svc.joined:
        await asyncio.sleep(delay)
        try:
            await svc.join()
        except XcoreError:
            delay = min(delay * 2, 60.0)
