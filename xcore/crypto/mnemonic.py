"""Owner recovery phrases: 24 BIP-39 English words carrying 256 bits of entropy.

The phrase is the owner's only root of trust: from it comes the master
secret, and from that every file key and the bucket index key, so
``xcore ls`` works on any machine that has the words (DESIGN.md principle 7).

Derivation (version 1)::

    entropy       = BIP-39 to_entropy(words)          32 bytes, checksum verified
    master_secret = HKDF-SHA256(ikm=entropy, salt=none,
                                info=b"xcore-master-v1", length=32)

The BIP-39 seed (PBKDF2 over the words) is not used: the entropy is already
uniform, so HKDF alone is enough, and the tag keeps xcore's key apart from
any wallet that might reuse the same words.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mnemonic import Mnemonic

from xcore.errors import BadMnemonic, InvalidParameter

WORDS = 24
ENTROPY_SIZE = 32
MASTER_SIZE = 32
MASTER_TAG = b"xcore-master-v1"

_bip39 = Mnemonic("english")
_wordset = frozenset(_bip39.wordlist)


def new_mnemonic(token_bytes: Callable[[int], bytes]) -> str:
    """A fresh 24-word phrase from 32 bytes of ``token_bytes`` (``secrets.token_bytes``)."""
    entropy = token_bytes(ENTROPY_SIZE)
    if len(entropy) != ENTROPY_SIZE:
        raise InvalidParameter("token_bytes returned the wrong number of bytes")
    return str(_bip39.to_mnemonic(bytes(entropy)))


def _words(words: str | Sequence[str]) -> list[str]:
    text = words if isinstance(words, str) else " ".join(words)
    return unicodedata.normalize("NFKD", text).lower().split()


def validate_mnemonic(words: str | Sequence[str]) -> str:
    """Check a phrase; return it normalized (lower case, single spaces).

    Extra whitespace and upper case are forgiven. Raises
    :class:`~xcore.errors.BadMnemonic` naming the problem: wrong word count,
    words not in the BIP-39 English list (with their positions), or a failed
    checksum (usually a mistyped or swapped word).
    """
    parts = _words(words)
    if len(parts) != WORDS:
        raise BadMnemonic(f"a recovery phrase has {WORDS} words, got {len(parts)}")
    unknown = [f"{i + 1}:{w!r}" for i, w in enumerate(parts) if w not in _wordset]
    if unknown:
        raise BadMnemonic("not BIP-39 English words: " + ", ".join(unknown))
    phrase = " ".join(parts)
    if not _bip39.check(phrase):
        raise BadMnemonic("the recovery phrase checksum is wrong: check each word and the order")
    return phrase


def entropy_from_mnemonic(words: str | Sequence[str]) -> bytes:
    """The 32 bytes of entropy a valid phrase encodes."""
    phrase = validate_mnemonic(words)
    try:
        return bytes(_bip39.to_entropy(phrase))
    except (ValueError, LookupError) as e:  # unreachable after validation; be safe
        raise BadMnemonic(str(e)) from e


def master_secret_from_mnemonic(words: str | Sequence[str]) -> bytes:
    """The owner's 32-byte master secret (see the module docstring)."""
    entropy = entropy_from_mnemonic(words)
    return HKDF(algorithm=hashes.SHA256(), length=MASTER_SIZE, salt=None, info=MASTER_TAG).derive(
        entropy
    )
