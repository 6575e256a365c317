"""The model-level simulator against the protocol-level one (the real node code).

The case (:class:`sims.validate.FailureCase`): 12 hosts, ten one-segment
files at 2/6 (repair threshold m = 4), then 40% of the hosts (5) fail for
good at once; after the 5-minute grace period the survivors repair. It is
small enough to run with real nodes and has every outcome: segments that
keep m or more shares (left alone), that keep 2 or 3 (repaired; with 3 the
leader's own share may or may not be among the first k it reads) and, rarely,
that keep 1 (lost).

Two kinds of check:

* **Rules, segment by segment** (exact): from the real placements and the
  real victims, the model's rules say which segments must be repaired, which
  shares regenerated and how many bytes moved; the nodes' repair records must
  say the same (:func:`sims.validate.check_rules`). This is what fails if the
  node's threshold or placement rule and the model's drift apart.
* **Fractions** (statistical): the fraction of segments below the threshold,
  lost and repaired, measured in the protocol runs, in the model (20,000
  segments) and by the hypergeometric closed form. Tolerances are two-sided
  99.9% (|z| <= 3.29). The model's segments are placed independently given
  the victims, so its fractions are binomial. The protocol's segments share
  hosts, so they are not independent: the variance of each seed's fraction
  is computed exactly by enumerating all C(12, 5) = 792 victim sets on that
  seed's real placement (:func:`sims.validate.null_moments`), and the seeds
  are independent.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor

import pytest

from sims.validate import (
    FailureCase,
    ProtocolOutcome,
    check_rules,
    closed_form,
    model_case,
    null_moments,
    observed,
    protocol_case,
    repair_traffic,
)

pytestmark = pytest.mark.slow

CASE = FailureCase()
SEEDS = (0, 1, 2, 3)
MODEL_SEGMENTS = 20_000
Z = 3.29  # two-sided 99.9%
RULES = ("below", "lost", "repaired")


@pytest.fixture(scope="module")
def outcomes() -> list[ProtocolOutcome]:
    with ProcessPoolExecutor(2) as pool:  # seeds are independent runs: use both cores
        return list(pool.map(protocol_case, [CASE] * len(SEEDS), SEEDS))


@pytest.fixture(scope="module")
def model() -> dict[str, float]:
    return model_case(CASE, MODEL_SEGMENTS, seed=0)


def test_nodes_follow_the_models_rules_segment_by_segment(outcomes: list[ProtocolOutcome]) -> None:
    for o in outcomes:
        assert check_rules(o) == []
        assert len(o.victims) == CASE.killed
    # the sample straddles the threshold, so a different rule could not pass
    lives = [(s.live_after_failure, bool(s.repairs)) for o in outcomes for s in o.segments]
    m, k = CASE.red.repair_threshold, CASE.red.k
    assert (m - 1, True) in lives and (m, False) in lives
    assert (k, True) in lives  # and the bottom of the repair band


def test_below_threshold_lost_and_repaired_fractions_agree(
        outcomes: list[ProtocolOutcome], model: dict[str, float]) -> None:
    exact = closed_form(CASE)
    R = len(outcomes)
    for rule in RULES:
        p = exact[rule]
        # the model: binomial around the closed form
        sd_model = math.sqrt(p * (1 - p) / MODEL_SEGMENTS)
        assert abs(model[rule] - p) <= Z * sd_model + 1e-12, (rule, model[rule], p)
        # the protocol: each seed's fraction, whose null distribution (uniform
        # victims on the real placement) has mean p and a variance we enumerate
        moments = [null_moments(o, CASE.killed, CASE.nodes, rule) for o in outcomes]
        for mean, _ in moments:
            assert mean == pytest.approx(p, abs=1e-9), rule  # n distinct hosts per segment
        obs = sum(observed(o)[rule] for o in outcomes) / R
        sd_obs = math.sqrt(sum(v for _, v in moments)) / R
        assert abs(obs - p) <= Z * sd_obs + 1e-12, (rule, obs, p, sd_obs)
        assert abs(obs - model[rule]) <= Z * math.hypot(sd_obs, sd_model) + 1e-12, \
            (rule, obs, model[rule])


def test_repair_bytes_per_repair(outcomes: list[ProtocolOutcome], model: dict[str, float]) -> None:
    """The model moves (k - 1 + missing) shares per repair: the leader reads its
    own share and fetches k - 1. (Until the repairer read its own share first,
    it fetched k whenever its share index was not among the first k live ones.)"""
    exact = closed_form(CASE)
    size, k = CASE.share_size, CASE.red.k
    traffic = [t for o in outcomes for t in repair_traffic(o)]
    assert len(traffic) >= 10
    for missing, moved, modelled in traffic:
        assert modelled == (k - 1 + missing) * size
        assert moved == modelled, (missing, moved, modelled)
    # the model's mean against the closed form (missing | repaired is hypergeometric)
    repairs = model["repaired"] * MODEL_SEGMENTS
    sd = exact["missing_sd_per_repair"] * size / math.sqrt(repairs)
    assert abs(model["bytes_per_repair"] - exact["bytes_per_repair"]) <= Z * sd + 1e-9
