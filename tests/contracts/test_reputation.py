"""Reputation: weighted Beta scores, attester standing, the Sybil scenario, bounds."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcore.contracts.audit import (
    Answer, Attestation, Challenge, Evidence, answer_challenge, attest,
)
from xcore.contracts.contract import AUDIT_BLOCK, Contract, SignedContract, share_tree
from xcore.contracts.reputation import BAD_THRESHOLD, Observation, Reputation, ReputationParams
from xcore.crypto.identity import Identity
from xcore.errors import InvalidParameter

DAY = 24 * 3600
T0 = 1_750_000_000 - 1_750_000_000 % DAY  # start of a period
P = ReputationParams()


def ident(seed: int) -> Identity:
    return Identity(random.Random(seed).randbytes(32))


OWNER = ident(300)
LOCAL = ident(301)                            # this node: trusted
HONEST = [ident(310 + i) for i in range(5)]   # honest auditors, also hosts
SYBILS = [ident(330 + i) for i in range(10)]  # fresh colluding identities
X = ident(350)                                # an honest host
F = ident(351)                                # a failing host, colluding with the Sybils


def share_for(host: Identity) -> tuple[bytes, SignedContract]:
    data = random.Random(host.pubkey).randbytes(4 * AUDIT_BLOCK)
    c = Contract.for_share(data, k=2, n=4, start=T0 - 30 * DAY, end=T0 + 60 * DAY, price=20_000,
                           host_pubkey=host.pubkey, owner_pubkey=OWNER.pubkey)
    return data, SignedContract(c).sign_as_owner(OWNER).sign_as_host(host)


SHARES = {h.pubkey: share_for(h) for h in [*HONEST, X, F]}
_nonce = iter(range(1, 10**9))


def audit(auditor: Identity, host: Identity, t: int, *, indices: tuple[int, ...] = (1, 2),
          mode: str = "honest") -> tuple[Attestation, SignedContract]:
    """``auditor`` audits ``host`` at ``t``; the host answers per ``mode``.

    honest: from its share; garbage: signs zero blocks (a proven failure);
    silent: no answer.
    """
    data, sc = SHARES[host.pubkey]
    ch = Challenge(sc.contract.share_hash, next(_nonce).to_bytes(32, "big"), indices,
                   auditor.pubkey, t)
    answer: Answer | None
    if mode == "honest":
        answer = answer_challenge(data, ch, host)
    elif mode == "kept-block-0":  # F kept block 0 only: right for index 0, garbage elsewhere
        tree = share_tree(data)
        blocks = [data[:AUDIT_BLOCK] if i == 0 else bytes(AUDIT_BLOCK) for i in indices]
        answer = Answer.create(host, ch.digest(), blocks, [tree.proof(i) for i in indices])
    else:
        answer = None
    return attest(auditor, sc, ch, answer, t + 5), sc


def establish_honest_auditors(rep: Reputation, periods: int = 10) -> None:
    """LOCAL has audited each honest auditor (as a host) 3 times a period for ``periods`` periods."""
    for h in HONEST:
        for d in range(periods):
            for k in range(3):
                rep.add(*audit(LOCAL, h, T0 - (d + 1) * DAY + 1000 * k))


def sybil_scenario(rep: Reputation, f_mode: str) -> None:
    t = T0 + 3600
    for h in HONEST:
        for k in range(3):
            assert rep.add(*audit(h, X, t + 60 * k)) is Evidence.PASSED
            ev = rep.add(*audit(h, F, t + 60 * k, mode=f_mode))
            assert ev is (Evidence.FAILED if f_mode == "kept-block-0" else Evidence.UNANSWERED)
    for s in SYBILS:
        for k in range(3):
            # they sink X with unverifiable "no answer" claims...
            assert rep.add(*audit(s, X, t + 60 * k, mode="silent")) is Evidence.UNANSWERED
            # ...and clear F with real passes on the one block it kept
            assert rep.add(*audit(s, F, t + 60 * k, indices=(0,), mode="kept-block-0")) is Evidence.PASSED


@pytest.mark.parametrize("f_mode", ["kept-block-0", "silent"])
def test_sybils_cannot_sink_an_honest_host_nor_clear_a_failing_one(f_mode: str) -> None:
    rep = Reputation(trusted=[LOCAL.node_id])
    establish_honest_auditors(rep)
    sybil_scenario(rep, f_mode)
    assert all(rep.standing(h.node_id) > 0.5 for h in HONEST)
    assert all(rep.standing(s.node_id) == P.bootstrap for s in SYBILS)
    assert rep.score(X.node_id) > 0.8 and not rep.is_bad(X.node_id)
    assert rep.score(F.node_id) < BAD_THRESHOLD and rep.is_bad(F.node_id)
    assert rep.selection_factor(F.node_id) == 0.0 and rep.selection_factor(X.node_id) > 0.8
    assert rep.standing(F.node_id) == 0.0  # a bad host's own attestations stop counting


def test_without_anchors_proofs_still_decide() -> None:
    """No trusted auditor at all: everyone is a newcomer, but proofs of fault still convict."""
    rep = Reputation()
    sybil_scenario(rep, "kept-block-0")
    assert not rep.is_bad(X.node_id) and rep.score(X.node_id) >= 0.5
    assert rep.is_bad(F.node_id)


def test_sybil_volume_does_not_matter() -> None:
    """1000 fresh identities weigh no more than 10: their budget is shared."""
    def sunk(n: int) -> float:
        rep = Reputation()
        for i in range(n):
            for k in range(3):
                rep.record(Observation(b"X" * 20, i.to_bytes(20, "big"), Evidence.UNANSWERED,
                                       T0 + k, bytes([k]) + i.to_bytes(31, "big")))
        return rep.score(b"X" * 20)
    assert sunk(10) == sunk(1000) == pytest.approx(P.a0 / (P.a0 + P.b0 + P.newcomer_cap))
    assert sunk(10) >= BAD_THRESHOLD


def test_liars_lose_their_standing() -> None:
    rep = Reputation(trusted=[LOCAL.node_id])
    establish_honest_auditors(rep, periods=3)
    liar = HONEST[0]
    before = rep.standing(liar.node_id)
    assert before > P.bootstrap
    rep.add(*audit(liar, X, T0 + 100, mode="silent"))
    assert rep.score(X.node_id) < P.a0 / (P.a0 + P.b0)
    # the liar claims a failure while embedding X's passing answer
    att, sc = audit(liar, X, T0 + 200)
    lie = dataclasses.replace(att, passed=False, reason="failed")
    lie = dataclasses.replace(lie, signature=liar.sign(lie.signing_bytes()))
    assert rep.add(lie, sc) is Evidence.FALSE
    assert rep.is_liar(liar.node_id) and rep.standing(liar.node_id) == 0.0
    assert rep.score(X.node_id) == pytest.approx(P.a0 / (P.a0 + P.b0))  # its word is gone


def test_irrelevant_attestations_are_ignored() -> None:
    rep = Reputation()
    att, _ = audit(HONEST[0], X, T0)
    _, other = SHARES[F.pubkey]
    assert rep.add(att, other) is Evidence.IRRELEVANT
    assert rep.hosts() == []


def test_self_audits_do_not_count() -> None:
    rep = Reputation()
    for k in range(3):
        rep.add(*audit(X, X, T0 + k))
    assert rep.score(X.node_id) == pytest.approx(P.a0 / (P.a0 + P.b0))


def test_duplicates_count_once() -> None:
    rep = Reputation(trusted=[LOCAL.node_id])
    att, sc = audit(LOCAL, X, T0, mode="silent")
    rep.add(att, sc)
    once = rep.score(X.node_id)
    rep.add(att, sc)
    assert rep.score(X.node_id) == once


def test_per_attester_cap_per_period() -> None:
    rep = Reputation(trusted=[LOCAL.node_id])
    for k in range(10):
        rep.add(*audit(LOCAL, X, T0 + k, mode="silent"))
    expected = P.a0 / (P.a0 + P.b0 + P.per_attester_cap * P.unverified_factor)
    assert rep.score(X.node_id) == pytest.approx(expected)
    rep.add(*audit(LOCAL, X, T0 + DAY, mode="silent"))  # next period counts again
    assert rep.score(X.node_id) < expected


def test_transfers_are_optional_inputs() -> None:
    rep = Reputation()
    for _ in range(10):
        rep.observe_transfer(X.node_id, False, T0)
    assert rep.score(X.node_id) == pytest.approx(
        P.a0 / (P.a0 + P.b0 + P.per_attester_cap * P.transfer_weight))
    rep.observe_transfer(F.node_id, True, T0)
    assert rep.score(F.node_id) > P.a0 / (P.a0 + P.b0)


def test_prune_forgets_old_evidence() -> None:
    rep = Reputation(trusted=[LOCAL.node_id])
    for k in range(3):
        rep.add(*audit(LOCAL, X, T0 + k, mode="silent"))
    rep.observe_transfer(X.node_id, False, T0)
    assert rep.score(X.node_id) < 0.6
    rep.prune(T0 + DAY)
    assert rep.score(X.node_id) == pytest.approx(P.a0 / (P.a0 + P.b0))


def test_unknown_hosts_score_the_prior_and_params_are_checked() -> None:
    assert Reputation().score(b"\x00" * 20) == pytest.approx(2 / 3)
    assert not Reputation().is_bad(b"\x00" * 20)
    with pytest.raises(InvalidParameter):
        ReputationParams(bootstrap=1.5)
    with pytest.raises(InvalidParameter):
        Reputation().record(Observation(b"h", b"a", Evidence.FALSE, 0, b"d"))


# -- properties --------------------------------------------------------------------------------

NODES = [bytes([i]) * 20 for i in range(6)]
EVIDENCE = [Evidence.PASSED, Evidence.FAILED, Evidence.UNANSWERED]

observations = st.lists(
    st.builds(lambda h, a, e, t, d: Observation(NODES[h], NODES[a], EVIDENCE[e], T0 + t, d.to_bytes(4, "big")),
              st.integers(0, 5), st.integers(0, 5), st.integers(0, 2), st.integers(0, 4 * DAY),
              st.integers(0, 2**32 - 1)),
    max_size=60, unique_by=lambda o: o.digest)


def build(obs: list[Observation], trusted: list[bytes]) -> Reputation:
    rep = Reputation(trusted=trusted)
    for o in obs:
        rep.record(o)
    return rep


@settings(max_examples=80, deadline=None)
@given(observations, st.sets(st.sampled_from(NODES), max_size=2), st.randoms(use_true_random=False))
def test_property_bounds_and_order_independence(obs: list[Observation], trusted: set[bytes],
                                                rnd: random.Random) -> None:
    rep = build(obs, sorted(trusted))
    shuffled = list(obs)
    rnd.shuffle(shuffled)
    other = build(shuffled, sorted(trusted))
    for n in NODES:
        s = rep.score(n)
        assert 0.0 < s < 1.0
        assert s == other.score(n)  # exactly: the order observations arrived in does not matter
        assert rep.is_bad(n) == (s < BAD_THRESHOLD)
        assert 0.0 <= rep.standing(n) <= 1.0
        assert (rep.standing(n) == 1.0) if n in trusted else True


@settings(max_examples=60, deadline=None)
@given(passes=st.integers(0, 3), sybils=st.integers(1, 40), each=st.integers(1, 8),
       kind=st.sampled_from([Evidence.UNANSWERED, Evidence.PASSED]))
def test_property_newcomers_move_a_score_by_at_most_their_budget(
        passes: int, sybils: int, each: int, kind: Evidence) -> None:
    host, anchor = b"H" * 20, b"L" * 20
    base = [Observation(host, anchor, Evidence.PASSED, T0 + k, b"a%d" % k) for k in range(passes)]
    rep = build(base, [anchor])
    before = rep.score(host)
    for s in range(sybils):
        for k in range(each):
            rep.record(Observation(host, b"S" + s.to_bytes(19, "big"), kind, T0 + 100 + k,
                                   b"s%d/%d" % (s, k)))
    alpha, beta = P.a0 + passes, P.b0
    if kind is Evidence.UNANSWERED:
        assert rep.score(host) >= alpha / (alpha + beta + P.newcomer_cap) - 1e-12
        assert rep.score(host) <= before
    else:
        assert rep.score(host) <= (alpha + P.newcomer_cap) / (alpha + beta + P.newcomer_cap) + 1e-12
        assert rep.score(host) >= before


@settings(max_examples=50, deadline=None)
@given(observations, st.integers(0, 5), st.integers(0, 5), st.integers(0, 2), st.integers(1, 5))
def test_property_extra_attestations_beyond_the_cap_change_nothing(
        obs: list[Observation], h: int, a: int, e: int, extra: int) -> None:
    if h == a:
        return
    host, attester = NODES[h], NODES[a]
    period_end = T0 + DAY - 1
    capped = [Observation(host, attester, EVIDENCE[e], T0 + k, b"cap%d" % k)
              for k in range(P.per_attester_cap)]
    # keep the generated observations out of this attester's first period for this host
    rest = [o for o in obs if not (o.host_id == host and o.attester_id == attester and o.time < T0 + DAY)]
    rep = build(rest + capped, [NODES[0]])
    more = [Observation(host, attester, EVIDENCE[(e + 1) % 3], period_end - k, b"more%d" % k)
            for k in range(extra)]
    rep2 = build(rest + capped + more, [NODES[0]])
    for n in NODES:
        assert rep.score(n) == rep2.score(n)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30))
def test_property_proofs_convict_whoever_finds_them(fails: int) -> None:
    rep = Reputation()
    for k in range(fails):
        rep.record(Observation(b"H" * 20, b"N" + k.to_bytes(19, "big"), Evidence.FAILED, T0, b"f%d" % k))
    assert rep.score(b"H" * 20) == pytest.approx(P.a0 / (P.a0 + P.b0 + fails * P.proof_weight))
    assert rep.is_bad(b"H" * 20) == (fails >= 3)


def test_documented_limit_a_silent_host_needs_established_auditors() -> None:
    """docs/reputation.md, limits: with no anchor and no proof, "no answer" claims by honest
    newcomers weigh no more than Sybil passes, so a host that only refuses to answer honest
    auditors is not caught. The same scenario with anchors catches it (test above)."""
    rep = Reputation()
    sybil_scenario(rep, "silent")
    assert not rep.is_bad(F.node_id)
