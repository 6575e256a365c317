from __future__ import annotations

import io
import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from xcore.crypto.stream import (
    MAX_STREAM_BYTES,
    CtrStream,
    decrypt_file_stream,
    encrypt_file_stream,
)
from xcore.errors import InvalidParameter, XcoreError

KEY = bytes(range(32))
NONCE = bytes(range(100, 108))


def reference_keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    """AES-ECB of nonce || be64(i): the documented counter layout, computed independently."""
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(nonce + i.to_bytes(8, "big") for i in range(-(-length // 16)))
    return ecb.update(blocks)[:length]


def test_keystream_matches_documented_counter_layout() -> None:
    ks = CtrStream(KEY, NONCE).update(bytes(1000))
    assert ks == reference_keystream(KEY, NONCE, 1000)


def test_nist_sp800_38a_f55_ctr_aes256() -> None:
    # SP 800-38A F.5.5: initial counter f0..ff = nonce f0..f7, block counter 0xf8f9fafbfcfdfeff.
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    nonce = bytes.fromhex("f0f1f2f3f4f5f6f7")
    offset = 0xF8F9FAFBFCFDFEFF * 16
    plaintext = bytes.fromhex(
        "6bc1bee22e409f96e93d7e117393172a"
        "ae2d8a571e03ac9c9eb76fac45af8e51"
        "30c81c46a35ce411e5fbc1191a0a52ef"
        "f69f2445df4f9b17ad2b417be66c3710"
    )
    ciphertext = bytes.fromhex(
        "601ec313775789a5b7a7f504bbf3d228"
        "f443e3ca4d62b59aca84e990cacaf5c5"
        "2b0930daa23de94ce87017ba2d84988d"
        "dfc9c58db67aada613c2dd08457941a6"
    )
    assert CtrStream(key, nonce, offset).update(plaintext) == ciphertext


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_chunking_does_not_change_output(data: bytes, cuts: list[int]) -> None:
    whole = CtrStream(KEY, NONCE).update(data)
    stream = CtrStream(KEY, NONCE)
    out = []
    prev = 0
    for cut in sorted(c for c in cuts if c <= len(data)) + [len(data)]:
        out.append(stream.update(data[prev:cut]))
        prev = cut
    assert b"".join(out) == whole
    assert stream.position == len(data)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=400), start=st.integers(min_value=0, max_value=399))
def test_decrypt_from_any_offset(data: bytes, start: int) -> None:
    start = start % len(data)
    ciphertext = CtrStream(KEY, NONCE).update(data)
    assert CtrStream(KEY, NONCE, start).update(ciphertext[start:]) == data[start:]
    assert ciphertext != data or len(data) < 4


def test_roundtrip_and_distinct_nonces_give_distinct_streams() -> None:
    data = random.Random(1).randbytes(5000)
    ct = CtrStream(KEY, NONCE).update(data)
    assert CtrStream(KEY, NONCE).update(ct) == data
    other = CtrStream(KEY, bytes(8)).update(data)
    assert other != ct


def test_file_stream_roundtrip_with_progress() -> None:
    data = random.Random(2).randbytes(10_000)
    calls: list[int] = []
    enc = io.BytesIO()
    n = encrypt_file_stream(io.BytesIO(data), enc, KEY, NONCE, chunk=4096, progress=calls.append)
    assert n == len(data)
    assert calls == [4096, 8192, 10_000]
    assert enc.getvalue() == CtrStream(KEY, NONCE).update(data)
    dec = io.BytesIO()
    decrypt_file_stream(io.BytesIO(enc.getvalue()), dec, KEY, NONCE, chunk=999)
    assert dec.getvalue() == data


def test_file_stream_resume_at_offset() -> None:
    data = random.Random(3).randbytes(3000)
    full = CtrStream(KEY, NONCE).update(data)
    out = io.BytesIO()
    encrypt_file_stream(io.BytesIO(data[1234:]), out, KEY, NONCE, chunk=100, offset=1234)
    assert out.getvalue() == full[1234:]


def test_empty_file_stream() -> None:
    out = io.BytesIO()
    assert encrypt_file_stream(io.BytesIO(b""), out, KEY, NONCE) == 0
    assert out.getvalue() == b""


@pytest.mark.parametrize(
    "key, nonce, offset",
    [
        (bytes(16), NONCE, 0),
        (bytes(33), NONCE, 0),
        (KEY, bytes(12), 0),
        (KEY, bytes(16), 0),
        (KEY, NONCE, -1),
        (KEY, NONCE, MAX_STREAM_BYTES),
    ],
)
def test_bad_parameters_are_rejected(key: bytes, nonce: bytes, offset: int) -> None:
    with pytest.raises(InvalidParameter) as info:
        CtrStream(key, nonce, offset)
    assert isinstance(info.value, XcoreError) and isinstance(info.value, ValueError)


def test_stream_cannot_run_past_counter_space() -> None:
    stream = CtrStream(KEY, NONCE, MAX_STREAM_BYTES - 16)
    stream.update(bytes(16))
    with pytest.raises(InvalidParameter):
        stream.update(b"x")


def test_bad_chunk_size() -> None:
    with pytest.raises(InvalidParameter):
        encrypt_file_stream(io.BytesIO(b"x"), io.BytesIO(), KEY, NONCE, chunk=0)
