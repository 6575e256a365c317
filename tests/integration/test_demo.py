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
    proc = subprocess.Popen([sys.executable, "-m", "xcore.demo", "--nodes", "6"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"demo still running after 120 s:\n{out}\n{err}")
    m = re.search(r"^== starting 6 nodes in (\S+)$", out, re.M)
    assert m, out
    directory = m.group(1)
    assert proc.returncode == 0, f"demo exited {proc.returncode}:\n{out}\n{err}"
    assert "identical" in out and "DIFFERENT" not in out, out
    assert "Traceback" not in err, err
    assert len(re.findall(r"^  n\d\d up at 127\.0\.0\.1:\d+", out, re.M)) == 6, out
    assert re.search(r"^== put 'demo' through n02: stored on \d+ nodes$", out, re.M), out
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
