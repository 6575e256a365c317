"""Run a module under cProfile counting CPU time, in every thread.

``python -m cProfile`` times with the wall clock and profiles only the main
thread. In a node that is misleading twice over: a call that releases the
GIL (``sendto``, an Ed25519 check through cffi, a queue put) is charged the
time it then waits to get the GIL back from a worker thread, and the worker
threads (SHA-256, Merkle roots, zfec, file writes) do not appear at all.
Here each thread gets its own profiler timed with :func:`time.thread_time`,
and the profiles are merged into one file at exit::

    python bench/peers/cpuprof.py OUT.prof -m xcore node start --data DIR

Read it with :mod:`pstats` as usual; the times are CPU seconds.
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
import time


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "-m":
        sys.exit("usage: cpuprof.py OUT.prof -m MODULE [ARGS...]")
    out, module = argv[0], argv[2]
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(*_: object) -> None:  # first event of a new thread: hand over to its own profiler
        sys.setprofile(None)
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.enable()

    main_prof = cProfile.Profile(time.thread_time)
    profiles.append(main_prof)
    threading.setprofile(start)
    sys.argv = [module, *argv[3:]]
    main_prof.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        main_prof.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        with lock:
            stats = pstats.Stats(profiles[0])
            for prof in profiles[1:]:
                try:
                    stats.add(prof)
                except (TypeError, ValueError):  # a thread that never called anything
                    pass
        stats.dump_stats(out)


if __name__ == "__main__":
    main(sys.argv[1:])
