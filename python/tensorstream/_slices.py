"""Which bytes a slice of a tensor needs: the one planner behind every slice the package reads
(``get_slice(name)[...]``, ``safe_open``'s slices and ``slices=`` plans).

A tensor's data is row-major. :func:`select` turns an index (ints, slices with positive steps,
``...`` and ``None``, as safetensors' slices take them) into one ``range`` per dimension.
:func:`layout` turns that selection into reads of the tensor's data:

- everything after the last dimension not taken whole is one contiguous *run*, so a slice of
  the first dimension is a single read of whole rows, and a slice of a later dimension is one
  read per run, each landing at its place in the result (no copy afterwards);
- past ``MAX_RUNS`` runs, the span from the first selected byte to the last is read once into a
  window of the rows it covers, and the result is indexed out of it.

:func:`coalesce` then merges the reads of a whole load (every tensor of one source): reads closer
than ``gap`` bytes become one read into a bounce buffer of at most ``MERGE_SPAN`` bytes, copied
to their places afterwards; the others land straight in their destinations.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy
import torch

__all__ = ["Selection", "Layout", "select", "layout", "coalesce", "MAX_RUNS", "LOCAL_GAP", "REMOTE_GAP"]

MAX_RUNS = 4096  # reads of one tensor before its slice reads the span it covers once
LOCAL_GAP = 4 << 10  # a file or memory: skipping fewer bytes than a page costs more than reading them
REMOTE_GAP = 64 << 10  # HTTP / S3: one more range request costs about as much as this many bytes
MERGE_SPAN = 1 << 20  # the largest bounce buffer a merged read goes through


@dataclass(frozen=True)
class Selection:
    """What an index selects: one range per dimension of the tensor, and the result's shape
    (ints drop their dimension, ``None`` adds one of size 1)."""

    ranges: tuple[range, ...]
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(len(r) for r in self.ranges)

    def index(self) -> tuple[slice, ...]:
        """The selection as basic slices, to apply to the whole tensor with torch."""
        return tuple(slice(r.start, r.stop, r.step) for r in self.ranges)

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """The selection of the whole ``tensor``, in a contiguous storage of its own."""
        return tensor[self.index()].clone(memory_format=torch.contiguous_format).reshape(self.shape)


@dataclass(frozen=True)
class Layout:
    """The reads that fill a buffer of ``size`` bytes, ``(offset in the tensor's data, nbytes,
    offset in the buffer)``. With ``window`` None the buffer holds the result's bytes in order;
    otherwise it holds the rows ``window`` spans (a shape) and ``pick`` indexes the result out."""

    reads: list[tuple[int, int, int]]
    size: int
    window: tuple[int, ...] | None = None
    pick: tuple[slice, ...] = ()


def select(index: Any, shape: Sequence[int]) -> Selection:
    """The :class:`Selection` of ``index`` in a tensor of ``shape``.

    Errors as safetensors' slices give them: IndexError for an int out of range or more indices
    than dimensions, ValueError for a zero or negative step; TypeError for anything but ints,
    slices, ``...`` and ``None``.
    """
    items = list(index) if isinstance(index, tuple) else [index]
    dims = sum(1 for i in items if i is not None and i is not Ellipsis)
    ellipses = sum(1 for i in items if i is Ellipsis)
    if ellipses > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if dims > len(shape):
        raise IndexError(f"too many indices ({dims}) for a tensor of {len(shape)} dimension(s)")
    if ellipses:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (len(shape) - dims)
    else:
        items += [slice(None)] * (len(shape) - dims)
    ranges: list[range] = []
    out: list[int] = []
    for item in items:
        if item is None:
            out.append(1)
            continue
        dim, size = len(ranges), shape[len(ranges)]
        if isinstance(item, slice):
            r = _slice_range(item, size)
            out.append(len(r))
        else:
            at = _int_index(item, dim, size)
            r = range(at, at + 1)
        ranges.append(r)
    return Selection(tuple(ranges), tuple(out))


def _slice_range(item: slice, size: int) -> range:
    if item.step is not None and operator.index(item.step) == 0:
        raise ValueError("slice step cannot be zero")
    start, stop, step = item.indices(size)
    if step < 0:
        raise ValueError("slices with a negative step are not supported (step must be greater than zero)")
    return range(start, max(start, stop), step)


def _int_index(item: Any, dim: int, size: int) -> int:
    if isinstance(item, (bool, str, bytes)):
        raise TypeError(f"unsupported index {item!r}: use ints, slices, '...' and None")
    try:
        at = operator.index(item)
    except TypeError:
        raise TypeError(f"unsupported index {item!r}: use ints, slices, '...' and None") from None
    if not -size <= at < size:
        raise IndexError(f"index {at} is out of bounds for dimension {dim} with size {size}")
    return at % size


def layout(sel: Selection, shape: Sequence[int], itemsize: int, max_runs: int | None = None) -> Layout:
    """The reads of ``sel`` in a tensor of ``shape`` whose elements are ``itemsize`` bytes
    (at most ``max_runs`` runs, default ``MAX_RUNS``, before the window)."""
    max_runs = MAX_RUNS if max_runs is None else max_runs
    ranges = sel.ranges
    strides = [itemsize * math.prod(shape[d + 1:]) for d in range(len(shape))]
    total = itemsize * sel.numel
    if total == 0:
        return Layout([], 0)
    # k: the last dimension not taken whole; everything after it is one contiguous run.
    k = max((d for d, r in enumerate(ranges) if len(r) != shape[d]), default=-1)
    if k == -1:
        return Layout([(0, total, 0)], total)
    whole_k = ranges[k].step == 1
    run = strides[k] * (len(ranges[k]) if whole_k else 1)
    outer = list(ranges[:k]) + ([] if whole_k else [ranges[k]])
    count = math.prod(len(r) for r in outer)
    if count > max_runs:
        return _window(sel, shape, strides)
    starts = numpy.zeros(1, dtype=numpy.int64)
    for d, r in enumerate(outer):
        steps = numpy.arange(r.start, r.stop, r.step, dtype=numpy.int64) * strides[d]
        starts = (starts[:, None] + steps[None, :]).reshape(-1)
    if whole_k:
        starts += ranges[k].start * strides[k]
    return Layout([(int(s), run, i * run) for i, s in enumerate(starts.tolist())], total)


def _window(sel: Selection, shape: Sequence[int], strides: list[int]) -> Layout:
    """One read from the first selected byte to the last, into the rows of dimension 0 it spans."""
    first = sum(r[0] * s for r, s in zip(sel.ranges, strides, strict=True))
    end = sum(r[-1] * s for r, s in zip(sel.ranges, strides, strict=True)) + strides[-1]
    rows = sel.ranges[0]
    lo, hi = rows[0], rows[-1] + 1
    pick = (slice(0, hi - lo, rows.step), *sel.index()[1:])
    return Layout([(first, end - first, first - lo * strides[0])], (hi - lo) * strides[0], (hi - lo, *shape[1:]), pick)


def coalesce(
    reads: Sequence[tuple[int, int, Any]], gap: int, span: int = MERGE_SPAN
) -> tuple[list[tuple[int, Any]], list[tuple[Any, Any]]]:
    """Merge nearby reads of one source.

    ``reads``: ``(offset, nbytes, destination)``, each destination a writable uint8 numpy array
    of ``nbytes``. Returns the ranges to read, ``(offset, buffer)``, and the copies to make once
    they are read, ``(destination, bounce view)``: reads less than ``gap`` bytes apart are read
    as one range (at most ``span`` bytes) into a bounce buffer; a read alone goes straight into
    its destination.
    """
    groups: list[list[tuple[int, int, Any]]] = []
    end = 0
    for read in sorted(reads, key=lambda r: r[0]):
        offset, nbytes, _ = read
        if groups and offset - end <= gap and max(end, offset + nbytes) - groups[-1][0][0] <= span:
            groups[-1].append(read)
        else:
            groups.append([read])
            end = 0
        end = max(end, offset + nbytes)
    ranges: list[tuple[int, Any]] = []
    copies: list[tuple[Any, Any]] = []
    for group in groups:
        if len(group) == 1:
            ranges.append((group[0][0], group[0][2]))
            continue
        start = group[0][0]
        bounce = numpy.empty(max(o + n for o, n, _ in group) - start, dtype=numpy.uint8)
        ranges.append((start, bounce))
        copies.extend((dest, bounce[o - start:o - start + n]) for o, n, dest in group)
    return ranges, copies
