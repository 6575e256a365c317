"""Identities: key-bound node IDs, the ID puzzle, MAC keys, the key file."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcore.codec import pack
from xcore.crypto.identity import (
    MAC_BYTES,
    PUZZLE_TAG,
    Identity,
    check_pubkey,
    leading_zero_bits,
    mac,
    node_id_of,
    puzzle_ok,
    verify,
)
from xcore.errors import BadIdentity, BadSignature, ConfigError

MakeIdentity = Callable[..., Identity]


def test_node_id_is_hash_of_pubkey(make_identity: MakeIdentity) -> None:
    ident = make_identity(1)
    assert ident.node_id == hashlib.sha256(ident.pubkey).digest()[:20]
    assert node_id_of(ident.pubkey) == ident.node_id
    assert len(ident.pubkey) == 32


def test_generation_is_deterministic(make_identity: MakeIdentity) -> None:
    assert make_identity(7).pubkey == make_identity(7).pubkey
    assert make_identity(7).pubkey != make_identity(8).pubkey


@pytest.mark.parametrize("difficulty", [0, 2, 4, 6])
def test_generated_identities_meet_the_puzzle(difficulty: int) -> None:
    for seed in range(10):
        ident = Identity.generate(difficulty, random.Random(seed).randbytes)
        digest = hashlib.sha256(PUZZLE_TAG + ident.node_id).digest()
        assert leading_zero_bits(digest) >= difficulty
        assert puzzle_ok(ident.node_id, difficulty)
        assert check_pubkey(ident.pubkey, difficulty) == ident.node_id
        assert ident.difficulty == difficulty


def test_leading_zero_bits() -> None:
    assert leading_zero_bits(b"") == 0
    assert leading_zero_bits(b"\x80") == 0
    assert leading_zero_bits(b"\x01") == 7
    assert leading_zero_bits(b"\x00\x01") == 15
    assert leading_zero_bits(b"\x00\x00") == 16
    assert leading_zero_bits(b"\x00\x40\xff") == 9


def _failing_pubkey(difficulty: int) -> bytes:
    """A real Ed25519 key whose node ID does not solve the puzzle."""
    rng = random.Random(99)
    while True:
        ident = Identity(rng.randbytes(32), 0)
        if not puzzle_ok(ident.node_id, difficulty):
            return ident.pubkey


def test_check_pubkey_rejects_ids_failing_the_puzzle() -> None:
    pub = _failing_pubkey(4)
    with pytest.raises(BadIdentity, match="puzzle"):
        check_pubkey(pub, 4)
    assert check_pubkey(pub, 0) == node_id_of(pub)


@pytest.mark.parametrize("bad", [b"", b"k" * 31, b"k" * 33, b"k" * 64, "k" * 32, None, 32])
def test_check_pubkey_rejects_wrong_lengths_and_types(bad: object) -> None:
    with pytest.raises(BadIdentity):
        check_pubkey(bad, 0)  # type: ignore[arg-type]


def test_identity_constructor_refuses_a_seed_failing_the_puzzle() -> None:
    rng = random.Random(3)
    while True:
        seed = rng.randbytes(32)
        if not puzzle_ok(Identity(seed, 0).node_id, 3):
            break
    with pytest.raises(ConfigError):
        Identity(seed, 3)
    with pytest.raises(ConfigError):
        Identity(b"short", 0)


def test_sign_and_verify(make_identity: MakeIdentity) -> None:
    a, b = make_identity(1), make_identity(2)
    sig = a.sign(b"message")
    verify(a.pubkey, b"message", sig)
    with pytest.raises(BadSignature):
        verify(a.pubkey, b"messagE", sig)
    with pytest.raises(BadSignature):
        verify(b.pubkey, b"message", sig)
    with pytest.raises(BadSignature):
        verify(a.pubkey, b"message", sig[:-1])
    with pytest.raises(BadSignature):
        verify(a.pubkey[:31], b"message", sig)
    with pytest.raises(BadSignature):
        verify(bytes(32), b"message", sig)   # not a valid point / small order


def test_mac_keys_are_symmetric(make_identity: MakeIdentity) -> None:
    ids = [make_identity(s) for s in range(1, 5)]
    for a in ids:
        for b in ids:
            if a is b:
                continue
            assert a.mac_key(b.pubkey) == b.mac_key(a.pubkey)
            assert len(a.mac_key(b.pubkey)) == 32
    a, b, c = ids[:3]
    assert a.mac_key(b.pubkey) != a.mac_key(c.pubkey)
    assert a.mac_key(b.pubkey) != c.mac_key(b.pubkey)
    # cached: the same object comes back
    assert a.mac_key(b.pubkey) is a.mac_key(b.pubkey)


def test_mac(make_identity: MakeIdentity) -> None:
    a, b = make_identity(1), make_identity(2)
    k = a.mac_key(b.pubkey)
    tag = mac(k, b"hello")
    assert len(tag) == MAC_BYTES
    assert mac(b.mac_key(a.pubkey), b"hello") == tag
    assert mac(k, b"hellO") != tag


def test_mac_key_rejects_bad_points(make_identity: MakeIdentity) -> None:
    a = make_identity(1)
    with pytest.raises(BadIdentity):
        a.mac_key(b"\x00" * 31)
    # 0xff..ff is not a valid encoding of a curve point
    with pytest.raises(BadIdentity):
        a.mac_key(b"\xff" * 32)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=40))
def test_mac_key_never_raises_anything_but_bad_identity(key: bytes) -> None:
    a = Identity.generate(0, random.Random(5).randbytes)
    try:
        k = a.mac_key(key)
    except BadIdentity:
        return
    assert len(k) == 32


# -- the key file --------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, make_identity: MakeIdentity) -> None:
    ident = make_identity(1, 4)
    path = tmp_path / "sub" / "identity.key"
    ident.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    back = Identity.load(path)
    assert back.pubkey == ident.pubkey
    assert back.node_id == ident.node_id
    assert back.difficulty == 4
    assert back.sign(b"x") == ident.sign(b"x")
    # no temp files left behind
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]


def test_save_overwrites_atomically(tmp_path: Path, make_identity: MakeIdentity) -> None:
    path = tmp_path / "identity.key"
    make_identity(1).save(path)
    make_identity(2).save(path)
    assert Identity.load(path).pubkey == make_identity(2).pubkey
    assert (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o610])
def test_load_refuses_group_or_world_readable(tmp_path: Path, make_identity: MakeIdentity,
                                              mode: int) -> None:
    path = tmp_path / "identity.key"
    make_identity(1).save(path)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="readable by others"):
        Identity.load(path)
    os.chmod(path, 0o400)
    Identity.load(path)


@pytest.mark.parametrize("content", [
    b"",
    b"\xc1garbage",
    b"not msgpack at all \xff\xfe",
    pack([1, 2, 3]),
    pack({"v": 2, "seed": b"s" * 32, "difficulty": 0}),
    pack({"v": 1, "seed": "s" * 32, "difficulty": 0}),
    pack({"v": 1, "seed": b"s" * 32, "difficulty": "0"}),
    pack({"v": 1, "seed": b"s" * 31, "difficulty": 0}),
    pack({"v": 1, "difficulty": 0}),
    b"\x00" * 5000,
])
def test_load_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError):
        Identity.load(path)


def test_load_refuses_key_below_its_difficulty(tmp_path: Path) -> None:
    rng = random.Random(4)
    while True:
        seed = rng.randbytes(32)
        if not puzzle_ok(Identity(seed, 0).node_id, 8):
            break
    path = tmp_path / "identity.key"
    path.write_bytes(pack({"v": 1, "seed": seed, "difficulty": 8}))
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="puzzle"):
        Identity.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Identity.load(tmp_path / "nope.key")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
def test_load_any_bytes_is_identity_or_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                   content: bytes) -> None:
    path = tmp_path_factory.mktemp("k") / "identity.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    try:
        Identity.load(path)
    except ConfigError:
        pass
