"""Encryption at rest, compatible with tensorizer's.

``EncryptionParams`` goes to ``TensorSerializer(..., encryption=)`` and ``DecryptionParams`` to
``TensorDeserializer(..., encryption=)``, with tensorizer's names, constructors and defaults. Files
either library encrypts load in the other. Tensor data is encrypted with XSalsa20-Poly1305 in
2 MiB chunks, each with its own MAC; names, dtypes, shapes and hashes stay readable. Keys are
32 random bytes, 32 given bytes, or derived from a passphrase with Argon2id.

Keys and passphrases never appear in reprs or error messages.
"""

from __future__ import annotations

import enum
import secrets
from typing import Any

from . import _native
from .errors import CryptographyError, KeyRequiredError

__all__ = ["EncryptionParams", "DecryptionParams", "KEY_BYTES", "SALT_BYTES"]

KEY_BYTES = 32
SALT_BYTES = 16


def _exact_key(key: Any, what: str) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} key must be bytes; to derive one from a string use from_string()")
    key = bytes(key)
    if len(key) != KEY_BYTES:
        raise ValueError(f"{what} key must be {KEY_BYTES} bytes, not {len(key)}; to derive one from a string use from_string()")
    return key


def _secret_bytes(source: Any, encoding: str) -> bytes:
    if isinstance(source, str):
        source = source.encode(encoding)
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected str or bytes, not {type(source).__name__}")
    source = bytes(source)
    if not source:
        raise ValueError("the passphrase is empty")
    return source


