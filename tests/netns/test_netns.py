"""Ten node processes on ten "hosts": one Linux network namespace each.

The lab (``tests/netns/harness.py``) puts every node in its own namespace,
on a veth pair to one bridge, with addresses in eight /24s of 198.18.0.0/15::

    n01 198.18.1.11  (seed)        n06 198.18.4.11
    n02 198.18.1.12                n07 198.18.5.11
    n03 198.18.2.11                n08 198.18.6.11  data dir on a 1.5 MiB tmpfs
    n04 198.18.2.12                n09 198.18.7.11  behind a relay: 20% loss, 10% dup, reordering
    n05 198.18.3.11                n10 198.18.8.11  clock 240 s fast (XCORE_CLOCK_SKEW=240)

Nodes run as ``ip netns exec NS python -m xcore node start --data DIR``; the
test process drives them through their control sockets (``xcore put/get
--data DIR``) from the root namespace. The tests run in file order; each
says what it shows. The module skips, with the failing command's error,
where namespaces cannot be made (not root, no ``ip``). Teardown removes every
process, relay, mount, namespace and link, and fails if anything is left.

Clock skew, what is expected: a DHT datagram carries its sender's time and is
refused outside a 300 s window (``DHTConfig.replay_window``); a record's
expiry may run at most ``CLOCK_SKEW`` = 600 s past its kind's TTL. So a node
240 s fast works normally and its records expire at most 240 s late; a node
600 s fast is refused by everybody (counted as ``dropped_stale``), cannot
join, and none of its records are stored anywhere, until its clock is right.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.netns.harness import DIFFICULTY, Lab, LabUnavailable, check_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

TOPOLOGY = {
    "n01": "198.18.1.11", "n02": "198.18.1.12", "n03": "198.18.2.11", "n04": "198.18.2.12",
    "n05": "198.18.3.11", "n06": "198.18.4.11", "n07": "198.18.5.11", "n08": "198.18.6.11",
    "n09": "198.18.7.11", "n10": "198.18.8.11",
}
TMPFS_NODE, RELAY_NODE, SKEW_NODE = "n08", "n09", "n10"
RELAY = {"loss": 0.2, "dup": 0.1, "delay": 0.01, "jitter": 0.06}
SKEW = 240
MB = 1_000_000


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    try:
        check_available()
    except LabUnavailable as exc:
        pytest.skip(f"cannot create network namespaces: {exc}")
    top = Path(tempfile.mkdtemp(prefix="xc-", dir="/tmp"))
    lab = Lab(top)
    try:
        lab.setup()
        for name, addr in TOPOLOGY.items():
            lab.add_node(name, addr, tmpfs="1536k" if name == TMPFS_NODE else None,
                         relay=RELAY if name == RELAY_NODE else None, seed=9)
        lab.init("n01")
        seed = lab.nodes["n01"].seed
        for name in list(TOPOLOGY)[1:]:
            lab.init(name, bootstrap=[seed])
        lab.start("n01")
        lab.wait_ready(["n01"], 60)
        for name in list(TOPOLOGY)[1:]:
            lab.start(name, {"XCORE_CLOCK_SKEW": str(SKEW)} if name == SKEW_NODE else {})
        lab.wait_ready(list(TOPOLOGY), 90)
        yield lab
    finally:
        left = lab.close()
        shutil.rmtree(top, ignore_errors=True)
        assert left == [], f"the lab left these behind: {left}"


def ok(lab: Lab, *args: str, stdin: str | None = None) -> Any:
    r = lab.xcore(*args, "--json", stdin=stdin)
    assert r.returncode == 0, f"xcore {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def owner(lab: Lab) -> str:
    """One owner, keys on n01 and (the same mnemonic) on n05."""
    words = ok(lab, "keys", "new", "--data", str(lab.nodes["n01"].data))["mnemonic"]
    ok(lab, "keys", "import", "--data", str(lab.nodes["n05"].data), stdin=words + "\n")
    return str(words)


def random_file(lab: Lab, name: str, size: int, seed: int) -> Path:
    path = lab.top / "files" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def put(lab: Lab, node: str, path: Path, redundancy: str) -> dict[str, Any]:
    return ok(lab, "put", "--data", str(lab.nodes[node].data), "--redundancy", redundancy,
              str(path))  # type: ignore[no-any-return]


def get(lab: Lab, node: str, file_id: str, out: Path) -> bytes:
    ok(lab, "get", "--data", str(lab.nodes[node].data), file_id, "-o", str(out))
    return out.read_bytes()


def segments(lab: Lab) -> dict[bytes, Any]:
    """Every data segment record any host keeps: seg_id -> SegmentInfo (not
    the mirrored, k = 1, segments of the metadata blobs: files go up at 3/6)."""
    from xcore.contracts.segments import decode_segment_record
    found = {}
    for node in lab.nodes.values():
        d = node.data / "segments"
        for p in d.iterdir() if d.is_dir() else []:
            _, info = decode_segment_record(p.read_bytes(), time.time())
            if info.k > 1:
                found[info.segment_id] = info
    return found


def holders(lab: Lab, share_hash: bytes) -> list[str]:
    name = share_hash.hex()
    return [n for n, node in lab.nodes.items()
            if (node.data / "shares" / name[:2] / name).exists()]


@pytest.fixture(scope="module")
def first(lab: Lab, owner: str) -> dict[str, Any]:
    """A 900 kB file put from n01 at 3/6 (and two of 200 kB: three segments,
    each a fresh draw for the /24 test), and the segments they created."""
    before = set(segments(lab))
    path = random_file(lab, "first.bin", 900_000, 1)
    res = put(lab, "n01", path, "3/6")
    first_segments = {s: info for s, info in segments(lab).items() if s not in before}
    for i in (2, 3):
        put(lab, "n01", random_file(lab, f"small{i}.bin", 200_000, 10 + i), "3/6")
    every = {s: info for s, info in segments(lab).items() if s not in before}
    return {"path": path, "put": res, "segments": first_segments, "all_segments": every}


# -- tests -------------------------------------------------------------------------------


def test_nodes_run_in_their_own_namespaces(lab: Lab) -> None:
    for name, node in lab.nodes.items():
        assert node.proc is not None
        ns = os.readlink(f"/proc/{node.proc.pid}/ns/net")
        assert ns != os.readlink("/proc/self/ns/net"), name
        st = lab.status(name)
        assert st is not None and st["address"] == f"{node.addr}:7000", (name, st)
    spaces = {os.readlink(f"/proc/{n.proc.pid}/ns/net") for n in lab.nodes.values() if n.proc}
    assert len(spaces) == len(lab.nodes)


def test_put_and_get_across_namespaces(lab: Lab, first: dict[str, Any]) -> None:
    """Put from n01's namespace, get from n05's: shares travel between namespaces."""
    data = get(lab, "n05", first["put"]["file_id"], lab.top / "files" / "first.out")
    assert hashlib.sha256(data).digest() == hashlib.sha256(first["path"].read_bytes()).digest()
    held = {h for info in first["segments"].values() for s in info.shares for h in holders(lab, s)}
    assert len(held) >= 6, held


def test_no_two_shares_of_a_segment_on_one_24(lab: Lab, first: dict[str, Any]) -> None:
    """Eight /24s for six shares: every share of a segment on its own /24.
    (Without the rule, a random draw of 6 of these 10 hosts puts two shares on
    198.18.1.0/24 or 198.18.2.0/24 about 60% of the time, per segment.)"""
    assert len(first["all_segments"]) == 3, first["all_segments"]
    for seg_id, info in first["all_segments"].items():
        placed = [(s, h) for s in info.shares for h in holders(lab, s)]
        assert len({s for s, _ in placed}) == info.n, (seg_id.hex(), placed)
        groups = [lab.nodes[h].group for _, h in placed]
        assert len(groups) == len(set(groups)), (seg_id.hex(), sorted(groups))


def test_dht_through_a_relay_that_drops_duplicates_and_reorders(lab: Lab) -> None:
    """n09's datagrams pass a relay: 20% lost, 10% duplicated, jittered.
    Records still go both ways (lookups retry; duplicates are replays)."""
    before = lab.relay_stats(RELAY_NODE)
    for i in range(2):
        mine, theirs = f"relay-out-{i}", f"relay-in-{i}"
        assert lab.call(RELAY_NODE, "dht_put", {"key": mine, "value": f"from n09 {i}"})["stored_at"] >= 1
        assert lab.call("n03", "dht_get", {"key": mine})["value"] == f"from n09 {i}"
        assert lab.call("n04", "dht_put", {"key": theirs, "value": f"to n09 {i}"})["stored_at"] >= 1
        assert lab.call(RELAY_NODE, "dht_get", {"key": theirs})["value"] == f"to n09 {i}"
    time.sleep(0.6)  # the relay writes its counters twice a second
    after = lab.relay_stats(RELAY_NODE)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["udp"] >= 10, delta
    for k in ("dropped", "duplicated", "reordered"):
        assert delta[k] >= 1, (k, delta)
    counters = lab.status(RELAY_NODE)["counters"]  # type: ignore[index]
    assert counters.get("dropped_replayed", 0) >= 1, counters  # duplicates refused as replays


def test_a_node_240s_fast_works_and_its_records_expire_at_most_240s_late(lab: Lab) -> None:
    st = lab.status(SKEW_NODE)
    assert st is not None and st["joined"]
    assert abs(st["clock"] - time.time() - SKEW) < 10, st["clock"] - time.time()
    res = lab.call(SKEW_NODE, "dht_put", {"key": "skewed", "value": "fast clock"})
    assert res["stored_at"] >= 1, res
    rec = lab.call("n03", "dht_get", {"key": "skewed"})["records"][0]
    assert rec["value"] == "fast clock"
    ttl = 24 * 3600
    assert time.time() + ttl + SKEW - 60 <= rec["expires"] <= time.time() + ttl + SKEW + 5, rec
    assert lab.call("n03", "dht_put", {"key": "to-skewed", "value": "right clock"})["stored_at"] >= 1
    assert lab.call(SKEW_NODE, "dht_get", {"key": "to-skewed"})["value"] == "right clock"


def test_a_node_600s_fast_is_refused_until_its_clock_is_right(lab: Lab) -> None:
    node = lab.add_node("n11", "198.18.9.11")
    lab.init("n11", bootstrap=[lab.nodes["n01"].seed])
    stale_before = lab.status("n01")["counters"].get("dropped_stale", 0)  # type: ignore[index]
    lab.start("n11", {"XCORE_CLOCK_SKEW": "600"})
    lab.wait_ready(["n11"], 60, joined=False)
    end = time.monotonic() + 60
    while True:
        st = lab.status("n11")
        assert st is not None
        if st["join_error"] or time.monotonic() > end:
            break
        time.sleep(0.5)
    assert not st["joined"] and st["join_error"], st
    assert st["peers"] == 0, st
    stale_after = lab.status("n01")["counters"].get("dropped_stale", 0)  # type: ignore[index]
    assert stale_after > stale_before
    # its records are nowhere: nobody took a datagram from it
    for name in ("n01", "n02", "n03"):
        recs = lab.call(name, "status")["records"]
        assert isinstance(recs, int)
    lab.stop_node("n11")
    lab.start("n11", {})  # the clock fixed: it joins
    st = lab.wait_ready(["n11"], 90)["n11"]
    assert st["joined"] and abs(st["clock"] - time.time()) < 10
    assert lab.call("n11", "dht_get", {"key": "skewed"})["value"] == "fast clock"
    lab.stop_node("n11")


def tcp_reachable(addr: str, timeout: float = 2.0) -> bool:
    host, port = addr.rsplit(":", 1)

    async def probe() -> bool:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        except (OSError, asyncio.TimeoutError):
            return False
        w.close()
        return True
    return asyncio.run(probe())


def test_link_down_get_succeeds_from_others_and_link_up_rejoins(
        lab: Lab, first: dict[str, Any]) -> None:
    shares = [s for info in first["segments"].values() for s in info.shares]
    victim = next(h for s in shares for h in holders(lab, s) if h not in ("n01", "n05"))
    tcp = lab.status(victim)["tcp_address"]  # type: ignore[index]
    lab.link(victim, up=False)
    try:
        assert not tcp_reachable(tcp), f"{victim} still reachable with its link down"
        data = get(lab, "n05", first["put"]["file_id"], lab.top / "files" / "first.down")
        assert data == first["path"].read_bytes()
    finally:
        lab.link(victim, up=True)
    assert tcp_reachable(tcp)
    # rejoined: it reads a record written while it was away, and others read its records
    lab.call("n03", "dht_put", {"key": f"while-{victim}-away", "value": "news"})
    end = time.monotonic() + 60
    while True:
        try:
            got = lab.call(victim, "dht_get", {"key": f"while-{victim}-away"}, timeout=70)["value"]
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            got = repr(exc)
        if got == "news" or time.monotonic() > end:
            break
        time.sleep(1)
    assert got == "news"
    assert lab.call(victim, "dht_put", {"key": f"{victim}-back", "value": "hi"})["stored_at"] >= 1
    assert lab.call("n06", "dht_get", {"key": f"{victim}-back"})["value"] == "hi"


def test_disk_full_is_a_clear_refusal_and_loses_nothing(lab: Lab, first: dict[str, Any]) -> None:
    """n08's data dir is a 1.5 MiB tmpfs. It takes a 300 kB share, then refuses a
    2 MiB one as "disk full" (counted, nothing half-written, the 300 kB share
    still served intact); a 12 MB put at 4/8 (2 MiB shares) goes up on the others."""
    from xcore.bootstrap import parse_address
    from xcore.crypto.identity import Identity
    from xcore.errors import DiskFull
    from xcore.shard.transfer import Grant, HostConnection
    node = lab.nodes[TMPFS_NODE]
    st = lab.status(TMPFS_NODE)
    assert st is not None
    small, big = os.urandom(300_000), os.urandom(2 << 20)
    small_h, big_h = hashlib.sha256(small).digest(), hashlib.sha256(big).digest()

    async def session() -> tuple[BaseException | None, bytes]:
        me = Identity.generate(DIFFICULTY, secrets.token_bytes)
        conn = await HostConnection.connect(parse_address(st["tcp_address"]), me,
                                            bytes.fromhex(st["node_id"]), secrets.token_bytes)
        until = int(time.time()) + 3600
        try:
            await conn.put_share(small_h, small, Grant.create(me, small_h, conn.host_id, until))
            try:
                await conn.put_share(big_h, big, Grant.create(me, big_h, conn.host_id, until))
                refused: BaseException | None = None
            except Exception as exc:  # noqa: BLE001 - returned for the asserts
                refused = exc
            return refused, await conn.get_share(small_h)
        finally:
            conn.close()
    refused, back = asyncio.run(session())
    assert isinstance(refused, DiskFull), repr(refused)
    assert "disk full" in str(refused)
    assert back == small
    counters = lab.status(TMPFS_NODE)["host"]["counters"]  # type: ignore[index]
    assert counters.get("puts_disk_full", 0) >= 1, counters
    held = {p.name for p in lab.share_files(TMPFS_NODE)}
    assert small_h.hex() in held and big_h.hex() not in held
    assert list((node.data / "shares").rglob("*.tmp")) == []
    # a 12 MB file at 4/8 (2 MiB shares: none fits on n08) still goes up, on the others
    path = random_file(lab, "big.bin", 12 * MB, 2)
    res = put(lab, "n01", path, "4/8")
    assert get(lab, "n05", res["file_id"], lab.top / "files" / "big.out") == path.read_bytes()
    # nothing lost: what n08 held is intact, the node still runs, the first file reads back
    for p in lab.share_files(TMPFS_NODE):
        if p.name in held:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, p
    assert list((node.data / "shares").rglob("*.tmp")) == []
    assert node.alive() and lab.status(TMPFS_NODE) is not None
    assert get(lab, "n05", first["put"]["file_id"], lab.top / "files" / "first.again") == \
        first["path"].read_bytes()
