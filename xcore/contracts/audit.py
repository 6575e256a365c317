"""Storage audits: fresh challenges, Merkle-proven answers, attestations anyone can re-check.

How it works (DESIGN.md principle 8)
------------------------------------
An auditor that holds a contract (:mod:`.contract`) makes a *challenge*: a
fresh 32-byte nonce and 1-3 random block indices of the share's 1 KiB audit
tree. The host answers with those blocks themselves and their Merkle proofs,
and signs the challenge digest (which covers the nonce) together with the
blocks' leaf hashes. Anybody with the contract re-checks the answer: it is
for this challenge, it is signed by the contract's host, and each block
hashes into the contract's Merkle root at its index.

Nothing is pre-generated (Storj v2 pre-generated salted challenges, so a host
could keep just the expected answers). Because the indices are drawn when the
challenge is made and the blocks must hash into the root, a host that kept
only block hashes, corrupted a block or deleted the share cannot answer; the
nonce makes an old answer useless for a new challenge.

What audits cannot show: that the host *itself* stores the share. A host can
fetch the challenged blocks from another holder (a colluder, or a mirror) at
audit time. Audits prove retrievability through the host, not local storage.

The auditor then signs an *attestation*: the challenge, the host's answer (or
none: "the host did not answer"), the verdict and the time. An attestation
with an answer is self-proving: any third party with the contract re-runs
:func:`verify_answer`, so a *failed* answer convicts the host by its own
signature and a *passed* one shows the data was there. An attestation without
an answer is only the challenger's word; :mod:`.reputation` weighs it by the
challenger's standing. :func:`classify_attestation` sorts attestations into
these cases, and also catches challengers whose signed claims contradict the
answer they embed (provable lies).

Layouts (msgpack; ints unsigned)::

    challenge  = [share_hash:bin32, nonce:bin32, [index, ...] (1..3, strictly
                  increasing), challenger_pubkey:bin32, issued (unix s)]
    challenge digest = SHA-256(b"xcore-audit-challenge-v1" || canonical(challenge))

    answer     = [challenge_digest:bin32, [block:bin<=1024, ...],
                  [[sibling:bin32, ...], ...] (one proof per block, <= 16 hashes),
                  host_pubkey:bin32, host_sig:bin64]
    answer signing bytes = b"xcore-audit-answer-v1"
                           || canonical([challenge_digest, [leaf_hash(block), ...], host_pubkey])

    attestation = [1, challenger_pubkey:bin32, host_id:bin20, share_hash:bin32,
                   challenge, answer | nil, passed:bool, reason:str(<=120),
                   time (unix s), signature:bin64]
    attestation signing bytes = b"xcore-attestation-v1" || canonical(attestation without signature)

    structural rules (decode): share_hash == challenge.share_hash,
    challenger_pubkey == challenge.challenger_pubkey,
    challenge.issued <= time <= challenge.issued + MAX_ANSWER_DELAY,
    passed => answer is present.

DHT record kind ``attest``: key ``attest_key(host_id)`` =
``dht_key(host_id, namespace=b"attest")``, value the encoded attestation,
signed by the challenger (the store keeps one entry per signer per key, so
each challenger's latest attestation about a host), at most 64 challengers
per host. With 1 KiB blocks and at most 3 indices of a <= 2 MiB share (11
proof hashes each) and a 120-character reason the worst-case record is
5254 bytes, inside ``MAX_RECORD_BYTES`` (6 KiB; tested).

:class:`AuditSchedule` plans when to audit which contracts: a bounded random
sample spread over a period in jittered slots, so nodes do not all audit at
once.
"""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from xcore.codec import as_bytes, as_int, as_list, as_str, canonical, expect, pack, unpack_bounded
from xcore.contracts.contract import (
    AUDIT_BLOCK, MAX_TIME, Contract, SignedContract, contract_of, share_tree,
)
from xcore.crypto.identity import ID_BYTES, PUBKEY_BYTES, SIG_BYTES, Identity, node_id_of, verify
from xcore.crypto.merkle import HASH_SIZE, MerkleTree, leaf_hash, verify_proof
from xcore.dht.records import MAX_RECORD_BYTES, KindSpec, Record, dht_key, register_kind
from xcore.errors import (
    BadSignature, InvalidParameter, LocalProtocolError, RecordRejected, RemoteProtocolError,
)

