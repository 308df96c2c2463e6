"""An API shaped like the ``safetensors`` package's, over tensorstream's engine.

``safe_open(uri, framework="pt", device="cpu")`` opens a safetensors file, a sharded checkpoint
(an index.json, a folder or a prefix) or a tensorizer file, from a path, ``http(s)://`` or
``s3://``; nothing is read but the header(s) until a tensor is asked for. ``get_slice(name)[...]``
is the deserializer's (``_slices`` plans its reads): only the bytes the slice needs, whole rows for
a slice of the first dimension, one range per contiguous run otherwise (the span the selection
covers, read once, past ``MAX_RUNS`` runs). ``load_file(uri, device=...)`` is
``safetensors.torch.load_file``.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _device
from ._slice_reads import TensorSlice
from ._slices import MAX_RUNS
from .serialization import TensorDeserializer

__all__ = ["safe_open", "load_file", "MAX_RUNS"]



def load_file(uri: Any, device: _device.DeviceLike = "cpu", *, cache_dir: Any = None) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint as ``{name: tensor}``, as ``safetensors.torch.load_file``
    (``cache_dir``: as :class:`~tensorstream.TensorDeserializer`'s)."""
    with TensorDeserializer(uri, device=device, cache_dir=cache_dir) as d:
        return {name: d[name] for name in d.keys()}


class safe_open:  # noqa: N801 - the name safetensors gives it
    """A lazily read checkpoint; a context manager, as ``safetensors.safe_open``."""

    def __init__(self, uri: Any, framework: str = "pt", device: _device.DeviceLike = "cpu", *,
                 cache_dir: Any = None) -> None:
        if framework not in ("pt", "torch"):
            raise ValueError(f"framework {framework!r} is not supported: tensorstream builds torch tensors ('pt')")
        self._device = _device.resolve(device)
        self._d = TensorDeserializer(uri, device=self._device, lazy_load=True, cache_dir=cache_dir)
        self._name = self._d._source.name

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._d.close()

    def keys(self) -> list[str]:
        """The tensor names, sorted (as safetensors lists them)."""
        return sorted(self._d.keys())

    def metadata(self) -> dict[str, str] | None:
        """The ``__metadata__`` of the file (merged over shards); None when there is none."""
        return self._d.metadata or None

    def get_tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name``, read now; KeyError naming it if the checkpoint lacks it."""
        return self._d._take(self._path(name))

    def get_slice(self, name: str) -> TensorSlice:
        """A view of ``name`` that reads only what indexing it asks for."""
        return self._d.get_slice(self._path(name))

    def _path(self, name: str) -> tuple:
        if not isinstance(name, str) or (name,) not in self._d._by_path:
            raise KeyError(f"no tensor named {name!r} in {self._name}")
        return (name,)
