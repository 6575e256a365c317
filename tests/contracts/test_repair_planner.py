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


# -- mirrors (k = 1: metadata blobs, 1/n files): n copies of one share hash -----------------

M_N, M_THRESHOLD = 5, 3  # 1/5: threshold 1 + ceil(4/3)
M = [bytes([0x40 + i]) * 20 for i in range(M_N)]  # holder i holds one copy
MIRROR = [list(range(M_N))]  # one group: every index names the same hash


def mirror_holders(listed: int = M_N) -> dict[int, list[bytes]]:
    """As the repairer passes them: every holder of the hash under the group's first index."""
    return {0: M[:listed]}


def observe_mirrors(p: RepairPlanner, now: float, dead: set[int] = frozenset(),  # type: ignore[assignment]
                    listed: int = M_N) -> None:
    for i in range(listed):
        p.observe(SEG, 0, M[i], i not in dead, now)


def test_a_mirror_with_every_copy_answering_is_healthy() -> None:
    p = RepairPlanner(M[0], 60.0)
    observe_mirrors(p, 0.0)
    d = p.decide(SEG, M_N, M_THRESHOLD, mirror_holders(), 0.0, MIRROR)
    assert d.action == "healthy" and d.healthy == list(range(M_N)) and d.missing == []
    # every copy stands for one index, and every live holder is listed once
    assert sorted(h for hs in d.live_holders.values() for h in hs) == M
    assert all(len(hs) == 1 for hs in d.live_holders.values())


def test_a_mirror_that_lost_copies_is_not_healthy_because_one_copy_answers() -> None:
    """Indices are copies, not distinct shares: per index, 'some holder of
    this hash answered' is true while a single copy is left, so without
    groups the planner would never repair a mirror."""
    dead = {1, 2, 3}
    decisions = {}
    for own in range(M_N):
        p = RepairPlanner(M[own], 60.0)
        observe_mirrors(p, 0.0)
        observe_mirrors(p, 10.0, dead)
        observe_mirrors(p, 80.0, dead)
        decisions[own] = p.decide(SEG, M_N, M_THRESHOLD, mirror_holders(), 80.0, MIRROR)
    # the old rule: every holder of the hash listed (and probed) under every index
    old = RepairPlanner(M[0], 60.0)
    for t, gone in ((0.0, set()), (10.0, dead), (80.0, dead)):
        for i in range(M_N):
            for j in range(M_N):
                old.observe(SEG, i, M[j], j not in gone, t)
    assert old.decide(SEG, M_N, M_THRESHOLD, {i: M for i in range(M_N)}, 80.0).action == "healthy"
    leader = min((M[i] for i in (0, 4)), key=lambda h: int.from_bytes(h, "big"))
    for own in (0, 4):
        d = decisions[own]
        assert d.healthy == [0, 1] and d.missing == [2, 3, 4]  # 2 copies left, 3 to place
        assert d.leader == leader and d.candidates == sorted([M[0], M[4]])
        assert d.action == ("repair" if M[own] == leader else "follow")
        assert sorted(h for hs in d.live_holders.values() for h in hs) == [M[0], M[4]]
        assert sum(1 for hs in d.live_holders.values() if hs) == 2


def test_a_mirror_above_its_threshold_waits_and_lost_copies_count_only_after_grace() -> None:
    p = RepairPlanner(M[0], 60.0)
    observe_mirrors(p, 0.0)
    observe_mirrors(p, 10.0, {1, 2, 3})
    d = p.decide(SEG, M_N, M_THRESHOLD, mirror_holders(), 30.0, MIRROR)
    assert d.action == "healthy" and d.missing == [] and d.grace == [2, 3, 4]
    observe_mirrors(p, 100.0, {1, 2})  # holder 3 came back; 1 and 2 are gone
    d = p.decide(SEG, M_N, M_THRESHOLD, mirror_holders(), 100.0, MIRROR)
    assert d.action == "degraded" and d.missing == [3, 4] and d.grace == []


def test_copies_nobody_lists_are_missing_only_after_the_grace_period() -> None:
    """Fewer holders than copies are known (an upload short of hosts, or loc
    records that expired): the copies without a holder wait, as an index
    without holders does (lazy repair), then are missing."""
    p = RepairPlanner(M[0], 60.0)
    observe_mirrors(p, 0.0, listed=2)
    d = p.decide(SEG, M_N, M_THRESHOLD, mirror_holders(2), 0.0, MIRROR)
    assert d.action == "healthy" and d.missing == []
    observe_mirrors(p, 70.0, listed=2)
    d = p.decide(SEG, M_N, M_THRESHOLD, mirror_holders(2), 70.0, MIRROR)
    assert d.action == "repair" and d.missing == [2, 3, 4] and d.healthy == [0, 1]


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, M_N - 1), max_size=M_N), st.floats(0, 1000))
def test_a_mirror_misses_exactly_its_dead_copies_after_grace(dead: set[int], gap: float) -> None:
    p = RepairPlanner(M[0], 100.0)
    observe_mirrors(p, 0.0)
    observe_mirrors(p, 1.0, dead)
    d = p.decide(SEG, M_N, M_THRESHOLD, mirror_holders(), 1.0 + gap, MIRROR)
    lost = len(dead) if gap >= 100.0 else 0
    assert d.missing == list(range(M_N - lost, M_N))
    assert len(d.healthy) == M_N - lost
    alive = sorted(M[i] for i in range(M_N) if i not in dead)
    assert sorted(h for hs in d.live_holders.values() for h in hs) == alive


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, N - 1), max_size=N), st.floats(0, 200), st.integers(0, N - 1))
def test_singleton_groups_decide_as_without_groups(dead: set[int], gap: float, own: int) -> None:
    a, b = planner(own, grace=60.0), planner(own, grace=60.0)
    for p in (a, b):
        observe_all(p, 0.0)
        observe_all(p, 1.0, dead)
    da = a.decide(SEG, N, THRESHOLD, holders(), 1.0 + gap)
    db = b.decide(SEG, N, THRESHOLD, holders(), 1.0 + gap, [[i] for i in range(N)])
    assert da == db
