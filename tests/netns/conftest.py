"""Make ``tests.netns`` importable however pytest was started (the relay and
the chaos run import the harness as ``tests.netns.harness``)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
