"""Turning index entries into CPU tensors: destinations, one core call, typed views.

An eager load puts every tensor into one anonymous mapping (the *arena*) advised for
transparent huge pages and never zero-filled by us: the core's reads are what fault the pages
in, so the memory is written once. Each tensor starts at a 64-byte boundary.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _dtypes, _names
from .errors import FormatError

ALIGN = 64
HUGE_PAGE = 2 << 20


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
    """Records for the index entries; FormatError on a bad name, dtype or length.

    Also refuses files whose tensors claim more bytes than the file holds (overlapping data) or
    meta tensors too large to materialise, so that no absurd allocation is attempted.
    """
    records = []
    data_bytes = meta_bytes = 0
    memory = _physical_memory()
    for pos, entry in enumerate(entries):
        path = _names.decode(entry.name)
        label = str(_names.public(path))
        dtype = _dtypes.decode(entry.dtype, label)
        shape = tuple(entry.shape)
        expected = 0 if entry.is_meta else math.prod(shape) * dtype.itemsize
        if entry.data_length != expected:
            raise FormatError(
                f"tensor {label!r}: {entry.data_length} data bytes, expected {expected} "
                f"for shape {shape} of {dtype}",
                tensor=label,
                field="data_length",
            )
        data_bytes += entry.data_length
        meta_bytes += math.prod(shape) * dtype.itemsize if entry.is_meta else 0
        if data_bytes > file_size:
            msg = f"tensor {label!r}: tensor data adds up to more than the file's {file_size} bytes"
            raise FormatError(msg, tensor=label, field="data_length")
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


def _layout(records: Sequence[Record]) -> tuple[list[int], int]:
    """64-byte aligned offsets of each record's data, and the arena size (2 MiB multiple)."""
    offsets, end = [], 0
    for rec in records:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + rec.nbytes
    return offsets, -(-end // HUGE_PAGE) * HUGE_PAGE


def _huge_pages() -> bool:
    """Whether eager loads advise their arena for transparent huge pages (TENSORSTREAM_HUGE_PAGES).

    Off by default: measured on a virtual machine that returns freed memory to its host, filling
    fresh memory advised for huge pages ran at half the speed of ordinary 4 KiB pages
    (see BENCHMARKS.md). Hosts where huge-page faults are cheap may gain by turning it on.
    """
    value = os.environ.get("TENSORSTREAM_HUGE_PAGES", "0").strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("", "0", "off", "false", "no"):
        return False
    raise ValueError(f"TENSORSTREAM_HUGE_PAGES must be 0 or 1 (or on/off), not {value!r}")


def arena(size: int) -> torch.Tensor:
    """``size`` bytes of fresh private anonymous memory as uint8, starting on a 2 MiB boundary.

    The mapping is one huge page longer than asked (older kernels do not align anonymous
    mappings); the untouched slack costs no memory. It is advised for huge pages, or against
    them, as ``_huge_pages()`` says, so that the kernel's THP mode does not decide alone.
    """
    region = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE" if _huge_pages() else "MADV_NOHUGEPAGE", None)
    if advice is not None:
        try:
            region.madvise(advice)
        except OSError:
            pass  # THP unavailable: ordinary pages still work
    whole = torch.frombuffer(region, dtype=torch.uint8)
    skip = -whole.data_ptr() % HUGE_PAGE
    return whole[skip : skip + size]


def _typed(raw: torch.Tensor, rec: Record) -> torch.Tensor:
    return raw.view(rec.dtype).view(rec.shape)


def _empty(rec: Record) -> torch.Tensor:
    """Meta tensors load as zeros; zero-element tensors as empty tensors."""
    if rec.is_meta:
        return torch.zeros(rec.shape, dtype=rec.dtype)
    return torch.empty(rec.shape, dtype=rec.dtype)


def load(
    loader: Any, index: Any, records: Sequence[Record], verify_hash: bool, *, pooled: bool
) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """Load ``records`` with one core call; ``{pos: tensor}`` and ``{pos: module_idx}``.

    The index does not carry module_idx; the core reads it from each per-tensor header.

    ``pooled`` puts all data in one arena (eager loads); otherwise each tensor gets its own
    allocation, so that it can be freed on its own (lazy loads).
    """
    with_data = [r for r in records if r.nbytes]
    pool = None
    if pooled:
        offsets, size = _layout(with_data)
        pool = arena(size) if size else None
        raws = [pool[off : off + r.nbytes] for off, r in zip(offsets, with_data, strict=True)]
    else:
        raws = [torch.empty(r.nbytes, dtype=torch.uint8) for r in with_data]
    requests = [(r.pos, raw.data_ptr(), r.nbytes) for r, raw in zip(with_data, raws, strict=True)]
    requests += [(r.pos, 0, 0) for r in records if not r.nbytes]
    requests.sort()
    try:
        module_idx = loader.load(index, requests, verify_hash)
    except BaseException:
        # A traceback the caller keeps holds this frame, not the memory or the loader (a closed
        # deserializer's file and connections close with it).
        pool = raws = loader = None
        raise
    out = {r.pos: _typed(raw, r) for r, raw in zip(with_data, raws, strict=True)}
    out.update((r.pos, _empty(r)) for r in records if not r.nbytes)
    return out, {pos: idx for (pos, _, _), idx in zip(requests, module_idx, strict=True)}
