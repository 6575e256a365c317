"""The owner's keys and the keystore that holds them (DESIGN.md principles 5 and 7).

These are the keys of the person who owns files, not of the node that runs:
a node's identity (``identity.key``) can be thrown away, the owner's keys
cannot. Everything comes from one 32-byte master secret, which comes from the
24-word recovery phrase (:mod:`xcore.crypto.mnemonic`), so any machine with the
words derives the same keys::

    master            = master_secret_from_mnemonic(words)
    signing seed      = derive_subkey(master, b"owner-sign-v1")      Ed25519, signs the index record
    file (key, nonce) = derive_file_key(master, file_id)             AES-256-CTR of one upload
    box key(purpose)  = derive_subkey(master, b"owner-box-v1\\x00" + purpose)

The signing key has difficulty 0: it is never a DHT node ID, it only signs
the owner's records.

Small secret boxes (:meth:`OwnerKeys.seal` / :meth:`OwnerKeys.open`) are
XSalsa20-Poly1305 (``nacl.secret.SecretBox``) under the box key of a purpose.
The 24-byte nonce is synthetic: a keyed BLAKE2b of the plaintext under
``derive_subkey(master, b"owner-box-nonce-v1\\x00" + purpose)``. Sealing is
therefore deterministic and needs no randomness (the same plaintext gives the
same box, which only reveals that a blob did not change), and a nonce can
never repeat for two different plaintexts::

    box = nonce (24) || SecretBox ciphertext (16-byte Poly1305 tag || ciphertext)

Keystore file ``DATA/owner.key`` (mode 0600, written atomically)::

    offset  size  field
    0       4     magic b"xcOK"
    4       1     version = 1
    5       1     secret type: 1 = the 32 bytes of BIP-39 entropy of the phrase
    6       ...   sealed-secret blob of xcore.crypto.kdf.seal_secret (Argon2id + SecretBox,
                  carries its own version, Argon2 parameters, salt and nonce)

The keystore keeps the phrase's entropy rather than the master secret, so the
phrase itself can be shown again (:func:`reveal_mnemonic`).

Environment variables:

``XCORE_PASSPHRASE``
    The keystore passphrase; when it is unset :func:`get_passphrase` asks
    the injected prompt function.
``XCORE_ARGON2``
    Argon2id cost used when a keystore is *written*: ``moderate`` (default),
    ``interactive``, or ``fast``. ``fast`` is
    :data:`~xcore.crypto.kdf.ARGON2_FAST_INSECURE` and is for tests and demos
    only: a keystore sealed with it can be brute-forced cheaply. Reading a
    keystore always uses the parameters stored in it.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.secret

from xcore.crypto.identity import Identity
from xcore.crypto.kdf import (
    ARGON2_FAST_INSECURE,
    ARGON2_INTERACTIVE,
    ARGON2_MODERATE,
    DEFAULT_ARGON2,
    Argon2Params,
    derive_file_key,
    derive_subkey,
    open_secret,
    seal_secret,
)
from xcore.crypto.mnemonic import (
    ENTROPY_SIZE,
    entropy_from_mnemonic,
    master_secret_from_mnemonic,
    new_mnemonic,
)
from xcore.errors import (
    BadFormat,
    ConfigError,
    DecryptionFailed,
    InvalidParameter,
)
from xcore.fsutil import atomic_write

MASTER_SIZE = 32
SIGN_PURPOSE = b"owner-sign-v1"
BOX_TAG = b"owner-box-v1\x00"
BOX_NONCE_TAG = b"owner-box-nonce-v1\x00"
BOX_NONCE_SIZE = nacl.secret.SecretBox.NONCE_SIZE  # 24
BOX_OVERHEAD = BOX_NONCE_SIZE + nacl.secret.SecretBox.MACBYTES  # 40

KEYSTORE_NAME = "owner.key"
KEYSTORE_MAGIC = b"xcOK"
KEYSTORE_VERSION = 1
SECRET_ENTROPY = 1
_KEYSTORE_HEADER = struct.Struct(">4sBB")
MAX_KEYSTORE_BYTES = 4096

PASSPHRASE_ENV = "XCORE_PASSPHRASE"
ARGON2_ENV = "XCORE_ARGON2"
ARGON2_PROFILES: dict[str, Argon2Params] = {
    "moderate": ARGON2_MODERATE,
    "interactive": ARGON2_INTERACTIVE,
    "fast": ARGON2_FAST_INSECURE,  # tests and demos only
}


@dataclass(frozen=True, repr=False)
class OwnerKeys:
    """The owner's keys, all derived from the 32-byte master secret.

    Two ``OwnerKeys`` are equal when their master secrets are. ``repr`` shows
    only the public signing key, never a secret.
    """

    master: bytes
    signing: Identity = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.master, bytes) or len(self.master) != MASTER_SIZE:
            raise InvalidParameter(f"the owner's master secret must be {MASTER_SIZE} bytes")
        object.__setattr__(self, "signing", Identity(derive_subkey(self.master, SIGN_PURPOSE), 0))

    @classmethod
    def from_mnemonic(cls, words: str | Sequence[str]) -> OwnerKeys:
        """The keys of a recovery phrase; raises :class:`~xcore.errors.BadMnemonic`."""
        return cls(master_secret_from_mnemonic(words))

    @property
    def pubkey(self) -> bytes:
        """The owner's public signing key (32 bytes)."""
        return self.signing.pubkey

    def __repr__(self) -> str:
        return f"OwnerKeys(pubkey={self.pubkey.hex()})"

    def file_key(self, file_id: bytes) -> tuple[bytes, bytes]:
        """The AES-256-CTR ``(key, nonce)`` of the upload ``file_id`` (32 and 8 bytes)."""
        return derive_file_key(self.master, file_id)

    def box_key(self, purpose: bytes) -> bytes:
        """A 32-byte SecretBox key for ``purpose`` (e.g. ``b"index-v1"``)."""
        if not purpose:
            raise InvalidParameter("box key purpose must not be empty")
        return derive_subkey(self.master, BOX_TAG + purpose)

    def _nonce(self, purpose: bytes, plaintext: bytes) -> bytes:
        nonce_key = derive_subkey(self.master, BOX_NONCE_TAG + purpose)
        return hashlib.blake2b(plaintext, key=nonce_key, digest_size=BOX_NONCE_SIZE).digest()

    def seal(self, purpose: bytes, plaintext: bytes) -> bytes:
        """``nonce || SecretBox(plaintext)`` under :meth:`box_key` (deterministic)."""
        plaintext = bytes(plaintext)
        box = nacl.secret.SecretBox(self.box_key(purpose))
        nonce = self._nonce(purpose, plaintext)
        return nonce + box.encrypt(plaintext, nonce).ciphertext

    def open(self, purpose: bytes, boxed: bytes) -> bytes:
        """Undo :meth:`seal`; raises :class:`DecryptionFailed` for a wrong key or tampering."""
        if len(boxed) < BOX_OVERHEAD:
            raise DecryptionFailed("sealed data is truncated")
        box = nacl.secret.SecretBox(self.box_key(purpose))
        try:
            return bytes(box.decrypt(bytes(boxed[BOX_NONCE_SIZE:]), bytes(boxed[:BOX_NONCE_SIZE])))
        except nacl.exceptions.CryptoError as exc:
            raise DecryptionFailed(
                "sealed data does not open with this owner's key: another owner's data, "
                "or it was tampered with") from exc


