from __future__ import annotations

import random
import struct
import unicodedata
from collections.abc import Callable

import nacl.pwhash.argon2id as argon2id
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from xcore.crypto import kdf
from xcore.crypto.kdf import (
    ARGON2_FAST_INSECURE,
    ARGON2_MODERATE,
    DEFAULT_ARGON2,
    SEAL_HEADER_SIZE,
    Argon2Params,
    derive_file_key,
    derive_subkey,
    open_secret,
    seal_secret,
)
from xcore.errors import BadFormat, DecryptionFailed, InvalidParameter, XcoreError

MASTER = bytes(range(32))
FILE_ID = bytes(range(200, 216))
FAST = ARGON2_FAST_INSECURE


def make_token_bytes(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def seal(secret: bytes, passphrase: str, seed: int = 0) -> bytes:
    return seal_secret(secret, passphrase, token_bytes=make_token_bytes(seed), params=FAST)


def hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


# -- HKDF derivations ---------------------------------------------------------


def test_file_key_is_documented_hkdf() -> None:
    key, nonce = derive_file_key(MASTER, FILE_ID)
    assert key == hkdf(MASTER, b"xcore-file-key-v1\x00" + FILE_ID, 32)
    assert nonce == hkdf(MASTER, b"xcore-file-nonce-v1\x00" + FILE_ID, 8)


def test_subkey_is_documented_hkdf() -> None:
    assert derive_subkey(MASTER, b"bucket-index-v1", 48) == hkdf(
        MASTER, b"xcore-subkey-v1\x00bucket-index-v1", 48
    )


@settings(max_examples=30, deadline=None)
@given(a=st.binary(min_size=16, max_size=40), b=st.binary(min_size=16, max_size=40))
def test_distinct_file_ids_give_distinct_keys(a: bytes, b: bytes) -> None:
    ka, na = derive_file_key(MASTER, a)
    kb, nb = derive_file_key(MASTER, b)
    assert (ka == kb) == (a == b)
    assert len(ka) == 32 and len(na) == 8


def test_keys_depend_on_master_and_purpose() -> None:
    other = bytes(32)
    assert derive_file_key(MASTER, FILE_ID) != derive_file_key(other, FILE_ID)
    assert derive_subkey(MASTER, b"a") != derive_subkey(MASTER, b"b")
    assert derive_subkey(MASTER, b"a") != derive_subkey(other, b"a")
    # A subkey purpose can never collide with the file-key derivation.
    assert derive_subkey(MASTER, b"file-key-v1\x00" + FILE_ID) != derive_file_key(MASTER, FILE_ID)[0]
    assert len(derive_subkey(MASTER, b"x", 1)) == 1
    assert len(derive_subkey(MASTER, b"x", 8160)) == 8160


@pytest.mark.parametrize(
    "call",
    [
        lambda: derive_file_key(bytes(31), FILE_ID),
        lambda: derive_file_key(MASTER, bytes(15)),
        lambda: derive_file_key(MASTER, bytes(1025)),
        lambda: derive_subkey(MASTER, b""),
        lambda: derive_subkey(MASTER, b"x", 0),
        lambda: derive_subkey(MASTER, b"x", 8161),
        lambda: derive_subkey(bytes(8), b"x"),
    ],
)
def test_bad_derivation_parameters(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidParameter):
        call()


# -- sealed master secret -----------------------------------------------------


def test_production_default_is_moderate() -> None:
    assert DEFAULT_ARGON2 == ARGON2_MODERATE
    assert ARGON2_MODERATE == Argon2Params(argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE)


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), passphrase=st.text(min_size=1, max_size=20))
def test_seal_open_roundtrip(secret: bytes, passphrase: str) -> None:
    blob = seal(secret, passphrase)
    assert len(blob) == SEAL_HEADER_SIZE + len(secret) + 16
    assert open_secret(blob, passphrase) == secret


