"""Shared helpers for xcore benchmarks: the machine, and raw baselines.

A benchmark figure means little without the machine it came from, so every
benchmark prints :func:`machine_info` and the raw primitive throughputs of
:func:`baselines` *measured in the same run*, then expresses its own figures
also as ratios against them (e.g. "one DHT lookup costs as much CPU as 40
Ed25519 verifies"). Ratios travel between machines much better than absolute
numbers do.

Baselines (single thread, best of a few short repeats):

* AES-256-CTR MB/s (``cryptography``), over 1 MiB buffers;
* SHA-256 MB/s (``hashlib``), over 1 MiB buffers;
* zfec encode MB/s at k=4, n=8, input bytes of a 1 MiB segment;
* Ed25519 sign/s and verify/s (PyNaCl), 200-byte messages (a DHT datagram);
* BLAKE2b-128 keyed MAC/s (``hashlib``), 200-byte messages (the DHT's MAC);
* msgpack pack/s and unpack/s of a NODES-like reply (20 contacts, ~1 KB).

Run it alone with ``python -m bench.common`` (``--quick``, ``--json PATH``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import hashlib
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

MiB = 1024 * 1024


# -- the machine -------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu_mhz() -> float | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("cpu mhz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _versions() -> dict[str, str]:
    from importlib import metadata
    out: dict[str, str] = {}
    for dist in ("cryptography", "PyNaCl", "zfec", "msgpack", "kademlia"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


def code_version() -> str:
    """The git commit of the work tree, with "+dirty" if xcore/ has local edits."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "xcore"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def precompile() -> bool:
    """Byte-compile xcore (and ``cli.py``) once, as installing a package does,
    so that the CLI processes a benchmark times do not each compile it again.

    This box runs with ``PYTHONDONTWRITEBYTECODE=1``, under which Python
    still reads ``.pyc`` files but never writes them: every ``xcore`` command
    then compiled about 80 modules at start-up (0.15-0.16 s of a get's CPU).
    True if everything compiled."""
    import compileall
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    ok = compileall.compile_dir(str(root / "xcore"), quiet=1)
    return bool(ok) and bool(compileall.compile_file(str(root / "cli.py"), quiet=1))


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python and library versions, the code and the date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    ram = _mem_total()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_mhz": _cpu_mhz(),
        "cores": os.cpu_count() or 0,
        "cores_usable": usable,
        "ram_bytes": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libs": _versions(),
        "code": code_version(),
    }


def format_machine(m: dict[str, Any]) -> str:
    ram = f"{m['ram_bytes'] / 2**30:.1f} GiB" if m.get("ram_bytes") else "?"
    mhz = f" @ {m['cpu_mhz']:.0f} MHz" if m.get("cpu_mhz") else ""
    libs = ", ".join(f"{k} {v}" for k, v in m["libs"].items())
    return (f"machine: {m['cpu']}{mhz}, {m['cores']} cores ({m['cores_usable']} usable), "
            f"{ram} RAM, {m['os']}\n"
            f"python:  {m['python']}; {libs}\n"
            f"code:    xcore {m.get('code', '?')}\n"
            f"date:    {m['date']}")


# -- measuring -----------------------------------------------------------------

def rate(fn: Callable[[], Any], *, seconds: float = 0.3, repeats: int = 3,
         clock: Callable[[], float] = time.perf_counter) -> float:
    """Calls of ``fn`` per second: best of ``repeats`` runs of ~``seconds`` each."""
    # calibrate a batch size that takes ~seconds/10
    n = 1
    while True:
        t0 = clock()
        for _ in range(n):
            fn()
        dt = clock() - t0
        if dt >= seconds / 10 or n >= 1 << 24:
            break
        n *= 2
    best = 0.0
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            done = 0
            t0 = clock()
            while True:
                for _ in range(n):
                    fn()
                done += n
                dt = clock() - t0
                if dt >= seconds:
                    break
            best = max(best, done / dt)
    finally:
        if gc_was:
            gc.enable()
    return best


def _nodes_like_reply() -> list[Any]:
    """A payload shaped like a DHT NODES reply: 20 x [pubkey32, host, port]."""
    contacts = [[bytes([i]) * 32, f"10.{i}.{i}.1", 4000 + i] for i in range(20)]
    return [1, 4, b"\x01" * 8, b"\x02" * 32, b"\x03" * 20, 1_750_000_000_000, [contacts]]


