"""Metadata blobs are repaired without the owner, like data (DESIGN.md principle 9).

The real node code in virtual time (:func:`sims.protocol.run_sim`): an owner
puts a file and goes away; three of the five hosts holding the file's sealed
manifest die for good, leaving two copies, below the repair threshold of a
1/5 mirror (1 + ceil(4/3) = 3). The survivors regenerate the lost copies onto
new hosts, and a fresh client with the owner's keys gets the file. Then the
owner removes the file: every copy of the manifest (the repaired ones too)
and of the replaced index blobs is deleted, and nothing brings them back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sims.protocol import ProtocolConfig, ProtocolSim, run_sim
from tests.sims.owner_files import put_random
from xcore.contracts.segments import segment_id

MIN = 60.0
COPIES = 5  # BLOB_COPIES: the manifest of a 2/4 file gets max(5, n - k + 1)


def _holding(sim: ProtocolSim, share_hash: bytes) -> list[int]:
    """Hosts that are up and hold ``share_hash`` on disk (ground truth)."""
    return [i for i, h in enumerate(sim.hosts)
            if h.up and h.svc is not None and h.svc.host is not None
            and h.svc.host.store.has(share_hash)]


def _watching(sim: ProtocolSim, seg: bytes) -> list[int]:
    """Hosts that are up and still keep segment ``seg`` on their repair watch list."""
    return [i for i, h in enumerate(sim.hosts)
            if h.up and h.svc is not None and h.svc.host is not None
            and seg in h.svc.host.segments()]


def test_a_manifest_below_its_threshold_is_repaired_and_the_file_still_comes_back() -> None:
    cfg = ProtocolConfig.from_dict({
        "sim": {"nodes": 10, "duration_days": 1.0},
        "data": {"files": 1, "file_size_mib": 0.25, "redundancy": "2/4"},
        "repair": {"interval_minutes": 2, "grace_minutes": 5},
        "audit": {"interval_minutes": 24 * 60},  # audits are not what this is about
    })

    async def main(sim: ProtocolSim) -> dict[str, Any]:
        await sim.setup()
        # the owner puts a file, notes where its metadata went, and goes away
        svc, owner = await sim._client("owner")
        put = await put_random(sim, owner, "file.bin", 3)
        fid, entry, man = put.file_id, put.entry, put.manifest
        sim.file_ids.append((fid, put.sha256))
        _, _, pointer = await owner.read_index()
        assert pointer is not None
        owner.close()
        await svc.stop()

        mhash = entry.manifest_hash
        mseg = segment_id([mhash] * COPIES)
        data = {s.hash for seg in man.segments for s in seg.shares}
        at = _holding(sim, mhash)
        assert len(at) == COPIES and len(entry.manifest_hosts) == COPIES
        assert len(_watching(sim, mseg)) == COPIES  # every copy came with its seg record
        # kill three manifest holders, those holding the fewest data shares first
        # (a 2/4 segment then keeps at least k = 2 shares)
        held = {i: sum(sim.hosts[i].svc.host.store.has(s) for s in data)  # type: ignore[union-attr]
                for i in at}
        victims = sorted(at, key=lambda i: (held[i], i))[:3]
        for i in victims:
            sim._kill(sim.hosts[i], permanent=True)
        assert len(_holding(sim, mhash)) == 2  # below the threshold of 3
        await asyncio.sleep(30 * MIN)

        after = _holding(sim, mhash)
        repairs = [ev for h in sim.hosts if h.svc is not None and h.svc.repairer is not None
                   for ev in h.svc.repairer.events if ev.segment == mseg.hex()]
        ok, corrupt = await sim.fetch_all()  # a fresh client, the owner's keys only

        # the owner removes the file: every copy of the manifest goes, repaired ones too
        svc, owner = await sim._client("owner")
        _, _, before_rm = await owner.read_index()
        await owner.rm(fid)
        owner.close()
        await svc.stop()
        await asyncio.sleep(20 * MIN)  # several repair rounds, past the grace period
        assert before_rm is not None
        old_index = {pointer.blob_hash, before_rm.blob_hash}
        return {"after": after, "victims": victims, "repairs": repairs, "ok": ok,
                "corrupt": corrupt, "manifest_left": _holding(sim, mhash),
                "manifest_watched": _watching(sim, mseg),
                "old_index_left": {h.hex(): _holding(sim, h) for h in old_index}}

    _, out = run_sim(cfg, 11, main)
    assert len(out["after"]) == COPIES  # back to n copies, no more
    assert not set(out["after"]) & set(out["victims"])
    assert [ev.ok for ev in out["repairs"]] == [True]
    assert sorted(out["repairs"][0].placed) == ["2", "3", "4"]
    assert (out["ok"], out["corrupt"]) == (1, 0)
    assert out["manifest_left"] == [] and out["manifest_watched"] == []
    assert all(v == [] for v in out["old_index_left"].values()), out["old_index_left"]
