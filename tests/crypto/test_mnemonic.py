from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from xcore.crypto.mnemonic import (
    entropy_from_mnemonic,
    master_secret_from_mnemonic,
    new_mnemonic,
    validate_mnemonic,
)
from xcore.errors import BadMnemonic, InvalidParameter, XcoreError

# BIP-39 reference vectors (trezor/python-mnemonic vectors.json, 256-bit entropy).
VECTORS = [
    ("00" * 32, " ".join(["abandon"] * 23 + ["art"])),
    (
        "7f" * 32,
        "legal winner thank year wave sausage worth useful legal winner thank year "
        "wave sausage worth useful legal winner thank year wave sausage worth title",
    ),
    ("ff" * 32, " ".join(["zoo"] * 23 + ["vote"])),
]


@pytest.mark.parametrize("entropy_hex, phrase", VECTORS)
def test_bip39_vectors(entropy_hex: str, phrase: str) -> None:
    entropy = bytes.fromhex(entropy_hex)
    assert new_mnemonic(lambda n: entropy[:n]) == phrase
    assert entropy_from_mnemonic(phrase) == entropy


def test_new_mnemonic_uses_injected_randomness() -> None:
    asked: list[int] = []

    def token_bytes(n: int) -> bytes:
        asked.append(n)
        return random.Random(5).randbytes(n)

    phrase = new_mnemonic(token_bytes)
    assert asked == [32]
    assert len(phrase.split()) == 24
    assert validate_mnemonic(phrase) == phrase
    assert new_mnemonic(random.Random(5).randbytes) == phrase


def test_token_bytes_must_supply_32_bytes() -> None:
    with pytest.raises(InvalidParameter):
        new_mnemonic(lambda n: bytes(16))


def test_master_secret_is_documented_hkdf_of_entropy() -> None:
    entropy = bytes.fromhex("7f" * 32)
    expected = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"xcore-master-v1"
    ).derive(entropy)
    assert master_secret_from_mnemonic(VECTORS[1][1]) == expected


@settings(max_examples=30, deadline=None)
@given(entropy=st.binary(min_size=32, max_size=32))
def test_roundtrip_and_normalization(entropy: bytes) -> None:
    phrase = new_mnemonic(lambda n: entropy)
    assert entropy_from_mnemonic(phrase) == entropy
    secret = master_secret_from_mnemonic(phrase)
    assert len(secret) == 32
    messy = "  " + "\n".join(w.upper() for w in phrase.split()) + "\t"
    assert validate_mnemonic(messy) == phrase
    assert master_secret_from_mnemonic(messy) == secret
    assert master_secret_from_mnemonic(phrase.split()) == secret


def test_distinct_phrases_give_distinct_secrets() -> None:
    a = master_secret_from_mnemonic(VECTORS[0][1])
    b = master_secret_from_mnemonic(VECTORS[2][1])
    assert a != b


def test_bad_checksum() -> None:
    words = VECTORS[1][1].split()
    words[-1] = "abandon"
    with pytest.raises(BadMnemonic, match="checksum"):
        validate_mnemonic(words)


def test_swapped_words_fail_checksum() -> None:
    words = new_mnemonic(random.Random(9).randbytes).split()
    swapped = list(words)
    for i in range(23):
        if words[i] != words[i + 1]:
            swapped[i], swapped[i + 1] = words[i + 1], words[i]
            break
    # One swap passes the 8-bit checksum with probability 1/256; this seed does not.
    with pytest.raises(BadMnemonic):
        master_secret_from_mnemonic(swapped)


def test_unknown_words_are_named() -> None:
    words = VECTORS[0][1].split()
    words[3] = "bitcoinz"
    words[10] = "../etc"
    with pytest.raises(BadMnemonic) as info:
        validate_mnemonic(" ".join(words))
    message = str(info.value)
    assert "4:'bitcoinz'" in message and "11:'../etc'" in message


@pytest.mark.parametrize("count", [0, 12, 23, 25])
def test_wrong_word_count(count: int) -> None:
    phrase = " ".join((["abandon"] * 23 + ["art"]) * 2)
    with pytest.raises(BadMnemonic, match="24 words"):
        validate_mnemonic(" ".join(phrase.split()[:count]))


def test_bad_mnemonic_is_an_xcore_error_with_a_message() -> None:
    assert issubclass(BadMnemonic, XcoreError)
    assert "24-word" in str(BadMnemonic())
