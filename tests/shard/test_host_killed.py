"""A host killed in the middle of a transfer (in-memory network, virtual time):
the client gets a clean error, the host keeps no partial share."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest

from xcore.crypto.identity import Identity
from xcore.errors import RemoteProtocolError, Timeout
from xcore.net.vloop import SimNet, VirtualTimeLoop
from xcore.shard.host import HostService
from xcore.shard.transfer import Grant, HostConnection

HOST_IP, CLIENT_IP = "10.0.0.1", "10.0.0.2"


def setup(tmp_path: Path) -> tuple[VirtualTimeLoop, SimNet, HostService, Identity, Identity]:
    loop = VirtualTimeLoop()
    net = SimNet(loop, random.Random(1), latency=lambda a, b, r: 0.01, bandwidth=1e6)
    r = random.Random(2)
    host_id = Identity(r.randbytes(32), 0)
    client_id = Identity(r.randbytes(32), 0)
    host = HostService(tmp_path / "host", host_id, 64 << 20, clock=loop.time,
                       token_bytes=r.randbytes, streams=net.for_host(HOST_IP), threads=False)
    return loop, net, host, host_id, client_id


@pytest.mark.parametrize("direction", ["put", "get"])
def test_host_killed_mid_transfer(tmp_path: Path, direction: str) -> None:
    loop, net, host, host_id, client_id = setup(tmp_path)
    data = random.Random(3).randbytes(2 << 20)  # 2 MiB at 1 MB/s: about 2 s on the wire
    h = hashlib.sha256(data).digest()

    async def main() -> BaseException | None:
        addr = await host.start(HOST_IP, 7000)
        conn = await HostConnection.connect(addr, client_id, host_id.node_id,
                                            random.Random(4).randbytes, timeout=5.0,
                                            streams=net.for_host(CLIENT_IP))
        grant = Grant.create(client_id, h, host_id.node_id, int(loop.time()) + 3600)
        if direction == "get":
            await conn.put_share(h, data, grant)
            assert host.store.has(h)
            conn = await HostConnection.connect(addr, client_id, host_id.node_id,
                                                random.Random(5).randbytes, timeout=5.0,
                                                streams=net.for_host(CLIENT_IP))
            op = conn.get_share(h)
        else:
            op = conn.put_share(h, data, grant)
        task = asyncio.ensure_future(op)
        await asyncio.sleep(0.8)  # mid-transfer
        assert not task.done()
        net.kill_host(HOST_IP)
        try:
            await task
        except (RemoteProtocolError, Timeout) as exc:
            return exc
        return None

    asyncio.set_event_loop(loop)
    try:
        err = loop.run_until_complete(main())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    assert isinstance(err, (RemoteProtocolError, Timeout)), "the client must get a clean error"
    if direction == "put":
        # nothing partial on the host's disk: not the share, not a temp file
        assert not host.store.has(h)
        leftovers = [p for p in (tmp_path / "host" / "shares").rglob("*")
                     if p.is_file() and p.name != "store-stats"]
        assert leftovers == []


class _FullDisk:
    """A share file on a disk that is full: every write fails with ENOSPC."""

    def write(self, data: bytes, /) -> int:
        import errno
        raise OSError(errno.ENOSPC, "No space left on device")

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_disk_full_on_a_host_is_a_clear_refusal(tmp_path: Path) -> None:
    from xcore.errors import DiskFull
    loop, net, host, host_id, client_id = setup(tmp_path)
    data = random.Random(6).randbytes(300_000)
    h = hashlib.sha256(data).digest()

    async def main() -> BaseException | None:
        addr = await host.start(HOST_IP, 7000)
        host.store._opener = lambda path: _FullDisk()  # the disk fills up under the host
        conn = await HostConnection.connect(addr, client_id, host_id.node_id,
                                            random.Random(4).randbytes, timeout=5.0,
                                            streams=net.for_host(CLIENT_IP))
        grant = Grant.create(client_id, h, host_id.node_id, int(loop.time()) + 3600)
        try:
            await conn.put_share(h, data, grant)
        except DiskFull as exc:
            assert not conn.broken  # a refusal, the connection stays usable
            return exc
        return None

    asyncio.set_event_loop(loop)
    try:
        err = loop.run_until_complete(main())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    assert isinstance(err, DiskFull) and "disk full" in str(err)
    assert not host.store.has(h)
    assert host.counters.get("puts_disk_full") == 1
    assert [p for p in (tmp_path / "host" / "shares").rglob("*")
            if p.is_file() and p.name != "store-stats"] == []