ATTEST_VERSION = 1
CHALLENGE_TAG = b"xcore-audit-challenge-v1"
ANSWER_TAG = b"xcore-audit-answer-v1"
ATTEST_TAG = b"xcore-attestation-v1"
NONCE_BYTES = 32
DEFAULT_INDICES = 2
MAX_INDICES = 3
MAX_PROOF = 16  # a 2 MiB share has 2048 leaves: proofs of 11 hashes
MAX_INDEX = 1 << 48
MAX_REASON = 120
MAX_ANSWER_DELAY = 3600  # an attestation is made within an hour of its challenge
ATTEST_TTL = 2 * 24 * 3600
ATTEST_MAX_TTL = 7 * 24 * 3600
ATTEST_MAX_VALUE = MAX_RECORD_BYTES - 256  # room for the record envelope
_ITEMS = 64

TokenSource = random.Random | Callable[[int], bytes]


def _token_bytes(src: TokenSource) -> Callable[[int], bytes]:
    return src.randbytes if isinstance(src, random.Random) else src


def _pick_indices(token_bytes: Callable[[int], bytes], leaf_count: int, count: int) -> tuple[int, ...]:
    """``count`` distinct uniform indices in range(leaf_count), by rejection sampling."""
    limit = (1 << 64) - (1 << 64) % leaf_count
    chosen: set[int] = set()
    for _ in range(64 * count + 64):  # a real random source needs a handful of draws
        if len(chosen) == count:
            return tuple(sorted(chosen))
        r = int.from_bytes(token_bytes(8), "big")
        if r < limit:
            chosen.add(r % leaf_count)
    if len(chosen) == count:
        return tuple(sorted(chosen))
    raise InvalidParameter("the token source does not look random")


def _indices_problem(indices: Sequence[int], leaf_count: int) -> str | None:
    if not 1 <= len(indices) <= MAX_INDICES:
        return f"a challenge names 1 to {MAX_INDICES} blocks"
    if any(not 0 <= i < leaf_count for i in indices):
        return "challenged block index out of range"
    if any(a >= b for a, b in zip(indices, indices[1:])):
        return "challenged indices must be strictly increasing"
    return None


