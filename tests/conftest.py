"""Shared fixtures: deterministic identities, a simulated network, DHT networks.

Everything is seeded: identities come from ``random.Random(seed).randbytes``,
the simulated network and every node get their own seeded ``Random``; nothing
uses the global ``random`` or a real port.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Callable

import pytest

from xcore.crypto.identity import Identity
from xcore.dht.protocol import DHTConfig, DHTNode
from xcore.net.sim import SimNetwork

# The repository root on sys.path: test modules import shared helpers as
# ``tests.procs``, ``tests.netns.harness`` however pytest was started.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

Address = tuple[str, int]


def identity_for(seed: int, difficulty: int = 2) -> Identity:
    """A deterministic identity solving the ID puzzle at ``difficulty``."""
    return Identity.generate(difficulty, random.Random(seed).randbytes)


def node_address(i: int) -> Address:
    """Node ``i``'s address: one /24 per node, so the diversity caps never bite."""
    return (f"10.{i // 200}.{i % 200}.1", 4000)


def add_dht_node(net: SimNetwork, addr: Address, identity: Identity, config: DHTConfig,
                 rng_seed: int) -> DHTNode:
    node = DHTNode(identity, config=config, rng=random.Random(rng_seed), now=net.now)
    net.add(addr, node)
    return node


def join_node(net: SimNetwork, addr: Address, node: DHTNode,
              seeds: list[tuple[Address, bytes | None]]) -> int:
    """Join ``node`` through ``seeds`` and run the network until the join is done."""
    op = net.call(addr, lambda now: node.join(seeds, now))
    return net.wait(op)  # type: ignore[no-any-return]


def build_dht_network(n: int, seed: int, difficulty: int = 2, *,
                      config: DHTConfig | None = None,
                      net: SimNetwork | None = None) -> tuple[SimNetwork, dict[Address, DHTNode]]:
    """``n`` DHT nodes on a :class:`SimNetwork`, all joined.

    Node 0 is the seed of everybody; once a second node exists, node 0 joins
    too (through node 1), so every node has completed a join operation.
    """
    rng = random.Random(seed)
    net = net if net is not None else SimNetwork(random.Random(rng.getrandbits(64)))
    cfg = config if config is not None else DHTConfig(difficulty=difficulty)
    nodes: dict[Address, DHTNode] = {}
    addrs: list[Address] = []
    for i in range(n):
        ident = Identity.generate(cfg.difficulty, random.Random(rng.getrandbits(64)).randbytes)
        addr = node_address(i)
        node = add_dht_node(net, addr, ident, cfg, rng.getrandbits(64))
        nodes[addr] = node
        addrs.append(addr)
        if i == 0:
            continue
        seed_addr = addrs[0]
        # net.wait re-raises a failed join's error; a join that succeeds knows somebody
        assert join_node(net, addr, node, [(seed_addr, nodes[seed_addr].identity.node_id)]) >= 1
        if i == 1:
            assert join_node(net, addrs[0], nodes[addrs[0]], [(addr, node.identity.node_id)]) >= 1
    return net, nodes


@pytest.fixture
def make_identity() -> Callable[..., Identity]:
    """``make_identity(seed, difficulty=2)``: a deterministic identity."""
    return identity_for


@pytest.fixture
def simnet() -> SimNetwork:
    return SimNetwork(random.Random(0))


@pytest.fixture
def make_dht_network() -> Callable[..., tuple[SimNetwork, dict[Address, DHTNode]]]:
    """``make_dht_network(n, seed, difficulty=2, config=None)`` -> (net, {addr: node})."""
    return build_dht_network
