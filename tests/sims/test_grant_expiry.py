"""Hosts free the space nobody pays for any more.

The real node code in virtual time (:func:`sims.protocol.run_sim`), with the
client's grant term cut to six hours: an owner puts a file and goes away.
While the grants run, every share, manifest copy and index copy is held;
after they expire each host drops its shares (``HostService.expire``, run
hourly by the node), forgets their segments and repairs nothing back.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

import xcore.client.files as files
from sims.protocol import ProtocolConfig, ProtocolSim, run_sim

HOUR = 3600.0


def _stored(sim: ProtocolSim) -> int:
    return sum(h.svc.host.store.stats()["shares"] for h in sim.hosts
               if h.up and h.svc is not None and h.svc.host is not None)


def test_shares_are_dropped_once_their_grants_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "GRANT_TERM", int(6 * HOUR))
    cfg = ProtocolConfig.from_dict({
        "sim": {"nodes": 8, "duration_days": 1.0},
        "data": {"files": 1, "file_size_mib": 0.25, "redundancy": "2/4"},
        "repair": {"interval_minutes": 30, "grace_minutes": 60},
        "audit": {"interval_minutes": 2 * 60},
    })

    async def main(sim: ProtocolSim) -> dict[str, Any]:
        await sim.setup()
        svc, owner = await sim._client("owner")
        path = sim.workdir / "file.bin"
        path.write_bytes(random.Random(6).randbytes(256 * 1024))
        await owner.put(path, sim.red)
        owner.close()
        await svc.stop()
        held = _stored(sim)
        await asyncio.sleep(4 * HOUR)
        still = _stored(sim)
        await asyncio.sleep(3 * HOUR)  # past the term, and an hourly expiry run
        hosts = [h.svc.host for h in sim.hosts if h.svc is not None and h.svc.host is not None]
        return {
            "held": held, "still": still, "after": _stored(sim),
            "segments": sum(len(host.segments()) for host in hosts),
            "expired": sum(host.counters.get("grants_expired", 0) for host in hosts),
            "repairs": sum(len(h.svc.repairer.events) for h in sim.hosts
                           if h.svc is not None and h.svc.repairer is not None),
            "bytes": sum(host.store.stats()["bytes_stored"] for host in hosts),
        }

    _, out = run_sim(cfg, 31, main)
    # 4 data shares, 5 manifest copies, 5 copies of each index blob written
    assert out["held"] >= 4 + 5 + 5 and out["still"] == out["held"]
    assert out["after"] == 0 and out["bytes"] == 0 and out["segments"] == 0
    assert out["expired"] == out["held"]
    assert out["repairs"] == 0
