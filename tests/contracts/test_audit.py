"""Audits: fresh challenges, Merkle-proven answers, attestations, ``attest`` records, scheduling."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xcore.contracts.audit import (
    ANSWER_TAG,
    ATTEST_TAG,
    MAX_ANSWER_DELAY,
    MAX_INDICES,
    MAX_REASON,
    Answer,
    Attestation,
    AuditSchedule,
    Challenge,
    Evidence,
    answer_challenge,
    attest,
    attest_key,
    classify_attestation,
    make_attest_record,
    parse_attest_record,
    verify_answer,
    verify_attestation,
)
from xcore.contracts.contract import AUDIT_BLOCK, Contract, SignedContract, share_tree
from xcore.crypto.identity import Identity, node_id_of
from xcore.crypto.merkle import leaf_hash
from xcore.dht.records import MAX_RECORD_BYTES, Record, RecordStore, validate
from xcore.errors import InvalidParameter, LocalProtocolError, RecordRejected, RemoteProtocolError
from xcore.shard.erasure import MAX_SHARE_SIZE
from xcore.shard.transfer import delete_signing_bytes

NOW = 1_750_000_000
OWNER, HOST, AUDITOR, OTHER = (Identity(random.Random(200 + i).randbytes(32)) for i in range(4))
DATA = random.Random(9).randbytes(7 * AUDIT_BLOCK + 300)  # 8 leaves, the last one short


def make_signed(data: bytes = DATA, host: Identity = HOST, start: int = NOW - 86400,
                end: int = NOW + 30 * 86400) -> SignedContract:
    c = Contract.for_share(data, k=4, n=8, start=start, end=end, price=20_000,
                           host_pubkey=host.pubkey, owner_pubkey=OWNER.pubkey)
    return SignedContract(c).sign_as_owner(OWNER).sign_as_host(host)


SC = make_signed()
C = SC.contract


def challenge(indices: tuple[int, ...] = (2, 7), nonce: bytes = b"\x01" * 32,
              issued: int = NOW) -> Challenge:
    return Challenge(C.share_hash, nonce, indices, AUDITOR.pubkey, issued)


def sign_attestation(challenger: Identity, **fields: Any) -> Attestation:
    """An attestation with arbitrary content, correctly signed (for lies and edge cases)."""
    ch = fields.pop("challenge", challenge())
    base: dict[str, Any] = dict(challenger_pubkey=challenger.pubkey, host_id=C.host_id,
                                share_hash=C.share_hash, challenge=ch, answer=None, passed=False,
                                reason="x", time=ch.issued + 5, signature=b"")
    base.update(fields)
    unsigned = Attestation(**base)
    return dataclasses.replace(unsigned, signature=challenger.sign(unsigned.signing_bytes()))


# -- challenges ----------------------------------------------------------------------------


def test_fresh_challenges_have_fresh_nonces_and_distinct_indices() -> None:
    rng = random.Random(1)
    seen = set()
    for _ in range(50):
        ch = Challenge.fresh(SC, AUDITOR, NOW, rng)
        assert len(ch.nonce) == 32 and ch.nonce not in seen
        seen.add(ch.nonce)
        assert len(ch.indices) == 2 and list(ch.indices) == sorted(set(ch.indices))
        assert all(0 <= i < C.leaf_count for i in ch.indices)
        assert ch.challenger_pubkey == AUDITOR.pubkey and ch.issued == NOW


def test_fresh_is_deterministic_under_a_seed_and_takes_token_bytes() -> None:
    a = Challenge.fresh(C, AUDITOR, NOW, random.Random(5), count=3)
    assert a == Challenge.fresh(C, AUDITOR, NOW, random.Random(5), count=3)
    b = Challenge.fresh(C, AUDITOR, NOW, random.Random(5).randbytes, count=3)
    assert b == a and len(a.indices) == 3


def test_indices_cover_the_whole_share() -> None:
    rng = random.Random(2)
    hit: set[int] = set()
    for _ in range(200):
        hit.update(Challenge.fresh(C, AUDITOR, NOW, rng).indices)
    assert hit == set(range(C.leaf_count))


def test_a_stuck_token_source_is_refused() -> None:
    with pytest.raises(InvalidParameter):
        Challenge.fresh(C, AUDITOR, NOW, lambda n: bytes(n))


def test_count_is_capped_by_leaves_and_max() -> None:
    small = make_signed(b"tiny").contract
    assert Challenge.fresh(small, AUDITOR, NOW, random.Random(0), count=3).indices == (0,)
    assert len(Challenge.fresh(C, AUDITOR, NOW, random.Random(0), count=10).indices) == MAX_INDICES
    with pytest.raises(InvalidParameter):
        Challenge.fresh(C, AUDITOR, NOW, random.Random(0), count=0)


def test_challenge_digest_covers_every_field() -> None:
    ch = challenge()
    variants = [dataclasses.replace(ch, nonce=b"\x02" * 32), dataclasses.replace(ch, indices=(2, 6)),
                dataclasses.replace(ch, issued=NOW + 1), dataclasses.replace(ch, share_hash=b"\x00" * 32),
                dataclasses.replace(ch, challenger_pubkey=OTHER.pubkey)]
    assert len({v.digest() for v in [ch, *variants]}) == 6


# -- answers: the honest host passes ----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, AUDIT_BLOCK, AUDIT_BLOCK + 1, 33 * AUDIT_BLOCK - 7])
def test_honest_host_passes(size: int) -> None:
    data = random.Random(size).randbytes(size)
    sc = make_signed(data)
    rng = random.Random(size)
    for _ in range(5):
        ch = Challenge.fresh(sc, AUDITOR, NOW, rng, count=3)
        answer = answer_challenge(data, ch, HOST)
        verdict = verify_answer(sc, ch, answer)
        assert verdict.passed and verdict.proven, verdict.reason
        assert all(len(b) <= AUDIT_BLOCK for b in answer.blocks)


def test_cached_tree_gives_the_same_answer() -> None:
    ch = challenge()
    assert answer_challenge(DATA, ch, HOST, tree=share_tree(DATA)) == answer_challenge(DATA, ch, HOST)


def test_answer_signature_is_tagged_and_covers_nonce_and_blocks() -> None:
    ans = answer_challenge(DATA, challenge(), HOST)
    assert Answer.signing_bytes(ans.challenge_digest, ans.blocks, HOST.pubkey).startswith(ANSWER_TAG)
    assert challenge().digest() == ans.challenge_digest


def test_host_refuses_challenges_it_cannot_answer() -> None:
    with pytest.raises(InvalidParameter):
        answer_challenge(DATA, challenge(indices=(8,)), HOST)
    with pytest.raises(InvalidParameter):
        answer_challenge(DATA, challenge(indices=(3, 1)), HOST)


# -- answers: dishonest hosts fail --------------------------------------------------------------


def test_host_that_kept_only_block_hashes_fails() -> None:
    tree = share_tree(DATA)  # what such a host still has
    ch = challenge()
    fake_blocks = [tree.leaves[i] for i in ch.indices]
    answer = Answer.create(HOST, ch.digest(), fake_blocks, [tree.proof(i) for i in ch.indices])
    verdict = verify_answer(SC, ch, answer)
    assert not verdict.passed and verdict.proven
    assert "does not match" in verdict.reason


def test_host_with_a_corrupted_block_fails() -> None:
    corrupted = bytearray(DATA)
    corrupted[7 * AUDIT_BLOCK + 10] ^= 0x40  # in block 7
    ch = challenge(indices=(1, 7))
    for tree in (None, share_tree(DATA)):  # recomputed tree, or the tree cached before corruption
        verdict = verify_answer(SC, ch, answer_challenge(bytes(corrupted), ch, HOST, tree=tree))
        assert not verdict.passed and verdict.proven
    # blocks the corruption did not touch still pass against a cached tree
    ok = answer_challenge(bytes(corrupted), challenge(indices=(1, 2)), HOST, tree=share_tree(DATA))
    assert verify_answer(SC, challenge(indices=(1, 2)), ok).passed


def test_host_that_deleted_the_share_fails() -> None:
    ch = challenge()
    rng = random.Random(3)
    guessed = Answer.create(HOST, ch.digest(), [rng.randbytes(AUDIT_BLOCK) for _ in ch.indices],
                            [[rng.randbytes(32)] * 3 for _ in ch.indices])
    assert not verify_answer(SC, ch, guessed).passed
    empty = Answer.create(HOST, ch.digest(), [b"" for _ in ch.indices], [[] for _ in ch.indices])
    assert not verify_answer(SC, ch, empty).passed
    # and a host that does not answer at all is attested as such
    att = attest(AUDITOR, SC, ch, None, NOW + 30)
    assert not att.passed and att.answer is None and att.reason == "no answer"
    assert classify_attestation(att, SC) is Evidence.UNANSWERED


def test_after_the_owner_deleted_the_share_no_audit_counts() -> None:
    """A host that deleted on the owner's signed request is not blamed by
    anybody who knows the ended contract; audits before the delete still count."""
    ended = SC.ended_by(NOW, OWNER.sign(delete_signing_bytes(C.share_hash, C.host_id, NOW,
                                                             OWNER.pubkey)))
    before = attest(AUDITOR, SC, challenge(issued=NOW - 60), None, NOW - 30)
    after = attest(AUDITOR, SC, challenge(issued=NOW + 60), None, NOW + 90)
    assert classify_attestation(before, ended) is Evidence.UNANSWERED
    assert classify_attestation(after, SC) is Evidence.UNANSWERED  # (not knowing of the delete)
    assert classify_attestation(after, ended) is Evidence.IRRELEVANT


def test_answer_for_a_different_nonce_fails() -> None:
    old = challenge(nonce=b"\x01" * 32)
    replayed = answer_challenge(DATA, old, HOST)  # kept from an earlier audit
    new = challenge(nonce=b"\x09" * 32)
    verdict = verify_answer(SC, new, replayed)
    assert not verdict.passed and not verdict.proven
    assert "another challenge" in verdict.reason


def test_answers_by_anyone_but_the_contract_host_fail() -> None:
    ch = challenge()
    verdict = verify_answer(SC, ch, answer_challenge(DATA, ch, OTHER))
    assert not verdict.passed and not verdict.proven


def test_a_tampered_answer_fails_its_signature() -> None:
    ch = challenge()
    good = answer_challenge(DATA, ch, HOST)
    other = answer_challenge(DATA, challenge(indices=(3, 4)), HOST)
    mixed = dataclasses.replace(good, blocks=other.blocks, proofs=other.proofs)
    verdict = verify_answer(SC, ch, mixed)
    assert not verdict.passed and "signature" in verdict.reason


def test_a_signed_answer_with_missing_blocks_is_a_proven_failure() -> None:
    ch = challenge()
    tree = share_tree(DATA)
    short = Answer.create(HOST, ch.digest(), [DATA[2 * AUDIT_BLOCK:3 * AUDIT_BLOCK]], [tree.proof(2)])
    verdict = verify_answer(SC, ch, short)
    assert not verdict.passed and verdict.proven


def test_invalid_challenges_prove_nothing() -> None:
    ch = challenge(indices=(8,))  # only 8 leaves
    bogus = Answer.create(HOST, ch.digest(), [b""], [[]])
    verdict = verify_answer(SC, ch, bogus)
    assert not verdict.passed and not verdict.proven


# -- attestations -------------------------------------------------------------------------------


def test_third_parties_recheck_passed_and_failed_attestations() -> None:
    ch = challenge()
    good = attest(AUDITOR, SC, ch, answer_challenge(DATA, ch, HOST), NOW + 10)
    assert good.passed and good.signing_bytes().startswith(ATTEST_TAG)
    assert classify_attestation(good, SC) is Evidence.PASSED and verify_attestation(good, C)
    corrupted = DATA[:2 * AUDIT_BLOCK] + bytes(AUDIT_BLOCK) + DATA[3 * AUDIT_BLOCK:]
    bad = attest(AUDITOR, SC, ch, answer_challenge(corrupted, ch, HOST), NOW + 10)
    assert not bad.passed and bad.answer is not None
    assert classify_attestation(bad, SC) is Evidence.FAILED and verify_attestation(bad, SC)


def test_attest_records_unproven_answers_as_no_answer() -> None:
    ch = challenge()
    att = attest(AUDITOR, SC, ch, answer_challenge(DATA, ch, OTHER), NOW + 10)
    assert att.answer is None and not att.passed and att.reason.startswith("no valid answer")
    assert classify_attestation(att, SC) is Evidence.UNANSWERED
    with pytest.raises(LocalProtocolError):
        attest(OTHER, SC, ch, None, NOW)


def test_attest_clamps_time_into_the_answer_delay() -> None:
    assert attest(AUDITOR, SC, challenge(), None, NOW + 10 * MAX_ANSWER_DELAY).time == NOW + MAX_ANSWER_DELAY


def test_tampered_attestations_do_not_verify() -> None:
    ch = challenge()
    att = attest(AUDITOR, SC, ch, None, NOW + 10)
    for forged in (dataclasses.replace(att, reason="other"), dataclasses.replace(att, time=NOW + 11),
                   dataclasses.replace(att, challenger_pubkey=OTHER.pubkey)):
        assert classify_attestation(forged, SC) is Evidence.IRRELEVANT
        assert not verify_attestation(forged, SC)


def test_lies_are_caught() -> None:
    ch = challenge()
    good = answer_challenge(DATA, ch, HOST)
    bad = answer_challenge(bytes(len(DATA)), ch, HOST)
    lies = [
        sign_attestation(AUDITOR, answer=good, passed=False),          # "failed" with a passing answer
        sign_attestation(AUDITOR, answer=bad, passed=True),            # "passed" with a failing answer
        sign_attestation(AUDITOR, answer=answer_challenge(DATA, ch, OTHER), passed=False),  # not the host's
        sign_attestation(AUDITOR, challenge=challenge(indices=(8,))),  # unanswerable challenge
    ]
    for lie in lies:
        assert classify_attestation(lie, SC) is Evidence.FALSE
        assert not verify_attestation(lie, SC)


def test_attestations_about_other_contracts_or_terms_are_irrelevant() -> None:
    ch = challenge()
    att = attest(AUDITOR, SC, ch, answer_challenge(DATA, ch, HOST), NOW + 10)
    other_host = make_signed(host=OTHER)
    assert classify_attestation(att, other_host) is Evidence.IRRELEVANT
    ended = make_signed(start=NOW - 10 * 86400, end=NOW - 86400)
    assert classify_attestation(att, ended) is Evidence.IRRELEVANT
    unsigned = SignedContract(C).sign_as_owner(OWNER)
    assert classify_attestation(att, unsigned) is Evidence.IRRELEVANT


# -- codec --------------------------------------------------------------------------------------


def test_codecs_round_trip() -> None:
    ch = challenge()
    ans = answer_challenge(DATA, ch, HOST)
    assert Challenge.decode(ch.encode()) == ch
    assert Answer.decode(ans.encode()) == ans
    for att in (attest(AUDITOR, SC, ch, ans, NOW), attest(AUDITOR, SC, ch, None, NOW)):
        assert Attestation.decode(att.encode()) == att


def test_decode_enforces_the_structural_rules() -> None:
    ch = challenge()
    for att in (sign_attestation(AUDITOR, passed=True),                     # pass without answer
                sign_attestation(AUDITOR, time=NOW - 1),                    # before the challenge
                sign_attestation(AUDITOR, time=NOW + MAX_ANSWER_DELAY + 1),
                sign_attestation(AUDITOR, share_hash=b"\x00" * 32),
                sign_attestation(OTHER)):                                    # not the challenger
        with pytest.raises(RemoteProtocolError):
            Attestation.decode(att.encode())
    assert Attestation.decode(sign_attestation(AUDITOR, challenge=ch).encode())


blobs = st.binary(min_size=32, max_size=32)


@st.composite
def attestations(draw: st.DrawFn) -> Attestation:
    indices = tuple(sorted(draw(st.sets(st.integers(0, 2**48 - 1), min_size=1, max_size=3))))
    issued = draw(st.integers(0, 2**40 - MAX_ANSWER_DELAY))
    challenger = draw(blobs)
    ch = Challenge(draw(blobs), draw(blobs), indices, challenger, issued)
    answer = draw(st.one_of(st.none(), st.builds(
        Answer, blobs,
        st.lists(st.binary(max_size=AUDIT_BLOCK), min_size=2, max_size=2).map(tuple),
        st.lists(st.lists(blobs, max_size=12).map(tuple), min_size=2, max_size=2).map(tuple),
        blobs, st.binary(min_size=64, max_size=64))))
    passed = answer is not None and draw(st.booleans())
    return Attestation(challenger, draw(st.binary(min_size=20, max_size=20)), ch.share_hash, ch,
                       answer, passed, draw(st.text(max_size=MAX_REASON)),
                       issued + draw(st.integers(0, MAX_ANSWER_DELAY)),
                       draw(st.binary(min_size=64, max_size=64)))


@settings(max_examples=60, deadline=None)
@given(attestations())
def test_property_attestation_round_trip(att: Attestation) -> None:
    assert Attestation.decode(att.encode()) == att
    assert Challenge.decode(att.challenge.encode()) == att.challenge
    if att.answer is not None:
        assert Answer.decode(att.answer.encode()) == att.answer


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=800))
@example(b"")
@example(b"\x9a\x01")
@example(attest(AUDITOR, SC, challenge(), None, NOW).encode()[:-3])
def test_property_arbitrary_bytes_fail_only_with_protocol_errors(data: bytes) -> None:
    for decode in (Attestation.decode, Challenge.decode, Answer.decode):
        try:
            decode(data)
        except RemoteProtocolError:
            pass


# -- records --------------------------------------------------------------------------------------


def test_attest_record_validates_and_parses() -> None:
    ch = challenge()
    att = attest(AUDITOR, SC, ch, answer_challenge(DATA, ch, HOST), NOW + 1)
    rec = make_attest_record(AUDITOR, att, NOW + 1)
    assert rec.key == attest_key(C.host_id)
    validate(rec, NOW + 1)
    assert parse_attest_record(rec) == att
    with pytest.raises(LocalProtocolError):
        make_attest_record(OTHER, att, NOW)


def test_worst_case_attestation_fits_in_a_record() -> None:
    data = random.Random(4).randbytes(MAX_SHARE_SIZE)
    sc = make_signed(data)
    leaves = sc.contract.leaf_count
    ch = Challenge(sc.contract.share_hash, b"\x07" * 32, (0, leaves // 2, leaves - 2),
                   AUDITOR.pubkey, NOW)
    ans = answer_challenge(data, ch, HOST)
    assert all(len(p) == 11 for p in ans.proofs)
    att = sign_attestation(AUDITOR, challenge=ch, share_hash=ch.share_hash, host_id=sc.contract.host_id,
                           answer=ans, passed=True, reason="\U0001d11e" * MAX_REASON,
                           time=NOW + MAX_ANSWER_DELAY)
    # the largest seq and expiry the envelope allows
    rec = Record.create(AUDITOR, "attest", attest_key(att.host_id), att.encode(), 2**63 - 1,
                        NOW + 3600)
    assert len(rec.encode()) <= MAX_RECORD_BYTES
    assert Record.decode(rec.encode()) == rec
    validate(rec, NOW)
    assert verify_attestation(att, sc)


def test_one_attestation_per_challenger_per_host() -> None:
    store = RecordStore()
    first = attest(AUDITOR, SC, challenge(), None, NOW)
    second = attest(AUDITOR, SC, challenge(nonce=b"\x05" * 32, issued=NOW + 60), None, NOW + 60)
    assert store.put(make_attest_record(AUDITOR, first, NOW), NOW) == "stored"
    assert store.put(make_attest_record(AUDITOR, second, NOW + 60), NOW + 60) == "refreshed"
    other = attest(OTHER, SC, dataclasses.replace(challenge(), challenger_pubkey=OTHER.pubkey), None, NOW)
    assert store.put(make_attest_record(OTHER, other, NOW), NOW + 60) == "stored"
    held = store.get(attest_key(C.host_id), NOW + 60)
    assert sorted(parse_attest_record(r).challenge.nonce for r in held) == [b"\x01" * 32, b"\x05" * 32]


def _attest_record(signer: Identity, att: Attestation, key: bytes | None = None) -> Record:
    return Record.create(signer, "attest", key or attest_key(att.host_id), att.encode(), 1, NOW + 3600)


def test_attest_records_are_checked() -> None:
    att = attest(AUDITOR, SC, challenge(), None, NOW)
    with pytest.raises(RecordRejected, match="signer"):
        validate(_attest_record(OTHER, att), NOW)
    with pytest.raises(RecordRejected, match="key"):
        validate(_attest_record(AUDITOR, att, key=attest_key(b"\x00" * 20)), NOW)
    forged = dataclasses.replace(att, reason="forged")
    with pytest.raises(RecordRejected):
        validate(_attest_record(AUDITOR, forged), NOW)
    ch = challenge()
    stranger = sign_attestation(AUDITOR, answer=answer_challenge(DATA, ch, OTHER), passed=False)
    with pytest.raises(RecordRejected, match="answer"):
        validate(_attest_record(AUDITOR, stranger), NOW)
    with pytest.raises(RecordRejected):
        validate(Record.create(AUDITOR, "attest", attest_key(C.host_id), b"\xc0", 1, NOW + 60), NOW)


# -- scheduling ------------------------------------------------------------------------------------


def _contracts(count: int, start: int = NOW - 86400, end: int = NOW + 30 * 86400) -> list[Contract]:
    base = C
    return [dataclasses.replace(base, share_hash=i.to_bytes(32, "big"), start=start, end=end)
            for i in range(count)]


def test_schedule_spreads_audits_over_the_period_with_jitter() -> None:
    sched = AuditSchedule(rate=1.0, period=86400.0, max_audits=1000)
    contracts = _contracts(100)
    plan = sched.plan(contracts, NOW, random.Random(1))
    assert len(plan) == 100
    times = [p.when for p in plan]
    assert times == sorted(times) and NOW <= times[0] and times[-1] < NOW + 86400
    slot = 86400 / 100
    assert all(NOW + i * slot <= t < NOW + (i + 1) * slot for i, t in enumerate(times))
    assert len({round(t - NOW) % round(slot) for t in times}) > 50  # jittered, not on a grid
    assert {p.contract.share_hash for p in plan} == {c.share_hash for c in contracts}


def test_schedule_is_bounded_and_deterministic() -> None:
    contracts = _contracts(300)
    sched = AuditSchedule(rate=2.0, max_audits=50)
    a = sched.plan(contracts, NOW, random.Random(7))
    assert len(a) == 50
    assert a == sched.plan(list(reversed(contracts)), NOW, random.Random(7))
    assert a != sched.plan(contracts, NOW, random.Random(8))


def test_schedule_rate_is_an_expectation() -> None:
    contracts = _contracts(10)
    sizes = [len(AuditSchedule(rate=0.25).plan(contracts, NOW, random.Random(s))) for s in range(400)]
    assert set(sizes) <= {2, 3} and 2.3 < sum(sizes) / len(sizes) < 2.7
    assert AuditSchedule(rate=0.0).plan(contracts, NOW, random.Random(0)) == []
    many = AuditSchedule(rate=3.0).plan(contracts, NOW, random.Random(0))
    assert len(many) == 30 and all(
        sum(p.contract == c for p in many) == 3 for c in contracts)


def test_schedule_respects_terms_and_skips_own_contracts() -> None:
    late = _contracts(1, start=NOW + 80000, end=NOW + 90000)
    over = _contracts(1, start=NOW - 10, end=NOW - 1)
    plan = AuditSchedule(rate=5.0).plan(late + over, NOW, random.Random(3))
    assert len(plan) == 5 and all(NOW + 80000 <= p.when < NOW + 86400 for p in plan)
    assert AuditSchedule().plan(_contracts(5), NOW, random.Random(0), skip_host=C.host_id) == []
    with pytest.raises(InvalidParameter):
        AuditSchedule(rate=-1).plan(late, NOW, random.Random(0))


def test_leaf_hash_of_a_hash_is_not_the_leaf() -> None:
    # why keeping only hashes cannot pass: the verifier hashes what it gets
    h = leaf_hash(DATA[:AUDIT_BLOCK])
    assert leaf_hash(h) != h
    assert node_id_of(HOST.pubkey) == C.host_id
