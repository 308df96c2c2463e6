"""The one door to the compiled core (``tensorstream._core``).

Everything else in the package imports the core's types from here, so a change in the binding
shows up in one file.
"""

from __future__ import annotations

import atexit
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
ShardSource = _core.ShardSource
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
join_indexes = _core.join_indexes
resident_share = _core.resident_share
read_digests = _core.read_digests
derive_key = _core.derive_key
core_features = _core.features
settings = _core.settings
describe_settings = _core.describe_settings
configure = _core.configure
setting_overrides = _core.setting_overrides
runtime_info = _core.runtime_info
host_concurrency = getattr(_core, "host_concurrency", lambda: [])
close_idle_connections = getattr(_core, "close_idle_connections", lambda: 0)
shutdown_runtime = _core.shutdown_runtime
host_pool_info = _core.host_pool_info
release_pinned_memory = _core.release_pinned_memory

__all__ = [
    "host_concurrency",
    "close_idle_connections",
    "FileSource",
    "MemorySource",
    "ShardSource",
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
    "join_indexes",
    "resident_share",
    "read_digests",
    "derive_key",
    "core_features",
    "settings",
    "describe_settings",
    "configure",
    "setting_overrides",
    "runtime_info",
    "shutdown_runtime",
    "host_pool_info",
    "release_pinned_memory",
    "read_many",
]


def read_many(source: Any, ranges: list[tuple[int, Any]]) -> None:
    """Read every ``(offset, writable buffer)`` of ``ranges`` from ``source`` in one engine run
    (``Source.read_many``: parallel reads, the GIL released)."""
    source.read_many(ranges)


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

    @property
    def progress(self) -> int:
        """Data bytes the running (or last) load has read so far."""
        return self.core.progress


# The core's workers stop before the interpreter finalises: idle ones at once, one busy with a
# load in a daemon thread after its current chunk, or left to the exit after a short wait.
atexit.register(shutdown_runtime, 2.0)
# Idle ring slots are freed while the CUDA driver is still there (atexit runs last-in first-out,
# so this runs before the workers stop).
atexit.register(release_pinned_memory)
