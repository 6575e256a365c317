"""The pure repair rules: lazy repair with a grace period, a deterministic leader."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from xcore.contracts.repair import RepairPlanner, TokenBucket

SEG = bytes(20)
N, K, THRESHOLD = 8, 4, 6
H = [bytes([i + 1]) * 20 for i in range(N)]  # holder i holds share i


def planner(own: int = 0, grace: float = 60.0) -> RepairPlanner:
    return RepairPlanner(H[own], grace)


def holders() -> dict[int, list[bytes]]:
    return {i: [H[i]] for i in range(N)}


def observe_all(p: RepairPlanner, now: float, dead: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    for i in range(N):
        p.observe(SEG, i, H[i], i not in dead, now)


def test_all_live_is_healthy() -> None:
    p = planner()
    observe_all(p, 0.0)
    d = p.decide(SEG, N, THRESHOLD, holders(), 0.0)
    assert d.action == "healthy" and d.missing == [] and len(d.healthy) == N


def test_a_host_back_within_the_grace_period_triggers_no_repair() -> None:
    p = planner(grace=60.0)
    observe_all(p, 0.0)
    dead = {1, 2, 3}  # below the threshold if they were gone
    observe_all(p, 10.0, dead)
    assert p.decide(SEG, N, THRESHOLD, holders(), 30.0).action == "healthy"  # still in grace
    observe_all(p, 50.0)  # they came back before the grace period ended
    for t in (70.0, 200.0):
        observe_all(p, t)
        assert p.decide(SEG, N, THRESHOLD, holders(), t).action == "healthy"


def test_after_the_grace_period_the_leader_repairs_and_the_others_follow() -> None:
    dead = {1, 2, 3}
    decisions = {}
    for own in range(N):
        p = planner(own, grace=60.0)
        observe_all(p, 0.0)
        observe_all(p, 10.0, dead)
        observe_all(p, 80.0, dead)
        decisions[own] = p.decide(SEG, N, THRESHOLD, holders(), 80.0)
    live = [i for i in range(N) if i not in dead]
    leader = min((H[i] for i in live), key=lambda h: int.from_bytes(h, "big") ^ 0)
    for own in live:
        d = decisions[own]
        assert d.missing == sorted(dead)
        assert d.leader == leader  # every watcher computes the same leader
        assert d.action == ("repair" if H[own] == leader else "follow")


def test_degraded_but_above_threshold_waits() -> None:
    p = planner(grace=60.0)
    observe_all(p, 0.0)
    observe_all(p, 100.0, {5})  # 7 of 8 healthy >= threshold 6
    observe_all(p, 200.0, {5})
    d = p.decide(SEG, N, THRESHOLD, holders(), 200.0)
    assert d.action == "degraded" and d.missing == [5]


def test_when_the_leader_dies_the_next_closest_takes_over() -> None:
    dead = {1, 2, 3}
    p = planner(own=4, grace=60.0)
    observe_all(p, 0.0)
    observe_all(p, 10.0, dead)
    first = p.decide(SEG, N, THRESHOLD, holders(), 80.0)
    assert first.leader is not None
    old = H.index(first.leader)
    observe_all(p, 90.0, dead | {old})  # the leader dies mid-repair
    observe_all(p, 200.0, dead | {old})  # past its grace period
    second = p.decide(SEG, N, THRESHOLD, holders(), 200.0)
    assert second.leader is not None and second.leader != first.leader
    assert H.index(second.leader) not in dead | {old}


def test_two_segments_are_judged_independently() -> None:
    p = planner(grace=10.0)
    other = bytes([9]) * 20
    for t, dead in ((0.0, set()), (5.0, {1, 2, 3}), (20.0, {1, 2, 3})):
        observe_all(p, t, dead)
        for i in range(N):
            p.observe(other, i, H[i], i not in {4, 5, 6}, t)
    assert p.decide(SEG, N, THRESHOLD, holders(), 20.0).missing == [1, 2, 3]
    assert p.decide(other, N, THRESHOLD, holders(), 20.0).missing == [4, 5, 6]


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, N - 1), max_size=N), st.floats(0, 1000))
def test_missing_only_after_grace(dead: set[int], gap: float) -> None:
    p = planner(grace=100.0)
    observe_all(p, 0.0)
    observe_all(p, 1.0, dead)
    d = p.decide(SEG, N, THRESHOLD, holders(), 1.0 + gap)
    if gap < 100.0:
        assert d.missing == []
    else:
        assert d.missing == sorted(dead)


def test_token_bucket_bounds_repair_bandwidth() -> None:
    b = TokenBucket(rate=1e6, burst=2e6, tokens=2e6, stamp=0.0)
    assert b.delay_for(2_000_000, 0.0) == 0.0
    assert abs(b.delay_for(1_000_000, 0.0) - 1.0) < 1e-9  # must wait a second at 1 MB/s


def test_a_leader_that_misses_a_probe_keeps_the_lead_until_its_grace_ends() -> None:
    """A leader busy with the repair may miss a probe: the next holder must not
    pre-empt it (two repairs at once) before the leader's grace period is over."""
    dead = {1, 2, 3}
    watcher = 7
    p = planner(own=watcher, grace=60.0)
    observe_all(p, 0.0)
    observe_all(p, 10.0, dead)
    first = p.decide(SEG, N, THRESHOLD, holders(), 80.0)
    assert first.leader is not None and first.missing == sorted(dead)
    lead = H.index(first.leader)
    assert lead != watcher
    observe_all(p, 85.0, dead | {lead})  # one probe of the leader times out
    busy = p.decide(SEG, N, THRESHOLD, holders(), 90.0)
    assert busy.leader == first.leader and busy.action == "follow"
    assert busy.grace == [lead] and busy.candidates[0] == first.leader
    assert first.leader not in {h for hs in busy.live_holders.values() for h in hs}
    observe_all(p, 150.0, dead | {lead})  # silent for the whole grace period
    later = p.decide(SEG, N, THRESHOLD, holders(), 150.0)
    assert later.leader != first.leader and first.leader not in later.candidates
    assert later.missing == sorted(dead | {lead})


def test_the_status_names_the_shares_held_up_only_by_the_grace_period() -> None:
    p = planner(grace=60.0)
    observe_all(p, 0.0)
    observe_all(p, 10.0, {2, 5})
    d = p.decide(SEG, N, THRESHOLD, holders(), 20.0)
    assert d.action == "healthy" and d.grace == [2, 5] and d.missing == []
