"""An API shaped like the ``safetensors`` package's, over tensorstream's engine.

``safe_open(uri, framework="pt", device="cpu")`` opens a safetensors file, a sharded checkpoint
(an index.json, a folder or a prefix) or a tensorizer file, from a path, ``http(s)://`` or
``s3://``; nothing is read but the header(s) until a tensor is asked for. ``get_slice(name)[...]``
reads only the bytes the slice needs: whole rows for a slice of the first dimension, one
range per contiguous run otherwise (the rows spanned, read once, when runs would number more
than ``MAX_RUNS``). ``load_file(uri, device=...)`` is ``safetensors.torch.load_file``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from . import _device
from .serialization import TensorDeserializer

__all__ = ["safe_open", "load_file", "MAX_RUNS"]

MAX_RUNS = 1024

_NAMES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.uint16: "U16", torch.int16: "I16",
    torch.float16: "F16", torch.bfloat16: "BF16", torch.uint32: "U32", torch.int32: "I32", torch.float32: "F32",
    torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.complex64: "C64",
}
for _torch_name, _name in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
                           ("float8_e4m3fnuz", "F8_E4M3FNUZ"), ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
                           ("float8_e8m0fnu", "F8_E8M0")):
    if isinstance(getattr(torch, _torch_name, None), torch.dtype):
        _NAMES[getattr(torch, _torch_name)] = _name


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

    def get_slice(self, name: str) -> _Slice:
        """A view of ``name`` that reads only what indexing it asks for."""
        return _Slice(self, self._path(name))

    def _path(self, name: str) -> tuple:
        if not isinstance(name, str) or (name,) not in self._d._by_path:
            raise KeyError(f"no tensor named {name!r} in {self._name}")
        return (name,)


class _Slice:
    """``get_slice``'s object: shape and dtype now, bytes when indexed."""

    def __init__(self, owner: safe_open, path: tuple) -> None:
        self._owner = owner
        self._path = path

    def _record(self) -> Any:
        return self._owner._d._by_path[self._path]

    def get_shape(self) -> list[int]:
        return list(self._record().shape)

    def get_dtype(self) -> str:
        dtype = self._record().dtype
        return _NAMES.get(dtype, str(dtype))

    def __getitem__(self, index: Any) -> torch.Tensor:
        source, offset, rec = self._owner._d._data_location(self._path)
        ranges, drop = _normalize(index, rec.shape)
        host = _read(source, offset, rec, ranges)
        out = host.view(rec.dtype).reshape([len(r) for r in ranges])
        if drop:
            out = out[tuple(0 if d else slice(None) for d in drop)]
        return out.to(self._owner._device) if self._owner._device.type != "cpu" else out


def _normalize(index: Any, shape: tuple[int, ...]) -> tuple[list[range], list[bool]]:
    """One range per dimension, and which dimensions an int index drops."""
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(1 for i in items if i is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (len(shape) - len(items) + 1)
    if len(items) > len(shape):
        raise IndexError(f"too many indices ({len(items)}) for a tensor of {len(shape)} dimension(s)")
    items += [slice(None)] * (len(shape) - len(items))
    ranges, drop = [], []
    for dim, (item, size) in enumerate(zip(items, shape, strict=True)):
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step <= 0:
                raise ValueError("slices with a negative or zero step are not supported")
            ranges.append(range(start, max(start, stop), step))
            drop.append(False)
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -size <= item < size:
                raise IndexError(f"index {item} is out of range for dimension {dim} of size {size}")
            ranges.append(range(item % size, item % size + 1))
            drop.append(True)
        else:
            raise TypeError(f"unsupported index {item!r}: use ints, slices and '...'")
    return ranges, drop


def _read(source: Any, offset: int, rec: Any, ranges: list[range]) -> torch.Tensor:
    """The selected elements' bytes, in row-major order, read straight from ``source``."""
    shape = rec.shape
    item = rec.dtype.itemsize
    strides = [item * math.prod(shape[d + 1:]) for d in range(len(shape))]
    total = item * math.prod(len(r) for r in ranges)
    out = torch.empty(total, dtype=torch.uint8)
    if total == 0:
        return out
    # k: the last dimension that is not taken whole; everything after it is one contiguous run.
    k = max((d for d, r in enumerate(ranges) if len(r) != shape[d]), default=-1)
    if k == -1:
        source.read_into(offset, out.numpy())
        return out
    whole_k = ranges[k].step == 1
    run = strides[k] * (len(ranges[k]) if whole_k else 1)
    outer = ranges[:k] + ([] if whole_k else [ranges[k]])
    count = math.prod(len(r) for r in outer)
    if count > MAX_RUNS:
        return _read_rows(source, offset, rec, ranges, strides)
    view = out.numpy()
    at = 0
    for starts in itertools.product(*outer):
        pos = offset + sum(s * strides[d] for d, s in enumerate(starts))
        if whole_k:
            pos += ranges[k].start * strides[k]
        source.read_into(pos, view[at:at + run])
        at += run
    return out


def _read_rows(source: Any, offset: int, rec: Any, ranges: list[range], strides: list[int]) -> torch.Tensor:
    """The rows of the first dimension that the selection spans, read at once, then indexed."""
    first, last = ranges[0][0], ranges[0][-1] + 1
    buf = torch.empty((last - first) * strides[0], dtype=torch.uint8)
    source.read_into(offset + first * strides[0], buf.numpy())
    rows = buf.view(rec.dtype).reshape((last - first, *rec.shape[1:]))
    index = (slice(0, last - first, ranges[0].step), *(slice(r.start, r.stop, r.step) for r in ranges[1:]))
    return rows[index].contiguous().view(torch.uint8).reshape(-1)

