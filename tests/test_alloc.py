"""xcore.alloc: the malloc arena cap every xcore process sets at start."""

from __future__ import annotations

import os
import subprocess
import sys


def test_limit_arenas_takes_effect_on_glibc_unless_the_environment_says() -> None:
    code = ("import sys; from xcore.alloc import limit_arenas; "
            "sys.stdout.write(str(limit_arenas()))")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    assert got == ("True" if libc and libc.startswith("glibc") else "False")
    env["MALLOC_ARENA_MAX"] = "4"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert got == "False"  # glibc applied the environment's value at start-up

