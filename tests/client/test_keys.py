from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcore.client.index import index_key
from xcore.client.keys import (
    ARGON2_ENV,
    KEYSTORE_NAME,
    PASSPHRASE_ENV,
    OwnerKeys,
    argon2_params_from_env,
    create_keystore,
    get_passphrase,
    import_keystore,
    keystore_exists,
    keystore_path,
    load_owner_keys,
    reveal_mnemonic,
)
from xcore.crypto.kdf import (
    ARGON2_FAST_INSECURE,
    ARGON2_INTERACTIVE,
    DEFAULT_ARGON2,
    derive_file_key,
    derive_subkey,
)
from xcore.crypto.mnemonic import master_secret_from_mnemonic, new_mnemonic
from xcore.errors import (
    BadFormat,
    BadMnemonic,
    ConfigError,
    DecryptionFailed,
    InvalidParameter,
    XcoreError,
)

FAST = ARGON2_FAST_INSECURE
MASTER = bytes(range(32))
PASS = "correct horse battery staple"


def tokens(seed: int = 0) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def words_for(seed: int) -> str:
    return new_mnemonic(tokens(seed))


def make_keystore(data: Path, seed: int = 0, passphrase: str = PASS) -> str:
    return create_keystore(data, passphrase, token_bytes=tokens(seed), params=FAST)


# -- OwnerKeys ----------------------------------------------------------------------


def test_owner_keys_are_the_documented_derivations() -> None:
    keys = OwnerKeys(MASTER)
    seed = derive_subkey(MASTER, b"owner-sign-v1")
    assert keys.signing.difficulty == 0
    assert keys.pubkey == keys.signing.pubkey
    assert keys.signing.sign(b"m") == OwnerKeys(MASTER).signing.sign(b"m")
    assert keys.file_key(b"f" * 16) == derive_file_key(MASTER, b"f" * 16)
    assert keys.box_key(b"index-v1") == derive_subkey(MASTER, b"owner-box-v1\x00index-v1")
    assert len(keys.box_key(b"x")) == 32
    assert keys.box_key(b"a") != keys.box_key(b"b")
    assert keys.box_key(b"owner-sign-v1") != seed


def test_box_key_needs_a_purpose() -> None:
    with pytest.raises(InvalidParameter):
        OwnerKeys(MASTER).box_key(b"")


def test_owner_keys_from_mnemonic() -> None:
    words = words_for(1)
    assert OwnerKeys.from_mnemonic(words).master == master_secret_from_mnemonic(words)
    assert OwnerKeys.from_mnemonic(words.upper().split()) == OwnerKeys.from_mnemonic(words)
    with pytest.raises(BadMnemonic):
        OwnerKeys.from_mnemonic("abandon " * 24)


def test_owner_keys_equality_and_repr_hide_the_secret() -> None:
    a, b, c = OwnerKeys(MASTER), OwnerKeys(bytes(MASTER)), OwnerKeys(bytes(32))
    assert a == b and hash(a) == hash(b) and a != c
    assert MASTER.hex() not in repr(a)
    assert a.pubkey.hex() in repr(a)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_owner_keys_need_a_32_byte_master(bad: bytes) -> None:
    with pytest.raises(InvalidParameter, match="32 bytes"):
        OwnerKeys(bad)


@given(st.binary(max_size=300), st.binary(min_size=1, max_size=20))
@settings(max_examples=50, deadline=None)
def test_seal_open_round_trip_and_is_deterministic(data: bytes, purpose: bytes) -> None:
    keys = OwnerKeys(MASTER)
    boxed = keys.seal(purpose, data)
    assert keys.open(purpose, boxed) == data
    assert keys.seal(purpose, data) == boxed
    assert len(boxed) == len(data) + 40


def test_seal_nonce_differs_per_plaintext() -> None:
    keys = OwnerKeys(MASTER)
    assert keys.seal(b"p", b"a")[:24] != keys.seal(b"p", b"b")[:24]


