"""Node identities: Ed25519 keys, key-bound node IDs and the ID puzzle.

A node ID is the first 160 bits of SHA-256 of the node's Ed25519 public key,
so nobody can claim an ID without its key. To make IDs costly to grind (Sybil
and eclipse attacks that place many IDs next to a target), an ID is valid only
if SHA-256(tag || node_id) starts with ``difficulty`` zero bits: the "static
puzzle" of S/Kademlia (Baumgart & Mies 2007, section 4.1). Difficulty is a
network parameter; tests use 0-4, a public network 16 or more.

Peers that know each other's public keys authenticate datagrams with a MAC
under a key both derive from their static keys (X25519 of the converted
Ed25519 keys), cheaper than a signature per message.

On-disk key file layout (msgpack map, written atomically with mode 0600)::

    {"v": 1, "seed": <32 bytes Ed25519 seed>, "difficulty": <int>}
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import threading
from pathlib import Path
from typing import Callable

import nacl.bindings
import nacl.exceptions
import nacl.signing

from xcore.codec import pack, unpack_bounded
from xcore.errors import BadIdentity, BadSignature, ConfigError, RemoteProtocolError
from xcore.fsutil import atomic_write

ID_BYTES = 20
PUBKEY_BYTES = 32
SIG_BYTES = 64
MAC_BYTES = 16
PUZZLE_TAG = b"xcore-id-puzzle-v1"
MAC_KEY_TAG = b"xcore-mac-key-v1"
KEYFILE_VERSION = 1


def node_id_of(pubkey: bytes) -> bytes:
    """The node ID bound to ``pubkey``: SHA-256(pubkey)[:20]."""
    return hashlib.sha256(pubkey).digest()[:ID_BYTES]


def leading_zero_bits(data: bytes) -> int:
    n = 0
    for byte in data:
        if byte == 0:
            n += 8
            continue
        n += 8 - byte.bit_length()
        break
    return n


def puzzle_ok(node_id: bytes, difficulty: int) -> bool:
    """True if ``node_id`` solves the static puzzle at ``difficulty`` bits."""
    if difficulty <= 0:
        return True
    return leading_zero_bits(hashlib.sha256(PUZZLE_TAG + node_id).digest()) >= difficulty


@functools.lru_cache(maxsize=65536)
def _checked_id(pubkey: bytes, difficulty: int) -> bytes | None:
    node_id = node_id_of(pubkey)
    return node_id if puzzle_ok(node_id, difficulty) else None


def check_pubkey(pubkey: bytes, difficulty: int) -> bytes:
    """Return the node ID of ``pubkey`` or raise :class:`BadIdentity`.

    Pure, so results are memoised (every lookup response repeats keys).
    """
    if not isinstance(pubkey, bytes) or len(pubkey) != PUBKEY_BYTES:
        raise BadIdentity("public key must be 32 bytes")
    node_id = _checked_id(pubkey, difficulty)
    if node_id is None:
        raise BadIdentity("node ID does not meet the ID puzzle")
    return node_id


def verify(pubkey: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; raise :class:`BadSignature` if it fails.

    Signatures that verified are remembered, by the SHA-256 of key,
    signature and message (the last :data:`VERIFIED_REMEMBERED`): a node
    meets the same signed record from every node a lookup asks and again at
    every republication, and a verification costs about 65 us against about
    1 us for the hash. Failures are not remembered."""
    if len(signature) != SIG_BYTES or len(pubkey) != PUBKEY_BYTES:
        raise BadSignature("malformed signature or key")
    seen = hashlib.sha256(pubkey + signature + message).digest()
    with _verified_lock:
        if seen in _verified:
            _verified.move_to_end(seen)
            return
    try:
        nacl.signing.VerifyKey(pubkey).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError, nacl.exceptions.CryptoError, ValueError,
            TypeError) as exc:
        raise BadSignature() from exc
    with _verified_lock:  # (worker threads verify contracts too)
        _verified[seen] = None
        if len(_verified) > VERIFIED_REMEMBERED:
            _verified.popitem(last=False)


