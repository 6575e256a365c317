"""The one error hierarchy of xcore.

Each class's docstring is the message a user sees when it reaches the CLI
(``cli.py`` prints ``str(error)`` or, when that is empty, the docstring).

A bad packet from a peer never reaches a caller as an exception: the protocol
cores catch :class:`RemoteProtocolError`, count the drop and go on.
"""

from __future__ import annotations


class XcoreError(Exception):
    """Something went wrong in xcore."""

    def __str__(self) -> str:
        text = super().__str__()
        if text:
            return text
        doc = (type(self).__doc__ or type(self).__name__).strip()
        return doc.splitlines()[0]


class LocalProtocolError(XcoreError):
    """This node tried to do something the protocol does not allow."""


class RemoteProtocolError(XcoreError):
    """A peer sent something malformed or out of protocol."""


class MessageTooLarge(RemoteProtocolError):
    """A message or frame is larger than the protocol allows."""


class BadSignature(RemoteProtocolError):
    """A signature or MAC did not verify."""


class BadIdentity(RemoteProtocolError):
    """A node ID does not match its key or does not meet the ID puzzle."""


class RecordRejected(XcoreError):
    """A DHT record was rejected (bad signature, unknown kind, expired, stale or too large)."""


class LookupFailed(XcoreError):
    """A DHT lookup found nothing."""


class NotFound(LookupFailed):
    """No record under that key was found in the network."""


class NoPeers(XcoreError):
    """No peers could be reached: check the bootstrap nodes and the network."""


class ConfigError(XcoreError):
    """The node's configuration or data directory is missing or invalid."""


class NodeNotRunning(XcoreError):
    """No node is running on that data directory."""


class DecryptionFailed(XcoreError):
    """Decryption failed: wrong passphrase or key, or the data was tampered with."""


class ShareCorrupted(XcoreError):
    """A share's bytes do not match its hash."""


class NotEnoughShares(XcoreError):
    """Too few good shares could be fetched to rebuild the data."""


class ClaimLapsed(XcoreError):
    """Our repair claim expired while we worked (this node was stalled): another
    holder may have taken over, so the repair stops and starts over."""


class CapacityExceeded(XcoreError):
    """The host has no room for this share within the capacity it offers."""


class DiskFull(CapacityExceeded):
    """The disk is full: the share was not stored and nothing partial was left."""


class Timeout(XcoreError):
    """The operation timed out."""


class InvalidParameter(XcoreError, ValueError):
    """A key, nonce, size, index or other parameter is out of range."""


class BadShareName(InvalidParameter):
    """A share name is not a SHA-256 hash (32 bytes or 64 lowercase hex characters)."""


class BadMnemonic(XcoreError):
    """The recovery phrase is not a valid 24-word BIP-39 English mnemonic."""


class BadFormat(XcoreError):
    """Stored data is malformed, truncated or of an unsupported format version."""


class StorageIOError(XcoreError):
    """The share store could not read or write its files."""


class ShareNotFound(NotFound):
    """This host does not hold that share."""


class ContractEnded(XcoreError):
    """The owner ended this storage contract early (it deleted the share)."""
