"""tensorstream: save PyTorch tensors in tensorizer's ``.tensors`` format and load them fast.

``TensorSerializer`` / ``TensorDeserializer`` follow tensorizer's API; ``save``, ``load`` and
``load_module`` are the short forms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import metadata as _metadata
from typing import Any

import torch

from . import _cache, encryption, stream_io, utils
from ._device import DeviceLike
from ._native import core_features as _core_features
from ._native import close_idle_connections, release_pinned_memory
from ._native import host_pool_info as _host_pool_info
from ._native import runtime_info as _runtime_info
from ._settings import configure, configured
from ._settings import describe as _describe_settings
from .errors import (
    AuthenticationError,
    CryptographyError,
    CudaError,
    CudaUnavailableError,
    FormatError,
    HashMismatchError,
    KeyRequiredError,
    LoadCancelled,
    NetworkError,
    NotFoundError,
    RankFailedError,
    TensorstreamError,
)
from .encryption import DecryptionParams, EncryptionParams
from .serialization import TensorDeserializer, TensorSerializer, TensorType
from ._slice_reads import TensorSlice, shard_plan
from . import safetensors
from .safetensors import safe_open
from .convert import convert  # the function: ``tensorstream.convert(src, dst, to=...)``

try:
    __version__ = _metadata.version("tensorstream")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "TensorSerializer",
    "TensorDeserializer",
    "TensorType",
    "EncryptionParams",
    "DecryptionParams",
    "TensorstreamError",
    "FormatError",
    "HashMismatchError",
    "CryptographyError",
    "KeyRequiredError",
    "LoadCancelled",
    "NetworkError",
    "AuthenticationError",
    "NotFoundError",
    "RankFailedError",
    "CudaError",
    "CudaUnavailableError",
    "save",
    "load",
    "load_module",
    "safe_open",
    "shard_plan",
    "TensorSlice",
    "convert",
    "safetensors",
    "features",
    "release_pinned_memory",
    "close_idle_connections",
    "configure",
    "configured",
    "utils",
    "stream_io",
    "encryption",
    "__version__",
]


def save(module_or_state_dict: torch.nn.Module | Mapping | Sequence, path: Any) -> None:
    """Save a module (``write_module``) or a possibly nested dict / list of tensors."""
    with TensorSerializer(path) as serializer:
        if isinstance(module_or_state_dict, torch.nn.Module):
            serializer.write_module(module_or_state_dict)
        else:
            serializer.write_state_dict(module_or_state_dict)


def load(path: Any, device: DeviceLike = None, **kwargs: Any) -> Any:
    """All tensors of a file: ``{name: tensor}``, or the nested dicts / lists it was saved from.

    ``kwargs`` go to :class:`TensorDeserializer` (``filter_func``, ``dtype``, ``verify_hash``,
    ``slices=shard_plan(rank, world_size)`` for one tensor-parallel rank's part, ``cache_dir``...);
    ``process_group=`` shares the reading among the ranks of a ``torch.distributed`` group (each
    rank reads a part and the group exchanges the rest; see the deserializer).
    """
    with TensorDeserializer(path, device=device, **kwargs) as deserializer:
        return deserializer.tree(default={})


def load_module(
    path: Any,
    module_class_or_factory: Callable[[], torch.nn.Module],
    device: DeviceLike = None,
    *,
    strict: bool = True,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build a module without initialising its weights, then fill it from ``path``.

    ``module_class_or_factory`` is called with no arguments (a class, or e.g.
    ``lambda: Model(config)``) inside :func:`utils.no_init_or_tensor`. Strict by default: raises
    RuntimeError if the file and the module do not hold the same parameters and buffers with the
    same shapes. ``strict=False`` loads as tensorizer's ``load_into_module`` does (the file's
    tensors are registered or replace the module's); a tensor the file lacks and the module left
    unallocated is still an error. ``kwargs`` go to :class:`TensorDeserializer` (``cache_dir``...);
    ``process_group=`` (in ``kwargs``) loads across the ranks of a ``torch.distributed`` group, as in
    :class:`TensorDeserializer`.
    """
    module = utils.no_init_or_tensor(module_class_or_factory)
    with TensorDeserializer(path, device=device, **kwargs) as deserializer:
        deserializer.load_into_module(module, strict=strict)
    left = [name for name, t in _named_tensors(module) if t.is_meta]
    if left:
        raise RuntimeError(f"not in the file, still unallocated after loading: {', '.join(left[:8])}")
    return module


def _named_tensors(module: torch.nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def features() -> dict[str, Any]:
    """What this build and machine support: io_uring (and why not), default engine, threads.

    ``settings`` maps each setting's keyword to its value in effect; ``settings_origin`` says
    where each came from (``default``, ``environment`` or ``configure``). ``cache`` shows the
    local cache's variables (``TENSORSTREAM_CACHE_*``, read by the package, not the core).
    ``runtime`` is what this process keeps (read workers, io_uring rings) and ``pinned_pool`` its
    pool of ring slots (blocks made and freed, bytes in use and idle; see
    :func:`release_pinned_memory`).
    """
    out = dict(_core_features())
    listed = _describe_settings()
    out["settings"] = {s["key"]: s["value"] for s in listed}
    out["settings_origin"] = {s["key"]: s["origin"] for s in listed}
    out["cache"] = _cache.from_env()
    out["runtime"] = _runtime_info()
    out["pinned_pool"] = _host_pool_info()
    return out
