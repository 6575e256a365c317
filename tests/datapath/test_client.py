"""The client's data path (xcore.client.files) on an in-process cluster.

Eight real nodes (DHT over UDP, hosts over TCP) run in one event loop (see
``conftest.py``); a :class:`Client` on one of them puts random files, gets
them back byte for byte, lists and removes them. Other tests break things the
way Tahoe's no-network grid does: stop hosts, corrupt a share on a disk, fill
every disk.

Every test uses a fresh owner, so tests sharing the module's cluster never see
each other's files.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from xcore.client.files import Client, NotEnoughHosts
from xcore.client.keys import OwnerKeys
from xcore.client.manifest import Manifest
from xcore.crypto.mnemonic import new_mnemonic
from xcore.errors import CapacityExceeded, NotFound
from xcore.shard.erasure import Redundancy, segment_size

Cluster = Any  # tests/datapath/conftest.py:Cluster, reached through the fixtures
MiB = 1 << 20

R48 = Redundancy(4, 8)
R13 = Redundancy(1, 3)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def put(cluster: Cluster, client: Client, path: Path, red: Redundancy = R48,
        name: str | None = None) -> dict[str, Any]:
    res = cluster.run(client.put(path, red, name=name))
    assert res["size"] == path.stat().st_size and res["redundancy"] == str(red)
    return res


def get_same(cluster: Cluster, client: Client, res: dict[str, Any], src: Path) -> dict[str, Any]:
    out = src.with_name(src.name + ".out")
    got = cluster.run(client.get(bytes.fromhex(res["file_id"]), out))
    assert cluster.same_file(src, out), f"{src.name}: downloaded bytes differ"
    assert got["sha256"] == sha(src) and got["size"] == src.stat().st_size
    out.unlink()
    return got


def check_placement(cluster: Cluster, man: Manifest, red: Redundancy, size: int) -> None:
    """Every segment has n shares of the right size, on n distinct hosts that hold them."""
    seg_len = segment_size(red)
    assert (man.k, man.n, man.size, man.segment_size) == (red.k, red.n, size, seg_len)
    assert len(man.segments) == -(-size // seg_len)
    assert sum(s.length for s in man.segments) == size
    for seg in man.segments:
        assert [s.index for s in seg.shares] == list(range(red.n))
        hosts = [s.host_id for s in seg.shares]
        assert len(set(hosts)) == len(hosts), f"segment {seg.index}: two shares on one host"
        for s in seg.shares:
            assert s.size == -(-seg.length // red.k)
            assert cluster.index_of(s.host_id) in cluster.holders_of(s.hash)


def ls_by_id(cluster: Cluster, client: Client) -> dict[str, dict[str, Any]]:
    return {row["file_id"]: row for row in cluster.run(client.ls())}


# -- round trips ---------------------------------------------------------------------


def test_put_get_ls_of_small_files(cluster: Cluster, files: Path) -> None:
    client = cluster.client(seed=1)
    assert cluster.run(client.ls()) == []
    sources = {name: cluster.random_file(files, name, size, seed=i)
               for i, (name, size) in enumerate([("empty", 0), ("one", 1), ("three", 3 * MiB)])}
    results = {name: put(cluster, client, path) for name, path in sources.items()}
    assert results["empty"]["segments"] == 0 and results["one"]["segments"] == 1
    assert results["three"]["shares"] == 8

    listed = ls_by_id(cluster, client)
    assert {(r["name"], r["size"]) for r in listed.values()} == {
        ("empty", 0), ("one", 1), ("three", 3 * MiB)}
    assert set(listed) == {r["file_id"] for r in results.values()}

    for name, path in sources.items():
        get_same(cluster, client, results[name], path)
        man = cluster.run(cluster.manifest_of(client, results[name]["file_id"]))
        check_placement(cluster, man, R48, path.stat().st_size)


def test_a_file_listed_under_another_name(cluster: Cluster, files: Path) -> None:
    client = cluster.client(seed=2)
    src = cluster.random_file(files, "local-name", 1000, seed=2)
    res = put(cluster, client, src, name="report.pdf")
    assert [r["name"] for r in cluster.run(client.ls())] == ["report.pdf"]
    get_same(cluster, client, res, src)


@pytest.mark.parametrize("red,segments", [(R13, 2), (R48, 1)])
def test_size_an_exact_multiple_of_the_segment_size(cluster: Cluster, files: Path,
                                                    red: Redundancy, segments: int) -> None:
    size = segments * segment_size(red)
    client = cluster.client(seed=3)
    src = cluster.random_file(files, f"exact-{red.k}-{red.n}", size, seed=3)
    res = put(cluster, client, src, red)
    assert res["segments"] == segments and res["shares"] == segments * red.n
    man = cluster.run(cluster.manifest_of(client, res["file_id"]))
    assert [s.length for s in man.segments] == [segment_size(red)] * segments
    check_placement(cluster, man, red, size)
    get_same(cluster, client, res, src)


@pytest.mark.slow
@pytest.mark.parametrize("red", [R48, R13], ids=["4of8", "1of3"])
def test_twenty_mib_round_trip(cluster: Cluster, files: Path, red: Redundancy) -> None:
    size = 20 * MiB
    client = cluster.client(seed=4)
    src = cluster.random_file(files, "twenty", size, seed=4)
    res = put(cluster, client, src, red)
    assert res["segments"] == -(-size // segment_size(red))
    man = cluster.run(cluster.manifest_of(client, res["file_id"]))
    check_placement(cluster, man, red, size)
    # hosts only ever see ciphertext: no share equals a slice of the plaintext
    plain = src.read_bytes()
    seg0 = man.segments[0].shares[0]
    holder = cluster.holders_of(seg0.hash)[0]
    stored = cluster.share_path(holder, seg0.hash).read_bytes()
    assert stored[:4096] != plain[:4096]
    # a fresh client (no cached connections) of the same owner gets the file
    get_same(cluster, cluster.client(3, client.keys), res, src)


def test_share_placement_spreads_every_segment(cluster: Cluster, files: Path) -> None:
    red = Redundancy(2, 8)  # n = all eight hosts: every host gets one share per segment
    client = cluster.client(seed=5)
    src = cluster.random_file(files, "spread", 5 * MiB, seed=5)
    res = put(cluster, client, src, red)
    man = cluster.run(cluster.manifest_of(client, res["file_id"]))
    assert len(man.segments) == 2
    check_placement(cluster, man, red, 5 * MiB)
    for seg in man.segments:
        assert {s.host_id for s in seg.shares} == {n.identity.node_id for n in cluster.nodes}


# -- ls / rm / another machine ----------------------------------------------------------


def test_rm_removes_the_file_everywhere(cluster: Cluster, files: Path) -> None:
    client = cluster.client(seed=6)
    keep = cluster.random_file(files, "keep", 5000, seed=60)
    gone = cluster.random_file(files, "gone", 3 * MiB, seed=61)
    keep_res = put(cluster, client, keep)
    gone_res = put(cluster, client, gone)
    man = cluster.run(cluster.manifest_of(client, gone_res["file_id"]))
    entry = cluster.run(client.find_entry(bytes.fromhex(gone_res["file_id"])))
    share_hashes = [s.hash for seg in man.segments for s in seg.shares]
    assert all(cluster.holders_of(sh) for sh in share_hashes)
    before = sum(cluster.share_counts())

    res = cluster.run(client.rm(bytes.fromhex(gone_res["file_id"])))
    assert res["name"] == "gone" and res["shares_deleted"] >= len(share_hashes)
    assert set(ls_by_id(cluster, client)) == {keep_res["file_id"]}
    assert [cluster.holders_of(sh) for sh in share_hashes] == [[]] * len(share_hashes)
    assert cluster.holders_of(entry.manifest_hash) == []
    # the index blob was replaced (3 new copies, 3 old ones deleted): net change is the file
    after = sum(cluster.share_counts())
    assert after == before - len(share_hashes) - len(entry.manifest_hosts)
    with pytest.raises(NotFound):
        cluster.run(client.rm(bytes.fromhex(gone_res["file_id"])))
    with pytest.raises(NotFound):
        cluster.run(client.get(bytes.fromhex(gone_res["file_id"]), files / "nope"))
    assert not (files / "nope").exists()
    get_same(cluster, client, keep_res, keep)


def test_another_machine_with_the_mnemonic_sees_and_gets_the_files(cluster: Cluster,
                                                                   files: Path) -> None:
    words = new_mnemonic(random.Random(7).randbytes)
    here = cluster.client(0, OwnerKeys.from_mnemonic(words), seed=7)
    srcs = [cluster.random_file(files, f"f{i}", size, seed=70 + i)
            for i, size in enumerate([10, 300_000])]
    results = [put(cluster, here, s) for s in srcs]

    # another node, another Client, nothing shared but the words
    there = cluster.client(5, OwnerKeys.from_mnemonic(words.split()), seed=8)
    assert cluster.run(there.ls()) == cluster.run(here.ls())
    for res, src in zip(results, srcs):
        get_same(cluster, there, res, src)
    # and a third with only the master secret
    third = cluster.client(6, OwnerKeys(OwnerKeys.from_mnemonic(words).master), seed=9)
    assert {r["name"] for r in cluster.run(third.ls())} == {"f0", "f1"}

    # another owner sees none of it and cannot fetch it
    stranger = cluster.client(5, seed=10)
    assert cluster.run(stranger.ls()) == []
    with pytest.raises(NotFound):
        cluster.run(stranger.get(bytes.fromhex(results[0]["file_id"]), files / "x"))


def test_redundancy_wider_than_the_network_is_refused_cleanly(cluster: Cluster,
                                                             files: Path) -> None:
    client = cluster.client(seed=11)
    src = cluster.random_file(files, "wide", 1000, seed=11)
    first = put(cluster, client, src)
    counts = cluster.share_counts()
    with pytest.raises(NotEnoughHosts, match="8 hosts with free space .* needs 12"):
        cluster.run(client.put(src, Redundancy(4, 12)))
    assert cluster.share_counts() == counts
    assert set(ls_by_id(cluster, client)) == {first["file_id"]}


# -- corruption ---------------------------------------------------------------------------


def test_a_corrupt_share_is_skipped_and_counted_against_its_host(cluster: Cluster,
                                                                files: Path) -> None:
    owner = cluster.client(seed=12)
    src = cluster.random_file(files, "corrupt-me", 3 * MiB, seed=12)
    res = put(cluster, owner, src)
    man = cluster.run(cluster.manifest_of(owner, res["file_id"]))
    shares = man.segments[0].shares
    # share 0 rots on its host's disk; shares 1-3 are lost: exactly k = 4 good ones remain
    target, lost = shares[0], shares[1:4]
    t = cluster.index_of(target.host_id)
    cluster.corrupt_share(t, target.hash, offset=1234)
    for s in lost:
        assert cluster.host(cluster.index_of(s.host_id)).store.delete(s.hash)
    corrupt_before = cluster.host(t).counters.get("gets_corrupt", 0)

    # a fresh client that asks the corrupt host first and the empty ones next,
    # so that it surely hears back from them before it has k good shares
    rank = {target.host_id: 0.0, **{s.host_id: 0.5 for s in lost}}
    reader = cluster.client(1, owner.keys, seed=13)
    reader.rtt = lambda host_id: rank.get(host_id, 1.0)
    got = get_same(cluster, reader, res, src)
    assert reader.stats.failures.get(target.host_id, 0) == 1
    assert all(reader.stats.failures.get(s.host_id, 0) == 1 for s in lost)
    assert got["host_failures"] == 4
    assert cluster.host(t).counters.get("gets_corrupt", 0) == corrupt_before + 1
    # hosts never serve bad bytes, and the client never trusted any
    assert cluster.host(t).store.has(target.hash)


def test_a_stalled_host_is_hedged_around(cluster: Cluster, files: Path) -> None:
    """get asks k hosts; one that stalls costs ``hedge_after``, not the timeout."""
    owner = cluster.client(seed=15)
    src = cluster.random_file(files, "stall", 3 * MiB, seed=15)
    res = put(cluster, owner, src)
    man = cluster.run(cluster.manifest_of(owner, res["file_id"]))
    target = man.segments[0].shares[0]
    host = cluster.host(cluster.index_of(target.host_id))
    release = asyncio.Event()
    real_get = host._get

    async def stalled_get(fs: Any, f: Any, peer: bytes, ip: str | None) -> None:
        await release.wait()  # holds the share until the test is over
        await real_get(fs, f, peer, ip)

    reader = cluster.client(1, owner.keys, seed=16)
    reader.hedge_after = 0.3
    reader.timeout = 60.0
    reader.rtt = lambda host_id: 0.0 if host_id == target.host_id else 1.0  # asked first
    host._get = stalled_get  # type: ignore[method-assign]
    try:
        started = cluster.loop.time()
        get_same(cluster, reader, res, src)
        elapsed = cluster.loop.time() - started
    finally:
        host._get = real_get  # type: ignore[method-assign]
        release.set()
    assert reader.hedged_downloads >= 1
    assert elapsed < 20, elapsed  # nowhere near the 60 s transfer timeout
    assert reader.stats.failures.get(target.host_id, 0) == 0  # slow is not a failure


def test_connections_hosts_closed_while_idle_are_reopened_not_blamed(
        cluster: Cluster, files: Path) -> None:
    """Hosts hang up connections idle past their timeout; a client that reuses
    its connections (a long put, or get after put in one session) opens a
    new one instead of failing the request and counting it against the host."""
    hosts = [cluster.host(i) for i in range(len(cluster.nodes))]
    saved = [h.timeout for h in hosts]
    for h in hosts:
        h.timeout = 0.5
    try:
        owner = cluster.client(seed=21)
        src = cluster.random_file(files, "idle", 1 * MiB, seed=21)
        res = put(cluster, owner, src)
        assert owner._conns
        cluster.run(asyncio.sleep(1.5))  # every host hangs up
        assert not any(c.usable for c in owner._conns.values())
        got = get_same(cluster, owner, res, src)
    finally:
        for h, t in zip(hosts, saved):
            h.timeout = t
    assert got["host_failures"] == 0 and dict(owner.stats.failures) == {}


def test_a_corrupt_manifest_copy_is_skipped(cluster: Cluster, files: Path) -> None:
    owner = cluster.client(seed=14)
    src = cluster.random_file(files, "manifest", 20_000, seed=14)
    res = put(cluster, owner, src)
    entry = cluster.run(owner.find_entry(bytes.fromhex(res["file_id"])))
    first_id = entry.manifest_hosts[0][0]
    cluster.corrupt_share(cluster.index_of(first_id), entry.manifest_hash)
    reader = cluster.client(2, owner.keys, seed=15)
    get_same(cluster, reader, res, src)
    assert reader.stats.failures.get(first_id, 0) == 1


# -- hosts going away ---------------------------------------------------------------------


def _metadata_hosts(cluster: Cluster, client: Client, file_id: str) -> tuple[set[int], set[int]]:
    """(nodes holding the file's manifest, nodes holding the owner's index blob)."""
    entry = cluster.run(client.find_entry(bytes.fromhex(file_id)))
    _, _, pointer = cluster.run(client.read_index())
    assert pointer is not None
    return ({cluster.index_of(h) for h, _ in entry.manifest_hosts},
            {cluster.index_of(h) for h, _ in pointer.hosts})


@pytest.mark.slow
def test_get_survives_losing_half_the_hosts(make_cluster: Any, files: Path) -> None:
    cluster: Cluster = make_cluster(8)
    client = cluster.client(0, seed=16)
    src = cluster.random_file(files, "half", 3 * MiB, seed=16)
    res = put(cluster, client, src)
    manifest_at, index_at = _metadata_hosts(cluster, client, res["file_id"])
    # keep node 0 (the client's own node) and one copy of each metadata blob;
    # the file's 4/8 shares must then rebuild from the four hosts that are left
    keep = {0, min(manifest_at), min(index_at)}
    for i in range(8):
        if len(keep) < 4:
            keep.add(i)
    stop = sorted(set(range(8)) - keep)
    assert len(stop) == 4
    for i in stop:
        cluster.run(cluster.stop_node(i))
    reader = cluster.client(0, client.keys, seed=17)  # fresh connections only
    get_same(cluster, reader, res, src)
    assert [r["file_id"] for r in cluster.run(reader.ls())] == [res["file_id"]]


@pytest.mark.slow
def test_get_survives_losing_the_hosts_of_its_manifest(make_cluster: Any, files: Path) -> None:
    cluster: Cluster = make_cluster(8)
    owner = cluster.client(0, seed=18)
    src = cluster.random_file(files, "meta", 100_000, seed=18)
    res = put(cluster, owner, src)
    manifest_at, index_at = _metadata_hosts(cluster, owner, res["file_id"])
    # metadata is mirrored on at least n - k + 1 = 5 hosts: stop 4 of the
    # manifest's hosts (the most a 4/8 file may lose) and read from elsewhere
    assert len(manifest_at) >= 5 and len(index_at) >= 5
    reader_node = min(set(range(8)) - manifest_at) if set(range(8)) - manifest_at else 0
    stop = set(sorted(manifest_at - {reader_node})[:4])
    assert len(stop) == 4 and reader_node not in stop
    for i in sorted(stop):
        cluster.run(cluster.stop_node(i))
    reader = cluster.client(reader_node, owner.keys, seed=19)
    get_same(cluster, reader, res, src)


# -- full disks ----------------------------------------------------------------------------


def _live_uploads() -> int:
    """Segment uploads of a put, and publications of their segment records,
    still running and nobody asked to stop."""
    return len([t for t in asyncio.all_tasks()
                if not t.done() and t.cancelling() == 0
                and getattr(t.get_coro(), "__qualname__", "").endswith(
                    (".upload_segment", "._publish_quietly"))])


@pytest.fixture(scope="module")
def full_cluster(make_module_cluster: Any) -> Iterator[tuple[Cluster, Client, dict[str, Any]]]:
    """Eight hosts of 3 MiB each holding one small file; then a 20 MiB put at
    4/8 fails (40 MiB of shares for 24 MiB of space), and so does one at 1/3."""
    files = Path(tempfile.mkdtemp(prefix="xc-f-", dir="/tmp"))
    try:
        yield _fill(make_module_cluster(8, 3 * MiB), files)
    finally:
        shutil.rmtree(files, ignore_errors=True)


def _fill(cluster: Cluster, files: Path) -> tuple[Cluster, Client, dict[str, Any]]:
    client = cluster.client(0, seed=20)
    small = cluster.random_file(files, "small", 100_000, seed=20)
    first = put(cluster, client, small)
    big = cluster.random_file(files, "big", 20 * MiB, seed=21)
    before = cluster.share_counts()

    async def failing_put(red: Redundancy) -> tuple[BaseException, int]:
        try:
            await client.put(big, red)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            return exc, _live_uploads()
        raise AssertionError(f"a 20 MiB put at {red} fitted in 24 MiB")

    exc, _ = cluster.run(failing_put(R48))
    cluster.run(asyncio.sleep(0.5))  # let whatever is still in flight land
    after = cluster.share_counts()
    exc13, lingering = cluster.run(failing_put(R13))
    cluster.run(asyncio.sleep(0.5))
    return cluster, client, {"first": first, "small": small, "exc": exc, "exc13": exc13,
                             "lingering": lingering, "before": before, "after": after}


def test_put_on_full_hosts_fails_cleanly(full_cluster: Any) -> None:
    cluster, client, info = full_cluster
    for exc in (info["exc"], info["exc13"]):
        assert isinstance(exc, (NotEnoughHosts, CapacityExceeded)), repr(exc)
        text = str(exc)
        assert "\n" not in text and text.startswith("could not place share"), text
    # no partial index entry, and the earlier file is intact
    assert set(ls_by_id(cluster, client)) == {info["first"]["file_id"]}
    get_same(cluster, client, info["first"], info["small"])


def test_put_on_full_hosts_says_they_are_full(full_cluster: Any) -> None:
    text = str(full_cluster[2]["exc"])
    assert "no room" in text or "full" in text or "free" in text, text


def test_failed_put_stops_uploading(full_cluster: Any) -> None:
    assert full_cluster[2]["lingering"] == 0


def test_failed_put_leaves_no_orphan_shares(full_cluster: Any) -> None:
    """(Was a strict xfail: a failed put now deletes the shares it placed.)"""
    _cluster, client, info = full_cluster
    assert info["after"] == info["before"]
    assert client.undone_shares > 0


def test_a_failed_put_publishes_no_segment_record(full_cluster: Any) -> None:
    """A segment's seg record (its repair authorisation) is published while
    its shares are placed; when the put fails, a publication still under way
    is stopped with it, not left to land after the shares were undone."""
    cluster, client, info = full_cluster
    published: list[Any] = []
    real = client.dht_publish

    async def slow_publish(rec: Any) -> int:  # a DHT slower than the placements
        await asyncio.sleep(1.0)
        published.append(rec)
        return await real(rec)

    async def failing_put() -> int:
        client.dht_publish = slow_publish
        try:
            await client.put(info["small"].with_name("big"), R48)
        except (NotEnoughHosts, CapacityExceeded):
            return _live_uploads()
        finally:
            del client.dht_publish
        raise AssertionError("a 20 MiB put at 4/8 fitted in 24 MiB")

    assert cluster.run(failing_put()) == 0
    cluster.run(asyncio.sleep(1.5))
    assert published == []


# -- a node stopping ------------------------------------------------------------------------


def test_a_stopped_node_leaves_no_task_running(files: Path) -> None:
    from xcore.node import NodeService, init_node

    async def main() -> list[str]:
        before = asyncio.all_tasks()
        init_node(files / "solo", capacity=MiB, difficulty=2, diversity=False)
        svc = NodeService(files / "solo")
        await svc.start()
        await svc.join()
        svc.announce()
        await asyncio.sleep(0.2)
        await svc.stop()
        return [getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks() - before
                if not t.done() and t is not asyncio.current_task()]

    assert asyncio.run(main()) == []
