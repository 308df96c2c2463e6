"""Who reads what in a load across ranks: a pure plan, the same on every rank.

The selected tensors, in file order, are cut into one run of consecutive tensors per rank so
that each run holds about ``1/world`` of the data bytes (a run is a contiguous stretch of the
file, or of consecutive shards). Each run is cut again into batches of about ``batch_bytes``
(at least one tensor each). Round ``k`` of the exchange moves every rank's ``k``-th batch.

Every tensor has a place in one layout (``_loading.layout``: 64-byte aligned offsets), the
arena's for CPU loads; a batch's bytes are the layout range from its first data tensor's start
to its last one's end, which is what a CPU load broadcasts in one piece.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import _loading


@dataclass
class Plan:
    """``records`` in index order; ``offsets`` and ``size`` their layout; ``batches[rank][k]``
    the indices (into ``records``) that ``rank`` reads in round ``k``."""

    records: list[_loading.Record]
    offsets: list[int]
    size: int
    batches: list[list[list[int]]]
    rounds: int = field(init=False)

    def __post_init__(self) -> None:
        self.rounds = max((len(b) for b in self.batches), default=0)

    def batch(self, rank: int, k: int) -> list[int]:
        """The records ``rank`` reads in round ``k`` (empty once its run is done)."""
        mine = self.batches[rank]
        return mine[k] if k < len(mine) else []

    def span(self, indices: Sequence[int]) -> tuple[int, int] | None:
        """The layout range ``[lo, hi)`` of the data of ``indices`` (None when they hold none)."""
        data = [i for i in indices if self.records[i].nbytes]
        if not data:
            return None
        return self.offsets[data[0]], self.offsets[data[-1]] + self.records[data[-1]].nbytes

    def segments(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """``(record index, start, end)`` of the record bytes inside the layout range ``[lo, hi)``."""
        starts = self.offsets
        first = max(bisect.bisect_right(starts, lo) - 1, 0)
        out = []
        for i in range(first, len(self.records)):
            start, n = starts[i], self.records[i].nbytes
            if start >= hi:
                break
            a, b = max(lo, start), min(hi, start + n)
            if n and a < b:
                out.append((i, a - start, b - start))
        return out

    def bytes_of(self, rank: int) -> int:
        return sum(self.records[i].nbytes for batch in self.batches[rank] for i in batch)


def make(records: Sequence[_loading.Record], world: int, batch_bytes: int) -> Plan:
    """The plan for ``records`` (index order) over ``world`` ranks."""
    if world < 1 or batch_bytes < 1:
        raise ValueError(f"need at least one rank and one byte per batch, not {world} and {batch_bytes}")
    records = list(records)
    offsets, size = _loading.layout(records)
    cuts = split([r.nbytes for r in records], world)
    batches = [_batched(records, cuts[r], cuts[r + 1], batch_bytes) for r in range(world)]
    return Plan(records, offsets, size, batches)


def split(sizes: Sequence[int], world: int) -> list[int]:
    """``world + 1`` cut points: rank ``r`` owns items ``[cuts[r], cuts[r + 1])``, each run as
    close to ``sum / world`` bytes as whole items allow."""
    prefix = [0]
    for n in sizes:
        prefix.append(prefix[-1] + n)
    total = prefix[-1]
    cuts = [0]
    for r in range(1, world):
        target = total * r / world
        c = bisect.bisect_left(prefix, target)
        if c > 0 and (c > len(sizes) or target - prefix[c - 1] <= prefix[c] - target):
            c -= 1  # the cut below is at least as close
        cuts.append(min(max(c, cuts[-1]), len(sizes)))
    cuts.append(len(sizes))
    return cuts


def _batched(records: Sequence[_loading.Record], lo: int, hi: int, batch_bytes: int) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    held = 0
    for i in range(lo, hi):
        n = records[i].nbytes
        if current and held and held + n > batch_bytes:
            batches.append(current)
            current, held = [], 0
        current.append(i)
        held += n
    if current:
        batches.append(current)
    return batches


def fingerprint(records: Sequence[_loading.Record], *facts: object) -> bytes:
    """A digest of what a rank is about to load (names, types, shapes, sizes) and of ``facts``
    that must match across ranks (file size, format, settings)."""
    h = hashlib.sha256(repr(facts).encode())
    for r in records:
        h.update(repr((r.pos, r.path, r.tensor_type, str(r.dtype), r.shape, r.nbytes, r.is_meta)).encode())
    return h.digest()
