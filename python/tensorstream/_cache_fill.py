"""Filling a cache entry's partial file from the remote: byte ranges, and one engine run for them.

The partial file has the remote's size from the start (sparse until filled). Missing ranges are
reserved on disk (``posix_fallocate``: a full disk is an OSError here, never a SIGBUS later),
mapped shared, and handed to the core's parallel range engine, so the bytes go from the network
into the page cache once. Ranges are recorded only after they are written and synced.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Sequence
from typing import Any

from . import _native

Span = tuple[int, int]  # [start, end)


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-empty, non-overlapping spans covering the same bytes (adjacent ones joined)."""
    out: list[list[int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def missing(have: Sequence[Span], wanted: Iterable[Span]) -> list[Span]:
    """The parts of ``wanted`` that ``have`` (merged) does not cover, merged."""
    gaps: list[Span] = []
    i = 0  # both lists are sorted: the spans of ``have`` before a wanted span are never looked at again
    for start, end in merge(wanted):
        at = start
        while i < len(have) and have[i][1] <= at:
            i += 1
        for a, b in have[i:]:
            if a >= end:
                break
            if a > at:
                gaps.append((at, a))
            at = max(at, b)
            if at >= end:
                break
        if at < end:
            gaps.append((at, end))
    return merge(gaps)


def covers(have: Sequence[Span], size: int) -> bool:
    return not missing(have, [(0, size)])


def fetch_into(fd: int, size: int, remote: Any, gaps: Sequence[Span]) -> None:
    """Reads ``gaps`` of ``remote`` into the file ``fd`` (of ``size`` bytes) and syncs them."""
    if not gaps:
        return
    for start, end in gaps:
        os.posix_fallocate(fd, start, end - start)
    mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        whole = memoryview(mapping)
        views = [whole[start:end] for start, end in gaps]
        try:
            _native.read_many(remote, [(start, view) for (start, _), view in zip(gaps, views, strict=True)])
        finally:
            for view in views:
                view.release()
            whole.release()
    finally:
        mapping.close()
    os.fdatasync(fd)
