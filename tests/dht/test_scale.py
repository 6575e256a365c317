"""THE 500-NODE TEST: the real DHT core, 500 nodes, simulated network and clock.

Slow (tens of seconds) but part of the normal run. ``pytest -s`` prints the
figures: hop counts, messages per lookup, simulated traffic.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import pytest

from xcore.dht.operation import Operation
from xcore.dht.protocol import LookupResult, new_record
from xcore.dht.records import Record, dht_key

N_NODES = 500
N_RECORDS = 200
KILL_FRACTION = 0.20


def _percentile(values: list[int], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


@pytest.mark.slow
def test_500_nodes_join_store_find_and_survive_20_percent_loss(make_dht_network: Any) -> None:
    t0 = time.monotonic()
    rng = random.Random(500)

    # -- everybody joins (make_dht_network waits on each join Operation and
    # re-raises the error of any join that fails) --
    net, nodes = make_dht_network(N_NODES, seed=500)
    addrs = list(nodes)
    assert len(addrs) == N_NODES
    table_sizes = [len(n.routing) for n in nodes.values()]
    assert min(table_sizes) >= 20, "every node knows at least k peers"
    t_join = time.monotonic()
    join_msgs = net.stats.delivered

    # -- 200 records, each put from a random node --
    records: list[tuple[Record, str]] = []
    acks: list[int] = []
    for i in range(N_RECORDS):
        writer_addr = rng.choice(addrs)
        writer = nodes[writer_addr]
        rec = new_record(writer.identity, "text", dht_key(f"record-{i}"), f"value {i}".encode(),
                         net.now)
        op = net.call(writer_addr, lambda now, w=writer, r=rec: w.put(r, now))
        acks.append(net.wait(op))
        records.append((rec, writer_addr))
    assert min(acks) >= 10, f"a put reached only {min(acks)} nodes"
    replicas = [sum(1 for n in nodes.values() if n.store.get(r.key, net.now)) for r, _ in records]
    put_msgs = net.stats.delivered - join_msgs

    # -- read each back from a random other node that does not hold it --
    def read_all(label: str, alive: list[str]) -> tuple[list[int], list[int]]:
        hops: list[int] = []
        messages: list[int] = []
        for rec, writer_addr in records:
            candidates = [a for a in alive if a != writer_addr
                          and not nodes[a].store.get(rec.key, net.now)]
            reader_addr = rng.choice(candidates)
            reader = nodes[reader_addr]
            op: Operation[LookupResult] = net.call(
                reader_addr, lambda now, n=reader, k=rec.key: n.get(k, now))
            res = net.wait(op)
            assert res.records == [rec], f"{label}: {rec.key.hex()} read back wrong"
            hops.append(res.hops)
            messages.append(res.messages)
        return hops, messages

    hops, msgs = read_all("before", addrs)
    p50, p90 = _percentile(hops, 0.5), _percentile(hops, 0.9)
    t_read = time.monotonic()

    # -- kill 20% of the nodes; every record is still found from a live node --
    dead = set(rng.sample(addrs, int(N_NODES * KILL_FRACTION)))
    for a in dead:
        net.kill(a)
    alive = [a for a in addrs if a not in dead]
    survivors = [sum(1 for a in alive if nodes[a].store.get(r.key, net.now)) for r, _ in records]
    hops2, msgs2 = read_all("after the kill", alive)
    t_end = time.monotonic()
    # every lookup any node ran (joins, bucket refreshes, puts' node lookups, gets)
    all_hops = [h for n in nodes.values() for h in n.lookup_hops]

    print()
    print(f"500-node DHT: join {t_join - t0:.1f}s wall, {join_msgs} datagrams, "
          f"routing table sizes min/median/max {min(table_sizes)}/"
          f"{statistics.median(table_sizes):.0f}/{max(table_sizes)}")
    print(f"  puts: {N_RECORDS} records, acks min/median {min(acks)}/{statistics.median(acks):.0f}, "
          f"replicas min/median {min(replicas)}/{statistics.median(replicas):.0f}, "
          f"{put_msgs} datagrams")
    print(f"  gets: hops p50 {p50} p90 {p90} max {max(hops)}; messages per lookup "
          f"p50 {_percentile(msgs, 0.5)} p90 {_percentile(msgs, 0.9)}; "
          f"{t_read - t_join:.1f}s wall")
    print(f"  after killing {len(dead)} nodes: surviving replicas min {min(survivors)}, "
          f"hops p50 {_percentile(hops2, 0.5)} p90 {_percentile(hops2, 0.9)}, messages per "
          f"lookup p50 {_percentile(msgs2, 0.5)} p90 {_percentile(msgs2, 0.9)}; "
          f"{t_end - t_read:.1f}s wall")
    print(f"  all {len(all_hops)} lookups (joins, refreshes, puts, gets): hops p50 "
          f"{_percentile(all_hops, 0.5)} p90 {_percentile(all_hops, 0.9)} max {max(all_hops)}")
    print(f"  simulated: {net.stats.delivered} datagrams, {net.stats.bytes / 1e6:.1f} MB, "
          f"{net.stats.to_dead} to dead nodes, virtual time {net.now - 1_750_000_000.0:.0f}s")

    assert p90 <= 6, f"lookup hops p90 {p90} > 6"
    assert _percentile(hops2, 0.9) <= 6
    assert _percentile(all_hops, 0.9) <= 6
