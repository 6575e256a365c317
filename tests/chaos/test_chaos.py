"""A short chaos run in the normal suite (``tests/chaos/engine.py`` says how it
works; ``python -m tests.chaos --minutes 30 --seed 7`` runs it longer).

Twelve node processes (in network namespaces where this machine allows it,
else on 127.0.0.1) take files for 30 s while a seeded fault thread kills and
restarts, stops and continues, cuts links and flips bytes in stored shares;
every acknowledged file must come back identical: 0 lost, 0 corrupt.
"""

from __future__ import annotations

import pytest

from tests.chaos.engine import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_a_short_chaos_run_loses_and_corrupts_nothing() -> None:
    report = run(seed=7, seconds=30.0, nodes=12)
    print("\n" + report.summary())
    assert report.acknowledged >= 3, report.as_dict()
    assert sum(report.faults.values()) >= 6, report.as_dict()
    assert report.faults["kill"] + report.faults["stop"] >= 1, report.as_dict()
    assert report.faults["flip"] >= 1, report.as_dict()
    assert report.lost == 0, report.as_dict()
    assert report.corrupt == 0, report.as_dict()
    assert not [e for e in report.errors if e.startswith("teardown")], report.errors
