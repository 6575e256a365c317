"""Hosts free the space nobody pays for any more, and owners can renew.

The real node code in virtual time (:func:`sims.protocol.run_sim`), with the
client's grant term cut to three hours. An owner puts two files and goes away.
Two hours in, it renews one of them (``Client.renew``: later grants, new
contracts and later segment records at every holder; no bytes move). Past
the first term every share of the other file, its manifest copies and the
old index copies are gone from every host (``HostService.expire``, run
hourly by each node), their segments forgotten and nothing repaired back;
the renewed file and the rewritten index are still whole, and a fresh
client gets the file. Past the renewed term everything is gone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import xcore.client.files as files
from sims.protocol import ProtocolConfig, ProtocolSim, run_sim
from tests.sims.owner_files import put_random
from xcore.contracts.hosts import loc_contract, loc_key
from xcore.errors import NotFound

HOUR = 3600.0


def config() -> ProtocolConfig:
    """8 nodes at 2/4, hourly repair checks with an hour's grace, audits every 6 h."""
    return ProtocolConfig.from_dict({
        "sim": {"nodes": 8, "duration_days": 1.0},
        "data": {"files": 1, "file_size_mib": 0.25, "redundancy": "2/4"},
        "repair": {"interval_minutes": 60, "grace_minutes": 60},
        "audit": {"interval_minutes": 6 * 60},
    })


def _holding(sim: ProtocolSim, share_hash: bytes) -> int:
    return sum(1 for h in sim.hosts if h.up and h.svc is not None and h.svc.host is not None
               and h.svc.host.store.has(share_hash))


def _stored(sim: ProtocolSim) -> int:
    return sum(h.svc.host.store.stats()["shares"] for h in sim.hosts
               if h.up and h.svc is not None and h.svc.host is not None)


def _contract_ends(sim: ProtocolSim, share_hash: bytes) -> set[int]:
    return {sc.contract.end for h in sim.hosts if h.svc is not None
            for r in h.svc.dht.store.get(loc_key(share_hash), sim.loop.time())
            if (sc := loc_contract(r)) is not None}


def test_grants_expire_unless_renewed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "GRANT_TERM", int(3 * HOUR))

    async def main(sim: ProtocolSim) -> dict[str, Any]:
        await sim.setup()
        svc, owner = await sim._client("owner")
        shares: dict[str, set[bytes]] = {}
        ids: dict[str, bytes] = {}
        for name in ("kept", "dropped"):
            put = await put_random(sim, owner, name, name)
            ids[name], shares[name] = put.file_id, put.shares
            if name == "kept":
                sim.file_ids.append((put.file_id, put.sha256))
        owner.close()
        await svc.stop()
        held = _stored(sim)
        await asyncio.sleep(2 * HOUR)
        still = _stored(sim)
        svc, owner = await sim._client("owner")
        renewed = await owner.renew([ids["kept"]])
        owner.close()
        await svc.stop()
        ends = {h: _contract_ends(sim, h) for h in shares["kept"]}
        await asyncio.sleep(2.2 * HOUR)  # past the first term, and an hourly expiry run
        after = {name: {h: _holding(sim, h) for h in hs} for name, hs in shares.items()}
        ok, corrupt = await sim.fetch_all()  # a fresh client: index, manifest, data
        svc, owner = await sim._client("owner2")
        listed = {e["name"]: e["until"] for e in await owner.ls()}
        try:
            await owner.get(ids["dropped"], sim.workdir / "dropped.out")
            gone = ""
        except NotFound as exc:
            gone = str(exc)
        owner.close()
        await svc.stop()
        await asyncio.sleep(2 * HOUR)  # past the renewed term, and an expiry run
        hosts = [h.svc.host for h in sim.hosts if h.svc is not None and h.svc.host is not None]
        return {
            "held": held, "still": still, "renewed": renewed, "ends": ends, "after": after,
            "fetched": (ok, corrupt), "listed": listed, "gone": gone, "finally": _stored(sim),
            "segments": sum(len(host.segments()) for host in hosts),
            "repairs": sum(len(h.svc.repairer.events) for h in sim.hosts
                           if h.svc is not None and h.svc.repairer is not None),
            "start": sim.start,
        }

    _, out = run_sim(config(), 31, main)
    assert out["held"] >= 2 * (4 + 5) + 5 and out["still"] == out["held"]
    r = out["renewed"]
    # 4 data shares and 5 manifest copies renewed where they are, with contracts
    assert (r["files"], r["renewed"], r["contracts"], r["not_held"], r["failed"]) == (1, 9, 9, 0, 0)
    for h, ends in out["ends"].items():  # each holder's contract now runs to the new term
        assert max(ends) == r["until"], (h.hex()[:8], ends)
    assert all(n == 0 for n in out["after"]["dropped"].values()), out["after"]["dropped"]
    assert sorted(out["after"]["kept"].values()) == [1] * 4 + [5], out["after"]["kept"]
    assert out["fetched"] == (1, 0)
    # (the index keeps listing a file left to expire, until it is removed),
    # with the term each file has
    assert sorted(out["listed"]) == ["dropped", "kept"]
    assert out["listed"]["kept"] == r["until"]
    assert out["listed"]["dropped"] < out["listed"]["kept"] - HOUR
    assert "its term ended" in out["gone"] and "xcore renew" in out["gone"]
    assert out["repairs"] == 0
    assert out["finally"] == 0 and out["segments"] == 0


