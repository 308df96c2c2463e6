"""Exception types raised by tensorstream.

The compiled core raises these same classes (its bindings import this module), so a malformed
file is always a :class:`FormatError`, whichever layer noticed it.
"""

from __future__ import annotations

__all__ = [
    "TensorstreamError",
    "FormatError",
    "HashMismatchError",
    "CryptographyError",
    "KeyRequiredError",
    "NetworkError",
    "AuthenticationError",
    "NotFoundError",
    "LoadCancelled",
    "CudaError",
    "CudaUnavailableError",
    "RankFailedError",
]


class TensorstreamError(Exception):
    """Base class of every tensorstream-specific error."""


class FormatError(TensorstreamError, ValueError):
    """A file breaks the ``.tensors`` format.

    ``tensor`` names the tensor concerned (None for file-level fields) and ``field`` the
    header or index field that is wrong (None when no single field is to blame).
    """

    def __init__(self, message: str, tensor: str | None = None, field: str | None = None):
        super().__init__(message)
        self.tensor = tensor
        self.field = field

    def __reduce__(self):
        return (type(self), (str(self), self.tensor, self.field))


class HashMismatchError(TensorstreamError):
    """A tensor's data does not match the CRC32 / SHA-256 stored in its header."""

    def __init__(self, message: str, tensor: str | None = None):
        super().__init__(message)
        self.tensor = tensor

    def __reduce__(self):
        return (type(self), (str(self), self.tensor))


class CryptographyError(TensorstreamError):
    """Encryption or decryption failed or is misconfigured.

    A wrong key or altered data (a MAC that does not match) raises this, naming the file and
    ``tensor`` (None when no single tensor is concerned). Messages never carry key material.
    """

    def __init__(self, message: str, tensor: str | None = None):
        super().__init__(message)
        self.tensor = tensor

    def __reduce__(self):
        return (type(self), (str(self), self.tensor))


class KeyRequiredError(CryptographyError):
    """The file is encrypted and no key was given."""


class NetworkError(TensorstreamError, OSError):
    """An HTTP(S) transfer failed for good (after its retries, or at once for errors like 404).

    ``url`` is the URL without credentials or query, ``status`` the last HTTP status (None when no
    reply arrived) and ``attempts`` how many requests were made for the failing range.
    """

    def __init__(self, message: str, url: Optional[str] = None, status: Optional[int] = None, attempts: int = 0):
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return (type(self), (str(self), self.url, self.status, self.attempts))


class AuthenticationError(NetworkError, PermissionError):
    """The server refused the credentials (HTTP 401 or 403): a wrong or expired key, a missing
    session token, or no permission for the object. Also a :class:`PermissionError`."""


class NotFoundError(NetworkError, FileNotFoundError):
    """The URL or S3 object does not exist (HTTP 404: no such key or bucket). Also a
    :class:`FileNotFoundError`."""


class LoadCancelled(TensorstreamError):
    """A load was stopped before its end: the deserializer was closed from another thread while
    it loaded (or its core loader was cancelled). Nothing from that load is handed out; by the
    time this is raised the core has stopped writing and its memory is released.

    Ctrl-C during a load raises :class:`KeyboardInterrupt` as usual, not this.
    """


class CudaError(TensorstreamError, RuntimeError):
    """A CUDA driver call failed while loading to a GPU.

    ``code`` is the driver's result code (``CUresult``), or None when the failure is not one.
    """

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code

    def __reduce__(self):
        return (type(self), (str(self), self.code))


class CudaUnavailableError(CudaError):
    """Loading to a GPU was asked for, but CUDA cannot be used here: no NVIDIA driver
    (``libcuda.so.1``), no such device, or a driver that fails to start. The message says which."""


class RankFailedError(TensorstreamError):
    """A load across the ranks of a process group (``process_group=``) failed on at least one rank.

    It is raised on every rank of the group, so that no rank waits for bytes that will not come.
    ``rank`` is the first failing rank of the group (None when it cannot be told: a rank that left
    without a word while the group exchanged data), ``failures`` maps each failing rank to its
    error as ``"TypeName: message"``, and ``error_type`` is the type name of ``rank``'s error
    (``"HashMismatchError"``, ``"NotFoundError"``...; None when unknown). On a failing rank the
    local error is also the ``__cause__``.
    """

    def __init__(self, message: str, rank: int | None = None, failures: dict[int, str] | None = None,
                 error_type: str | None = None):
        super().__init__(message)
        self.rank = rank
        self.failures = dict(failures or {})
        self.error_type = error_type

    def __reduce__(self):
        return (type(self), (str(self), self.rank, self.failures, self.error_type))
