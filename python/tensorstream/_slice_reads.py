"""Reading slices of tensors: the reads :mod:`_slices` plans, for every tensor of a load, issued
with one ``Source.read_many`` call per source (one engine run; the shards of a checkpoint run side
by side), then each result built in a contiguous storage of its own. Also ``get_slice``'s object
and :func:`shard_plan`, the even split of tensors over tensor-parallel ranks.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from . import _arena, _dtypes, _loading, _native, _slices

__all__ = ["Item", "Fetched", "read", "TensorSlice", "shard_plan", "planned", "Plan"]

# plan(name, shape) -> an index (what this rank needs) or None (the whole tensor)
Plan = Callable[[Any, tuple[int, ...]], Any]


@dataclass(frozen=True)
class Item:
    """One tensor to read: its data starts at ``offset`` in ``source``."""

    key: Hashable
    source: Any
    offset: int
    rec: _loading.Record
    sel: _slices.Selection


@dataclass
class Fetched:
    """What a read cost: bytes and ranges requested from the sources, and the time it took."""

    bytes: int = 0
    ranges: int = 0
    seconds: float = 0.0


def whole(rec: _loading.Record) -> _slices.Selection:
    return _slices.select((), rec.shape)


def gap_for(source: Any) -> int:
    """How far apart two reads of ``source`` may lie and still be read as one."""
    remote = _native.HttpSource is not None and isinstance(source, _native.HttpSource)
    return _slices.REMOTE_GAP if remote else _slices.LOCAL_GAP


def read(items: Sequence[Item], *, pooled: bool) -> tuple[dict[Hashable, torch.Tensor], Fetched]:
    """The selections of ``items`` as CPU tensors, each contiguous and owning its storage.

    ``pooled``: results read straight into place share one fresh mapping (an eager load, see
    ``_arena``) instead of an allocation each.
    """
    start = time.perf_counter()
    out: dict[Hashable, torch.Tensor] = {}
    jobs = []
    for item in items:
        lay = _slices.layout(item.sel, item.rec.shape, item.rec.dtype.itemsize) if item.rec.nbytes else None
        if lay is None or not lay.size:
            fill = torch.zeros if item.rec.is_meta else torch.empty  # meta tensors load as zeros
            out[item.key] = fill(item.sel.shape, dtype=item.rec.dtype, device="cpu")
        else:
            jobs.append((item, lay))
    buffers = _buffers([lay for _, lay in jobs], pooled)
    by_source: dict[int, tuple[Any, list[tuple[int, int, Any]]]] = {}
    for (item, lay), buf in zip(jobs, buffers, strict=True):
        view = buf.numpy()
        reads = by_source.setdefault(id(item.source), (item.source, []))[1]
        reads.extend((item.offset + at, n, view[to:to + n]) for at, n, to in lay.reads)
    fetched = _run(list(by_source.values()))
    for (item, lay), buf in zip(jobs, buffers, strict=True):
        out[item.key] = _result(item, lay, buf)
    fetched.seconds = time.perf_counter() - start
    return out, fetched


def _buffers(layouts: Sequence[_slices.Layout], pooled: bool) -> list[torch.Tensor]:
    """A uint8 buffer per layout: results land in place (an arena slice each when ``pooled``),
    windows in a scratch allocation whose unread pages are never touched."""
    direct = [i for i, lay in enumerate(layouts) if lay.window is None]
    out: list[torch.Tensor | None] = [None] * len(layouts)
    if pooled and direct:
        offsets, size = _loading.layout([_Sized(layouts[i].size) for i in direct])
        for i, buf in zip(direct, _arena.slices([(o, layouts[i].size) for i, o in zip(direct, offsets)], size)):
            out[i] = buf
    return [b if b is not None else torch.empty(lay.size, dtype=torch.uint8) for b, lay in zip(out, layouts)]


@dataclass(frozen=True)
class _Sized:
    nbytes: int


def _run(per_source: list[tuple[Any, list[tuple[int, int, Any]]]]) -> Fetched:
    """Coalesce each source's reads and read them: one ``read_many`` per source, all at once."""
    plans = [(source, *_slices.coalesce(reads, gap_for(source))) for source, reads in per_source]
    fetched = Fetched(sum(b.nbytes for _, ranges, _ in plans for _, b in ranges), sum(len(r) for _, r, _ in plans))

    def one(plan: tuple[Any, list, list]) -> None:
        source, ranges, copies = plan
        _native.read_many(source, ranges)
        for dest, src in copies:
            dest[...] = src

    if len(plans) == 1:
        one(plans[0])
    elif plans:
        with ThreadPoolExecutor(max_workers=len(plans), thread_name_prefix="tensorstream-slices") as pool:
            for fut in [pool.submit(one, p) for p in plans]:
                fut.result()
    return fetched


