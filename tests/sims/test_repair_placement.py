"""Repair never gives one host two shares of a segment, even a holder it did not know of.

The real node code in virtual time (:func:`sims.protocol.run_sim`): a 4/8
file on 10 hosts. The holder of share 7 loses its ``loc`` record from the
whole DHT (as when lookups of it fail under load), so the segment's other
holders count share 7 as missing too; then three other holders die. The
leader regenerates the lost shares, and the only hosts left to take them
are the two that hold nothing of the segment and the holder nobody can see.
That host refuses a second share of the segment (a repair PUT names its
segment), so no host ends up with two; the segment stays above its
threshold with what could be placed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sims.protocol import ProtocolConfig, ProtocolSim, run_sim
from tests.sims.owner_files import put_random
from xcore.contracts.hosts import loc_key

MIN = 60.0


def test_a_holder_missing_from_the_dht_is_not_given_a_second_share() -> None:
    cfg = ProtocolConfig.from_dict({
        "sim": {"nodes": 10, "duration_days": 1.0},
        "data": {"files": 1, "file_size_mib": 0.25, "redundancy": "4/8"},
        "repair": {"interval_minutes": 2, "grace_minutes": 5},
        "audit": {"interval_minutes": 24 * 60},
    })

    async def main(sim: ProtocolSim) -> dict[str, Any]:
        await sim.setup()
        svc, owner = await sim._client("owner")
        man = (await put_random(sim, owner, "file.bin", 8)).manifest
        owner.close()
        await svc.stop()
        [seg] = man.segments
        index_of = {h.svc.identity.node_id: i for i, h in enumerate(sim.hosts) if h.svc}
        holder = {s.index: index_of[s.host_id] for s in seg.shares}
        hidden = sim.hosts[holder[7]].svc
        assert hidden is not None
        key = loc_key(seg.shares[7].hash)
        hidden.dht.unpublish("loc", key)
        for h in sim.hosts:
            if h.svc is not None:
                h.svc.dht.store.entries.get(key, {}).pop(hidden.identity.node_id, None)
                if h.svc.repairer is not None:
                    h.svc.repairer._loc_cache.clear()
        for i in (0, 1, 2):
            sim._kill(sim.hosts[holder[i]], permanent=True)
        await asyncio.sleep(40 * MIN)
        per_host = {i: [s.index for s in seg.shares
                        if h.svc is not None and h.svc.host is not None
                        and h.svc.host.store.has(s.hash)]
                    for i, h in enumerate(sim.hosts) if h.up}
        return {
            "per_host": per_host, "hidden": holder[7],
            "refused": sum(h.svc.host.counters.get("puts_second_share", 0) for h in sim.hosts
                           if h.up and h.svc is not None and h.svc.host is not None),
        }

    _, out = run_sim(cfg, 5, main)
    crowded = {i: ix for i, ix in out["per_host"].items() if len(ix) > 1}
    assert not crowded, out
    assert out["per_host"][out["hidden"]] == [7]
    assert out["refused"] >= 1  # the hidden holder was offered a second share, and said no
    held = sorted(i for ix in out["per_host"].values() for i in ix)
    assert len(held) >= 6 and len(set(held)) == len(held), held  # at or above the threshold
