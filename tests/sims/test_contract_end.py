"""A delete ends the owner's storage contracts (xcore.contracts.contract, "Ending early").

The real node code in virtual time (:func:`sims.protocol.run_sim`): an owner
puts a file and every host signs a contract per share (data shares and
manifest copies); audits pass. The owner removes the file. Each host then
republishes its contract with the owner's signed DELETE, so no auditor
challenges it for the deleted shares any more, and an auditor still holding
the contract from before the delete looks again before it blames anybody.
Without this an honest host would be recorded as unanswering for every
deleted share, at every audit, for the rest of the term.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sims.protocol import ProtocolConfig, ProtocolSim, run_sim
from tests.sims.owner_files import put_random
from xcore.contracts.hosts import loc_address, loc_contract, loc_key
from xcore.errors import RemoteProtocolError

MIN = 60.0


def _contracts(sim: ProtocolSim, shares: set[bytes]) -> list[tuple[int, Any, Any]]:
    """(holder index, record, signed contract) of every contract for ``shares``
    (in ``loc`` records) held in a live node's DHT store."""
    keys = {loc_key(s) for s in shares}
    out = []
    for i, h in enumerate(sim.hosts):
        if h.svc is None or not h.up:
            continue
        for rec in h.svc.dht.store:
            sc = loc_contract(rec) if rec.kind == "loc" and rec.key in keys else None
            if sc is not None:
                out.append((i, rec, sc))
    return out


def _counter(sim: ProtocolSim, name: str) -> int:
    return sum(h.svc.auditor.counters.get(name, 0) for h in sim.hosts
               if h.svc is not None and h.svc.auditor is not None)


async def _audit_everything(sim: ProtocolSim) -> None:
    for h in sim.hosts:
        if h.svc is not None and h.svc.auditor is not None:
            await h.svc.auditor.round(force=True)


def test_a_deleted_file_ends_its_contracts_and_no_host_is_blamed() -> None:
    cfg = ProtocolConfig.from_dict({
        "sim": {"nodes": 8, "duration_days": 1.0},
        "data": {"files": 1, "file_size_mib": 0.25, "redundancy": "2/4"},
        "repair": {"interval_minutes": 10, "grace_minutes": 30},
        "audit": {"interval_minutes": 24 * 60},  # rounds are forced below
    })

    async def main(sim: ProtocolSim) -> dict[str, Any]:
        await sim.setup()
        svc, owner = await sim._client("owner")
        put = await put_random(sim, owner, "file.bin", 5)
        fid, shares = put.file_id, put.shares
        await asyncio.sleep(2 * MIN)  # the hosts publish their contracts
        before = _contracts(sim, shares)
        await _audit_everything(sim)
        passed_before = _counter(sim, "audits_passed")
        failed_before = _counter(sim, "audits_failed")

        # an auditor that will miss the update: keep its pre-delete copy aside
        stale_at, stale_rec, stale_sc = next((i, r, sc) for i, r, sc in before
                                             if sc.contract.host_id
                                             != sim.hosts[i].svc.identity.node_id)  # type: ignore[union-attr]
        await owner.rm(fid)
        owner.close()
        await svc.stop()
        await asyncio.sleep(5 * MIN)
        after = _contracts(sim, shares)
        await _audit_everything(sim)
        failed_after = _counter(sim, "audits_failed")
        passed_after = _counter(sim, "audits_passed")

        # the stale auditor: its store put back to the contract from before the delete
        auditor = sim.hosts[stale_at].svc.auditor  # type: ignore[union-attr]
        store = sim.hosts[stale_at].svc.dht.store  # type: ignore[union-attr]
        store.entries[stale_rec.key][stale_rec.signer_id] = stale_rec
        planned = [sc for sc in auditor.known_contracts() if sc.contract.share_hash in shares]
        skipped0 = auditor.counters.get("audits_skipped_ended", 0)
        await auditor.round(host=stale_sc.contract.host_id, force=True)
        return {
            "before": before, "after": after, "passed_before": passed_before,
            "failed_before": failed_before, "failed_after": failed_after,
            "passed_after": passed_after, "planned_stale": planned,
            "skipped": auditor.counters.get("audits_skipped_ended", 0) - skipped0,
            "stale_failed": _counter(sim, "audits_failed"),
            "stale_known": [sc for sc in auditor.known_contracts()
                            if sc.contract.share_hash in shares],
            "bad": [row["host"] for h in sim.hosts if h.svc and h.svc.auditor
                    for row in h.svc.auditor.report()["hosts"] if row["bad"]],
            "deletes": sum(h.svc.host.counters.get("deletes", 0) for h in sim.hosts
                           if h.svc and h.svc.host),
        }

    _, out = run_sim(cfg, 21, main)
    before, after = out["before"], out["after"]
    # every share had contracts, each host's own, none ended; audits passed
    assert before and not any(sc.delete_sig for _, _, sc in before)
    assert out["passed_before"] > 0 and out["failed_before"] == 0
    assert out["deletes"] >= len({sc.contract.digest() for _, _, sc in before})
    # after rm nobody audits a deleted share any more, and nobody failed one
    assert out["failed_after"] == 0
    assert out["passed_after"] == out["passed_before"]
    # because every copy of every contract is ended by the owner's DELETE
    assert len(after) == len(before)
    for _, rec, sc in after:
        assert sc.delete_sig and sc.until == sc.ended < sc.contract.end
        sc.verify()
        with pytest.raises(RemoteProtocolError, match="deleted"):
            loc_address(rec)  # a tombstone: nobody is sent there for the share
    # an auditor that missed the update challenges once, finds the host's
    # ended contract, keeps it and blames nobody
    assert out["planned_stale"], "the stale copy should be planned"
    assert out["skipped"] >= 1 and out["stale_failed"] == 0
    assert out["stale_known"] == []
    assert out["bad"] == []
