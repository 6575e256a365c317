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
