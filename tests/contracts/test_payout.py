"""Payouts: whitepaper Appendix 1 (EUR 0.02 per GB-month, +1 % per 100 INXT), audit coverage."""

from __future__ import annotations

import calendar
import random
from decimal import Decimal
from fractions import Fraction

import pytest

from xcore.contracts.audit import Answer, Attestation, Challenge, answer_challenge, attest
from xcore.contracts.contract import AUDIT_BLOCK, Contract, SignedContract
from xcore.contracts.payout import (
    APPENDIX_RATE, AUDIT_COVER, GB, bonus_percent, host_payout, payouts, period_bounds,
    round_half_even,
)
from xcore.crypto.identity import Identity
from xcore.errors import InvalidParameter
from xcore.shard.transfer import delete_signing_bytes

DAY = 24 * 3600
JUNE = calendar.timegm((2025, 6, 1, 0, 0, 0))  # a 30-day month
JULY = calendar.timegm((2025, 7, 1, 0, 0, 0))
SIZE = 1_000_000  # 0.001 GB


def ident(seed: int) -> Identity:
    return Identity(random.Random(seed).randbytes(32))


OWNER, HOST_A, HOST_B, AUDITOR, OTHER = (ident(400 + i) for i in range(5))
RATE = Decimal(1000)  # EUR per GB-month, so a full month of one SIZE share is EUR 1.00


def contract(host: Identity, seed: int = 0, start: int = JUNE - 10 * DAY, end: int = JULY + 10 * DAY,
             size: int = SIZE) -> tuple[bytes, SignedContract]:
    data = random.Random(seed).randbytes(size)
    c = Contract.for_share(data, k=4, n=8, start=start, end=end, price=20_000,
                           host_pubkey=host.pubkey, owner_pubkey=OWNER.pubkey)
    return data, SignedContract(c).sign_as_owner(OWNER).sign_as_host(host)


A1 = contract(HOST_A, seed=1)
A2 = contract(HOST_A, seed=2)
B1 = contract(HOST_B, seed=3)
_nonces = iter(range(1, 10**9))


def audit(share: tuple[bytes, SignedContract], host: Identity, t: int, *, mode: str = "pass",
          auditor: Identity = AUDITOR) -> Attestation:
    data, sc = share
    ch = Challenge(sc.contract.share_hash, next(_nonces).to_bytes(32, "big"), (1, 5),
                   auditor.pubkey, t)
    answer: Answer | None = None
    if mode == "pass":
        answer = answer_challenge(data, ch, host)
    elif mode == "fail":
        answer = answer_challenge(bytes(len(data)), ch, host)  # the host lost the data
    return attest(auditor, sc, ch, answer, t + 10)


def weekly(share: tuple[bytes, SignedContract], host: Identity) -> list[Attestation]:
    return [audit(share, host, JUNE + d * DAY) for d in (3, 10, 17, 24)]


def only(result: list, host: Identity):  # type: ignore[no-untyped-def]
    return next(p for p in result if p.host_id == host.node_id)


# -- the appendix formula ---------------------------------------------------------------------


def test_appendix_example_500_gb_and_1000_inxt() -> None:
    """500 GB for a whole month at EUR 0.02 = EUR 10.00; 1000 INXT = +10 % -> EUR 11.00."""
    p = host_payout(b"h" * 20, 500, 1000)
    assert p.gb_months == Decimal("500.000000000")
    assert (p.euros, p.bonus_percent, p.bonus_euros, p.total) == (
        Decimal("10.00"), 10, Decimal("1.00"), Decimal("11.00"))
    assert str(p.total) == "11.00"


def test_rate_is_two_cents_per_decimal_gb_month() -> None:
    assert APPENDIX_RATE == Decimal("0.02") and GB == 10**9
    assert host_payout(b"h" * 20, 1, 0).euros == Decimal("0.02")
    assert host_payout(b"h" * 20, Fraction(1024**3, GB), 0).total == Decimal("0.02")  # 1 GiB = 1.07 GB


@pytest.mark.parametrize("inxt,pct", [(0, 0), (99, 0), (100, 1), (Decimal("199.99999999"), 1),
                                      (1000, 10), (12345, 123)])
def test_bonus_is_one_percent_per_whole_100_inxt(inxt: int | Decimal, pct: int) -> None:
    assert bonus_percent(inxt) == pct


def test_bonus_rejects_nonsense() -> None:
    for bad in (-1, Decimal("NaN"), Decimal("-0.1"), 1.5, True):
        with pytest.raises(InvalidParameter):
            bonus_percent(bad)  # type: ignore[arg-type]