def test_blob_layout() -> None:
    blob = seal(MASTER, "pw", seed=7)
    magic, version, ops, mem = struct.unpack(">4sBIQ", blob[:17])
    assert (magic, version, ops, mem) == (b"xcSK", 1, FAST.opslimit, FAST.memlimit)
    tokens = make_token_bytes(7)
    assert blob[17:33] == tokens(16)  # salt
    assert blob[33:57] == tokens(24)  # nonce
    assert MASTER not in blob


def test_fresh_salt_and_nonce_each_time() -> None:
    assert seal(MASTER, "pw", seed=1) != seal(MASTER, "pw", seed=2)


def test_wrong_passphrase_raises_decryption_failed() -> None:
    blob = seal(MASTER, "correct horse")
    for wrong in ["correct horsE", "", "correct horse ", "x" * 100]:
        with pytest.raises(DecryptionFailed):
            open_secret(blob, wrong)


def test_passphrase_is_nfkc_normalized() -> None:
    composed = "caf\u00e9 \ufb01"  # é and the "fi" ligature
    decomposed = unicodedata.normalize("NFD", "café fi")
    blob = seal(MASTER, composed)
    assert open_secret(blob, decomposed) == MASTER


def test_every_truncation_is_an_xcore_error() -> None:
    blob = seal(MASTER, "pw")
    for n in range(len(blob)):
        with pytest.raises(XcoreError):
            open_secret(blob[:n], "pw")
    with pytest.raises(BadFormat):
        open_secret(blob[:SEAL_HEADER_SIZE + 16], "pw")


def test_every_flipped_byte_is_rejected() -> None:
    blob = seal(MASTER, "pw")
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises((DecryptionFailed, BadFormat)):
            open_secret(bytes(tampered), "pw")


def test_unknown_version_and_magic() -> None:
    blob = bytearray(seal(MASTER, "pw"))
    blob[4] = 2
    with pytest.raises(BadFormat, match="version 2"):
        open_secret(bytes(blob), "pw")
    blob[4] = 1
    blob[:4] = b"XXXX"
    with pytest.raises(BadFormat, match="magic"):
        open_secret(bytes(blob), "pw")


def test_hostile_argon2_parameters_are_refused_before_running() -> None:
    blob = bytearray(seal(MASTER, "pw"))
    blob[9:17] = (1 << 40).to_bytes(8, "big")  # 1 TiB memlimit
    with pytest.raises(BadFormat, match="out-of-range"):
        open_secret(bytes(blob), "pw")
    blob = bytearray(seal(MASTER, "pw"))
    blob[5:9] = (10**6).to_bytes(4, "big")
    with pytest.raises(BadFormat):
        open_secret(bytes(blob), "pw")


def test_too_long_blob() -> None:
    with pytest.raises(BadFormat):
        open_secret(seal(MASTER, "pw") + bytes(2000), "pw")


def test_seal_argument_checks() -> None:
    tb = make_token_bytes(0)
    with pytest.raises(InvalidParameter):
        seal_secret(b"", "pw", token_bytes=tb, params=FAST)
    with pytest.raises(InvalidParameter):
        seal_secret(bytes(kdf.MAX_SECRET + 1), "pw", token_bytes=tb, params=FAST)
    with pytest.raises(InvalidParameter):
        seal_secret(MASTER, "", token_bytes=tb, params=FAST)
    with pytest.raises(InvalidParameter):
        seal_secret(MASTER, "pw", token_bytes=lambda n: bytes(n - 1), params=FAST)
    with pytest.raises(InvalidParameter):
        seal_secret(MASTER, "pw", token_bytes=tb, params=Argon2Params(0, FAST.memlimit))
    with pytest.raises(InvalidParameter):
        seal_secret(MASTER, "pw", token_bytes=tb, params=Argon2Params(1, 1 << 40))
    with pytest.raises(InvalidParameter, match="KiB"):
        seal_secret(MASTER, "pw", token_bytes=tb, params=Argon2Params(1, 8192 + 1))
