"""A userspace relay between one node and the rest: drops, delays, duplicates
and reorders its UDP datagrams (this kernel has no netem and no iptables).

It opens two TUN devices, A and B, and copies IP packets between them. The
harness (:mod:`tests.netns.harness`) moves A into the node's namespace (the
node's address lives on it) and B into a small router namespace that is on
the lab's bridge and answers ARP for the node's address (proxy ARP), so
every packet to or from the node passes through this process, unchanged
except for the faults. TCP and everything else is copied at once; each UDP
datagram, independently and from one seeded ``random.Random``:

* is dropped with probability ``--loss``;
* is delivered after ``--delay`` plus a uniform ``--jitter`` (so datagrams
  overtake each other: reordering);
* is sent a second time, later, with probability ``--dup``.

Counters (per run: udp, dropped, duplicated, reordered, other) are written
as JSON to ``--stats`` every half second and on exit.

Usage (as root)::

    python -m tests.netns.relay --tun-a xcnA --tun-b xcnB --seed 7 \
        --loss 0.2 --dup 0.1 --delay 0.01 --jitter 0.06 --stats stats.json
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import random
import signal
import struct
from pathlib import Path
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
UDP = 17


def open_tun(name: str) -> int:
    """A TUN device named ``name`` (gone when this process ends)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Relay:
    def __init__(self, fd_a: int, fd_b: int, rng: random.Random, *, loss: float, dup: float,
                 delay: float, jitter: float, stats: Path | None) -> None:
        self.fds = {fd_a: fd_b, fd_b: fd_a}
        self.rng = rng
        self.loss, self.dup, self.delay, self.jitter = loss, dup, delay, jitter
        self.stats_path = stats
        self.counters = {"udp": 0, "dropped": 0, "duplicated": 0, "reordered": 0, "other": 0,
                         "write_errors": 0}
        self._seq = {fd_a: 0, fd_b: 0}         # datagrams accepted, per direction (by source fd)
        self._delivered = {fd_a: -1, fd_b: -1}  # highest sequence delivered so far

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in self.fds:
            loop.add_reader(fd, self._readable, fd)

    def _write(self, fd: int, pkt: bytes) -> None:
        try:
            os.write(fd, pkt)
        except OSError:  # the device is down or moving between namespaces
            self.counters["write_errors"] += 1

    def _readable(self, src: int) -> None:
        dst = self.fds[src]
        loop = asyncio.get_running_loop()
        for _ in range(64):
            try:
                pkt = os.read(src, 65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(pkt) < 20 or pkt[0] >> 4 != 4 or pkt[9] != UDP:
                self.counters["other"] += 1
                self._write(dst, pkt)
                continue
            self.counters["udp"] += 1
            if self.rng.random() < self.loss:
                self.counters["dropped"] += 1
                continue
            seq = self._seq[src]
            self._seq[src] += 1
            after = self.delay + self.rng.random() * self.jitter
            loop.call_later(after, self._deliver, src, dst, seq, pkt)
            if self.rng.random() < self.dup:
                self.counters["duplicated"] += 1
                loop.call_later(after + self.rng.random() * self.jitter, self._deliver, src,
                                dst, -1, pkt)

    def _deliver(self, src: int, dst: int, seq: int, pkt: bytes) -> None:
        if seq >= 0:
            if seq < self._delivered[src]:
                self.counters["reordered"] += 1
            self._delivered[src] = max(self._delivered[src], seq)
        self._write(dst, pkt)

    def save(self) -> None:
        if self.stats_path is None:
            return
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.counters))
        os.replace(tmp, self.stats_path)

    async def run(self, stop: asyncio.Event) -> None:
        self.start()
        while not stop.is_set():
            self.save()
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        self.save()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tun-a", required=True)
    ap.add_argument("--tun-b", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--dup", type=float, default=0.0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--jitter", type=float, default=0.0)
    ap.add_argument("--stats", type=Path, default=None)
    a = ap.parse_args(argv)
    fd_a, fd_b = open_tun(a.tun_a), open_tun(a.tun_b)
    relay = Relay(fd_a, fd_b, random.Random(a.seed), loss=a.loss, dup=a.dup, delay=a.delay,
                  jitter=a.jitter, stats=a.stats)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("ready", flush=True)
        await relay.run(stop)
    asyncio.run(run())
    info: dict[str, Any] = dict(relay.counters)
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
