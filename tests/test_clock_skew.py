"""XCORE_CLOCK_SKEW: a node's injected clock, wrong on purpose (fault injection).

The multi-host test (tests/netns/test_netns.py) runs real nodes 240 s and
600 s fast; these check the knob itself.
"""

from __future__ import annotations

import time

import pytest

from xcore.errors import ConfigError
from xcore.net.aio import clock_from_env, wall_clock
from xcore.node import NodeEnv


def test_no_skew_is_the_wall_clock() -> None:
    assert clock_from_env({}) is wall_clock
    assert clock_from_env({"XCORE_CLOCK_SKEW": " "}) is wall_clock
    assert clock_from_env({"XCORE_CLOCK_SKEW": "0"}) is wall_clock


@pytest.mark.parametrize("skew", [600.0, -30.5, 86400.0])
def test_a_skew_shifts_the_clock(skew: float) -> None:
    clock = clock_from_env({"XCORE_CLOCK_SKEW": str(skew)})
    assert abs(clock() - time.time() - skew) < 1.0


@pytest.mark.parametrize("raw", ["ten", "nan", "inf", "1e12", "-40000000"])
def test_bad_skews_are_clear_errors(raw: str) -> None:
    with pytest.raises(ConfigError, match="XCORE_CLOCK_SKEW"):
        clock_from_env({"XCORE_CLOCK_SKEW": raw})


def test_a_node_env_reads_the_skew_when_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XCORE_CLOCK_SKEW", "-120")
    env = NodeEnv()
    assert abs(env.clock() - time.time() + 120) < 1.0
    monkeypatch.delenv("XCORE_CLOCK_SKEW")
    assert NodeEnv().clock is wall_clock


def test_a_node_whose_clock_is_far_off_is_told_so_when_it_cannot_join(tmp_path) -> None:
    """Peers drop a node's datagrams more than replay_window (300 s) off as
    stale, so its join fails: the error must point at the clock, not only at
    the bootstrap nodes (real UDP sockets on 127.0.0.1)."""
    import asyncio

    from xcore.bootstrap import format_seed
    from xcore.errors import NoPeers
    from xcore.node import NodeService, init_node

    async def main() -> tuple[str, int]:
        init_node(tmp_path / "seed", capacity=0, difficulty=2, diversity=False)
        seed = NodeService(tmp_path / "seed", env=NodeEnv(control=False))
        await seed.start()
        try:
            line = format_seed(seed.address, seed.identity.node_id)
            init_node(tmp_path / "fast", capacity=0, difficulty=2, diversity=False,
                      bootstrap=[line])
            fast = NodeService(tmp_path / "fast",
                               env=NodeEnv(clock=lambda: time.time() + 600, control=False))
            await fast.start()
            try:
                with pytest.raises(NoPeers) as err:
                    await fast.join(timeout=8.0)
            finally:
                await fast.stop()
            return str(err.value), seed.dht.counters.get("dropped_stale", 0)
        finally:
            await seed.stop()

    message, stale_at_seed = asyncio.run(main())
    assert "none of 1 seed(s) answered" in message and "clock" in message, message
    assert stale_at_seed >= 1