@given(st.data())
@settings(max_examples=100, deadline=None)
def test_open_rejects_any_tampered_byte(data: st.DataObject) -> None:
    keys = OwnerKeys(MASTER)
    boxed = bytearray(keys.seal(b"p", b"some plaintext"))
    i = data.draw(st.integers(0, len(boxed) - 1))
    boxed[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(DecryptionFailed):
        keys.open(b"p", bytes(boxed))


def test_open_rejects_other_key_purpose_and_truncation() -> None:
    keys = OwnerKeys(MASTER)
    boxed = keys.seal(b"p", b"x")
    with pytest.raises(DecryptionFailed, match="this owner's key"):
        OwnerKeys(bytes(32)).open(b"p", boxed)
    with pytest.raises(DecryptionFailed):
        keys.open(b"q", boxed)
    with pytest.raises(DecryptionFailed, match="truncated"):
        keys.open(b"p", boxed[:39])


# -- keystore -----------------------------------------------------------------------


def test_create_and_load_keystore(tmp_path: Path) -> None:
    data = tmp_path / "node"
    words = make_keystore(data)
    assert len(words.split()) == 24
    assert keystore_exists(data) and keystore_path(data) == data / KEYSTORE_NAME
    assert load_owner_keys(data, PASS) == OwnerKeys.from_mnemonic(words)
    assert reveal_mnemonic(data, PASS) == words
    raw = (data / KEYSTORE_NAME).read_bytes()
    assert raw[:6] == b"xcOK\x01\x01"
    assert words.encode() not in raw


def test_keystore_is_mode_0600(tmp_path: Path) -> None:
    make_keystore(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / KEYSTORE_NAME).st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != KEYSTORE_NAME]  # no temp left


def test_keystore_readable_by_others_is_refused(tmp_path: Path) -> None:
    make_keystore(tmp_path)
    os.chmod(tmp_path / KEYSTORE_NAME, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_owner_keys(tmp_path, PASS)


def test_wrong_passphrase_is_decryption_failed(tmp_path: Path) -> None:
    make_keystore(tmp_path)
    with pytest.raises(DecryptionFailed) as info:
        load_owner_keys(tmp_path, "not the passphrase")
    assert "wrong passphrase" in str(info.value)
    assert str(tmp_path / KEYSTORE_NAME) in str(info.value)


def test_missing_keystore_names_the_commands(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_owner_keys(tmp_path, PASS)
    msg = str(info.value)
    assert f"xcore keys new --data {tmp_path}" in msg
    assert "xcore keys import" in msg
    assert isinstance(info.value, XcoreError)


def test_create_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = make_keystore(tmp_path, seed=1)
    before = (tmp_path / KEYSTORE_NAME).read_bytes()
    with pytest.raises(ConfigError, match="already exists.*--force"):
        make_keystore(tmp_path, seed=2)
    with pytest.raises(ConfigError, match="already exists"):
        import_keystore(tmp_path, words_for(3), PASS, token_bytes=tokens(), params=FAST)
    assert (tmp_path / KEYSTORE_NAME).read_bytes() == before
    assert reveal_mnemonic(tmp_path, PASS) == first
    second = create_keystore(tmp_path, "new pass", token_bytes=tokens(2), params=FAST, force=True)
    assert second != first
    assert reveal_mnemonic(tmp_path, "new pass") == second


def test_same_mnemonic_on_two_machines_gives_the_same_keys(tmp_path: Path) -> None:
    words = make_keystore(tmp_path / "laptop", seed=7)
    keys = import_keystore(tmp_path / "desktop", "  " + words.upper() + "\n", "other pass",
                           token_bytes=tokens(8), params=FAST)
    a = load_owner_keys(tmp_path / "laptop", PASS)
    b = load_owner_keys(tmp_path / "desktop", "other pass")
    assert a == b == keys
    assert a.pubkey == b.pubkey
    assert index_key(a) == index_key(b)
    assert a.file_key(b"i" * 16) == b.file_key(b"i" * 16)
    assert (tmp_path / "laptop" / KEYSTORE_NAME).read_bytes() != (
        tmp_path / "desktop" / KEYSTORE_NAME).read_bytes()


def test_import_bad_mnemonic_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(BadMnemonic, match="24 words"):
        import_keystore(tmp_path, "abandon abandon", PASS, token_bytes=tokens(), params=FAST)
    assert not keystore_exists(tmp_path)


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="passphrase"):
        make_keystore(tmp_path, passphrase="")
    assert not keystore_exists(tmp_path)


@pytest.mark.parametrize("offset", [6, 20, 40, -1])
def test_tampered_keystore_is_refused(tmp_path: Path, offset: int) -> None:
    make_keystore(tmp_path)
    path = tmp_path / KEYSTORE_NAME
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    # header damage is a format error, anything under the seal fails authentication
    with pytest.raises((DecryptionFailed, BadFormat)):
        load_owner_keys(tmp_path, PASS)


def test_tampered_keystore_ciphertext_is_decryption_failed(tmp_path: Path) -> None:
    make_keystore(tmp_path)
    path = tmp_path / KEYSTORE_NAME
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x80
    path.write_bytes(bytes(raw))
    with pytest.raises(DecryptionFailed):
        load_owner_keys(tmp_path, PASS)


@pytest.mark.parametrize("mangle, match", [
    (lambda raw: b"XXXX" + raw[4:], "not an xcore owner keystore"),
    (lambda raw: raw[:4] + b"\x02" + raw[5:], "unsupported version 2"),
    (lambda raw: raw[:5] + b"\x09" + raw[6:], "unknown kind"),
    (lambda raw: raw[:30], "corrupt"),
    (lambda raw: b"", "corrupt"),
    (lambda raw: raw + bytes(5000), "corrupt"),
])
def test_corrupt_keystore_is_bad_format(tmp_path: Path, mangle: Callable[[bytes], bytes],
                                        match: str) -> None:
    make_keystore(tmp_path)
    path = tmp_path / KEYSTORE_NAME
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(BadFormat, match=match):
        load_owner_keys(tmp_path, PASS)


# -- passphrase and Argon2 profile ----------------------------------------------------


class RecordingPrompt:
    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, text: str) -> str:
        self.calls.append(text)
        return self.answers.pop(0)