def _result(item: Item, lay: _slices.Layout, buf: torch.Tensor) -> torch.Tensor:
    typed = buf.view(item.rec.dtype)
    if lay.window is None:
        return typed.view(item.sel.shape)
    picked = typed.view(lay.window)[lay.pick]
    return picked.clone(memory_format=torch.contiguous_format).reshape(item.sel.shape)


def planned(plan: Plan | None, records: Sequence[_loading.Record]) -> dict[Any, _slices.Selection]:
    """``{path: selection}`` for the records ``plan`` slices (None from it: the whole tensor).

    An index the plan gives is checked here, before anything is read; its error keeps its type
    (IndexError, ValueError, TypeError) and names the tensor.
    """
    if plan is None:
        return {}
    if not callable(plan):
        raise TypeError(f"slices must be a callable plan(name, shape) -> index or None, not {type(plan).__name__}")
    out = {}
    for rec in records:
        index = plan(rec.name, rec.shape)
        if index is None:
            continue
        try:
            out[rec.path] = _slices.select(index, rec.shape)
        except (IndexError, ValueError, TypeError) as exc:
            raise type(exc)(f"slices plan, tensor {rec.name!r} of shape {list(rec.shape)}: {exc}") from None
    return out


class TensorSlice:
    """``get_slice(name)``'s object: the stored shape and dtype now, bytes when indexed.

    ``slice[index]`` takes ints, slices with positive steps, ``...`` and ``None``, and reads only
    the bytes the index selects (see the deserializer's ``get_slice``).
    """

    def __init__(self, owner: Any, path: tuple) -> None:
        self._owner = owner
        self._path = path

    def get_shape(self) -> list[int]:
        """The shape of the stored tensor."""
        return list(self._owner._by_path[self._path].shape)

    def get_dtype(self) -> str:
        """The stored dtype, as safetensors names it (``"BF16"``)."""
        return _dtypes.safetensors_name(self._owner._by_path[self._path].dtype)

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self._owner._read_slice(self._path, index)


def shard_plan(rank: int, world_size: int, dim: int | Callable[[Any, tuple[int, ...]], int | None] = 0) -> Plan:
    """A plan giving rank ``rank`` of ``world_size`` its even part of each tensor along ``dim``.

    Parts follow ``torch.tensor_split``: sizes differ by at most one, the first ones larger, and
    the parts of ranks 0..world_size-1 concatenated along ``dim`` give the tensor back. An int
    ``dim`` (negative counts from the end) splits every tensor that has that dimension; tensors
    with fewer dimensions (biases, scalars) are read whole. ``dim`` may also be a rule
    ``dim(name, shape) -> int | None``: None reads that tensor whole, an int splits it there.
    """
    for label, value in (("rank", rank), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{label} must be an int, not {type(value).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) and world_size positive, not rank {rank} of {world_size}")
    if not callable(dim) and (not isinstance(dim, int) or isinstance(dim, bool)):
        raise TypeError(f"dim must be an int or a rule dim(name, shape), not {type(dim).__name__}")

    def plan(name: Any, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
        d = dim(name, shape) if callable(dim) else dim
        if d is None:
            return None
        d = operator.index(d)
        if not -len(shape) <= d < len(shape):
            if callable(dim):
                raise IndexError(f"dimension {d} is out of range for tensor {name!r} of shape {list(shape)}")
            return None
        d %= len(shape)
        part, rest = divmod(shape[d], world_size)
        lo = rank * part + min(rank, rest)
        return (slice(None),) * d + (slice(lo, lo + part + (rank < rest)),)

    return plan
