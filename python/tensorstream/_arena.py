"""The eager-load arena: one anonymous mapping, handed out as one storage per tensor.

An eager load reads every tensor into one fresh private anonymous mapping, so the reads fault
each page in once and nothing is copied twice. Callers still get what tensorizer and safetensors
give them: each tensor owns a storage of exactly its own bytes (``torch.save`` of one tensor
writes that tensor, storage-based tie detection sees separate tensors). Each storage is a
``memoryview`` slice of the mapping, which keeps the mapping alive; when a tensor's storage is
freed, the whole pages that lie inside its bytes are handed back to the kernel
(``MADV_DONTNEED``) while its neighbours stay, and the mapping goes once the last one is freed.
"""

from __future__ import annotations

import mmap
import weakref
from collections.abc import Sequence

import torch

from . import _settings

HUGE_PAGE = 2 << 20
PAGE = mmap.PAGESIZE

# id(weakref) -> (the weakref, the mapping, first whole page, length): what to give back when
# a slice dies. Module-level, so that the entries live exactly as long as their slices.
_live: dict[int, tuple[weakref.ref, mmap.mmap, int, int]] = {}


def _released(ref: weakref.ref) -> None:
    entry = _live.pop(id(ref), None)
    if entry is None:
        return
    _, region, start, length = entry
    try:
        region.madvise(mmap.MADV_DONTNEED, start, length)
    except (OSError, ValueError):
        pass  # the pages go with the mapping instead


def huge_pages() -> bool:
    """Whether eager loads advise their arena for transparent huge pages (TENSORSTREAM_HUGE_PAGES).

    Off by default: measured on a virtual machine that returns freed memory to its host, filling
    fresh memory advised for huge pages ran at half the speed of ordinary 4 KiB pages
    (see BENCHMARKS.md). Hosts where huge-page faults are cheap may gain by turning it on.
    """
    return bool(_settings.get("huge_pages"))


def _region(size: int) -> tuple[mmap.mmap, int]:
    """A fresh mapping holding ``size`` bytes from a 2 MiB boundary, and the offset of that boundary.

    The mapping is one huge page longer than asked (older kernels do not align anonymous
    mappings); the untouched slack costs no memory. It is advised for huge pages, or against
    them, as ``huge_pages()`` says, so that the kernel's THP mode does not decide alone.
    """
    region = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE" if huge_pages() else "MADV_NOHUGEPAGE", None)
    if advice is not None:
        try:
            region.madvise(advice)
        except OSError:
            pass  # THP unavailable: ordinary pages still work
    probe = torch.frombuffer(region, dtype=torch.uint8, count=1)
    return region, -probe.data_ptr() % HUGE_PAGE


def slices(spans: Sequence[tuple[int, int]], size: int) -> list[torch.Tensor]:
    """One uint8 tensor with a storage of its own for each ``(offset, nbytes)`` of a fresh arena
    of ``size`` bytes; offsets are relative to a 2 MiB boundary."""
    region, base = _region(-(-size // HUGE_PAGE) * HUGE_PAGE)
    return slices_of(region, base, spans)


def slices_and_whole(spans: Sequence[tuple[int, int]], size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """As :func:`slices`, and one uint8 tensor over the arena's first ``size`` bytes (offsets as
    in ``spans``), for moving ranges that span several slices; dropping it frees nothing early."""
    region, base = _region(-(-size // HUGE_PAGE) * HUGE_PAGE)
    whole = torch.frombuffer(memoryview(region)[base:base + size], dtype=torch.uint8)
    return slices_of(region, base, spans), whole


def slices_of(region: mmap.mmap, base: int, spans: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """One uint8 tensor with a storage of its own for each ``(offset, nbytes)`` of ``region``,
    offsets counted from ``base``; ``nbytes`` must be positive. The whole pages inside a tensor
    go back to the kernel when it is freed; ``region`` lives as long as any of them."""
    whole = memoryview(region)
    out = []
    for offset, nbytes in spans:
        lo, hi = base + offset, base + offset + nbytes
        view = whole[lo:hi]
        first, last = -(-lo // PAGE) * PAGE, hi // PAGE * PAGE
        if last > first:  # whole pages of its own, to give back when it is freed
            ref = weakref.ref(view, _released)
            _live[id(ref)] = (ref, region, first, last - first)
        out.append(torch.frombuffer(view, dtype=torch.uint8))
    whole.release()
    return out
