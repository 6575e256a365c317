"""A real devnet: eight node processes on 127.0.0.1, driven through the CLI.

One module-scoped devnet (``xcore devnet up --nodes 8``) serves every test;
``xcore devnet down`` runs in teardown whatever happened, and then no process
started from the devnet's directory may remain. Tests that break nodes use
disjoint ones (kill n03/n05, restart n04, flood n01/n06/n08), so each also
passes when run alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.procs import Xcore, processes_under

from xcore.codec import unpack_bounded
from xcore.control import call
from xcore.crypto.identity import Identity, puzzle_ok
from xcore.dht.messages import (
    AUTH_MAC, AUTH_SIG, MAX_DATAGRAM, FindNode, FindValue, Nodes, Ping, Pong, Store,
    auth_bytes, encode_datagram, encode_payload,
)
from xcore.dht.records import Record, dht_key
from xcore.devnet import spawn

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NODES = 8
DIFFICULTY = 4
KEY = "integration-key"


# -- processes ----------------------------------------------------------------


xcore = Xcore(timeout=60.0)
ok = xcore.ok


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` from /proc (``Z`` for a zombie), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def status(data: Path) -> dict[str, Any]:
    """A node's status over its control socket, in-process (cheap enough to poll)."""
    return asyncio.run(call(data, "status", timeout=10))  # type: ignore[no-any-return]


def cli_status(data: Path) -> dict[str, Any]:
    return json.loads(ok("node", "status", "--data", str(data), "--json"))  # type: ignore[no-any-return]


def cli_get(data: Path, key: str, timeout: float = 60.0) -> str:
    return ok("dht", "get", "--data", str(data), key, timeout=timeout).rstrip("\n")


# -- the devnet -------------------------------------------------------------------


@dataclass
class Devnet:
    dir: Path
    info: dict[str, Any]

    def data(self, name: str) -> Path:
        return self.dir / name

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.info["nodes"] if n["name"] == name)


@pytest.fixture(scope="module")
def devnet() -> Iterator[Devnet]:
    # short: DIR/nNN/control.sock must stay under the 100-byte socket path limit
    directory = Path(tempfile.mkdtemp(prefix="xc-", dir="/tmp"))
    try:
        r = xcore("devnet", "up", "--nodes", str(NODES), "--dir", str(directory),
                  "--difficulty", str(DIFFICULTY), "--json", timeout=120)
        assert r.returncode == 0, f"devnet up failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        info = json.loads(r.stdout)
        assert [n["name"] for n in info["nodes"]] == [f"n{i:02d}" for i in range(1, NODES + 1)]
        yield Devnet(directory, info)
    finally:
        down = xcore("devnet", "down", "--dir", str(directory), timeout=240)
        leaked: list[int] = []
        end = time.monotonic() + 10
        while time.monotonic() < end:
            leaked = processes_under(directory)
            if not leaked:
                break
            time.sleep(0.1)
        for pid in leaked:  # ours: started from this test's directory
            os.kill(pid, signal.SIGKILL)
        logs = {p.parent.name: p.read_text(errors="replace") for p in directory.glob("*/node.log")}
        shutil.rmtree(directory, ignore_errors=True)
        assert down.returncode == 0, f"devnet down failed:\n{down.stdout}\n{down.stderr}"
        assert not leaked, f"node processes left after devnet down: {leaked}"
        crashed = {n: log for n, log in logs.items() if "Traceback" in log}
        assert not crashed, f"tracebacks in node logs: {crashed}"


@pytest.fixture(scope="module")
def record(devnet: Devnet) -> tuple[str, str, str]:
    """One record put through n02 with the CLI: (key, value, put output)."""
    value = f"value of {KEY} {random.SystemRandom().getrandbits(64):016x}"
    out = ok("dht", "put", "--data", str(devnet.data("n02")), KEY, value)
    return KEY, value, out


# -- tests ------------------------------------------------------------------------


def test_put_through_one_node_get_through_another(devnet: Devnet,
                                                  record: tuple[str, str, str]) -> None:
    key, value, put_out = record
    m = re.fullmatch(rf"stored {key} on (\d+) node\(s\)\n", put_out)
    assert m, put_out
    assert int(m.group(1)) >= 3
    assert cli_get(devnet.data("n07"), key) == value
    got = json.loads(ok("dht", "get", "--data", str(devnet.data("n05")), key, "--json"))
    assert got["key"] == key and got["value"] == value
    assert got["records"][0]["signer"] == devnet.node("n02")["node_id"]