class EncryptionParams:
    """How ``TensorSerializer`` encrypts: ``EncryptionParams.random()``, ``EncryptionParams(key)``
    with 32 bytes of your own, or ``EncryptionParams.from_string(passphrase)``.

    ``key`` holds the 32-byte key to keep for decryption (``DecryptionParams.from_key``).
    """

    __slots__ = ("_key", "_pwhash")

    class OpsLimit(enum.IntEnum):
        """Argon2id passes (libsodium's presets)."""

        MIN = 1
        INTERACTIVE = 2
        MODERATE = 3
        SENSITIVE = 4

    class MemLimit(enum.IntEnum):
        """Argon2id memory in bytes (libsodium's presets)."""

        MIN = 8192
        INTERACTIVE = 64 << 20
        MODERATE = 256 << 20
        SENSITIVE = 1 << 30

    def __init__(self, key: bytes) -> None:
        self._key = _exact_key(key, "encryption")
        self._pwhash: tuple[int, int, bytes] | None = None  # (opslimit, memlimit, salt)

    @classmethod
    def random(cls) -> EncryptionParams:
        """A fresh random key; save ``.key`` to decrypt later."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_string(
        cls,
        source: str | bytes,
        opslimit: int | None = None,
        memlimit: int | None = None,
        salt: str | bytes | None = None,
        *,
        encoding: str = "utf-8",
    ) -> EncryptionParams:
        """A key derived from ``source`` with Argon2id (v1.3), as tensorizer derives it.

        ``opslimit`` / ``memlimit`` default to ``MODERATE`` (3 passes, 256 MiB); tensorstream
        accepts up to 32 passes and 4 GiB. ``salt`` (16 bytes) defaults to a random one; it is
        stored in the file, so ``DecryptionParams.from_string(source)`` finds it again.
        """
        if isinstance(opslimit, EncryptionParams.MemLimit) or not isinstance(opslimit, (int, type(None))):
            raise TypeError(f"opslimit: expected EncryptionParams.OpsLimit, int or None, not {type(opslimit).__name__}")
        if isinstance(memlimit, EncryptionParams.OpsLimit) or not isinstance(memlimit, (int, type(None))):
            raise TypeError(f"memlimit: expected EncryptionParams.MemLimit, int or None, not {type(memlimit).__name__}")
        secret = _secret_bytes(source, encoding)
        ops = int(cls.OpsLimit.MODERATE if opslimit is None else opslimit)
        mem = int(cls.MemLimit.MODERATE if memlimit is None else memlimit)
        if salt is None:
            salt = secrets.token_bytes(SALT_BYTES)
        elif isinstance(salt, str):
            salt = salt.encode(encoding)
        if not isinstance(salt, (bytes, bytearray, memoryview)):
            raise TypeError(f"salt must be str or bytes, not {type(salt).__name__}")
        salt = bytes(salt)
        if len(salt) != SALT_BYTES:
            raise ValueError(f"salt must be {SALT_BYTES} bytes, not {len(salt)}")
        params = cls(_native.derive_key(secret, salt, ops, mem))
        params._pwhash = (ops, mem, salt)
        return params

    @property
    def key(self) -> bytes:
        """The 32-byte key."""
        return self._key

    @property
    def salt(self) -> bytes:
        """The key-derivation salt (stored in the file); ValueError for exact keys."""
        if self._pwhash is None:
            raise ValueError("an exact key is in use: it was not derived, so it has no salt")
        return self._pwhash[2]

    def __repr__(self) -> str:
        if self._pwhash is None:
            return "EncryptionParams(<exact key>)"
        ops, mem, _ = self._pwhash
        return f"EncryptionParams(<key from a passphrase>, opslimit={ops}, memlimit={mem})"


class DecryptionParams:
    """How ``TensorDeserializer`` decrypts: ``DecryptionParams.from_key(key)`` (fast) or
    ``DecryptionParams.from_string(passphrase)`` (the key is derived again with the parameters
    stored in the file, once per distinct set).
    """

    __slots__ = ("_key", "_source")

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._source: bytes | None = None

    @classmethod
    def from_key(cls, key: bytes) -> DecryptionParams:
        """Decrypt with an exact 32-byte key (``EncryptionParams.key``)."""
        if not key:
            raise ValueError("the key is empty")
        params = cls()
        params._key = _exact_key(key, "decryption")
        return params

    @classmethod
    def from_string(cls, source: str | bytes, *, encoding: str = "utf-8") -> DecryptionParams:
        """Decrypt with the passphrase given to ``EncryptionParams.from_string``."""
        params = cls()
        params._source = _secret_bytes(source, encoding)
        return params

    @property
    def key(self) -> bytes | None:
        """The exact key, or None when decrypting with a passphrase."""
        return self._key

    @property
    def source(self) -> bytes | None:
        """The passphrase, or None when decrypting with an exact key."""
        return self._source

    def __repr__(self) -> str:
        kind = "<exact key>" if self._key is not None else "<passphrase>" if self._source is not None else "<empty>"
        return f"DecryptionParams({kind})"


# ---------------------------------------------------------------------------------------------
# Used by serialization.py


def writing_params(params: Any) -> EncryptionParams | None:
    """``encryption=`` of TensorSerializer, checked; TypeError for anything else."""
    if params is None or isinstance(params, EncryptionParams):
        return params
    raise TypeError(f"encryption: expected tensorstream.EncryptionParams or None, not {type(params).__name__}")


def apply_to_writer(writer: Any, params: EncryptionParams | None) -> None:
    if params is None:
        return
    if params._pwhash is None:
        writer.set_encryption(params.key)
    else:
        ops, mem, salt = params._pwhash
        writer.set_encryption(params.key, opslimit=ops, memlimit=mem, salt=salt)


def reading_params(params: Any) -> DecryptionParams | None:
    """``encryption=`` of TensorDeserializer: ours, or tensorizer's DecryptionParams (same fields)."""
    if params is None or isinstance(params, DecryptionParams):
        return params
    if type(params).__name__ == "DecryptionParams" and hasattr(params, "key") and hasattr(params, "source"):
        if params.key is not None:
            return DecryptionParams.from_key(params.key)
        if params.source is not None:
            return DecryptionParams.from_string(params.source)
    raise TypeError(f"encryption: expected tensorstream.DecryptionParams or None, not {type(params).__name__}")


def check_file(encrypted: bool, params: DecryptionParams | None, name: str) -> None:
    """Refuse an encrypted file without a key, and a key for a file that is not encrypted."""
    if encrypted and params is None:
        raise KeyRequiredError(f"{name} is encrypted; pass encryption=DecryptionParams... with its key to load it")
    if not encrypted and params is not None:
        raise CryptographyError(f"{name} is not encrypted, but decryption was asked for; load it with encryption=None")


def apply_to_loader(loader: Any, params: DecryptionParams | None) -> None:
    if params is None:
        return
    if params.key is not None:
        loader.set_decryption(key=params.key)
    elif params.source is not None:
        loader.set_decryption(passphrase=params.source)
    else:
        raise ValueError("DecryptionParams holds neither a key nor a passphrase; use from_key() or from_string()")
