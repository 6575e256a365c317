"""AES-256-CTR streams: the client's whole-file encryption (DESIGN.md principle 5).

The file is encrypted as one CTR stream before it is cut into segments, so
any byte range can be decrypted on its own: :class:`CtrStream` can start at
any byte ``offset``.

Counter block layout (16 bytes, as AES-CTR sees it)::

    offset  size  field
    0       8     nonce         per-file, from xcore.crypto.kdf.derive_file_key
    8       8     block counter big-endian, 0 for file bytes 0..15, 1 for 16..31, ...

so byte ``i`` of the file is XORed with byte ``i % 16`` of
AES-256(key, nonce || be64(i // 16)). The counter starts at zero and a stream
is limited to 2**64 blocks (2**68 bytes), so it never carries into the nonce.

CTR gives confidentiality only, not integrity: integrity comes from the
content addressing of shares (SHA-256 names) and the encrypted manifest.
A (key, nonce) pair must never encrypt two different plaintexts; keys are
derived per upload from a fresh file ID (see :mod:`xcore.crypto.kdf`).
"""

from __future__ import annotations

from typing import BinaryIO, Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from xcore.errors import InvalidParameter

KEY_SIZE = 32
NONCE_SIZE = 8
BLOCK_SIZE = 16
MAX_STREAM_BYTES = (1 << 64) * BLOCK_SIZE
DEFAULT_CHUNK = 1 << 20  # 1 MiB: bounded memory for encrypt_file_stream


class CtrStream:
    """An AES-256-CTR keystream positioned at byte ``offset`` of the stream.

    ``update`` encrypts or decrypts (the same operation in CTR mode) the next
    bytes of the stream and returns as many bytes as it was given.
    """

    __slots__ = ("_ctx", "_position")

    def __init__(self, key: bytes, nonce: bytes, offset: int = 0) -> None:
        if len(key) != KEY_SIZE:
            raise InvalidParameter(f"AES-256-CTR key must be {KEY_SIZE} bytes, got {len(key)}")
        if len(nonce) != NONCE_SIZE:
            raise InvalidParameter(f"CTR nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
        if not 0 <= offset < MAX_STREAM_BYTES:
            raise InvalidParameter(f"stream offset {offset} out of range")
        block, skip = divmod(offset, BLOCK_SIZE)
        initial = bytes(nonce) + block.to_bytes(8, "big")
        self._ctx = Cipher(algorithms.AES(bytes(key)), modes.CTR(initial)).encryptor()
        if skip:
            # Consume the start of the first block so the next byte lines up.
            self._ctx.update(bytes(skip))
        self._position = offset

    @property
    def position(self) -> int:
        """The stream offset of the next byte ``update`` will process."""
        return self._position

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """XOR ``data`` with the keystream at the current position and advance."""
        end = self._position + len(data)
        if end > MAX_STREAM_BYTES:
            raise InvalidParameter("CTR stream longer than 2**68 bytes")
        out = self._ctx.update(data)
        self._position = end
        return out


def encrypt_file_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    nonce: bytes,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
    *,
    offset: int = 0,
) -> int:
    """Encrypt ``src`` into ``dst`` chunk by chunk; return the byte count.

    Memory stays at about one ``chunk``. ``progress``, when given, is called
    after each chunk with the total number of bytes done so far. ``offset`` is
    the stream position of the first byte of ``src`` (for resuming). CTR is
    symmetric, so this also decrypts (see :func:`decrypt_file_stream`).
    """
    if chunk <= 0:
        raise InvalidParameter(f"chunk size must be positive, got {chunk}")
    stream = CtrStream(key, nonce, offset)
    done = 0
    while True:
        data = src.read(chunk)
        if not data:
            return done
        dst.write(stream.update(data))
        done += len(data)
        if progress is not None:
            progress(done)


decrypt_file_stream = encrypt_file_stream