def test_every_node_reports_status(devnet: Devnet) -> None:
    ports = set()
    for n in devnet.info["nodes"]:
        st = cli_status(Path(n["data"]))
        assert re.fullmatch(r"[0-9a-f]{40}", st["node_id"]), st["node_id"]
        assert st["node_id"] == n["node_id"]
        assert puzzle_ok(bytes.fromhex(st["node_id"]), DIFFICULTY)
        m = re.fullmatch(r"127\.0\.0\.1:(\d+)", st["address"])
        assert m, st["address"]
        port = int(m.group(1))
        assert 0 < port < 65536 and st["address"] == n["address"]
        ports.add(port)
        assert st["peers"] >= 1
        assert isinstance(st["records"], int) and st["records"] >= 0
        assert isinstance(st["counters"], dict)
        assert all(isinstance(v, int) for v in st["counters"].values())
        assert st["joined"] is True
        assert st["pid"] == n["pid"]
    assert len(ports) == NODES


# -- garbage on the wire ----------------------------------------------------------


def _failing_identity(rng: random.Random) -> Identity:
    """A key whose node ID does NOT solve the devnet's puzzle."""
    while True:
        ident = Identity(rng.randbytes(32), 0)
        if not puzzle_ok(ident.node_id, DIFFICULTY):
            return ident


def garbage(rng: random.Random, target_id: bytes, count: int) -> list[bytes]:
    """``count`` datagrams that a node must drop, of every kind we can think of."""
    liar = Identity.generate(DIFFICULTY, rng.randbytes)      # valid ID, wrong auth
    other = Identity.generate(DIFFICULTY, rng.randbytes)     # signs for the liar
    unfit = _failing_identity(rng)                           # ID misses the puzzle

    def payload(body: Any, sender: Identity = liar, to: bytes = target_id,
                ts_ms: int | None = None) -> bytes:
        ts = int(time.time() * 1000) if ts_ms is None else ts_ms
        return encode_payload(body, rng.randbytes(8), sender.pubkey, to, ts)

    def some_body() -> Any:
        return rng.choice([
            Ping(), FindNode(rng.randbytes(20)), FindValue(rng.randbytes(20)),
            Store(rng.randbytes(rng.randrange(1, 5000))), Pong(("127.0.0.1", 4000)),
            Nodes(()),
        ])

    base = encode_datagram(payload(FindNode(rng.randbytes(20))), AUTH_MAC, rng.randbytes(16))
    big = encode_datagram(payload(Store(rng.randbytes(6000))), AUTH_MAC, rng.randbytes(16))

    def wrong_auth() -> bytes:
        p = payload(some_body())
        return rng.choice([
            lambda: encode_datagram(p, AUTH_MAC, rng.randbytes(16)),              # bad MAC
            lambda: encode_datagram(p, AUTH_SIG, rng.randbytes(64)),              # bad signature
            lambda: encode_datagram(p, AUTH_SIG, other.sign(auth_bytes(p))),      # someone else's
            lambda: encode_datagram(p, AUTH_SIG, liar.sign(b"xcore-dht-v0" + p)),  # wrong tag
        ])()

    def well_signed_but_refused() -> bytes:
        choice = rng.randrange(3)
        if choice == 0:   # sender's ID fails the puzzle
            p = payload(some_body(), sender=unfit)
            return encode_datagram(p, AUTH_SIG, unfit.sign(auth_bytes(p)))
        if choice == 1:   # meant for another node
            p = payload(some_body(), to=rng.randbytes(20))
        else:             # far outside the replay window
            p = payload(some_body(), ts_ms=int(time.time() * 1000) - 3_600_000)
        return encode_datagram(p, AUTH_SIG, liar.sign(auth_bytes(p)))

    def mutated() -> bytes:
        b = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)

    makers = [
        lambda: rng.randbytes(rng.randrange(0, 9001)),                      # random, any length
        lambda: rng.randbytes(rng.randrange(0, 64)),                         # random, short
        lambda: base[:rng.randrange(len(base))],                             # truncated
        lambda: big[:rng.randrange(len(big))],                               # truncated, large
        mutated,                                                             # bit flips
        lambda: rng.randbytes(rng.randrange(MAX_DATAGRAM + 1, 20_000)),      # oversized
        lambda: encode_datagram(payload(Store(rng.randbytes(MAX_DATAGRAM))), AUTH_MAC,
                                rng.randbytes(16)),                          # oversized, well-formed
        wrong_auth,
        well_signed_but_refused,
    ]
    out = [b"", base, big]
    while len(out) < count:
        out.append(rng.choice(makers)())
    rng.shuffle(out)
    return out