def _count_segment_renewals(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """``Client._renew_segment`` counted: how many run at once now, and at most."""
    busy = {"now": 0, "max": 0}
    real = files.Client._renew_segment

    async def counted(self: Any, *args: Any) -> None:
        busy["now"] += 1
        busy["max"] = max(busy["max"], busy["now"])
        try:
            await real(self, *args)
        finally:
            busy["now"] -= 1
    monkeypatch.setattr(files.Client, "_renew_segment", counted)
    return busy


def test_a_file_of_many_segments_is_renewed_a_few_segments_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Renewing a big file one segment after another took a DHT round trip
    per share per segment in turn: segments now go RENEW_SEGMENTS_IN_FLIGHT
    at a time, and every share of every segment is still renewed."""
    monkeypatch.setattr(files, "segment_size", lambda red: 32 * 1024 * red.k)
    busy = _count_segment_renewals(monkeypatch)

    async def main(sim: ProtocolSim) -> dict[str, Any]:
        await sim.setup()
        svc, owner = await sim._client("owner")
        put = await put_random(sim, owner, "big", 7, size=6 * 64 * 1024)  # 6 segments
        renewed = await owner.renew()
        owner.close()
        await svc.stop()
        return {"segments": len(put.manifest.segments), "renewed": renewed,
                "ends": {h: _contract_ends(sim, h) for h in put.shares}}

    _, out = run_sim(config(), 32, main)
    r = out["renewed"]
    assert out["segments"] == 6
    assert (r["renewed"], r["contracts"], r["not_held"], r["failed"]) == (6 * 4 + 5, 6 * 4 + 5, 0, 0)
    assert all(max(ends) == r["until"] for ends in out["ends"].values())
    assert 1 < busy["max"] <= files.RENEW_SEGMENTS_IN_FLIGHT


def test_many_small_files_are_renewed_several_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files were renewed one after another, so an owner of many one-segment
    files waited a manifest fetch and a segment's round trips per file in
    turn: now segments of different files share the lanes, and every share
    and manifest copy of every file is still renewed."""
    busy = _count_segment_renewals(monkeypatch)

    async def main(sim: ProtocolSim) -> dict[str, Any]:
        await sim.setup()
        svc, owner = await sim._client("owner")
        puts = [await put_random(sim, owner, f"small{i}", 40 + i, size=20_000) for i in range(5)]
        renewed = await owner.renew()
        owner.close()
        await svc.stop()
        return {"segments": sum(len(p.manifest.segments) for p in puts), "renewed": renewed,
                "ends": {h: _contract_ends(sim, h) for p in puts for h in p.shares}}

    _, out = run_sim(config(), 33, main)
    r = out["renewed"]
    assert out["segments"] == 5
    # 5 files x (4 shares + 5 manifest copies at 2/4), every one renewed with a contract
    assert (r["files"], r["renewed"], r["contracts"], r["not_held"], r["failed"]) == (5, 45, 45, 0, 0)
    assert all(max(ends) == r["until"] for ends in out["ends"].values())
    assert 1 < busy["max"] <= files.RENEW_SEGMENTS_IN_FLIGHT
