"""Host reputation from the audit attestations a node has seen (docs/reputation.md).

How it works
------------
Every node computes its own view (reputation is personal, not global: a
symmetric, global reputation function cannot be Sybil-proof; Cheng and
Friedman, "Sybilproof reputation mechanisms", 2005). The inputs are
attestations (:mod:`.audit`), each re-checked against its contract and sorted
by :func:`~xcore.contracts.audit.classify_attestation`:

* ``FAILED``   the host's own signed answer fails: a proof of fault. It counts
               with ``proof_weight`` whoever found it, since nobody can forge it.
* ``PASSED``   the host's signed answer verifies. It counts with the
               attester's *standing*: whoever holds the data (a colluder, the
               owner) can make a host pass, so passes are worth what the
               attester is worth.
* ``UNANSWERED`` "the host did not answer": the attester's word only, counted
               with standing x ``unverified_factor``.
* ``FALSE``    the attester signed a claim its own content contradicts: the
               attester is marked a liar (standing 0) and all its attestations
               stop counting.

Per host the score is the mean of a Beta distribution::

    score(h) = alpha / (alpha + beta)
    alpha = a0 + sum of weights of passes   (+ transfer_weight per good transfer)
    beta  = b0 + sum of weights of failures (+ transfer_weight per failed transfer)

with these bounds, per host and per ``period`` (default a day):

* at most ``per_attester_cap`` attestations of one attester count (the
  earliest, by time then digest);
* attestations of *unestablished* attesters (standing <= ``bootstrap``,
  i.e. newcomers with no earned history) share a budget: their passes
  together weigh at most ``newcomer_cap``, and so do their failures. Ten or
  ten thousand fresh identities move a score by at most that much per period.
* a host's attestations about itself never count.

Standing: 1 for ``trusted`` IDs (this node itself, and any auditor it chooses
to trust: the anchors), 0 for liars and for hosts whose score is below the
threshold, otherwise ``max(bootstrap, score(a) * E / (E + ramp))`` where ``E``
is the *established* evidence about ``a`` as a host: proofs of fault, plus
the weights of attestations about ``a`` by attesters whose own standing is
above ``bootstrap``. Standing therefore flows out from the anchors (and from
proofs), never from a ring of newcomers vouching for each other. Scores and
standings are computed together by ``rounds`` fixed-point iterations starting
from "everybody is a newcomer".

Everything is recomputed from the stored observations, sorted, so the result
does not depend on the order they arrived in. The class is pure: no clock
(observations carry their times; :meth:`Reputation.prune` forgets old ones)
and no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from xcore.contracts.audit import Attestation, Evidence, classify_attestation
from xcore.contracts.contract import Contract, SignedContract
from xcore.errors import InvalidParameter

BAD_THRESHOLD = 0.4

_COUNTED = (Evidence.PASSED, Evidence.FAILED, Evidence.UNANSWERED)


@dataclass(frozen=True, slots=True)
class ReputationParams:
    """The knobs of the score (docs/reputation.md explains each)."""

    a0: float = 2.0               # prior passes: a newcomer host starts at 2/3
    b0: float = 1.0               # prior failures
    bootstrap: float = 0.1        # standing of an attester with no earned history
    newcomer_cap: float = 1.0     # per host, period and outcome: total weight of newcomers
    unverified_factor: float = 0.5
    proof_weight: float = 1.0     # weight of a proven failed answer
    per_attester_cap: int = 3     # attestations counted per attester, host and period
    period: int = 24 * 3600
    ramp: float = 10.0            # established evidence for half confidence
    rounds: int = 3
    transfer_weight: float = 0.25
    threshold: float = BAD_THRESHOLD

    def __post_init__(self) -> None:
        if (self.a0 <= 0 or self.b0 <= 0 or not 0 <= self.bootstrap < 1 or self.newcomer_cap < 0
                or not 0 <= self.unverified_factor <= 1 or self.proof_weight < 0
                or self.per_attester_cap < 1 or self.period <= 0 or self.ramp <= 0
                or self.rounds < 1 or self.transfer_weight < 0 or not 0 < self.threshold < 1):
            raise InvalidParameter("reputation parameters out of range")


@dataclass(frozen=True, slots=True)
class Observation:
    """One checked attestation: ``attester_id`` says ``evidence`` about ``host_id`` at ``time``.

    ``evidence`` is PASSED, FAILED or UNANSWERED; ``digest`` identifies the
    attestation (duplicates are counted once).
    """

    host_id: bytes
    attester_id: bytes
    evidence: Evidence
    time: int
    digest: bytes


@dataclass
class _View:
    scores: dict[bytes, float] = field(default_factory=dict)
    standing: dict[bytes, float] = field(default_factory=dict)


class Reputation:
    """One node's view of hosts, from attestations and its own transfers."""

    def __init__(self, params: ReputationParams | None = None,
                 trusted: Iterable[bytes] = ()) -> None:
        self.params = params if params is not None else ReputationParams()
        self.trusted = frozenset(trusted)
        self._obs: dict[bytes, Observation] = {}
        self._liars: dict[bytes, int] = {}  # attester -> time of its latest false attestation
        self._transfers: dict[tuple[bytes, int], list[int]] = {}  # (host, period) -> [ok, failed]
        self._view: _View | None = None

    # -- input ----------------------------------------------------------------

    def add(self, att: Attestation, contract: Contract | SignedContract) -> Evidence:
        """Check ``att`` against its contract and take it into account.

        Returns what it showed. IRRELEVANT ones are ignored; FALSE ones mark
        their attester a liar. Pass a :class:`SignedContract` (verified here)
        unless the contract was verified already.
        """
        ev = classify_attestation(att, contract)
        if ev is Evidence.FALSE:
            who = att.challenger_id
            self._liars[who] = max(att.time, self._liars.get(who, att.time))
            self._view = None
        elif ev in _COUNTED:
            self.record(Observation(att.host_id, att.challenger_id, ev, att.time, att.digest()))
        return ev

    def record(self, obs: Observation) -> None:
        """Take an already checked observation into account (see :meth:`add`)."""
        if obs.evidence not in _COUNTED:
            raise InvalidParameter("only passed, failed or unanswered audits are observations")
        if obs.digest not in self._obs:
            self._obs[obs.digest] = obs
            self._view = None

    def observe_transfer(self, host_id: bytes, ok: bool, now: float) -> None:
        """This node's own upload/download to ``host_id`` succeeded or failed."""
        slot = self._transfers.setdefault((host_id, int(now) // self.params.period), [0, 0])
        slot[0 if ok else 1] += 1
        self._view = None

    def prune(self, before: float) -> None:
        """Forget observations (and liar marks, transfers) older than ``before``."""
        self._obs = {d: o for d, o in self._obs.items() if o.time >= before}
        self._liars = {a: t for a, t in self._liars.items() if t >= before}
        first = int(before) // self.params.period
        self._transfers = {k: v for k, v in self._transfers.items() if k[1] >= first}
        self._view = None

    # -- output ---------------------------------------------------------------

    def score(self, host_id: bytes) -> float:
        """The host's score in (0, 1); a host nobody has seen scores a0 / (a0 + b0)."""
        p = self.params
        return self._compute().scores.get(host_id, p.a0 / (p.a0 + p.b0))

    def is_bad(self, host_id: bytes) -> bool:
        return self.score(host_id) < self.params.threshold

    def standing(self, attester_id: bytes) -> float:
        """How much this node believes ``attester_id``'s attestations, in [0, 1]."""
        return self._compute().standing.get(attester_id, self._base_standing(attester_id))

    def is_liar(self, attester_id: bytes) -> bool:
        return attester_id in self._liars

    def selection_factor(self, host_id: bytes) -> float:
        """For :func:`xcore.contracts.selection.select_hosts`: 0 for bad hosts, else the score."""
        s = self.score(host_id)
        return 0.0 if s < self.params.threshold else s

    def hosts(self) -> list[bytes]:
        return sorted(self._compute().scores)

    # -- computation -----------------------------------------------------------

    def _base_standing(self, who: bytes) -> float:
        if who in self.trusted:
            return 1.0
        if who in self._liars:
            return 0.0
        return self.params.bootstrap

    def _compute(self) -> _View:
        if self._view is not None:
            return self._view
        p = self.params
        groups = self._groups()
        attesters = {a for (_, a, _) in groups}
        people = attesters | {h for (h, _, _) in groups} | {h for (h, _) in self._transfers}
        standing = {a: self._base_standing(a) for a in people}
        scores: dict[bytes, float] = {}
        for _ in range(p.rounds):
            scores, established = self._scores(groups, standing)
            new: dict[bytes, float] = {}
            for a in people:
                if a in self.trusted or a in self._liars:  # anchors and liars are fixed
                    new[a] = self._base_standing(a)
                elif a in scores and scores[a] < p.threshold:
                    new[a] = 0.0  # a known-bad host's word counts for nothing
                else:
                    e = established.get(a, 0.0)
                    earned = scores.get(a, 0.0) * e / (e + p.ramp)
                    new[a] = max(p.bootstrap, min(1.0, earned))
            standing = new
        scores, _ = self._scores(groups, standing)
        self._view = _View(scores, standing)
        return self._view

    def _groups(self) -> dict[tuple[bytes, bytes, int], list[Observation]]:
        """(host, attester, period) -> the counted observations (capped, sorted)."""
        p = self.params
        groups: dict[tuple[bytes, bytes, int], list[Observation]] = {}
        for o in sorted(self._obs.values(),
                        key=lambda o: (o.host_id, o.attester_id, o.time, o.digest)):
            if o.attester_id == o.host_id:
                continue  # nobody vouches for (or against) itself
            g = groups.setdefault((o.host_id, o.attester_id, o.time // p.period), [])
            if len(g) < p.per_attester_cap:
                g.append(o)
        return groups

    def _scores(self, groups: dict[tuple[bytes, bytes, int], list[Observation]],
                standing: dict[bytes, float]) -> tuple[dict[bytes, float], dict[bytes, float]]:
        """Scores of every host, and the established evidence about each."""
        p = self.params
        # (host, period) -> [established pass, established fail, newcomer pass, newcomer fail, proofs]
        sums: dict[tuple[bytes, int], list[float]] = {}
        established: dict[bytes, float] = {}
        for (host, attester, period) in sorted(groups):
            st = standing.get(attester, p.bootstrap)
            newcomer = st <= p.bootstrap
            acc = sums.setdefault((host, period), [0.0, 0.0, 0.0, 0.0, 0.0])
            for o in groups[(host, attester, period)]:
                if o.evidence is Evidence.FAILED:
                    acc[4] += p.proof_weight
                elif o.evidence is Evidence.PASSED:
                    acc[2 if newcomer else 0] += st
                else:
                    acc[3 if newcomer else 1] += st * p.unverified_factor
        alpha: dict[bytes, float] = {}
        beta: dict[bytes, float] = {}
        for (host, _period) in sorted(sums):
            est_pass, est_fail, new_pass, new_fail, proofs = sums[(host, _period)]
            alpha[host] = alpha.get(host, p.a0) + est_pass + min(new_pass, p.newcomer_cap)
            beta[host] = beta.get(host, p.b0) + est_fail + min(new_fail, p.newcomer_cap) + proofs
            established[host] = established.get(host, 0.0) + est_pass + est_fail + proofs
        for (host, _period) in sorted(self._transfers):
            ok, failed = self._transfers[(host, _period)]
            cap = p.per_attester_cap
            alpha[host] = alpha.get(host, p.a0) + p.transfer_weight * min(ok, cap)
            beta[host] = beta.get(host, p.b0) + p.transfer_weight * min(failed, cap)
        scores = {h: alpha[h] / (alpha[h] + beta[h]) for h in alpha}
        return scores, established


__all__ = ["BAD_THRESHOLD", "Observation", "Reputation", "ReputationParams"]
