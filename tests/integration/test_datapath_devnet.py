"""A 24 MiB file through a real 10-node devnet, with four share holders killed.

``xcore devnet up --nodes 10`` starts ten node processes. The owner's keys live
in a separate data dir (``D/owner``, no node running there), so ``put`` and
``get`` run as short-lived clients seeded with *every* node of the devnet.
The file is recognisable plaintext (numbered ``XCORE-PLAINTEXT-PATTERN-``
lines), so after the upload every byte the devnet wrote to disk is scanned:
neither the pattern nor the file name may appear anywhere. Four hosts that
hold shares are then killed with SIGKILL (never n01, the devnet's seed), and
the file must still come back identical, also to a fresh data dir that only
has the mnemonic. ``xcore devnet down`` runs in teardown whatever happened.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.procs import Xcore, alive

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NODES = 10
DIFFICULTY = 4
KILL = 4
MiB = 1 << 20
SIZE = 24 * MiB
PREFIX = b"XCORE-PLAINTEXT-PATTERN-"  # 24 bytes
NAME = "quarterly-secret-ledger-7f3a.bin"
SHARE_NAME = re.compile(r"[0-9a-f]{64}")


xcore = Xcore({"XCORE_PASSPHRASE": "pw", "XCORE_ARGON2": "fast",
               "XCORE_DIFFICULTY": str(DIFFICULTY)}, timeout=120.0)
ok, ok_json = xcore.ok, xcore.ok_json


def plaintext() -> bytes:
    line = PREFIX + b"%08d\n"  # 33 bytes: any 57-byte window holds a whole PREFIX
    n = SIZE // len(line % 0) + 1
    return b"".join(line % i for i in range(n))[:SIZE]


def share_count(node_dir: Path) -> int:
    return sum(1 for p in node_dir.glob("shares/*/*") if SHARE_NAME.fullmatch(p.name))


@pytest.fixture()
def devnet() -> Iterator[tuple[Path, dict[str, Any], Path]]:
    directory = Path(tempfile.mkdtemp(prefix="xc-", dir="/tmp"))  # short: control.sock < 100 B
    scratch = Path(tempfile.mkdtemp(prefix="xc-s-", dir="/tmp"))
    try:
        info = ok_json("devnet", "up", "--nodes", str(NODES), "--dir", str(directory),
                       "--difficulty", str(DIFFICULTY), timeout=120)
        assert len(info["nodes"]) == NODES
        yield directory, info, scratch
    finally:
        down = xcore("devnet", "down", "--dir", str(directory), timeout=240)
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
        assert down.returncode == 0, f"devnet down failed:\n{down.stdout}\n{down.stderr}"


def test_24mib_survives_four_killed_hosts_and_never_hits_disk_in_clear(devnet: Any) -> None:
    d, info, scratch = devnet
    data = plaintext()
    digest = hashlib.sha256(data).hexdigest()
    src = scratch / NAME
    src.write_bytes(data)

    # every node as a seed: the first line of bootstrap_nodes.txt plus the rest from devnet.json
    seed_lines = [ln.strip() for ln in (d / "bootstrap_nodes.txt").read_text().splitlines()
                  if ln.strip() and not ln.startswith("#")]
    seeds = list(seed_lines)
    for node in info["nodes"]:
        s = f"{node['address']} {node['node_id']}"
        if s not in seeds:
            seeds.append(s)
    assert len(seeds) == NODES, seeds
    boot = [a for s in seeds for a in ("--bootstrap", s)]

    owner = d / "owner"
    mnemonic = ok_json("keys", "new", "--data", str(owner))["mnemonic"]
    assert len(mnemonic.split()) == 24

    res = ok_json("put", "--data", str(owner), *boot, "--redundancy", "4/8", str(src), timeout=180)
    file_id = res["file_id"]
    assert res["size"] == SIZE and res["name"] == NAME and res["redundancy"] == "4/8"
    assert res["segments"] == 3 and res["shares"] == 24, res

    out = scratch / "back.bin"
    got = ok_json("get", "--data", str(owner), *boot, "-o", str(out), file_id, timeout=180)
    assert got["sha256"] == digest and out.read_bytes() == data

    # nothing the devnet (nodes, logs, the owner's client dir) wrote holds plaintext or the name
    needles = [PREFIX, NAME.encode()]
    needles += [data[i:i + 24] for i in (0, 33 * 1000 + 7, SIZE // 2, SIZE - 24)]
    scanned = 0
    for path in d.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        blob = path.read_bytes()
        scanned += len(blob)
        for needle in needles:
            assert needle not in blob, f"{needle!r} found in {path}"
    assert scanned >= 2 * SIZE  # 24 shares of 2 MiB at least

    # kill four share holders, never the seed (n01)
    counts = {n["name"]: share_count(Path(n["data"])) for n in info["nodes"]}
    assert sum(counts.values()) >= 24, counts
    victims = sorted((n for n in info["nodes"] if n["name"] != "n01"),
                     key=lambda n: -counts[n["name"]])[:KILL]
    assert all(counts[v["name"]] > 0 for v in victims), counts
    for v in victims:
        os.kill(v["pid"], signal.SIGKILL)
    end = time.monotonic() + 10
    while any(alive(v["pid"]) for v in victims) and time.monotonic() < end:
        time.sleep(0.05)
    assert not any(alive(v["pid"]) for v in victims)

    out2 = scratch / "after-kill.bin"
    got = ok_json("get", "--data", str(owner), *boot, "-o", str(out2), file_id, timeout=240)
    assert got["sha256"] == digest and out2.read_bytes() == data

    # another machine: only the mnemonic
    other = scratch / "other"
    assert ok_json("keys", "import", "--data", str(other), stdin=mnemonic + "\n")["imported"]
    rows = ok_json("ls", "--data", str(other), *boot, timeout=180)
    assert [(r["file_id"], r["name"], r["size"]) for r in rows] == [(file_id, NAME, SIZE)], rows
    out3 = scratch / "other.bin"
    got = ok_json("get", "--data", str(other), *boot, "-o", str(out3), file_id, timeout=240)
    assert got["sha256"] == digest and out3.read_bytes() == data
