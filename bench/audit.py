"""Audit benchmark: what storage audits cost hosts, auditors and the network.

It runs the real audit code (:mod:`xcore.contracts.audit`, the host's share
store and TCP transfer protocol) on one seeded share and measures:

1. **host**: answers per second for a 2 MiB share, three ways:
   ``answer_challenge`` with a cached ``share_tree``; without one (the tree
   is rebuilt from the share: what ``HostService._audit`` does today); and
   the whole host path (``ShareStore.get``, which reads the file and checks
   its SHA-256, then the uncached answer). Also the memory of one cached
   tree (tracemalloc).
2. **challenger**: ``Challenge.fresh``, ``verify_answer``, ``attest`` (verify
   and sign) and ``make_attest_record`` per second.
3. **third parties**: what a DHT node storing the attestation record does
   (``decode_and_validate``: record and attestation signatures) and what a
   node that took no part does to re-check it (``classify_attestation``
   against a verified ``Contract``, or a ``SignedContract`` whose two
   signatures it checks too).
4. **bytes per audit**: challenge and answer (encoded and as TCP frames, plus
   the connection handshake, measured on a live loopback connection),
   attestation and its DHT record, one STORE datagram carrying it; for the
   default 2 blocks and the worst case of 3.
5. **loopback**: full audits per second against an in-process
   ``HostService`` on 127.0.0.1 (new authenticated connection per audit, as
   ``Auditor.audit`` does, and over one reused connection).
6. **cost of 1 TB stored** at the default schedule: ``DEFAULT_AUDIT_RATE``
   audits per contract per day (:mod:`xcore.node`), one contract per share
   of ``--share-size`` bytes, the attestation stored at ``ksize`` DHT nodes:
   CPU-seconds and bytes per day, network-wide and for the host holding it.

The machine and the wall-time baselines of :mod:`bench.common` come first.
The CPU figures are calls per CPU-second of the benchmark thread
(``time.thread_time``), not per wall second: on a shared machine wall-time
figures moved by up to 10x between runs, CPU time much less. SHA-256 and
Ed25519 are measured the same way, and the figures are also given as ratios
against them. Everything is seeded (``--seed``); timings differ.

    PYTHONPATH=. .venv/bin/python bench/audit.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make `bench` and `xcore` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    baselines, format_baselines, format_machine, human, log, machine_info, rate,
)
from xcore.contracts.audit import (  # noqa: E402
    DEFAULT_INDICES, MAX_INDICES, Answer, Challenge, answer_challenge, attest,
    classify_attestation, make_attest_record, verify_answer,
)
from xcore.contracts.contract import (  # noqa: E402
    AUDIT_BLOCK, Contract, SignedContract, share_tree,
)
from xcore.contracts.hosts import loc_record  # noqa: E402
from xcore.crypto.identity import Identity  # noqa: E402
from xcore.dht.messages import AUTH_MAC, Store, Stored, encode_datagram, encode_payload  # noqa: E402
from xcore.dht.protocol import DHTConfig  # noqa: E402
from xcore.dht.records import decode_and_validate  # noqa: E402
from xcore.node import DEFAULT_AUDIT_RATE  # noqa: E402
from xcore.shard.store import ShareStore  # noqa: E402
from xcore.shard.transfer import ANSWER, AUDIT, Grant, HostConnection, encode_frame  # noqa: E402
import xcore.kinds  # noqa: E402,F401  registers the record kinds (attest, contract)

MiB = 1 << 20
DAY = 86400


def cpu_rate(fn: Callable[[], Any], *, seconds: float = 0.3, repeats: int = 3) -> float:
    """Calls of ``fn`` per CPU-second of this thread: best of ``repeats`` runs.

    Like :func:`bench.common.rate` but timed with ``time.thread_time()``, so time the
    thread spends descheduled on a shared machine does not count: on a busy box the
    wall-time figures moved by 10x between runs, these much less.
    """
    return rate(fn, seconds=seconds, repeats=repeats, clock=time.thread_time)


def cpu_baselines(secs: float, reps: int) -> dict[str, float]:
    """SHA-256 and Ed25519 in CPU time, as the audit figures are (for the ratios)."""
    import nacl.signing
    buf = os.urandom(MiB)
    sk = nacl.signing.SigningKey(b"s" * 32)
    msg = os.urandom(200)
    sig = sk.sign(msg).signature
    vk = bytes(sk.verify_key)
    return {
        "sha256_MBps": cpu_rate(lambda: hashlib.sha256(buf).digest(), seconds=secs,
                                repeats=reps) * MiB / 1e6,
        "ed25519_sign_per_s": cpu_rate(lambda: sk.sign(msg), seconds=secs, repeats=reps),
        "ed25519_verify_per_s": cpu_rate(lambda: nacl.signing.VerifyKey(vk).verify(msg, sig),
                                         seconds=secs, repeats=reps),
    }


def setup(seed: int, share_size: int) -> dict[str, Any]:
    rng = random.Random(seed)
    owner, host, challenger = (Identity.generate(2, random.Random(rng.getrandbits(64)).randbytes)
                               for _ in range(3))
    share = rng.randbytes(share_size)
    now = 1_790_000_000
    c = Contract.for_share(share, k=4, n=8, start=now - 3600, end=now + 365 * DAY,
                           price=20_000, host_pubkey=host.pubkey, owner_pubkey=owner.pubkey)
    sc = SignedContract(c).sign_as_owner(owner).sign_as_host(host)
    return {"rng": rng, "owner": owner, "host": host, "challenger": challenger,
            "share": share, "contract": c, "signed": sc, "now": now}


def cycle(items: list[Any]) -> Callable[[], Any]:
    state = {"i": 0}

    def nxt() -> Any:
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]
    return nxt


def measure_cpu(s: dict[str, Any], secs: float, reps: int) -> dict[str, float]:
    rng, host, ch_id, share = s["rng"], s["host"], s["challenger"], s["share"]
    c, sc, now = s["contract"], s["signed"], s["now"]
    challenges = [Challenge.fresh(sc, ch_id, now, rng) for _ in range(64)]
    tree = share_tree(share)
    answers = [answer_challenge(share, ch, host, tree) for ch in challenges]
    pairs = list(zip(challenges, answers))
    atts = [attest(ch_id, sc, ch, a, now + 1) for ch, a in pairs]
    recs = [make_attest_record(ch_id, a, now + 1) for a in atts]
    blobs = [r.encode() for r in recs]
    out: dict[str, float] = {}

    def r(fn: Callable[[], Any]) -> float:
        return cpu_rate(fn, seconds=secs, repeats=reps)

    log("host: answers ...")
    nch = cycle(challenges)
    out["answer_cached_per_s"] = r(lambda: answer_challenge(share, nch(), host, tree))
    out["answer_uncached_per_s"] = r(lambda: answer_challenge(share, nch(), host))
    out["share_tree_per_s"] = r(lambda: share_tree(share))
    with tempfile.TemporaryDirectory(prefix="xc-bench-", dir="/tmp") as tmp:
        store = ShareStore(Path(tmp), 4 * len(share) + MiB)
        h = hashlib.sha256(share).digest()
        store.put(h, share)
        store.get(h)  # page cache warm: the figure is CPU, not the disk
        out["answer_as_served_per_s"] = r(lambda: answer_challenge(store.get(h), nch(), host))
        out["store_get_per_s"] = r(lambda: store.get(h))

    log("challenger: challenge, verify, attest, record ...")
    npair = cycle(pairs)

    def verify_one() -> Any:
        ch, a = npair()
        return verify_answer(c, ch, a)

    def attest_one() -> Any:
        ch, a = npair()
        return attest(ch_id, c, ch, a, now + 1)
    out["challenge_fresh_per_s"] = r(lambda: Challenge.fresh(sc, ch_id, now, os.urandom))
    out["verify_answer_per_s"] = r(verify_one)
    out["attest_per_s"] = r(attest_one)
    natt = cycle(atts)
    out["make_attest_record_per_s"] = r(lambda: make_attest_record(ch_id, natt(), now + 1))

    log("third parties: store validation, re-checks ...")
    nblob = cycle(blobs)
    out["record_validate_per_s"] = r(lambda: decode_and_validate(nblob(), now + 2))
    out["classify_contract_per_s"] = r(lambda: classify_attestation(natt(), c))
    out["classify_signed_contract_per_s"] = r(lambda: classify_attestation(natt(), sc))
    return out


def tree_memory(share: bytes) -> int:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t = share_tree(share)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del t
    return used


def measure_sizes(s: dict[str, Any]) -> dict[str, dict[str, int]]:
    rng, host, ch_id, share, sc, now = (s["rng"], s["host"], s["challenger"], s["share"],
                                        s["signed"], s["now"])
    out: dict[str, dict[str, int]] = {}
    for label, count in (("default", DEFAULT_INDICES), ("worst", MAX_INDICES)):
        ch = Challenge.fresh(sc, ch_id, now, rng, count=count)
        ans = answer_challenge(share, ch, host)
        att = attest(ch_id, sc, ch, ans, now + 1)
        rec = make_attest_record(ch_id, att, now + 1)
        store = encode_datagram(encode_payload(Store(rec.encode()), b"r" * 8, ch_id.pubkey,
                                               b"t" * 20, now * 1000), AUTH_MAC, b"m" * 16)
        stored = encode_datagram(encode_payload(Stored(0), b"r" * 8, ch_id.pubkey,
                                                b"t" * 20, now * 1000), AUTH_MAC, b"m" * 16)
        out[label] = {
            "indices": count,
            "challenge": len(ch.encode()),
            "answer": len(ans.encode()),
            "audit_frame": len(encode_frame(AUDIT, ch.encode())),
            "answer_frame": len(encode_frame(ANSWER, ans.encode())),
            "attestation": len(att.encode()),
            "attest_record": len(rec.encode()),
            "store_datagram": len(store),
            "stored_datagram": len(stored),
        }
    loc = loc_record(s["host"], sc.contract.share_hash, ("198.51.100.7", 40000), now, sc)
    out["contract"] = {"contract_record": len(loc.encode()),
                       "signed_contract": len(sc.encode())}
    return out


async def loopback(s: dict[str, Any], seconds: float) -> dict[str, float]:
    """A real HostService on 127.0.0.1:0; audits over real authenticated TCP."""
    from xcore.shard.host import HostService
    share, host, ch_id, owner, sc, now = (s["share"], s["host"], s["challenger"], s["owner"],
                                          s["signed"], s["now"])
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="xc-bench-", dir="/tmp") as tmp:
        svc = HostService(Path(tmp), host, 64 * MiB, clock=time.time, token_bytes=os.urandom)
        addr = await svc.start("127.0.0.1", 0)
        try:
            h = hashlib.sha256(share).digest()
            conn = await HostConnection.connect(addr, owner, host.node_id, os.urandom)
            await conn.put_share(h, share, Grant.create(owner, h, host.node_id,
                                                        int(time.time()) + 3600))
            conn.close()
            rng = random.Random(1)
            # bytes of one audit as Auditor.audit does it: connect + handshake + AUDIT/ANSWER
            conn = await HostConnection.connect(addr, ch_id, host.node_id, os.urandom)
            hs_out, hs_in = conn.fs.bytes_out, conn.fs.bytes_in
            raw = await conn.audit(Challenge.fresh(sc, ch_id, now, rng).encode())
            Answer.decode(raw)
            out["handshake_bytes_out"], out["handshake_bytes_in"] = hs_out, hs_in
            out["audit_bytes_out"] = conn.fs.bytes_out - hs_out
            out["audit_bytes_in"] = conn.fs.bytes_in - hs_in
            conn.close()

            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - t0 < seconds:
                conn = await HostConnection.connect(addr, ch_id, host.node_id, os.urandom)
                ch = Challenge.fresh(sc, ch_id, now, rng)
                verify_answer(sc, ch, Answer.decode(await conn.audit(ch.encode())))
                conn.close()
                n += 1
            out["loopback_new_conn_per_s"] = n / (time.perf_counter() - t0)
            out["loopback_new_conn_cpu_ms"] = (time.process_time() - c0) / n * 1e3

            conn = await HostConnection.connect(addr, ch_id, host.node_id, os.urandom)
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - t0 < seconds:
                ch = Challenge.fresh(sc, ch_id, now, rng)
                verify_answer(sc, ch, Answer.decode(await conn.audit(ch.encode())))
                n += 1
            out["loopback_reused_conn_per_s"] = n / (time.perf_counter() - t0)
            out["loopback_reused_conn_cpu_ms"] = (time.process_time() - c0) / n * 1e3
            conn.close()
        finally:
            # let the host's handlers see the hang-ups first: HostService.close() leaves
            # live connections' tasks to be cancelled at loop shutdown (a logged traceback)
            await asyncio.sleep(0.3)
            await svc.close()
    return out


def cost(cpu: dict[str, float], sizes: dict[str, Any], net: dict[str, float], *, stored: int,
         share_size: int, audit_rate: float, ksize: int, tree_bytes: int) -> dict[str, float]:
    """What ``stored`` bytes of shares cost per day at ``audit_rate`` audits per contract."""
    d = sizes["default"]
    contracts = math.ceil(stored / share_size)
    audits = contracts * audit_rate
    per_audit_host_cpu = 1 / cpu["answer_as_served_per_s"]
    per_audit_host_cached = 1 / cpu["answer_cached_per_s"]
    per_audit_challenger = (1 / cpu["challenge_fresh_per_s"] + 1 / cpu["attest_per_s"]
                            + 1 / cpu["make_attest_record_per_s"])
    per_audit_storers = ksize / cpu["record_validate_per_s"]
    tcp_up = net["audit_bytes_in"]  # the host sends what the challenger receives
    tcp_down = net["audit_bytes_out"]
    handshake = net["handshake_bytes_out"] + net["handshake_bytes_in"]
    dht = ksize * (d["store_datagram"] + d["stored_datagram"])
    return {
        "stored_bytes": stored,
        "contracts": contracts,
        "audits_per_day": audits,
        "host_cpu_s_per_day": audits * per_audit_host_cpu,
        "host_cpu_s_per_day_cached_tree": audits * per_audit_host_cached,
        "host_disk_read_bytes_per_day": audits * share_size,
        "host_disk_read_bytes_per_day_blocks_only": audits * d["indices"] * AUDIT_BLOCK,
        "cached_trees_bytes": contracts * tree_bytes,
        "challenger_cpu_s_per_day": audits * per_audit_challenger,
        "storers_cpu_s_per_day": audits * per_audit_storers,
        "cpu_s_per_day_network": audits * (per_audit_host_cpu + per_audit_challenger
                                           + per_audit_storers),
        "host_bytes_up_per_day": audits * tcp_up,
        "host_bytes_down_per_day": audits * tcp_down,
        "tcp_bytes_per_day_with_handshakes": audits * (tcp_up + tcp_down + handshake),
        "dht_store_bytes_per_day": audits * dht,
        "bytes_per_day_network": audits * (tcp_up + tcp_down + handshake + dht),
    }


def report(m: dict[str, Any], cb: dict[str, float], cpu: dict[str, float],
           sizes: dict[str, Any], net: dict[str, float], tree_bytes: int,
           c: dict[str, float], args: argparse.Namespace) -> str:
    L: list[str] = []
    L.append(f"\nCPU-time baselines (thread_time, as the figures below): SHA-256 "
             f"{human(cb['sha256_MBps'])} MB/s, Ed25519 sign {human(cb['ed25519_sign_per_s'])} /s, "
             f"verify {human(cb['ed25519_verify_per_s'])} /s")
    L.append(f"audits: one {args.share_size:,}-byte share ({args.share_size // AUDIT_BLOCK} "
             f"blocks of {AUDIT_BLOCK} B), {DEFAULT_INDICES} blocks per challenge, seed {args.seed}")

    def row(label: str, key: str, extra: str = "") -> None:
        us = 1e6 / cpu[key]
        L.append(f"  {label:<52} {human(cpu[key]):>10} /s  {us:9.1f} us{extra}")
    L.append("host (answering):")
    row("answer_challenge, cached share_tree", "answer_cached_per_s")
    row("answer_challenge, tree rebuilt (host.py today)", "answer_uncached_per_s")
    row("  of which share_tree(2 MiB)", "share_tree_per_s")
    row("store.get (read + SHA-256) + uncached answer", "answer_as_served_per_s")
    row("  of which ShareStore.get", "store_get_per_s")
    L.append(f"  memory of one cached share_tree (tracemalloc)        {tree_bytes:>10,} B")
    L.append("challenger:")
    row("Challenge.fresh", "challenge_fresh_per_s")
    row("verify_answer", "verify_answer_per_s")
    row("attest (verify_answer + sign)", "attest_per_s")
    row("make_attest_record (sign the record)", "make_attest_record_per_s")
    L.append("third parties:")
    row("DHT store: decode_and_validate(attest record)", "record_validate_per_s")
    row("classify_attestation vs a verified Contract", "classify_contract_per_s")
    row("classify_attestation vs a SignedContract", "classify_signed_contract_per_s")
    L.append("bytes per audit (default 2 blocks / worst case 3):")
    d, w = sizes["default"], sizes["worst"]
    for key in ("challenge", "answer", "audit_frame", "answer_frame", "attestation",
                "attest_record", "store_datagram", "stored_datagram"):
        L.append(f"  {key:<52} {d[key]:>6,} / {w[key]:,} B")
    L.append(f"  {'signed contract / loc record carrying it':<52} {sizes['contract']['signed_contract']:>6,}"
             f" / {sizes['contract']['contract_record']:,} B")
    L.append(f"  {'TCP handshake, challenger out / in':<52} {net['handshake_bytes_out']:>6,.0f}"
             f" / {net['handshake_bytes_in']:,.0f} B")
    L.append(f"  {'TCP audit exchange, challenger out / in':<52} {net['audit_bytes_out']:>6,.0f}"
             f" / {net['audit_bytes_in']:,.0f} B")
    L.append("loopback (in-process HostService, one audit at a time, challenger verifies; "
             "wall time, and process CPU per audit, both sides):")
    L.append(f"  {'new authenticated connection per audit':<52} "
             f"{human(net['loopback_new_conn_per_s']):>10} /s  "
             f"{net['loopback_new_conn_cpu_ms']:6.2f} ms CPU")
    L.append(f"  {'one reused connection':<52} {human(net['loopback_reused_conn_per_s']):>10} /s  "
             f"{net['loopback_reused_conn_cpu_ms']:6.2f} ms CPU")
    if cb:
        sha, ver, sig = cb["sha256_MBps"], cb["ed25519_verify_per_s"], cb["ed25519_sign_per_s"]
        L.append("ratios against this run's CPU-time baselines:")
        L.append(f"  an uncached answer costs as much CPU as hashing "
                 f"{sha * 1e6 / cpu['answer_uncached_per_s'] / MiB:.2f} MiB with SHA-256 "
                 f"(the share is {args.share_size / MiB:g} MiB; the tree hashes it once more, "
                 f"in 1 KiB pieces)")
        L.append(f"  as served (store.get + answer): {sha * 1e6 / cpu['answer_as_served_per_s'] / MiB:.2f}"
                 f" MiB of SHA-256; cached: {ver / cpu['answer_cached_per_s']:.2f} Ed25519 verifies")
        L.append(f"  verify_answer = {ver / cpu['verify_answer_per_s']:.2f} Ed25519 verifies; "
                 f"attest = {ver / cpu['attest_per_s']:.2f} verifies "
                 f"(a sign is {ver / sig:.2f} verifies)")
        L.append(f"  classify vs SignedContract = {ver / cpu['classify_signed_contract_per_s']:.2f} "
                 f"verifies (4 signatures: attestation, answer, owner, host)")
    tb = c["stored_bytes"] / 1e12
    L.append(f"cost of {tb:g} TB of stored shares at {args.rate:g} audits per contract per day "
             f"(DEFAULT_AUDIT_RATE), {args.share_size:,}-byte shares, attestations stored at "
             f"ksize={args.ksize} nodes:")
    L.append(f"  contracts                                   {c['contracts']:>16,}")
    L.append(f"  audits per day                              {c['audits_per_day']:>16,.0f}"
             f"  ({c['audits_per_day'] / DAY:,.1f} /s)")
    L.append(f"  host CPU, as served today                   {c['host_cpu_s_per_day']:>16,.0f} s/day"
             f"  ({c['host_cpu_s_per_day'] / DAY:.2f} cores)")
    L.append(f"  host CPU with cached trees                  {c['host_cpu_s_per_day_cached_tree']:>16,.0f} s/day")
    L.append(f"  host disk reads, as served today            {c['host_disk_read_bytes_per_day'] / 1e12:>16,.2f} TB/day")
    L.append(f"  host disk reads, challenged blocks only     {c['host_disk_read_bytes_per_day_blocks_only'] / 1e9:>16,.2f} GB/day")
    L.append(f"  RAM to cache every tree                     {c['cached_trees_bytes'] / 1e9:>16,.1f} GB")
    L.append(f"  challenger CPU (fresh + attest + record)    {c['challenger_cpu_s_per_day']:>16,.0f} s/day")
    L.append(f"  DHT storers' CPU (validate x ksize)         {c['storers_cpu_s_per_day']:>16,.0f} s/day")
    L.append(f"  CPU network-wide                            {c['cpu_s_per_day_network']:>16,.0f} s/day"
             f"  ({c['cpu_s_per_day_network'] / DAY:.2f} cores)")
    L.append(f"  host upload (answers) / download            {c['host_bytes_up_per_day'] / 1e9:>10,.2f} / "
             f"{c['host_bytes_down_per_day'] / 1e9:,.2f} GB/day")
    L.append(f"  TCP incl. handshakes                        {c['tcp_bytes_per_day_with_handshakes'] / 1e9:>16,.2f} GB/day")
    L.append(f"  DHT STORE + STORED of attestations          {c['dht_store_bytes_per_day'] / 1e9:>16,.2f} GB/day")
    L.append(f"  bytes network-wide (excl. lookups, headers) {c['bytes_per_day_network'] / 1e9:>16,.2f} GB/day"
             f"  ({c['bytes_per_day_network'] / c['stored_bytes'] * 100:.3f}% of the data per day)")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Storage-audit costs: host, challenger, network.")
    ap.add_argument("--quick", action="store_true", help="shorter measurements")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--share-size", type=int, default=2 * MiB, help="bytes (default 2 MiB)")
    ap.add_argument("--stored", type=float, default=1e12, help="bytes of shares for the cost "
                    "figures (default 1 TB = 1e12)")
    ap.add_argument("--rate", type=float, default=DEFAULT_AUDIT_RATE,
                    help="audits per contract per day (default: DEFAULT_AUDIT_RATE)")
    ap.add_argument("--ksize", type=int, default=DHTConfig().ksize,
                    help="DHT nodes storing each attestation (default: DHTConfig.ksize)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    secs, reps = (0.2, 2) if args.quick else (0.5, 3)

    m = machine_info()
    print(format_machine(m))
    b = None
    if not args.no_baselines:
        log("baselines ...")
        b = baselines(args.quick)
        print(format_baselines(b))
    log("CPU-time baselines ...")
    cb = cpu_baselines(secs, reps)
    s = setup(args.seed, args.share_size)
    cpu = measure_cpu(s, secs, reps)
    tree_bytes = tree_memory(s["share"])
    sizes = measure_sizes(s)
    log("loopback ...")
    net = asyncio.run(loopback(s, 1.0 if args.quick else 3.0))
    c = cost(cpu, sizes, net, stored=int(args.stored), share_size=args.share_size,
             audit_rate=args.rate, ksize=args.ksize, tree_bytes=tree_bytes)
    print(report(m, cb, cpu, sizes, net, tree_bytes, c, args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": m, "baselines": b, "cpu_baselines": cb, "cpu": cpu,
                       "sizes": sizes,
                       "loopback": net, "tree_bytes": tree_bytes, "cost": c,
                       "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