def test_rounding_is_half_even_once_at_the_end() -> None:
    assert host_payout(b"h" * 20, Decimal("6.25"), 0).euros == Decimal("0.12")   # 0.125 -> 0.12
    assert host_payout(b"h" * 20, Decimal("6.75"), 0).euros == Decimal("0.14")   # 0.135 -> 0.14
    # 0.1 GB-month with 1 % bonus: 0.002 + 0.00002 rounds to 0.00 as a whole
    p = host_payout(b"h" * 20, Decimal("0.1"), 100)
    assert (p.euros, p.bonus_euros, p.total) == (Decimal("0.00"), Decimal("0.00"), Decimal("0.00"))
    # parts always add up to the total
    for gbm in (Decimal("0.27"), Decimal("1.33"), Fraction(1, 3), Decimal("1234.5678")):
        p = host_payout(b"h" * 20, gbm, 777)
        assert p.euros + p.bonus_euros == p.total
        assert p.total == round_half_even(Fraction(gbm) * Fraction(APPENDIX_RATE) * 107 / 100, 2)


def test_round_half_even_is_exact() -> None:
    assert round_half_even(Fraction(5, 1000), 2) == Decimal("0.00")
    assert round_half_even(Fraction(15, 1000), 2) == Decimal("0.02")
    assert round_half_even(Fraction(1, 3), 2) == Decimal("0.33")
    assert round_half_even(Fraction(2, 3), 9) == Decimal("0.666666667")


def test_period_bounds() -> None:
    assert period_bounds("2025-06") == (JUNE, JULY)
    feb = period_bounds("2024-02")
    assert feb[1] - feb[0] == 29 * DAY
    assert period_bounds("2023-12")[1] == calendar.timegm((2024, 1, 1, 0, 0, 0))
    for bad in ("2025-13", "2025-00", "2025-6", "25-06", "2025-06-01", "", "1969-12"):
        with pytest.raises(InvalidParameter):
            period_bounds(bad)


# -- payouts from contracts and attestations -----------------------------------------------------


def test_full_month_with_weekly_audits() -> None:
    result = payouts("2025-06", [A1[1], B1[1]], weekly(A1, HOST_A) + weekly(B1, HOST_B),
                     {HOST_A.node_id: 1000}, rate=RATE)
    a, b = only(result, HOST_A), only(result, HOST_B)
    assert a.gb_months == Decimal("0.001000000") and a.audits_passed == 4 and a.audits_failed == 0
    assert (a.euros, a.bonus_percent, a.bonus_euros, a.total) == (
        Decimal("1.00"), 10, Decimal("0.10"), Decimal("1.10"))
    assert (b.euros, b.bonus_percent, b.total) == (Decimal("1.00"), 0, Decimal("1.00"))
    assert [p.host_id for p in result] == sorted(p.host_id for p in result)


def test_appendix_rate_on_real_contracts() -> None:
    # two 1 MB shares for a month = 0.002 GB-months -> EUR 0.00004: rounds to zero cents
    result = payouts("2025-06", [A1[1], A2[1]], weekly(A1, HOST_A) + weekly(A2, HOST_A), {})
    assert only(result, HOST_A).gb_months == Decimal("0.002000000")
    assert only(result, HOST_A).total == Decimal("0.00")


def test_partial_month_contract() -> None:
    mid = contract(HOST_A, seed=1, start=JUNE + 15 * DAY)  # the second half of June
    atts = [audit(mid, HOST_A, JUNE + d * DAY) for d in (17, 24)]
    a = only(payouts("2025-06", [mid[1]], atts, {}, rate=RATE), HOST_A)
    assert a.gb_months == Decimal("0.000500000") and a.euros == Decimal("0.50")


def test_coverage_ends_a_week_after_the_last_pass() -> None:
    atts = [audit(A1, HOST_A, JUNE + 3 * DAY), audit(A1, HOST_A, JUNE + 12 * DAY, mode="silent")]
    a = only(payouts("2025-06", [A1[1]], atts, {}, rate=RATE), HOST_A)
    covered = Fraction(3 * DAY + AUDIT_COVER, 30 * DAY)  # day 0 .. day 3 + 7
    assert a.gb_months == round_half_even(covered * SIZE / GB, 9)
    assert a.euros == Decimal("0.33") and a.audits_passed == 1 and a.audits_failed == 0


def test_a_proven_failure_voids_the_share_for_the_month() -> None:
    atts = weekly(A1, HOST_A) + weekly(A2, HOST_A) + [audit(A1, HOST_A, JUNE + 20 * DAY, mode="fail")]
    a = only(payouts("2025-06", [A1[1], A2[1]], atts, {HOST_A.node_id: 500}, rate=RATE), HOST_A)
    assert a.audits_failed == 1 and a.audits_passed == 8
    assert a.gb_months == Decimal("0.001000000")  # only A2 earns
    assert (a.euros, a.bonus_percent, a.total) == (Decimal("1.00"), 5, Decimal("1.05"))