# -- challenge -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """A request to a host: send blocks ``indices`` of ``share_hash``, bound to ``nonce``."""

    share_hash: bytes
    nonce: bytes
    indices: tuple[int, ...]
    challenger_pubkey: bytes
    issued: int

    @classmethod
    def fresh(cls, contract: Contract | SignedContract, challenger: Identity, now: float,
              rng_or_token_bytes: TokenSource, count: int = DEFAULT_INDICES) -> "Challenge":
        """A new challenge: a fresh nonce and ``count`` distinct random blocks.

        ``count`` is capped by the share's leaf count and :data:`MAX_INDICES`.
        Pass ``secrets.token_bytes`` (or ``random.SystemRandom()``) in production.
        """
        if count < 1:
            raise InvalidParameter("a challenge needs at least one block")
        c = contract_of(contract)
        token_bytes = _token_bytes(rng_or_token_bytes)
        nonce = token_bytes(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise InvalidParameter("token source returned the wrong number of bytes")
        leaves = c.leaf_count
        indices = _pick_indices(token_bytes, leaves, min(count, leaves, MAX_INDICES))
        return cls(c.share_hash, nonce, indices, challenger.pubkey, int(now))

    def to_list(self) -> list[Any]:
        return [self.share_hash, self.nonce, list(self.indices), self.challenger_pubkey, self.issued]

    def digest(self) -> bytes:
        return hashlib.sha256(CHALLENGE_TAG + canonical(self.to_list())).digest()

    @classmethod
    def from_list(cls, v: Any) -> "Challenge":
        v = as_list(v, "challenge", 5)
        expect(len(v) == 5, "challenge: expected 5 fields")
        indices = tuple(as_int(i, "challenge index", 0, MAX_INDEX)
                        for i in as_list(v[2], "challenge indices", MAX_INDICES))
        problem = _indices_problem(indices, MAX_INDEX)
        expect(problem is None, f"challenge: {problem}")
        return cls(as_bytes(v[0], "challenge share hash", size=HASH_SIZE),
                   as_bytes(v[1], "challenge nonce", size=NONCE_BYTES),
                   indices,
                   as_bytes(v[3], "challenger key", size=PUBKEY_BYTES),
                   as_int(v[4], "challenge issued", 0, MAX_TIME))

    def encode(self) -> bytes:
        return pack(self.to_list())

    @classmethod
    def decode(cls, data: bytes) -> "Challenge":
        ch = cls.from_list(unpack_bounded(data, 512, _ITEMS))
        expect(ch.encode() == bytes(data), "challenge: non-canonical encoding")
        return ch


# -- answer ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """The host's blocks and Merkle proofs for one challenge, signed by the host."""

    challenge_digest: bytes
    blocks: tuple[bytes, ...]
    proofs: tuple[tuple[bytes, ...], ...]
    host_pubkey: bytes
    host_sig: bytes

    @staticmethod
    def signing_bytes(challenge_digest: bytes, blocks: Sequence[bytes], host_pubkey: bytes,
                      proofs: Sequence[Sequence[bytes]] = ()) -> bytes:
        """The host signs the blocks *and* their proofs: a proof that does not
        lead to the root then convicts the host, and nobody else can bend one."""
        return ANSWER_TAG + canonical([challenge_digest, [leaf_hash(b) for b in blocks], host_pubkey,
                                       [list(p) for p in proofs]])

    @classmethod
    def create(cls, host: Identity, challenge_digest: bytes, blocks: Sequence[bytes],
               proofs: Sequence[Sequence[bytes]]) -> "Answer":
        """Sign ``blocks`` and ``proofs`` as the answer to ``challenge_digest``."""
        blocks_t = tuple(bytes(b) for b in blocks)
        proofs_t = tuple(tuple(bytes(h) for h in p) for p in proofs)
        sig = host.sign(cls.signing_bytes(challenge_digest, blocks_t, host.pubkey, proofs_t))
        return cls(challenge_digest, blocks_t, proofs_t, host.pubkey, sig)

    def verify_signature(self) -> None:
        verify(self.host_pubkey,
               self.signing_bytes(self.challenge_digest, self.blocks, self.host_pubkey, self.proofs),
               self.host_sig)

    def to_list(self) -> list[Any]:
        return [self.challenge_digest, list(self.blocks), [list(p) for p in self.proofs],
                self.host_pubkey, self.host_sig]

    @classmethod
    def from_list(cls, v: Any) -> "Answer":
        v = as_list(v, "answer", 5)
        expect(len(v) == 5, "answer: expected 5 fields")
        blocks = tuple(as_bytes(b, "answer block", max_size=AUDIT_BLOCK)
                       for b in as_list(v[1], "answer blocks", MAX_INDICES))
        proofs = tuple(
            tuple(as_bytes(h, "proof hash", size=HASH_SIZE) for h in as_list(p, "proof", MAX_PROOF))
            for p in as_list(v[2], "answer proofs", MAX_INDICES))
        expect(len(blocks) == len(proofs), "answer: one proof per block")
        return cls(as_bytes(v[0], "answer challenge digest", size=HASH_SIZE), blocks, proofs,
                   as_bytes(v[3], "answer host key", size=PUBKEY_BYTES),
                   as_bytes(v[4], "answer signature", size=SIG_BYTES))

    def encode(self) -> bytes:
        return pack(self.to_list())

    @classmethod
    def decode(cls, data: bytes) -> "Answer":
        ans = cls.from_list(unpack_bounded(data, ATTEST_MAX_VALUE, _ITEMS))
        expect(ans.encode() == bytes(data), "answer: non-canonical encoding")
        return ans


def answer_challenge(share_bytes: bytes, challenge: Challenge, host: Identity,
                     tree: MerkleTree | None = None) -> Answer:
    """The host's side: read the challenged blocks and prove them.

    ``tree`` may be a cached :func:`~xcore.contracts.contract.share_tree` of
    the share. Raises :class:`InvalidParameter` for a challenge that cannot be
    answered for this share (indices out of range): a host must not sign an
    answer it cannot make, and must not answer for shares it does not hold.
    """
    t = tree if tree is not None else share_tree(share_bytes)
    problem = _indices_problem(challenge.indices, t.leaf_count)
    if problem is not None:
        raise InvalidParameter(problem)
    blocks = [share_bytes[i * AUDIT_BLOCK:(i + 1) * AUDIT_BLOCK] for i in challenge.indices]
    proofs = [t.proof(i) for i in challenge.indices]
    return Answer.create(host, challenge.digest(), blocks, proofs)


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """The outcome of checking one answer.

    ``proven``: the answer is the host's own, signed, for this challenge, so
    the verdict holds against the host whatever it is (a failed proven answer
    convicts the host). An unproven failure (wrong digest, wrong signer, bad
    signature, invalid challenge) says nothing about the host.
    """

    passed: bool
    reason: str
    proven: bool = False


def challenge_problem(contract: Contract, challenge: Challenge) -> str | None:
    """Why ``challenge`` is not a valid challenge for ``contract``, or None."""
    if challenge.share_hash != contract.share_hash:
        return "challenge is for another share"
    return _indices_problem(challenge.indices, contract.leaf_count)


def verify_answer(contract: Contract | SignedContract, challenge: Challenge,
                  answer: Answer) -> AuditVerdict:
    """Check ``answer`` to ``challenge`` against the contract's Merkle root.

    Does not verify the contract's signatures; pass a verified contract.
    """
    c = contract_of(contract)
    problem = challenge_problem(c, challenge)
    if problem is not None:
        return AuditVerdict(False, f"invalid challenge: {problem}")
    if answer.challenge_digest != challenge.digest():
        return AuditVerdict(False, "answer is for another challenge (nonce)")
    if answer.host_pubkey != c.host_pubkey:
        return AuditVerdict(False, "answer is not from the contract's host")
    try:
        answer.verify_signature()
    except BadSignature:
        return AuditVerdict(False, "answer signature does not verify")
    if len(answer.blocks) != len(challenge.indices) or len(answer.proofs) != len(challenge.indices):
        return AuditVerdict(False, "answer has the wrong number of blocks", proven=True)
    leaves = c.leaf_count
    for index, block, proof in zip(challenge.indices, answer.blocks, answer.proofs):
        if not verify_proof(c.merkle_root, index, leaves, block, proof):
            return AuditVerdict(False, f"block {index} does not match the contract's root",
                                proven=True)
    return AuditVerdict(True, "ok", proven=True)


# -- attestation ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attestation:
    """A challenger's signed record of one audit and its outcome."""

    challenger_pubkey: bytes
    host_id: bytes
    share_hash: bytes
    challenge: Challenge
    answer: Answer | None
    passed: bool
    reason: str
    time: int
    signature: bytes

    def body(self) -> list[Any]:
        return [ATTEST_VERSION, self.challenger_pubkey, self.host_id, self.share_hash,
                self.challenge.to_list(), None if self.answer is None else self.answer.to_list(),
                self.passed, self.reason, self.time]

    def signing_bytes(self) -> bytes:
        return ATTEST_TAG + canonical(self.body())

    def digest(self) -> bytes:
        """Names this attestation (its signing bytes' SHA-256)."""
        return hashlib.sha256(self.signing_bytes()).digest()

    @property
    def challenger_id(self) -> bytes:
        return node_id_of(self.challenger_pubkey)

    def verify_signature(self) -> None:
        verify(self.challenger_pubkey, self.signing_bytes(), self.signature)

    def encode(self) -> bytes:
        return pack([*self.body(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> "Attestation":
        """Structural decode; raises :class:`RemoteProtocolError`. Does not verify."""
        v = as_list(unpack_bounded(data, ATTEST_MAX_VALUE, _ITEMS), "attestation", 10)
        expect(len(v) == 10, "attestation: expected 10 fields")
        expect(type(v[0]) is int and v[0] == ATTEST_VERSION, "attestation: unknown version")
        expect(isinstance(v[6], bool), "attestation passed: expected bool")
        att = cls(
            challenger_pubkey=as_bytes(v[1], "attester key", size=PUBKEY_BYTES),
            host_id=as_bytes(v[2], "attested host", size=ID_BYTES),
            share_hash=as_bytes(v[3], "attested share", size=HASH_SIZE),
            challenge=Challenge.from_list(v[4]),
            answer=None if v[5] is None else Answer.from_list(v[5]),
            passed=bool(v[6]),
            reason=as_str(v[7], "attestation reason", MAX_REASON),
            time=as_int(v[8], "attestation time", 0, MAX_TIME),
            signature=as_bytes(v[9], "attestation signature", size=SIG_BYTES),
        )
        problem = _attestation_problem(att)
        expect(problem is None, f"attestation: {problem}")
        expect(att.encode() == bytes(data), "attestation: non-canonical encoding")
        return att


def _attestation_problem(att: Attestation) -> str | None:
    if att.share_hash != att.challenge.share_hash:
        return "share hash differs from the challenge's"
    if att.challenger_pubkey != att.challenge.challenger_pubkey:
        return "signer is not the challenger"
    if not att.challenge.issued <= att.time <= att.challenge.issued + MAX_ANSWER_DELAY:
        return "time is not within the answer delay of the challenge"
    if att.passed and att.answer is None:
        return "a pass needs the host's answer"
    if len(att.reason) > MAX_REASON:
        return "reason too long"
    return None


def attest(challenger: Identity, contract: Contract | SignedContract, challenge: Challenge,
           answer: Answer | None, now: float) -> Attestation:
    """Judge ``answer`` (None: the host did not answer in time) and sign the outcome.

    The attestation's time is ``now``, clamped into the answer delay
    (``challenge.issued .. issued + MAX_ANSWER_DELAY``). An answer that is not provably the host's (wrong challenge, wrong signer,
    bad signature) is recorded as no answer: it proves nothing about the host.
    """
    c = contract_of(contract)
    if challenge.challenger_pubkey != challenger.pubkey:
        raise LocalProtocolError("only the challenger can attest its challenge")
    if answer is None:
        kept, passed, reason = None, False, "no answer"
    else:
        verdict = verify_answer(c, challenge, answer)
        if verdict.proven:
            kept, passed, reason = answer, verdict.passed, verdict.reason
        else:
            kept, passed, reason = None, False, f"no valid answer: {verdict.reason}"
    reason = reason[:MAX_REASON]
    time = max(challenge.issued, min(int(now), challenge.issued + MAX_ANSWER_DELAY))
    unsigned = Attestation(challenger.pubkey, c.host_id, c.share_hash, challenge, kept, passed,
                           reason, time, b"")
    return Attestation(challenger.pubkey, c.host_id, c.share_hash, challenge, kept, passed,
                       reason, time, challenger.sign(unsigned.signing_bytes()))


class Evidence(enum.Enum):
    """What one attestation shows, given the contract it is about."""

    PASSED = "passed"          # the host's signed answer verifies: the data was there
    FAILED = "failed"          # the host's signed answer does not verify: proof of fault
    UNANSWERED = "unanswered"  # the host did not answer: the challenger's word only
    FALSE = "false"            # signed by the challenger but contradicted by its own content
    IRRELEVANT = "irrelevant"  # not about this contract or its term, bad signatures: ignore


def classify_attestation(att: Attestation, contract: Contract | SignedContract) -> Evidence:
    """Re-check ``att`` against ``contract`` (a :class:`SignedContract` is verified too)."""
    if isinstance(contract, SignedContract):
        try:
            contract.verify()
        except RemoteProtocolError:
            return Evidence.IRRELEVANT
    c = contract_of(contract)
    if (att.host_id != c.host_id or att.share_hash != c.share_hash
            or _attestation_problem(att) is not None):
        return Evidence.IRRELEVANT
    end = contract.until if isinstance(contract, SignedContract) else c.end
    if not c.start <= att.challenge.issued <= end:
        return Evidence.IRRELEVANT  # (outside the term, or after the owner deleted the share)
    try:
        att.verify_signature()
    except BadSignature:
        return Evidence.IRRELEVANT
    if challenge_problem(c, att.challenge) is not None:
        return Evidence.FALSE  # no host could answer it, so its outcome is meaningless
    if att.answer is None:
        return Evidence.FALSE if att.passed else Evidence.UNANSWERED
    verdict = verify_answer(c, att.challenge, att.answer)
    if not verdict.proven or verdict.passed != att.passed:
        return Evidence.FALSE
    return Evidence.PASSED if verdict.passed else Evidence.FAILED


def verify_attestation(att: Attestation, contract: Contract | SignedContract) -> bool:
    """True iff ``att`` is a correct statement about ``contract``.

    Signature valid, about this contract's host and share within its term;
    ``passed=True``: the embedded answer verifies; ``passed=False`` with an
    answer: the host's own signed answer really fails; ``passed=False``
    without one: "no answer", which only the challenger vouches for.
    """
    return classify_attestation(att, contract) in (
        Evidence.PASSED, Evidence.FAILED, Evidence.UNANSWERED)


# -- DHT records --------------------------------------------------------------------


def attest_key(host_id: bytes) -> bytes:
    return dht_key(host_id, namespace=b"attest")


def parse_attest_record(rec: Record) -> Attestation:
    """The attestation in an ``attest`` record; raises :class:`RecordRejected`.

    Checks what can be checked without the contract: structure, key, that
    the record's signer is the challenger, the attestation's signature, and
    that an embedded answer comes from the attested host.
    """
    if rec.kind != "attest":
        raise RecordRejected("not an attest record")
    try:
        att = Attestation.decode(rec.value)
        att.verify_signature()
    except RemoteProtocolError as exc:
        raise RecordRejected(f"bad attest record: {exc}") from exc
    if rec.key != attest_key(att.host_id):
        raise RecordRejected("attest record: key does not match the host")
    if rec.signer_pubkey != att.challenger_pubkey:
        raise RecordRejected("attest record: signer is not the challenger")
    if att.answer is not None and (node_id_of(att.answer.host_pubkey) != att.host_id
                                   or att.answer.challenge_digest != att.challenge.digest()):
        raise RecordRejected("attest record: the answer is not the host's answer to the challenge")
    return att


def _check_attest_value(rec: Record) -> None:
    parse_attest_record(rec)


register_kind(KindSpec("attest", max_value=ATTEST_MAX_VALUE, max_ttl=ATTEST_MAX_TTL,
                       max_entries=64, validate_value=_check_attest_value))


def make_attest_record(challenger: Identity, att: Attestation, now: float,
                       ttl: int = ATTEST_TTL) -> Record:
    if challenger.pubkey != att.challenger_pubkey:
        raise LocalProtocolError("only the challenger may publish its attestation")
    return Record.create(challenger, "attest", attest_key(att.host_id), att.encode(),
                         int(now * 1000), int(now) + min(ttl, ATTEST_MAX_TTL))


# -- scheduling ---------------------------------------------------------------------


class PlannedAudit(NamedTuple):
    contract: Contract
    when: float


@dataclass(frozen=True, slots=True)
class AuditSchedule:
    """When to audit which contracts during the next period.

    ``rate`` is the expected number of audits per contract per ``period``
    (seconds); at most ``max_audits`` are planned per period whatever the
    number of contracts. The period is cut into as many equal slots as
    audits, each audit lands at a random point of its slot (jitter), and the
    contracts are shuffled over the slots: load is even, and nodes that
    start together do not audit together.
    """

    rate: float = 1.0
    period: float = 24 * 3600.0
    max_audits: int = 256

    def plan(self, contracts: Iterable[Contract | SignedContract], now: float,
             rng: random.Random, *, skip_host: bytes | None = None) -> list[PlannedAudit]:
        """The audits for ``[now, now + period)``, sorted by time.

        Only contracts in force during the window are planned, and never
        within a contract's term at a time outside it. ``skip_host``: this
        node's ID (nobody audits itself).
        """
        if self.rate < 0 or self.period <= 0 or self.max_audits < 0:
            raise InvalidParameter("audit rate, period and cap must be positive")
        lo, hi = now, now + self.period
        unique: dict[bytes, Contract] = {}
        for item in contracts:
            c = contract_of(item)
            if c.start < hi and c.end > lo and c.host_id != skip_host:
                unique.setdefault(c.digest(), c)
        eligible = [unique[d] for d in sorted(unique)]  # independent of input order
        if not eligible or self.rate == 0:
            return []
        expected = self.rate * len(eligible)
        m = int(expected)
        if rng.random() < expected - m:
            m += 1
        m = min(m, self.max_audits)
        if m == 0:
            return []
        whole, rest = divmod(m, len(eligible))
        picks = eligible * whole + rng.sample(eligible, rest)
        rng.shuffle(picks)
        slot = self.period / m
        plan = []
        for i, c in enumerate(picks):
            when = lo + (i + rng.random()) * slot
            start, end = max(lo, float(c.start)), min(hi, float(c.end))
            if not start <= when < end:
                when = start + rng.random() * (end - start)
            plan.append(PlannedAudit(c, when))
        plan.sort(key=lambda p: p.when)
        return plan


__all__ = [
    "ANSWER_TAG", "ATTEST_TAG", "CHALLENGE_TAG", "Answer", "Attestation", "AuditSchedule",
    "AuditVerdict", "Challenge", "Evidence", "PlannedAudit", "answer_challenge", "attest",
    "attest_key", "challenge_problem", "classify_attestation",
    "make_attest_record", "parse_attest_record", "verify_answer", "verify_attestation",
]