def test_passphrase_from_env_does_not_prompt() -> None:
    prompt = RecordingPrompt()
    assert get_passphrase({PASSPHRASE_ENV: "s3cret"}, prompt, confirm=True) == "s3cret"
    assert prompt.calls == []


def test_passphrase_set_but_empty_is_an_error() -> None:
    with pytest.raises(ConfigError, match="XCORE_PASSPHRASE is set but empty"):
        get_passphrase({PASSPHRASE_ENV: ""}, RecordingPrompt("x"))


def test_passphrase_prompt() -> None:
    prompt = RecordingPrompt("typed")
    assert get_passphrase({}, prompt) == "typed"
    assert prompt.calls == ["Passphrase: "]


def test_passphrase_confirm() -> None:
    prompt = RecordingPrompt("a", "a")
    assert get_passphrase({}, prompt, confirm=True) == "a"
    assert prompt.calls == ["Passphrase: ", "Repeat passphrase: "]
    with pytest.raises(ConfigError, match="do not match"):
        get_passphrase({}, RecordingPrompt("a", "b"), confirm=True)


def test_passphrase_needs_env_or_prompt() -> None:
    with pytest.raises(ConfigError, match="set XCORE_PASSPHRASE"):
        get_passphrase({})
    with pytest.raises(ConfigError, match="must not be empty"):
        get_passphrase({}, RecordingPrompt(""))


def test_argon2_params_from_env() -> None:
    assert argon2_params_from_env({}) == DEFAULT_ARGON2
    assert argon2_params_from_env({ARGON2_ENV: ""}) == DEFAULT_ARGON2
    assert argon2_params_from_env({ARGON2_ENV: "fast"}) == FAST
    assert argon2_params_from_env({ARGON2_ENV: " FAST "}) == FAST
    assert argon2_params_from_env({ARGON2_ENV: "interactive"}) == ARGON2_INTERACTIVE
    with pytest.raises(ConfigError, match="fast, interactive, moderate"):
        argon2_params_from_env({ARGON2_ENV: "turbo"})


def test_keystore_opens_with_its_own_params(tmp_path: Path) -> None:
    # params only matter when writing; the sealed blob records its own
    words = create_keystore(tmp_path, PASS, token_bytes=tokens(),
                            params=argon2_params_from_env({ARGON2_ENV: "fast"}))
    assert load_owner_keys(tmp_path, PASS) == OwnerKeys.from_mnemonic(words)
