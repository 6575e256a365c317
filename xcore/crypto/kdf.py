"""Key derivation: per-file keys from the master secret, and the sealed master secret.

Everything here is derived under a domain-separation tag, so no two purposes
can ever share a key (DESIGN.md principle 5, STYLE.md "Crypto the Tahoe way").

* :func:`derive_file_key` and :func:`derive_subkey` are HKDF-SHA256 (RFC 5869)
  over the owner's 32-byte master secret, with ``info = tag || 0x00 || data``.
* :func:`seal_secret` / :func:`open_secret` protect the master secret at rest
  under a passphrase: Argon2id (libsodium ``crypto_pwhash``, via pynacl)
  stretches the passphrase into a key for XSalsa20-Poly1305
  (``nacl.secret.SecretBox``). A wrong passphrase fails the Poly1305 tag and
  raises :class:`~xcore.errors.DecryptionFailed`; it never returns garbage.

Sealed secret blob layout (version 1, all integers big-endian)::

    offset  size  field
    0       4     magic b"xcSK"
    4       1     version = 1
    5       4     Argon2id opslimit (u32)
    9       8     Argon2id memlimit in bytes (u64)
    17      16    Argon2id salt
    33      24    SecretBox nonce
    57      n+16  SecretBox ciphertext of the n-byte secret (Poly1305 tag first)

The Argon2 parameters and salt are not separately authenticated: changing any
of them changes the derived key, so the Poly1305 check fails (memlimit must be
a whole number of KiB, because libsodium ignores the remainder). ``open_secret``
bounds them (at most libsodium's SENSITIVE profile) before running Argon2, so
a hostile blob cannot make it allocate unbounded memory.

Argon2id cost: the production default is libsodium's MODERATE profile
(opslimit 3, memlimit 256 MiB, about 0.6 s on a laptop). The master secret
unlocks every file an owner has, it is unsealed rarely (node start, CLI
unlock) and a stolen blob can be attacked offline, so the slower profile is
worth it. :data:`ARGON2_INTERACTIVE` (64 MiB) is there for small devices;
:data:`ARGON2_FAST_INSECURE` (8 KiB, one pass) exists only for tests.
"""

from __future__ import annotations

import struct
import unicodedata
from dataclasses import dataclass
from typing import Callable

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from xcore.crypto.stream import KEY_SIZE, NONCE_SIZE
from xcore.errors import BadFormat, DecryptionFailed, InvalidParameter, XcoreError

MASTER_SIZE = 32
MIN_FILE_ID = 16
MAX_FILE_ID = 1024
MAX_SUBKEY = 255 * 32  # the HKDF-SHA256 output limit
FILE_KEY_TAG = b"xcore-file-key-v1"
FILE_NONCE_TAG = b"xcore-file-nonce-v1"
SUBKEY_TAG = b"xcore-subkey-v1"

