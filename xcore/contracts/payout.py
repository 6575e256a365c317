"""Monthly host payouts: whitepaper Appendix 1, "X Core Payout Computation" (docs/payouts.md).

What the appendix says, and what is taken from it
-------------------------------------------------
* "Each Host earns €0,02 per GB they host. Payouts are computed at the end of
  each natural month." -> :data:`APPENDIX_RATE` = €0.02 per GB-month, per
  calendar month (UTC). GB means 10**9 bytes (decimal, as storage is sold),
  not GiB.
* "an extra 1% reward per 100 INXT tokens held per Host" -> a bonus of
  ``floor(inxt / 100)`` percent on top of the storage payout. The appendix
  sets no cap, so there is none.
* "We process the number of files held by a node at the end of a month": a
  snapshot that a serverless network cannot observe and that a host could
  game by holding data only on the last day. xcore pays instead for what
  audits *prove* was held during the month (the coverage rule below).

**No 70/30 mode.** Appendix 1 describes no relative "70% disk space / 30%
INXT" split: it gives only the absolute rate and the INXT bonus above. The
only trace of such a split in the whitepaper is one summary sentence in the
body's X Core section ("disk space ... is given 70% of the payout weight. The
number of Internxt tokens held ... carries 30% of the remaining weight"),
which points at this appendix for the formula; the appendix does not contain
it, and the sentence defines neither the pool being divided nor what "30% of
the remaining weight" means. It is not implemented; nothing here invents it.

The coverage rule
-----------------
For a period ``P = [first second of the month, first second of the next)``
and each (host, share) pair with verified contracts (both signatures) in
force during ``P``:

1. Its *paid windows* are the contract terms intersected with ``P``
   (overlapping contracts for the same share and host are merged, so a
   renewal is never paid twice). A term ends early where the owner deleted
   the share (:attr:`~xcore.contracts.contract.SignedContract.until`).
2. An audit counts if its attestation verifies against the contract
   (:func:`~xcore.contracts.audit.classify_attestation`), its challenge was
   issued inside a paid window, and its challenger is not the host (and is in
   ``auditors``, when given). Duplicate attestations count once.
3. A share with a **proven failed** audit (the host's own signed answer does
   not verify) in ``P`` earns nothing for ``P``.
4. Otherwise each paid window ``[a, b)`` is covered from ``a`` until
   ``min(b, last passing audit in it + cover)`` (``cover`` defaults to 7
   days), and not at all without a passing audit in it. "No answer"
   attestations neither pay nor void: they are only the challenger's word
   (reputation weighs them), but a share whose host stops answering stops
   being covered ``cover`` after its last pass.
5. ``gb_months = sum(size * covered_seconds) / (10**9 * seconds in P)``.

Money: ``euros = gb_months * rate``, ``total = euros * (100 + bonus%) / 100``.
All arithmetic is exact (fractions of integers and of ``Decimal`` inputs);
``euros`` and ``total`` are rounded to cents with ROUND_HALF_EVEN once, at the
end, and ``bonus_euros = total - euros`` so the parts always add up.
``gb_months`` is reported rounded to 9 places (one byte-month is 1e-9 GB-months
over 1 s; what is paid is computed from the exact value).

The contract's own ``price`` field (what an owner agreed with a host, used
by repairs) is not part of the appendix formula and is not used here.
INXT holdings are an input (an on-chain fact this module cannot check).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Collection, Iterable, Mapping

from xcore.contracts.audit import Attestation, Evidence, classify_attestation
from xcore.contracts.contract import SignedContract
from xcore.errors import InvalidParameter, RemoteProtocolError

APPENDIX_RATE = Decimal("0.02")  # euros per GB-month, whitepaper Appendix 1
GB = 10**9                        # bytes: decimal gigabytes
BONUS_STEP_INXT = 100             # +1 % per 100 INXT held
AUDIT_COVER = 7 * 24 * 3600       # a passing audit vouches for the share this long after it
ROUNDING = ROUND_HALF_EVEN
_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")


@dataclass(frozen=True, slots=True)
class HostPayout:
    host_id: bytes
    gb_months: Decimal
    audits_passed: int
    audits_failed: int
    euros: Decimal
    bonus_percent: int
    bonus_euros: Decimal
    total: Decimal


def period_bounds(period: str) -> tuple[int, int]:
    """``"YYYY-MM"`` -> (first second of the month, first second of the next), UTC."""
    m = _PERIOD.fullmatch(period) if isinstance(period, str) else None
    if m is None:
        raise InvalidParameter(f"period must be YYYY-MM, got {period!r}")
    year, month = int(m.group(1)), int(m.group(2))
    if not (1970 <= year <= 9999 and 1 <= month <= 12):
        raise InvalidParameter(f"period out of range: {period!r}")
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    ny, nm = (year + 1, 1) if month == 12 else (year, month + 1)
    return start, calendar.timegm((ny, nm, 1, 0, 0, 0))


def _exact(x: int | Decimal | Fraction, what: str) -> Fraction:
    if isinstance(x, bool) or not isinstance(x, (int, Decimal, Fraction)):
        raise InvalidParameter(f"{what} must be an int, Decimal or Fraction")
    if isinstance(x, Decimal) and not x.is_finite():
        raise InvalidParameter(f"{what} must be finite")
    f = Fraction(x)
    if f < 0:
        raise InvalidParameter(f"{what} must not be negative")
    return f


def bonus_percent(inxt: int | Decimal) -> int:
    """Appendix 1: "an extra 1% reward per 100 INXT tokens held" -> floor(inxt / 100)."""
    return int(_exact(inxt, "INXT held") // BONUS_STEP_INXT)


def round_half_even(x: Fraction, places: int) -> Decimal:
    """``x`` rounded to ``places`` decimals, ties to even, exactly."""
    scaled = x * 10**places
    q, r = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * r
    if twice > scaled.denominator or (twice == scaled.denominator and q % 2 == 1):
        q += 1
    return Decimal(q).scaleb(-places)


def host_payout(host_id: bytes, gb_months: int | Decimal | Fraction, inxt: int | Decimal, *,
                rate: Decimal = APPENDIX_RATE, audits_passed: int = 0,
                audits_failed: int = 0) -> HostPayout:
    """The appendix formula for one host: ``gb_months`` at ``rate`` plus the INXT bonus."""
    gbm = _exact(gb_months, "GB-months")
    base = gbm * _exact(rate, "rate")
    pct = bonus_percent(inxt)
    euros = round_half_even(base, 2)
    total = round_half_even(base * (100 + pct) / 100, 2)
    return HostPayout(host_id, round_half_even(gbm, 9), audits_passed, audits_failed, euros,
                      pct, total - euros, total)


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


@dataclass
class _Share:
    size: int
    windows: list[tuple[int, int]]
    contracts: list[tuple[SignedContract, int]]  # with the end of its paid term
    passes: list[int]
    failed: bool = False


def payouts(period: str, contracts: Iterable[SignedContract], attestations: Iterable[Attestation],
            inxt_held: Mapping[bytes, int | Decimal], *, rate: Decimal = APPENDIX_RATE,
            cover: int = AUDIT_COVER,
            auditors: Collection[bytes] | None = None) -> list[HostPayout]:
    """What each host earned in ``period`` ("YYYY-MM"), sorted by host ID.

    ``contracts``: signed contracts (unverifiable ones are skipped);
    ``attestations``: every attestation seen for the period (others are
    ignored); ``inxt_held``: host ID -> INXT held; ``auditors``: if given,
    only attestations by these node IDs count. Every host with a contract in
    force during the period is listed, even at zero.
    """
    p_start, p_end = period_bounds(period)
    if cover < 0:
        raise InvalidParameter("cover must not be negative")
    shares: dict[tuple[bytes, bytes], _Share] = {}
    verified: list[tuple[SignedContract, bytes]] = []
    for sc in contracts:
        try:
            sc.verify()
        except RemoteProtocolError:
            continue
        verified.append((sc, sc.contract.digest()))
    # a contract the owner ended early (it deleted the share) is paid until
    # then, even where a copy from before the delete is also in the input
    until: dict[bytes, int] = {}
    for sc, d in verified:
        until[d] = min(until.get(d, sc.until), sc.until)
    for sc, d in verified:
        c = sc.contract
        a, b = max(c.start, p_start), min(until[d], p_end)
        if a >= b:
            continue
        s = shares.setdefault((c.host_id, c.share_hash), _Share(c.size, [], [], []))
        s.windows.append((a, b))
        s.contracts.append((sc, until[d]))
    passed: dict[bytes, int] = {}
    failed: dict[bytes, int] = {}
    seen: set[bytes] = set()
    for att in attestations:
        s_opt = shares.get((att.host_id, att.share_hash))
        issued = att.challenge.issued
        if s_opt is None or not p_start <= issued < p_end:
            continue
        if auditors is not None and att.challenger_id not in auditors:
            continue
        digest = att.digest()
        if digest in seen:
            continue
        if any(att.challenger_pubkey == sc.contract.host_pubkey for sc, _ in s_opt.contracts):
            continue  # self-audits prove nothing to a payer
        ev = Evidence.IRRELEVANT
        for sc, end in s_opt.contracts:
            if issued < end:
                ev = classify_attestation(att, sc.contract)  # contracts verified above
                if ev is not Evidence.IRRELEVANT:
                    break
        if ev is Evidence.PASSED:
            seen.add(digest)
            s_opt.passes.append(issued)
            passed[att.host_id] = passed.get(att.host_id, 0) + 1
        elif ev is Evidence.FAILED:
            seen.add(digest)
            s_opt.failed = True
            failed[att.host_id] = failed.get(att.host_id, 0) + 1
    covered: dict[bytes, Fraction] = {}
    for (host_id, _share), s in sorted(shares.items()):
        seconds = 0
        if not s.failed:
            for a, b in _merge(s.windows):
                inside = [t for t in s.passes if a <= t < b]
                if inside:
                    seconds += min(b, max(inside) + cover) - a
        covered[host_id] = covered.get(host_id, Fraction(0)) + Fraction(s.size * seconds)
    length = p_end - p_start
    out = []
    for host_id in sorted(covered):
        gbm = covered[host_id] / (GB * length)
        out.append(host_payout(host_id, gbm, inxt_held.get(host_id, 0), rate=rate,
                               audits_passed=passed.get(host_id, 0),
                               audits_failed=failed.get(host_id, 0)))
    return out


__all__ = [
    "APPENDIX_RATE", "AUDIT_COVER", "GB", "HostPayout", "bonus_percent", "host_payout",
    "payouts", "period_bounds", "round_half_even",
]
