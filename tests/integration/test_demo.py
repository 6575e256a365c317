"""`python -m xcore.demo`, the README's first command, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def live_processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Non-zombie processes whose command line contains ``text`` (a /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append((int(entry.name), cmdline))
    return found


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    """The README's first command: nodes start, a file goes up, hosts are
    SIGKILLed, repair runs without the owner, a fresh client gets it back."""
    proc = subprocess.Popen([sys.executable, "-m", "xcore.demo", "--size-mib", "12"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"demo still running after 240 s:\n{out}\n{err}")
    m = re.search(r"^== 1. starting 12 nodes in (\S+)$", out, re.M)
    assert m, out
    directory = m.group(1)
    assert proc.returncode == 0, f"demo exited {proc.returncode}:\n{out}\n{err}"
    assert "Traceback" not in err, err
    assert len(re.findall(r"^   n\d\d up at 127\.0\.0\.1:\d+", out, re.M)) == 12, out
    assert re.search(r"^   put \d+ bytes at 4/8 in [\d.]+ s: [\d.]+ MB/s", out, re.M), out
    assert re.search(r"^== 3. killed 4 hosts with SIGKILL", out, re.M), out
    assert re.search(r"^   repair segment [0-9a-f]{12}: leader n\d\d", out, re.M), out
    assert re.search(r"^   repair complete: \d+ repair", out, re.M), out
    assert re.search(r"-> identical$", out, re.M) and "DIFFERENT" not in out, out
    # every node process is gone (SIGKILLed ones may linger a moment as zombies)
    leftover = live_processes_mentioning(directory + "/")
    end = time.monotonic() + 10
    while leftover and time.monotonic() < end:
        time.sleep(0.1)
        leftover = live_processes_mentioning(directory + "/")
    for pid, _ in leftover:  # started by this test: do not leak them into the next one
        os.kill(pid, 9)
    assert not leftover, f"node processes left behind by the demo: {leftover}"
    assert not Path(directory).exists(), "the demo left its temporary devnet directory"