VERIFIED_REMEMBERED = 4096
_verified: collections.OrderedDict[bytes, None] = collections.OrderedDict()
_verified_lock = threading.Lock()


def mac(key: bytes, message: bytes) -> bytes:
    """16-byte keyed BLAKE2b."""
    return hashlib.blake2b(message, digest_size=MAC_BYTES, key=key).digest()


@functools.lru_cache(maxsize=65536)
def _curve_pk(ed_pubkey: bytes) -> bytes:
    """Ed25519 -> X25519 public key (pure, so shared process-wide)."""
    return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed_pubkey)  # type: ignore[no-any-return]


class Identity:
    """An Ed25519 key pair whose node ID solves the ID puzzle."""

    def __init__(self, seed: bytes, difficulty: int = 0) -> None:
        if len(seed) != 32:
            raise ConfigError("identity seed must be 32 bytes")
        self._seed = seed
        self._sk = nacl.signing.SigningKey(seed)
        self.pubkey: bytes = bytes(self._sk.verify_key)
        self.node_id: bytes = node_id_of(self.pubkey)
        self.difficulty = difficulty
        if not puzzle_ok(self.node_id, difficulty):
            raise ConfigError("identity does not meet the ID puzzle difficulty")
        self._curve_sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
            seed + self.pubkey)
        self._mac_keys: dict[bytes, bytes] = {}

    @classmethod
    def generate(cls, difficulty: int, token_bytes: Callable[[int], bytes]) -> "Identity":
        """Grind key pairs until one's node ID solves the puzzle.

        Expected cost is 2**difficulty key generations.
        """
        while True:
            seed = token_bytes(32)
            pub = nacl.bindings.crypto_sign_seed_keypair(seed)[0]
            if puzzle_ok(node_id_of(pub), difficulty):
                return cls(seed, difficulty)

    def sign(self, message: bytes) -> bytes:
        return self._sk.sign(message).signature

    def mac_key(self, peer_pubkey: bytes) -> bytes:
        """The MAC key shared with ``peer_pubkey`` (cached per peer).

        Raises :class:`BadIdentity` for a key that is not a usable point.
        """
        key = self._mac_keys.get(peer_pubkey)
        if key is not None:
            return key
        try:
            curve_pk = _curve_pk(peer_pubkey)
            shared = nacl.bindings.crypto_scalarmult(self._curve_sk, curve_pk)
        except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError,
                nacl.exceptions.ValueError, nacl.exceptions.TypeError,
                ValueError, TypeError, RuntimeError) as exc:
            raise BadIdentity("peer key is not a valid curve point") from exc
        lo, hi = sorted((self.pubkey, peer_pubkey))
        key = hashlib.blake2b(MAC_KEY_TAG + lo + hi, key=shared, digest_size=32).digest()
        if len(self._mac_keys) > 65536:  # bounded cache
            self._mac_keys.clear()
        self._mac_keys[peer_pubkey] = key
        return key

    # -- persistence -------------------------------------------------------

    def save(self, path: Path) -> None:
        atomic_write(path, pack({"v": KEYFILE_VERSION, "seed": self._seed,
                                 "difficulty": self.difficulty}), mode=0o600)

    @classmethod
    def load(cls, path: Path) -> "Identity":
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from exc
        if os.name == "posix" and (path.stat().st_mode & 0o077):
            raise ConfigError(f"key file {path} is readable by others; chmod 600 it")
        try:
            doc = unpack_bounded(raw, 1024)
        except RemoteProtocolError as exc:
            raise ConfigError(f"key file {path} is corrupt") from exc
        if (not isinstance(doc, dict) or doc.get("v") != KEYFILE_VERSION
                or not isinstance(doc.get("seed"), bytes)
                or not isinstance(doc.get("difficulty"), int)):
            raise ConfigError(f"key file {path} has an unknown format")
        return cls(doc["seed"], doc["difficulty"])