def flood(data: Path, address: str, datagrams: list[bytes],
          senders: list[socket.socket]) -> int:
    """Send ``datagrams`` from real UDP sockets, paced so that the node's
    socket buffer never overflows (we want every datagram parsed, not lost in
    the kernel). Returns how many the node reported receiving."""
    host, _, port_s = address.rpartition(":")
    dest = (host, int(port_s))
    start = status(data)["counters"].get("received", 0)
    sent = 0
    batch_bytes = 0

    def catch_up(timeout: float) -> int:
        end = time.monotonic() + timeout
        while True:
            got = status(data)["counters"].get("received", 0) - start
            if got >= sent or time.monotonic() > end:
                return int(got)
            time.sleep(0.002)

    for i, d in enumerate(datagrams):
        # rotate the source port so the per-address rate limit does not hide
        # the datagrams from the parser
        senders[i % len(senders)].sendto(d, dest)
        sent += 1
        batch_bytes += 2 * len(d) + 768  # about the kernel's per-datagram cost
        if batch_bytes > 96 * 1024 or i % 16 == 15:
            catch_up(3.0)
            batch_bytes = 0
    return catch_up(10.0)


def test_nodes_survive_garbage_datagrams(devnet: Devnet, record: tuple[str, str, str]) -> None:
    key, value, _ = record
    per_node = 3000
    targets = ["n01", "n06", "n08"]
    senders = []
    for _ in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        senders.append(s)
    try:
        for i, name in enumerate(targets):
            data = devnet.data(name)
            before = status(data)
            pid = before["pid"]
            grams = garbage(random.Random(i), bytes.fromhex(before["node_id"]), per_node)
            assert any(len(g) > MAX_DATAGRAM for g in grams) and b"" in grams
            received = flood(data, before["address"], grams, senders)
            assert alive(pid), f"{name} died under garbage"
            after = cli_status(data)
            assert after["pid"] == pid and after["node_id"] == before["node_id"]
            dropped = after["dropped"] - before["dropped"]
            assert received >= 0.95 * per_node, (name, received)
            assert 0.95 * per_node <= dropped <= per_node + 50, (name, dropped, after["counters"])
            grew = {k for k, v in after["counters"].items()
                    if k.startswith("dropped_") and v > before["counters"].get(k, 0)}
            assert {"dropped_malformed", "dropped_bad_auth", "dropped_bad_identity",
                    "dropped_misdirected", "dropped_stale"} <= grew, after["counters"]
    finally:
        for s in senders:
            s.close()
    for name in targets:
        pid = devnet.node(name)["pid"]
        assert alive(pid), f"{name} (pid {pid}) is gone"
        assert cli_get(devnet.data(name), key) == value
        assert "Traceback" not in (devnet.data(name) / "node.log").read_text(errors="replace")


# -- failures and restarts ----------------------------------------------------------


def test_record_survives_sigkill_of_two_nodes(devnet: Devnet, record: tuple[str, str, str]) -> None:
    key, value, _ = record
    on_disk = json.loads((devnet.dir / "devnet.json").read_text())
    victims = [n for n in on_disk["nodes"] if n["name"] in ("n03", "n05")]
    assert len(victims) == 2
    for v in victims:
        assert int((Path(v["data"]) / "node.pid").read_text()) == v["pid"]
        os.kill(v["pid"], signal.SIGKILL)
    for v in victims:
        assert wait_dead(v["pid"]), f"{v['name']} survived SIGKILL"
    assert cli_get(devnet.data("n08"), key) == value
    assert cli_get(devnet.data("n07"), key) == value
    # n03's dir has no node now: `dht get` joins as a short-lived client from it
    r = xcore("node", "status", "--data", str(devnet.data("n03")))
    assert r.returncode == 1 and r.stderr.startswith("error: ")
    assert cli_get(devnet.data("n03"), key) == value


def test_restart_keeps_identity_and_records(devnet: Devnet, record: tuple[str, str, str]) -> None:
    key, value, _ = record
    data = devnet.data("n04")
    before = cli_status(data)
    assert before["records"] >= 1
    assert "stopping" in ok("node", "stop", "--data", str(data))
    assert wait_dead(before["pid"]), "n04 did not exit after `node stop`"
    end = time.monotonic() + 5
    while (data / "control.sock").exists() or (data / "node.pid").exists():
        assert time.monotonic() < end, "n04 left control.sock/node.pid behind"
        time.sleep(0.05)
    # what survives the restart is what is on disk
    snap = unpack_bounded((data / "dht.state").read_bytes(), 256 << 20, 1 << 20)
    keys = {Record.decode(b).key for b in snap["records"]}
    assert dht_key(key) in keys
    proc = spawn(data)
    try:
        end = time.monotonic() + 30
        st: dict[str, Any] | None = None
        while time.monotonic() < end:
            assert proc.poll() is None, (data / "node.log").read_text()[-2000:]
            try:
                st = status(data)
            except Exception:
                st = None
            if st is not None and st["joined"]:
                break
            time.sleep(0.1)
        assert st is not None and st["joined"], "restarted n04 did not join"
        assert st["pid"] == proc.pid
        assert st["node_id"] == before["node_id"]
        assert st["address"] == before["address"]  # the port is kept across restarts
        assert st["records"] >= 1 and st["store"]["accepted"] >= 1
        assert cli_get(data, key) == value
        ok("node", "stop", "--data", str(data))
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