# -- passphrase and Argon2 profile from the environment ------------------------


def get_passphrase(
    env: Mapping[str, str] = os.environ,
    prompt: Callable[[str], str] | None = None,
    *,
    confirm: bool = False,
) -> str:
    """The keystore passphrase: ``XCORE_PASSPHRASE`` if set, else ``prompt("Passphrase: ")``.

    ``prompt`` is injected (the CLI passes a hidden-input prompt). With
    ``confirm`` the prompt is asked twice and both answers must match, for
    creating a keystore. Raises :class:`ConfigError` when there is no way to
    get a passphrase or it is empty.
    """
    if PASSPHRASE_ENV in env:
        value = env[PASSPHRASE_ENV]
        if not value:
            raise ConfigError(f"{PASSPHRASE_ENV} is set but empty")
        return value
    if prompt is None:
        raise ConfigError(
            f"a passphrase is needed for the owner keystore: set {PASSPHRASE_ENV} "
            "or run interactively")
    value = prompt("Passphrase: ")
    if not value:
        raise ConfigError("the passphrase must not be empty")
    if confirm and prompt("Repeat passphrase: ") != value:
        raise ConfigError("the two passphrases do not match")
    return value


def argon2_params_from_env(env: Mapping[str, str] = os.environ) -> Argon2Params:
    """Argon2id cost for writing a keystore, from ``XCORE_ARGON2`` (see the module docstring).

    Unset or empty means the production default (MODERATE). ``fast`` is for
    tests and demos only.
    """
    name = env.get(ARGON2_ENV, "").strip().lower()
    if not name:
        return DEFAULT_ARGON2
    params = ARGON2_PROFILES.get(name)
    if params is None:
        raise ConfigError(
            f"{ARGON2_ENV}={env[ARGON2_ENV]!r} is not one of: "
            + ", ".join(sorted(ARGON2_PROFILES)))
    return params


# -- the keystore -------------------------------------------------------------


def keystore_path(data_dir: str | os.PathLike[str]) -> Path:
    """``DATA/owner.key``."""
    return Path(data_dir) / KEYSTORE_NAME


def keystore_exists(data_dir: str | os.PathLike[str]) -> bool:
    return keystore_path(data_dir).exists()