def baselines(quick: bool = False) -> dict[str, float]:
    """Raw single-thread throughputs of the primitives xcore is built on."""
    import msgpack
    import nacl.signing
    import zfec
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    secs = 0.1 if quick else 0.3
    reps = 2 if quick else 3
    out: dict[str, float] = {}
    buf = os.urandom(MiB)

    enc = Cipher(algorithms.AES(b"k" * 32), modes.CTR(b"n" * 16)).encryptor()
    out["aes256ctr_MBps"] = rate(lambda: enc.update(buf), seconds=secs, repeats=reps) * MiB / 1e6
    out["sha256_MBps"] = rate(lambda: hashlib.sha256(buf).digest(),
                              seconds=secs, repeats=reps) * MiB / 1e6

    k, n = 4, 8
    blocks = tuple(buf[i * (MiB // k):(i + 1) * (MiB // k)] for i in range(k))
    encoder = zfec.Encoder(k, n)
    parity = tuple(range(k, n))  # the primary blocks are the input itself
    out["zfec_k4n8_encode_MBps"] = rate(lambda: encoder.encode(blocks, parity),
                                        seconds=secs, repeats=reps) * MiB / 1e6

    sk = nacl.signing.SigningKey(b"s" * 32)
    msg = os.urandom(200)
    sig = sk.sign(msg).signature
    vk_bytes = bytes(sk.verify_key)
    out["ed25519_sign_per_s"] = rate(lambda: sk.sign(msg), seconds=secs, repeats=reps)
    # as xcore verifies: a VerifyKey built from the bytes each time
    out["ed25519_verify_per_s"] = rate(lambda: nacl.signing.VerifyKey(vk_bytes).verify(msg, sig),
                                       seconds=secs, repeats=reps)
    mkey = b"m" * 32
    out["blake2b_mac_per_s"] = rate(
        lambda: hashlib.blake2b(msg, digest_size=16, key=mkey).digest(),
        seconds=secs, repeats=reps)

    obj = _nodes_like_reply()
    packed = msgpack.packb(obj, use_bin_type=True)
    out["msgpack_bytes"] = float(len(packed))
    out["msgpack_pack_per_s"] = rate(lambda: msgpack.packb(obj, use_bin_type=True),
                                     seconds=secs, repeats=reps)
    out["msgpack_unpack_per_s"] = rate(lambda: msgpack.unpackb(packed, raw=False),
                                       seconds=secs, repeats=reps)
    return out


BASELINE_LABELS = {
    "aes256ctr_MBps": ("AES-256-CTR (cryptography)", "MB/s"),
    "sha256_MBps": ("SHA-256 (hashlib)", "MB/s"),
    "zfec_k4n8_encode_MBps": ("zfec encode k=4 n=8 (input)", "MB/s"),
    "ed25519_sign_per_s": ("Ed25519 sign, 200 B (PyNaCl)", "/s"),
    "ed25519_verify_per_s": ("Ed25519 verify, 200 B (PyNaCl)", "/s"),
    "blake2b_mac_per_s": ("BLAKE2b-128 keyed MAC, 200 B", "/s"),
    "msgpack_pack_per_s": ("msgpack pack, NODES-like ~1 KB", "/s"),
    "msgpack_unpack_per_s": ("msgpack unpack, NODES-like ~1 KB", "/s"),
}


def format_baselines(b: dict[str, float]) -> str:
    lines = ["raw baselines (single thread, this run):"]
    for key, (label, unit) in BASELINE_LABELS.items():
        if key in b:
            lines.append(f"  {label:<36} {human(b[key]):>10} {unit}")
    return "\n".join(lines)


# -- small utilities ---------------------------------------------------------------

def human(x: float, digits: int = 3) -> str:
    """A number with ~``digits`` significant digits and thousands separators."""
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def rss_bytes() -> int:
    """Resident set size of this process now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss_bytes() -> int:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return 0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0 for an empty list."""
    if not values:
        return 0.0
    s = sorted(values)
    i = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return float(s[i])


def log(msg: str) -> None:
    """Progress goes to stderr, results to stdout."""
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Print the machine and raw crypto/codec baselines.")
    ap.add_argument("--quick", action="store_true", help="shorter measurements")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    m = machine_info()
    print(format_machine(m))
    b = baselines(args.quick)
    print(format_baselines(b))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": m, "baselines": b}, f, indent=2)


if __name__ == "__main__":
    main()