def test_no_answer_neither_pays_nor_voids() -> None:
    atts = weekly(A1, HOST_A) + [audit(A1, HOST_A, JUNE + 5 * DAY, mode="silent")]
    a = only(payouts("2025-06", [A1[1]], atts, {}, rate=RATE), HOST_A)
    assert a.euros == Decimal("1.00") and a.audits_failed == 0 and a.audits_passed == 4


def test_a_share_the_owner_deleted_is_paid_until_the_delete() -> None:
    """Ended at day 10 by the owner's signed DELETE: paid for days 0-10, even
    with the contract from before the delete among the inputs, and audits
    after the delete (by an auditor that had not heard of it) count for nothing."""
    sc = A1[1]
    c = sc.contract
    t = JUNE + 10 * DAY
    ended = sc.ended_by(t, OWNER.sign(delete_signing_bytes(c.share_hash, c.host_id, t,
                                                           OWNER.pubkey)))
    atts = [audit(A1, HOST_A, JUNE + d * DAY) for d in (2, 8)] + [
        audit(A1, HOST_A, JUNE + 12 * DAY, mode="fail")]  # after the delete: irrelevant
    for contracts in ([ended], [sc, ended], [ended, sc]):
        a = only(payouts("2025-06", contracts, atts, {}, rate=RATE), HOST_A)
        assert a.gb_months == round_half_even(Fraction(10, 30) * SIZE / GB, 9), contracts
        assert (a.audits_passed, a.audits_failed) == (2, 0)
    # the same audits without the delete: covered to day 8 + 7 and voided by the failure
    a = only(payouts("2025-06", [sc], atts, {}, rate=RATE), HOST_A)
    assert a.audits_failed == 1 and a.gb_months == 0


def test_zero_without_audits_and_empty_without_contracts() -> None:
    a = only(payouts("2025-06", [A1[1]], [], {HOST_A.node_id: 10_000}, rate=RATE), HOST_A)
    assert a.gb_months == 0 and a.audits_passed == a.audits_failed == 0
    assert (a.euros, a.bonus_percent, a.bonus_euros, a.total) == (
        Decimal("0.00"), 100, Decimal("0.00"), Decimal("0.00"))
    assert payouts("2025-06", [], weekly(A1, HOST_A), {}) == []


def test_only_contracts_and_audits_of_the_period_count() -> None:
    ended = contract(HOST_A, seed=1, start=JUNE - 40 * DAY, end=JUNE)
    assert payouts("2025-06", [ended[1]], [], {}) == []
    may = [audit(A1, HOST_A, JUNE - d * DAY) for d in (1, 2)]  # before the period
    assert only(payouts("2025-06", [A1[1]], may, {}, rate=RATE), HOST_A).euros == Decimal("0.00")


def test_self_audits_and_unlisted_auditors_do_not_count() -> None:
    own = [audit(A1, HOST_A, JUNE + d * DAY, auditor=HOST_A) for d in (3, 10, 17, 24)]
    assert only(payouts("2025-06", [A1[1]], own, {}, rate=RATE), HOST_A).euros == Decimal("0.00")
    result = payouts("2025-06", [A1[1]], weekly(A1, HOST_A), {}, rate=RATE,
                     auditors={OTHER.node_id})
    assert only(result, HOST_A).audits_passed == 0
    result = payouts("2025-06", [A1[1]], weekly(A1, HOST_A), {}, rate=RATE,
                     auditors={AUDITOR.node_id})
    assert only(result, HOST_A).euros == Decimal("1.00")


def test_renewals_and_duplicates_are_not_paid_twice() -> None:
    renewal = contract(HOST_A, seed=1, start=JUNE + 5 * DAY, end=JULY + 40 * DAY)  # same share
    atts = weekly(A1, HOST_A)
    a = only(payouts("2025-06", [A1[1], renewal[1], A1[1]], atts + atts, {}, rate=RATE), HOST_A)
    assert a.euros == Decimal("1.00") and a.audits_passed == 4


def test_unsigned_contracts_and_forged_attestations_are_ignored() -> None:
    half = SignedContract(A1[1].contract).sign_as_owner(OWNER)
    assert payouts("2025-06", [half], weekly(A1, HOST_A), {}) == []
    att = weekly(A1, HOST_A)[0]
    lie = Attestation(att.challenger_pubkey, att.host_id, att.share_hash, att.challenge, None,
                      False, "x", att.time, att.signature)  # signature no longer matches
    a = only(payouts("2025-06", [A1[1]], [lie], {}, rate=RATE), HOST_A)
    assert a.audits_failed == 0 and a.euros == Decimal("0.00")


def test_bad_arguments() -> None:
    with pytest.raises(InvalidParameter):
        payouts("June", [], [], {})
    with pytest.raises(InvalidParameter):
        payouts("2025-06", [], [], {}, cover=-1)
    with pytest.raises(InvalidParameter):
        host_payout(b"h" * 20, -1, 0)
    assert AUDIT_BLOCK == 1024