SEAL_MAGIC = b"xcSK"
SEAL_VERSION = 1
_SEAL_HEADER = struct.Struct(">4sBIQ16s24s")
SEAL_HEADER_SIZE = _SEAL_HEADER.size  # 57
SEAL_OVERHEAD = SEAL_HEADER_SIZE + nacl.secret.SecretBox.MACBYTES
MAX_SECRET = 1024


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost parameters (libsodium ``opslimit`` and ``memlimit`` in bytes)."""

    opslimit: int
    memlimit: int

    def check(self) -> None:
        """Raise InvalidParameter unless both limits are in [MIN, SENSITIVE], memlimit in KiB."""
        if not argon2id.OPSLIMIT_MIN <= self.opslimit <= argon2id.OPSLIMIT_SENSITIVE:
            raise InvalidParameter(f"Argon2id opslimit {self.opslimit} out of range")
        if not argon2id.MEMLIMIT_MIN <= self.memlimit <= argon2id.MEMLIMIT_SENSITIVE:
            raise InvalidParameter(f"Argon2id memlimit {self.memlimit} out of range")
        if self.memlimit % 1024:
            # libsodium uses memlimit // 1024; whole KiB keep the header canonical,
            # so every header change changes the key.
            raise InvalidParameter(f"Argon2id memlimit {self.memlimit} is not a whole number of KiB")


ARGON2_MODERATE = Argon2Params(argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE)
ARGON2_INTERACTIVE = Argon2Params(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
ARGON2_FAST_INSECURE = Argon2Params(argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN)
DEFAULT_ARGON2 = ARGON2_MODERATE


def _hkdf(master: bytes, info: bytes, length: int) -> bytes:
    if len(master) < MASTER_SIZE:
        raise InvalidParameter(f"master secret must be at least {MASTER_SIZE} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
        bytes(master)
    )


def derive_file_key(master: bytes, file_id: bytes) -> tuple[bytes, bytes]:
    """The AES-256-CTR ``(key, nonce)`` of one upload: 32 and 8 bytes.

    ``file_id`` must be unique per upload (16 or more random bytes from the
    injected ``token_bytes``), never a file name: re-encrypting different
    content under the same key and nonce would leak the XOR of the two.
    """
    if not MIN_FILE_ID <= len(file_id) <= MAX_FILE_ID:
        raise InvalidParameter(
            f"file ID must be {MIN_FILE_ID}..{MAX_FILE_ID} bytes, got {len(file_id)}"
        )
    key = _hkdf(master, FILE_KEY_TAG + b"\x00" + file_id, KEY_SIZE)
    nonce = _hkdf(master, FILE_NONCE_TAG + b"\x00" + file_id, NONCE_SIZE)
    return key, nonce


def derive_subkey(master: bytes, purpose: bytes, length: int = 32) -> bytes:
    """A ``length``-byte key for ``purpose`` (e.g. ``b"bucket-index"``).

    ``purpose`` names what the key is for; different purposes give
    independent keys. Purposes ending in a version (``b"...-v1"``) let a
    format change its key.
    """
    if not purpose:
        raise InvalidParameter("subkey purpose must not be empty")
    if not 1 <= length <= MAX_SUBKEY:
        raise InvalidParameter(f"subkey length must be 1..{MAX_SUBKEY}, got {length}")
    return _hkdf(master, SUBKEY_TAG + b"\x00" + purpose, length)


def _passphrase_bytes(passphrase: str) -> bytes:
    # NFKC so the same passphrase typed on different systems gives one key.
    return unicodedata.normalize("NFKC", passphrase).encode("utf-8")


def _stretch(passphrase: str, salt: bytes, params: Argon2Params) -> bytes:
    try:
        return argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE,
            _passphrase_bytes(passphrase),
            salt,
            opslimit=params.opslimit,
            memlimit=params.memlimit,
        )
    except nacl.exceptions.CryptoError as e:
        raise XcoreError(f"Argon2id key derivation failed: {e}") from e


def seal_secret(
    secret: bytes,
    passphrase: str,
    *,
    token_bytes: Callable[[int], bytes],
    params: Argon2Params = DEFAULT_ARGON2,
) -> bytes:
    """Encrypt ``secret`` under ``passphrase``; return the version-1 blob.

    ``token_bytes`` supplies the salt and nonce (``secrets.token_bytes`` in
    production). ``params`` defaults to Argon2id MODERATE; tests pass
    :data:`ARGON2_FAST_INSECURE`.
    """
    if not 1 <= len(secret) <= MAX_SECRET:
        raise InvalidParameter(f"secret must be 1..{MAX_SECRET} bytes, got {len(secret)}")
    if not passphrase:
        raise InvalidParameter("passphrase must not be empty")
    params.check()
    salt = token_bytes(argon2id.SALTBYTES)
    nonce = token_bytes(nacl.secret.SecretBox.NONCE_SIZE)
    if len(salt) != argon2id.SALTBYTES or len(nonce) != nacl.secret.SecretBox.NONCE_SIZE:
        raise InvalidParameter("token_bytes returned the wrong number of bytes")
    key = _stretch(passphrase, salt, params)
    box = nacl.secret.SecretBox(key)
    ciphertext = box.encrypt(bytes(secret), nonce).ciphertext
    header = _SEAL_HEADER.pack(
        SEAL_MAGIC, SEAL_VERSION, params.opslimit, params.memlimit, salt, nonce
    )
    return header + ciphertext


def open_secret(blob: bytes, passphrase: str) -> bytes:
    """Decrypt a blob made by :func:`seal_secret`.

    Raises :class:`~xcore.errors.DecryptionFailed` for a wrong passphrase or
    tampered bytes, and :class:`~xcore.errors.BadFormat` for a blob that is
    truncated, too long, of another version or with out-of-range parameters.
    """
    if len(blob) < SEAL_OVERHEAD + 1:
        raise BadFormat(f"sealed secret is truncated ({len(blob)} bytes)")
    if len(blob) > SEAL_OVERHEAD + MAX_SECRET:
        raise BadFormat(f"sealed secret is too long ({len(blob)} bytes)")
    magic, version, opslimit, memlimit, salt, nonce = _SEAL_HEADER.unpack_from(blob)
    if magic != SEAL_MAGIC:
        raise BadFormat("not a sealed xcore secret (bad magic)")
    if version != SEAL_VERSION:
        raise BadFormat(f"unsupported sealed secret version {version}")
    params = Argon2Params(opslimit, memlimit)
    try:
        params.check()
    except InvalidParameter as e:
        raise BadFormat(f"sealed secret has out-of-range parameters: {e}") from e
    key = _stretch(passphrase, salt, params)
    try:
        return bytes(nacl.secret.SecretBox(key).decrypt(bytes(blob[SEAL_HEADER_SIZE:]), nonce))
    except nacl.exceptions.CryptoError as e:
        raise DecryptionFailed("wrong passphrase, or the sealed secret was tampered with") from e
