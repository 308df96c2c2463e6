"""Turning index entries into CPU tensors: destinations, one core call, typed views.

An eager load puts every tensor into one anonymous mapping (the arena, ``_arena``), never
zero-filled by us: the core's reads are what fault the pages in, so the memory is written once.
Each tensor starts at a 64-byte boundary and owns a storage of its own bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _arena, _dtypes, _names
from .errors import FormatError

ALIGN = 64


@dataclass(frozen=True)
class Record:
    """One tensor of a file, decoded from its index entry."""

    pos: int  # position in the index
    path: _names.Path
    tensor_type: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int  # bytes of data in the file
    is_meta: bool

    @property
    def name(self) -> _names.PublicName:
        return _names.public(self.path)


def describe(entries: Sequence[Any], file_size: int) -> list[Record]:
    """Records for the index entries, which the core's parser decoded and checked (names as paths,
    dtypes, lengths against shapes, overlaps, name clashes): nothing here reads the file's bytes.

    Refuses meta tensors too large to materialise, so that no absurd allocation is attempted, and
    dtypes this torch lacks.
    """
    records = []
    meta_bytes = 0
    memory = _physical_memory()
    for pos, entry in enumerate(entries):
        path = tuple(entry.path)
        label = str(_names.public(path))
        dtype = _dtypes.by_name(entry.torch_dtype, label)
        shape = tuple(entry.shape)
        meta_bytes += math.prod(shape) * dtype.itemsize if entry.is_meta else 0
        if meta_bytes > memory:
            msg = f"tensor {label!r}: meta tensors would need {meta_bytes} bytes of zeros, more than this machine has"
            raise FormatError(msg, tensor=label, field="shape")
        records.append(Record(pos, path, entry.tensor_type, dtype, shape, entry.data_length, entry.is_meta))
    return records


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


def layout(records: Sequence[Record], align: int = ALIGN) -> tuple[list[int], int]:
    """``align``-byte aligned offsets of each record's data, and where the last one ends."""
    offsets, end = [], 0
    for rec in records:
        start = -(-end // align) * align
        offsets.append(start)
        end = start + rec.nbytes
    return offsets, end


def typed(raw: torch.Tensor, rec: Record) -> torch.Tensor:
    """The record's tensor over ``raw``, its uint8 bytes."""
    return raw.view(rec.dtype).view(rec.shape)


def empty(rec: Record, device: torch.device | str = "cpu") -> torch.Tensor:
    """Meta tensors load as zeros; zero-element tensors as empty tensors. The device is always
    explicit, so that a caller's ``torch.device(...)`` context or default device does not move
    host buffers."""
    if rec.is_meta:
        return torch.zeros(rec.shape, dtype=rec.dtype, device=device)
    return torch.empty(rec.shape, dtype=rec.dtype, device=device)


def load(
    loader: Any, index: Any, records: Sequence[Record], verify_hash: bool, *, pooled: bool
) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """Load ``records`` with one core call; ``{pos: tensor}`` and ``{pos: module_idx}``.

    The index does not carry module_idx; the core reads it from each per-tensor header.

    ``pooled`` puts all data in one arena (eager loads: see ``_arena``); otherwise each tensor
    gets an allocation from torch (lazy loads). Either way each tensor owns a storage of exactly
    its own bytes.
    """
    with_data = [r for r in records if r.nbytes]
    if pooled:
        offsets, size = layout(with_data)
        spans = [(off, r.nbytes) for off, r in zip(offsets, with_data, strict=True)]
        raws = _arena.slices(spans, size) if spans else []
    else:
        raws = [torch.empty(r.nbytes, dtype=torch.uint8, device="cpu") for r in with_data]
    requests = plan(records, with_data, raws)
    try:
        module_idx = loader.load(index, requests, verify_hash)
    except BaseException:
        # A traceback the caller keeps holds this frame, not the memory or the loader (a closed
        # deserializer's file and connections close with it).
        raws = loader = None
        raise
    return results(records, with_data, raws, requests, module_idx)


def plan(records: Sequence[Record], with_data: Sequence[Record], raws: Sequence[torch.Tensor]) -> list[tuple]:
    """The core's requests, ``(pos, address, nbytes)`` in index order: data records at their
    ``raws`` buffer, the others with no data."""
    requests = [(r.pos, raw.data_ptr(), r.nbytes) for r, raw in zip(with_data, raws, strict=True)]
    requests += [(r.pos, 0, 0) for r in records if not r.nbytes]
    requests.sort()
    return requests


def results(
    records: Sequence[Record],
    with_data: Sequence[Record],
    raws: Sequence[torch.Tensor],
    requests: Sequence[tuple],
    module_idx: Sequence[int],
    device: torch.device | str = "cpu",
) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """``{pos: tensor}`` and ``{pos: module_idx}`` once the core has filled (or checked) ``raws``."""
    out = {r.pos: typed(raw, r) for r, raw in zip(with_data, raws, strict=True)}
    out.update((r.pos, empty(r, device)) for r in records if not r.nbytes)
    return out, {pos: idx for (pos, _, _), idx in zip(requests, module_idx, strict=True)}
