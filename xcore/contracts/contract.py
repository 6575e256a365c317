"""Storage contracts: what an owner and a host agreed about one share (DESIGN.md principle 8).

A contract names the share (its SHA-256 hash and size), the Merkle root of
its 1 KiB audit blocks (:data:`AUDIT_BLOCK`, tree shape in
:mod:`xcore.crypto.merkle`), the erasure parameters of its segment, the term
and the price, and both parties' keys. Both parties sign it, so anybody who
holds it can check an audit answer against the root (:mod:`.audit`) and can
tell which host owes which share for which period (:mod:`.payout`).

Layouts (msgpack arrays, version first; ints are unsigned)::

    contract body = [1, share_hash:bin32, size, merkle_root:bin32, block_size,
                     k, n, start, end, price, host_id:bin20,
                     host_pubkey:bin32, owner_pubkey:bin32]

        size        share bytes, 0 .. MAX_SHARE_SIZE (2 MiB)
        block_size  the Merkle block size; version 1 requires AUDIT_BLOCK (1024)
        k, n        erasure parameters of the segment, 1 <= k <= n <= 256
        start, end  the term, unix seconds, start < end
        price       integer micro-euros per GB-month (GB = 10**9 bytes)
        host_id     node_id_of(host_pubkey); checked by verify()

    signing bytes = b"xcore-contract-v1" || canonical(contract body)

    signed contract = [1, contract body, owner_sig:bin0|bin64, host_sig:bin0|bin64]
                      (+ [ended:uint, delete_sig:bin64] once the owner deleted the share)

An empty signature means "not signed yet": the owner signs first and sends
the half-signed contract with the share; the host checks the share against
it (:meth:`Contract.matches`) before adding its signature. Only contracts
with both signatures are valid anywhere else.

**Ending early.** An owner who deletes a share sends the host a signed
DELETE (``delete_signing_bytes(share_hash, host_id, ts, owner_pubkey)``,
:mod:`xcore.shard.transfer`). The host appends that timestamp and signature
to the contract and republishes it: anybody can check that the owner asked,
and from ``ended`` on (:attr:`SignedContract.until`) nobody audits the share
and no payout counts it. Without this a host that honoured a delete would
be challenged, and recorded as unanswering, for the rest of the term. The
host cannot end a contract on its own: it has no owner's signature to show.

In the DHT a contract travels in its host's ``loc`` record for the share
(:mod:`.hosts`): one record says where the share is and under which
contract, so storing a share costs one DHT publication, not two. A key holds
one entry per signer, so with mirrors (``k = 1``: n hosts store the same
share hash) each host publishes its own contract.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from xcore.codec import as_bytes, as_int, as_list, canonical, expect, pack, unpack_bounded
from xcore.crypto.identity import ID_BYTES, PUBKEY_BYTES, SIG_BYTES, Identity, node_id_of, verify
from xcore.crypto.merkle import MerkleTree, block_count, buffer_root
from xcore.errors import (
    BadIdentity, BadSignature, LocalProtocolError, RemoteProtocolError,
)
from xcore.shard.erasure import MAX_N, MAX_SHARE_SIZE
from xcore.shard.transfer import delete_signing_bytes

CONTRACT_VERSION = 1
CONTRACT_TAG = b"xcore-contract-v1"
AUDIT_BLOCK = 1024
HASH_BYTES = 32
MAX_TIME = 2**40
MAX_PRICE = 2**62
MAX_CONTRACT_BYTES = 512  # an encoded signed contract is about 330 bytes, 400 once ended
_BODY_FIELDS = 13


def share_merkle_root(data: bytes | bytearray | memoryview) -> bytes:
    """The Merkle root of ``data`` cut into :data:`AUDIT_BLOCK`-byte blocks."""
    return buffer_root(data, AUDIT_BLOCK)


def share_tree(data: bytes | bytearray | memoryview) -> MerkleTree:
    """The whole Merkle tree of ``data`` over :data:`AUDIT_BLOCK`-byte blocks (for proofs)."""
    return MerkleTree.from_buffer(data, AUDIT_BLOCK)


def leaf_count_of(size: int) -> int:
    """Leaves of the audit tree of a ``size``-byte share: ceil(size / 1024), at least 1."""
    return block_count(size, AUDIT_BLOCK)


@dataclass(frozen=True, slots=True)
class Contract:
    """The terms one owner and one host agreed for one share."""

    share_hash: bytes
    size: int
    merkle_root: bytes
    block_size: int
    k: int
    n: int
    start: int
    end: int
    price: int
    host_id: bytes
    host_pubkey: bytes
    owner_pubkey: bytes

    @classmethod
    def for_share(cls, data: bytes, *, k: int, n: int, start: int, end: int, price: int,
                  host_pubkey: bytes, owner_pubkey: bytes, share_hash: bytes | None = None,
                  merkle_root: bytes | None = None) -> "Contract":
        """The contract for ``data`` (the owner's side). ``share_hash`` and
        ``merkle_root`` may be passed when already computed for these bytes."""
        c = cls(share_hash or hashlib.sha256(data).digest(), len(data),
                merkle_root or share_merkle_root(data), AUDIT_BLOCK,
                k, n, start, end, price, node_id_of(host_pubkey), host_pubkey, owner_pubkey)
        problem = _field_problem(c)
        if problem is not None:
            raise LocalProtocolError(f"contract: {problem}")
        return c

    @property
    def leaf_count(self) -> int:
        return leaf_count_of(self.size)

    def body(self) -> list[Any]:
        return [CONTRACT_VERSION, self.share_hash, self.size, self.merkle_root, self.block_size,
                self.k, self.n, self.start, self.end, self.price, self.host_id,
                self.host_pubkey, self.owner_pubkey]

    def signing_bytes(self) -> bytes:
        return CONTRACT_TAG + canonical(self.body())

    def digest(self) -> bytes:
        """SHA-256 of the signing bytes: names this exact contract."""
        return hashlib.sha256(self.signing_bytes()).digest()

    def matches(self, data: bytes | bytearray) -> bool:
        """True iff ``data`` is the share this contract is about (hash, size and Merkle root).

        A host must check this before signing: a contract whose root does not
        match the share would let anybody turn the host's honest audit
        answers into "failures".
        """
        return (len(data) == self.size
                and hashlib.sha256(data).digest() == self.share_hash
                and share_merkle_root(data) == self.merkle_root)

    @classmethod
    def from_body(cls, v: Any) -> "Contract":
        """Decode a contract body; raises :class:`RemoteProtocolError`."""
        v = as_list(v, "contract", _BODY_FIELDS)
        expect(len(v) == _BODY_FIELDS, f"contract: expected {_BODY_FIELDS} fields")
        expect(type(v[0]) is int and v[0] == CONTRACT_VERSION, "contract: unknown version")
        c = cls(
            share_hash=as_bytes(v[1], "contract share hash", size=HASH_BYTES),
            size=as_int(v[2], "contract size", 0, MAX_SHARE_SIZE),
            merkle_root=as_bytes(v[3], "contract merkle root", size=HASH_BYTES),
            block_size=as_int(v[4], "contract block size", 1, 1 << 30),
            k=as_int(v[5], "contract k", 1, MAX_N),
            n=as_int(v[6], "contract n", 1, MAX_N),
            start=as_int(v[7], "contract start", 0, MAX_TIME),
            end=as_int(v[8], "contract end", 0, MAX_TIME),
            price=as_int(v[9], "contract price", 0, MAX_PRICE),
            host_id=as_bytes(v[10], "contract host id", size=ID_BYTES),
            host_pubkey=as_bytes(v[11], "contract host key", size=PUBKEY_BYTES),
            owner_pubkey=as_bytes(v[12], "contract owner key", size=PUBKEY_BYTES),
        )
        problem = _field_problem(c)
        expect(problem is None, f"contract: {problem}")
        return c

    def encode(self) -> bytes:
        return pack(self.body())

    @classmethod
    def decode(cls, data: bytes) -> "Contract":
        c = cls.from_body(unpack_bounded(data, MAX_CONTRACT_BYTES, 32))
        expect(c.encode() == bytes(data), "contract: non-canonical encoding")
        return c


def _field_problem(c: Contract) -> str | None:
    """Why ``c``'s fields are out of range, or None."""
    checks: list[tuple[bool, str]] = [
        (isinstance(c.share_hash, bytes) and len(c.share_hash) == HASH_BYTES, "share hash must be 32 bytes"),
        (isinstance(c.merkle_root, bytes) and len(c.merkle_root) == HASH_BYTES, "merkle root must be 32 bytes"),
        (isinstance(c.host_id, bytes) and len(c.host_id) == ID_BYTES, "host id must be 20 bytes"),
        (isinstance(c.host_pubkey, bytes) and len(c.host_pubkey) == PUBKEY_BYTES, "host key must be 32 bytes"),
        (isinstance(c.owner_pubkey, bytes) and len(c.owner_pubkey) == PUBKEY_BYTES, "owner key must be 32 bytes"),
        (0 <= c.size <= MAX_SHARE_SIZE, "size out of range"),
        (c.block_size == AUDIT_BLOCK, f"block size must be {AUDIT_BLOCK}"),
        (1 <= c.k <= c.n <= MAX_N, "need 1 <= k <= n <= 256"),
        (0 <= c.start < c.end <= MAX_TIME, "need start < end"),
        (0 <= c.price <= MAX_PRICE, "price out of range"),
    ]
    for ok, what in checks:
        if not ok:
            return what
    return None


@dataclass(frozen=True, slots=True)
class SignedContract:
    """A contract with the owner's and the host's signatures (``b""`` = not signed yet)."""

    contract: Contract
    owner_sig: bytes = b""
    host_sig: bytes = b""
    ended: int = 0  # when the owner deleted the share (0: not ended early)
    delete_sig: bytes = b""  # the owner's signature of that DELETE

    @property
    def complete(self) -> bool:
        return bool(self.owner_sig) and bool(self.host_sig)

    @property
    def until(self) -> int:
        """The end of the term as it stands: ``end``, or earlier if the owner deleted the share."""
        return min(self.contract.end, self.ended) if self.delete_sig else self.contract.end

    def ended_by(self, ts: int, delete_sig: bytes) -> "SignedContract":
        """This contract, ended at ``ts`` by the owner's signed DELETE of the
        share (checked: raises :class:`BadSignature`)."""
        ended = replace(self, ended=ts, delete_sig=delete_sig)
        ended.verify_ended()
        return ended

    def verify_ended(self) -> None:
        c = self.contract
        if self.ended < c.start:
            raise BadSignature("contract ended before it started")
        verify(c.owner_pubkey, delete_signing_bytes(c.share_hash, c.host_id, self.ended,
                                                     c.owner_pubkey), self.delete_sig)

    def sign_as_owner(self, identity: Identity) -> "SignedContract":
        if identity.pubkey != self.contract.owner_pubkey:
            raise LocalProtocolError("only the contract's owner can sign as owner")
        self._check_local()
        return replace(self, owner_sig=identity.sign(self.contract.signing_bytes()))

    def sign_as_host(self, identity: Identity) -> "SignedContract":
        if identity.pubkey != self.contract.host_pubkey:
            raise LocalProtocolError("only the contract's host can sign as host")
        self._check_local()
        return replace(self, host_sig=identity.sign(self.contract.signing_bytes()))

    def _check_local(self) -> None:
        problem = _field_problem(self.contract)
        if problem is None and self.contract.host_id != node_id_of(self.contract.host_pubkey):
            problem = "host id does not match the host key"
        if problem is not None:
            raise LocalProtocolError(f"contract: {problem}")

    def verify_owner(self) -> None:
        """Check the owner's signature alone (the host's check of an offer)."""
        verify(self.contract.owner_pubkey, self.contract.signing_bytes(), self.owner_sig)

    def verify(self) -> None:
        """Check both signatures and that host_id belongs to host_pubkey.

        Raises :class:`BadSignature` or :class:`BadIdentity` (both
        :class:`RemoteProtocolError`). A host cannot contract with itself.
        """
        c = self.contract
        if c.host_id != node_id_of(c.host_pubkey):
            raise BadIdentity("contract host id does not match the host key")
        if c.host_pubkey == c.owner_pubkey:
            raise BadIdentity("contract owner and host are the same key")
        if not self.complete:
            raise BadSignature("contract is not signed by both owner and host")
        msg = c.signing_bytes()
        verify(c.owner_pubkey, msg, self.owner_sig)
        verify(c.host_pubkey, msg, self.host_sig)
        if self.delete_sig:
            self.verify_ended()

    def encode(self) -> bytes:
        fields: list[Any] = [CONTRACT_VERSION, self.contract.body(), self.owner_sig, self.host_sig]
        if self.delete_sig:
            fields.append([self.ended, self.delete_sig])
        return pack(fields)

    @classmethod
    def from_list(cls, v: Any) -> "SignedContract":
        v = as_list(v, "signed contract", 5)
        expect(len(v) in (4, 5), "signed contract: expected 4 or 5 fields")
        expect(type(v[0]) is int and v[0] == CONTRACT_VERSION, "signed contract: unknown version")
        owner_sig = as_bytes(v[2], "owner signature", max_size=SIG_BYTES)
        host_sig = as_bytes(v[3], "host signature", max_size=SIG_BYTES)
        expect(len(owner_sig) in (0, SIG_BYTES), "owner signature: expected 0 or 64 bytes")
        expect(len(host_sig) in (0, SIG_BYTES), "host signature: expected 0 or 64 bytes")
        ended, delete_sig = 0, b""
        if len(v) == 5:
            e = as_list(v[4], "contract end notice", 2)
            expect(len(e) == 2, "contract end notice: expected 2 fields")
            ended = as_int(e[0], "contract ended", 0, MAX_TIME)
            delete_sig = as_bytes(e[1], "delete signature", size=SIG_BYTES)
        return cls(Contract.from_body(v[1]), owner_sig, host_sig, ended, delete_sig)

    @classmethod
    def decode(cls, data: bytes) -> "SignedContract":
        """Structural decode; raises :class:`RemoteProtocolError`. Does not verify."""
        sc = cls.from_list(unpack_bounded(data, MAX_CONTRACT_BYTES, 32))
        expect(sc.encode() == bytes(data), "signed contract: non-canonical encoding")
        return sc


def contract_of(c: Contract | SignedContract) -> Contract:
    return c.contract if isinstance(c, SignedContract) else c


__all__ = [
    "AUDIT_BLOCK", "CONTRACT_TAG", "Contract", "SignedContract", "contract_of", "leaf_count_of",
    "share_merkle_root", "share_tree",
]
