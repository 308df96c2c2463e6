"""The one door to the compiled core (``tensorstream._core``).

Everything else in the package imports the core's types from here, so a change in the binding
shows up in one file.
"""

from __future__ import annotations

from typing import Any

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "tensorstream's compiled core (tensorstream._core) could not be imported; "
        "reinstall the package so that it is built for this Python"
    ) from exc

FileSource = _core.FileSource
MemorySource = _core.MemorySource
# None when the core was built without libcurl.
HttpSource = getattr(_core, "HttpSource", None)
SigV4Signer = getattr(_core, "SigV4Signer", None)
MultipartUpload = getattr(_core, "MultipartUpload", None)
multipart_writer = getattr(_core, "multipart_writer", None)
Loader = _core.Loader
DeviceLoader = _core.DeviceLoader
PinnedBuffer = _core.PinnedBuffer
cuda_driver = _core.cuda_driver
Writer = _core.Writer
read_index = _core.read_index
read_digests = _core.read_digests
derive_key = _core.derive_key
core_features = _core.features

__all__ = [
    "FileSource",
    "MemorySource",
    "HttpSource",
    "SigV4Signer",
    "MultipartUpload",
    "multipart_writer",
    "Loader",
    "DeviceLoader",
    "PinnedBuffer",
    "cuda_driver",
    "Writer",
    "read_index",
    "read_digests",
    "derive_key",
    "core_features",
]


class CoreWrapper:
    """Base of the Python loaders that wrap a core loader (``self.core``): what the deserializer
    asks of every loader besides ``load``."""

    core: Any

    def stats(self) -> dict[str, Any]:
        return self.core.stats()

    def digests(self) -> list[Any]:
        return self.core.digests()

    def cancel(self) -> None:
        self.core.cancel()

    @property
    def cancelled(self) -> bool:
        return self.core.cancelled
