"""What a node publishes when an owner deletes a share it hosts
(``NodeService._contract_ended``): the loc record with the contract ended
while other owners keep the share, a tombstone once nobody does."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from xcore.contracts.contract import Contract, SignedContract
from xcore.contracts.hosts import loc_address, loc_contract, loc_key
from xcore.crypto.identity import Identity
from xcore.errors import RemoteProtocolError
from xcore.node import NodeService, init_node
from xcore.shard.transfer import delete_signing_bytes

NOW = 1_750_000_000.0


class Driver:
    """Runs the core call at once; there are no peers, so only the node's own
    published records and store change."""

    def call(self, fn: Any) -> Any:
        return fn(NOW)


@pytest.fixture
def node(tmp_path: Path) -> NodeService:
    init_node(tmp_path, difficulty=0, token_bytes=random.Random(1).randbytes)
    svc = NodeService(tmp_path)
    svc.clock = lambda: NOW
    svc.driver = Driver()  # type: ignore[assignment]
    svc.tcp_address = ("127.0.0.1", 4000)
    return svc


def contract_for(svc: NodeService, owner: Identity) -> SignedContract:
    data = random.Random(2).randbytes(3000)
    c = Contract.for_share(data, k=2, n=4, start=int(NOW) - 60, end=int(NOW) + 86400, price=5,
                           host_pubkey=svc.identity.pubkey, owner_pubkey=owner.pubkey)
    return SignedContract(c).sign_as_owner(owner).sign_as_host(svc.identity)


def delete(svc: NodeService, owner: Identity, sc: SignedContract, held: bool) -> None:
    c = sc.contract
    sig = owner.sign(delete_signing_bytes(c.share_hash, c.host_id, int(NOW), owner.pubkey))
    svc._contract_ended(c.share_hash, owner.pubkey, int(NOW), sig, held)


OWNER = Identity(random.Random(3).randbytes(32))
OTHER = Identity(random.Random(4).randbytes(32))


def test_kept_for_another_owner_the_loc_record_carries_the_ended_contract(node: NodeService) -> None:
    sc = contract_for(node, OWNER)
    node._share_stored(sc.contract.share_hash, sc)
    delete(node, OWNER, sc, held=True)
    rec = node.dht.published[("loc", loc_key(sc.contract.share_hash))]
    ended = loc_contract(rec)
    assert ended is not None and ended.contract == sc.contract and ended.until == int(NOW)
    assert loc_address(rec) == ("127.0.0.1", 4000)  # still served here
    # and it replaced the earlier record even within the same millisecond
    # (an equal seq with other content is refused as a conflict)
    [held] = node.dht.store.get(loc_key(sc.contract.share_hash), NOW)
    assert held == rec and held.seq > int(NOW * 1000)


def test_kept_by_nobody_a_tombstone_is_put_once_and_not_renewed(node: NodeService) -> None:
    sc = contract_for(node, OWNER)
    key = loc_key(sc.contract.share_hash)
    node._share_stored(sc.contract.share_hash, sc)
    delete(node, OWNER, sc, held=False)
    assert ("loc", key) not in node.dht.published  # not re-signed forever
    [tomb] = node.dht.store.get(key, NOW)
    ended = loc_contract(tomb)
    assert ended is not None and ended.delete_sig and ended.until == int(NOW)
    with pytest.raises(RemoteProtocolError, match="deleted"):
        loc_address(tomb)


def test_another_owners_delete_leaves_the_contract_alone(node: NodeService) -> None:
    sc = contract_for(node, OWNER)
    key = loc_key(sc.contract.share_hash)
    node._share_stored(sc.contract.share_hash, sc)
    before = node.dht.published[("loc", key)]
    delete(node, OTHER, sc, held=True)
    assert node.dht.published[("loc", key)] is before
    delete(node, OTHER, sc, held=False)  # the share went: its loc record goes, no tombstone
    assert ("loc", key) not in node.dht.published
    assert all(loc_contract(r) == sc for r in node.dht.store.get(key, NOW))
