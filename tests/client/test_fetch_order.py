"""Which share a get asks first: fewer failures, then nearer hosts, then primaries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xcore.client.files import RTT_BAND, fetch_order
from xcore.client.manifest import ShareRef


def candidates(n: int) -> list[tuple[ShareRef, bytes, str]]:
    return [(ShareRef(i, bytes([i]) * 32, 10, bytes(32), bytes([i]) * 20, f"10.0.0.{i}:1"),
             bytes([i]) * 20, f"10.0.0.{i}:1") for i in range(n)]


def order(cands: list[tuple[ShareRef, bytes, str]], k: int, rtts: dict[int, float | None],
          failures: dict[int, int] | None = None) -> list[int]:
    fails = failures or {}
    return [r.index for r, _, _ in fetch_order(cands, k, lambda h: fails.get(h[0], 0),
                                               lambda h: rtts.get(h[0]))]


def test_equally_near_hosts_give_primaries_first_so_no_decode_is_needed() -> None:
    """The nearest hosts happened to hold secondaries, so every 4/8 segment
    cost a zfec decode; within one RTT band the k primaries come first."""
    rtts: dict[int, float | None] = {i: 0.001 * (8 - i) for i in range(8)}  # secondaries nearest
    assert sorted(order(candidates(8), 4, rtts)[:4]) == [0, 1, 2, 3]


def test_a_clearly_nearer_host_still_wins_and_failures_come_last() -> None:
    rtts: dict[int, float | None] = {i: 0.15 for i in range(8)}
    rtts[6] = 0.01  # one host far nearer than the others
    got = order(candidates(8), 4, rtts, failures={0: 2})
    assert got[0] == 6 and got[-1] == 0
    assert sorted(got[1:4]) == [1, 2, 3]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=8, max_size=8),
       st.lists(st.integers(0, 3), min_size=8, max_size=8))
def test_the_order_is_a_permutation_sorted_by_failures_then_rtt_band(
        k: int, rtt_list: list[float | None], fail_list: list[int]) -> None:
    rtts = dict(enumerate(rtt_list))
    fails = dict(enumerate(fail_list))
    got = order(candidates(8), k, rtts, fails)
    assert sorted(got) == list(range(8))
    keys = [(fails[i], int((0.2 if rtts[i] is None else rtts[i]) / RTT_BAND)) for i in got]  # type: ignore[operator]
    assert keys == sorted(keys)