def _mnemonic_of(entropy: bytes) -> str:
    # new_mnemonic is the only public entropy -> words function; feed it the entropy.
    return new_mnemonic(lambda n: entropy[:n])


def _write_keystore(
    data_dir: str | os.PathLike[str],
    entropy: bytes,
    passphrase: str,
    *,
    token_bytes: Callable[[int], bytes],
    params: Argon2Params,
    force: bool,
) -> None:
    path = keystore_path(data_dir)
    if path.exists() and not force:
        raise ConfigError(
            f"an owner keystore already exists at {path}; replacing it loses access to every "
            "file of its recovery phrase unless you have the words (use --force to replace it)")
    sealed = seal_secret(entropy, passphrase, token_bytes=token_bytes, params=params)
    blob = _KEYSTORE_HEADER.pack(KEYSTORE_MAGIC, KEYSTORE_VERSION, SECRET_ENTROPY) + sealed
    atomic_write(path, blob, mode=0o600)


def create_keystore(
    data_dir: str | os.PathLike[str],
    passphrase: str,
    *,
    token_bytes: Callable[[int], bytes],
    params: Argon2Params = DEFAULT_ARGON2,
    force: bool = False,
) -> str:
    """Make a new recovery phrase, seal it under ``passphrase`` into ``DATA/owner.key``.

    Returns the 24-word phrase: the caller must show it to the owner once,
    it is the only way to recover the files on another machine. Refuses to
    overwrite an existing keystore (:class:`ConfigError`) unless ``force``.
    """
    words = new_mnemonic(token_bytes)
    _write_keystore(data_dir, entropy_from_mnemonic(words), passphrase,
                    token_bytes=token_bytes, params=params, force=force)
    return words


def import_keystore(
    data_dir: str | os.PathLike[str],
    mnemonic: str | Sequence[str],
    passphrase: str,
    *,
    token_bytes: Callable[[int], bytes],
    params: Argon2Params = DEFAULT_ARGON2,
    force: bool = False,
) -> OwnerKeys:
    """Seal an existing recovery phrase into ``DATA/owner.key``; return its keys.

    Raises :class:`~xcore.errors.BadMnemonic` for a bad phrase and
    :class:`ConfigError` if a keystore exists and ``force`` is false.
    """
    entropy = entropy_from_mnemonic(mnemonic)
    _write_keystore(data_dir, entropy, passphrase, token_bytes=token_bytes, params=params,
                    force=force)
    return OwnerKeys.from_mnemonic(mnemonic)


def _read_entropy(data_dir: str | os.PathLike[str], passphrase: str) -> bytes:
    path = keystore_path(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no owner keystore at {path}: run `xcore keys new --data {data_dir}` to create one, "
            f"or `xcore keys import --data {data_dir}` to restore it from your recovery phrase"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the owner keystore {path}: {exc.strerror}") from exc
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError(f"the owner keystore {path} is readable by other users; chmod 600 it")
    if len(raw) > MAX_KEYSTORE_BYTES or len(raw) < _KEYSTORE_HEADER.size:
        raise BadFormat(f"the owner keystore {path} is corrupt (size {len(raw)} bytes)")
    magic, version, kind = _KEYSTORE_HEADER.unpack_from(raw)
    if magic != KEYSTORE_MAGIC:
        raise BadFormat(f"{path} is not an xcore owner keystore")
    if version != KEYSTORE_VERSION:
        raise BadFormat(f"the owner keystore {path} has unsupported version {version}")
    if kind != SECRET_ENTROPY:
        raise BadFormat(f"the owner keystore {path} holds an unknown kind of secret ({kind})")
    try:
        entropy = open_secret(raw[_KEYSTORE_HEADER.size:], passphrase)
    except DecryptionFailed as exc:
        raise DecryptionFailed(
            f"wrong passphrase for the owner keystore {path} (or the file was tampered with)"
        ) from exc
    except BadFormat as exc:
        raise BadFormat(f"the owner keystore {path} is corrupt: {exc}") from exc
    if len(entropy) != ENTROPY_SIZE:
        raise BadFormat(f"the owner keystore {path} holds a secret of the wrong size")
    return entropy


def load_owner_keys(data_dir: str | os.PathLike[str], passphrase: str) -> OwnerKeys:
    """Unseal ``DATA/owner.key``.

    Raises :class:`ConfigError` if there is no keystore (naming the commands
    that make one), :class:`DecryptionFailed` for a wrong passphrase and
    :class:`BadFormat` for a corrupt file.
    """
    return OwnerKeys.from_mnemonic(_mnemonic_of(_read_entropy(data_dir, passphrase)))


def reveal_mnemonic(data_dir: str | os.PathLike[str], passphrase: str) -> str:
    """The recovery phrase sealed in ``DATA/owner.key`` (for ``xcore keys show``)."""
    return _mnemonic_of(_read_entropy(data_dir, passphrase))
