"""A DHT lookup nobody answered is tried again before a client gives up.

The real node code in virtual time (:func:`sims.protocol.run_sim`). The
owner's client is cut off from every other node for a few seconds while it
looks up a record published elsewhere in the meantime: every request of
that lookup is lost and times out. The client tries once more after the
outage and finds the record, instead of failing the command (``strict``)
or taking "nobody answered" for "nothing there".
"""

from __future__ import annotations

import asyncio
from typing import Any

from sims.protocol import ProtocolConfig, ProtocolSim, run_sim
from xcore.dht.protocol import new_record
from xcore.dht.records import dht_key
from xcore.errors import LookupFailed
from xcore.net.aio import wait_op

OUTAGE = 5.0  # seconds: longer than a lookup takes to give up (2 s request timeouts)


def test_a_lookup_lost_to_a_short_outage_is_tried_again() -> None:
    cfg = ProtocolConfig.from_dict({
        "sim": {"nodes": 8, "duration_days": 1.0},
        "data": {"files": 1, "file_size_mib": 0.1, "redundancy": "2/4"},
        "audit": {"interval_minutes": 24 * 60},
    })

    async def main(sim: ProtocolSim) -> dict[str, Any]:
        await sim.setup()
        svc, owner = await sim._client("owner")
        assert svc.address is not None
        out: dict[str, Any] = {}
        for name, tries in (("once", 1), ("again", 2)):
            key = dht_key(name)
            host = sim.hosts[1].svc
            assert host is not None and host.driver is not None
            sim.net.partition([[svc.address[0]]])  # the client alone on its side
            rec = new_record(host.identity, "text", key, name.encode(), sim.loop.time())
            await wait_op(host.driver.call(lambda t: host.dht.publish(rec, t)), 30)
            sim.loop.call_later(OUTAGE, sim.net.heal)
            t0 = sim.loop.time()
            retries = owner.lookup_retries
            try:
                if tries == 1:  # what one attempt gives: nobody answered
                    op = svc.driver.call(lambda t: svc.dht.get(key, t))  # type: ignore[union-attr]
                    await wait_op(op, 60)
                    got: Any = "found"
                else:
                    got = [r.value for r in await owner.dht_get(key, strict=True)]
            except LookupFailed as exc:
                got = f"failed: {exc}"
            out[name] = (got, owner.lookup_retries - retries, sim.loop.time() - t0)
            await asyncio.sleep(OUTAGE + 1)
        owner.close()
        await svc.stop()
        return out

    _, out = run_sim(cfg, 41, main)
    assert out["once"][0].startswith("failed: no node answered"), out
    assert out["again"][:2] == ([b"again"], 1), out
    assert out["again"][2] < 3 * OUTAGE, out
