"""A load shared by the ranks of a process group: each rank reads its share, the group exchanges.

Every rank allocates all the destinations of a plain load, reads its own run of tensors with
ordinary core calls (so hashes are checked and data decrypted where it is read), batch by batch
in a reader thread, and in round ``k`` every rank broadcasts its ``k``-th batch to the others
while the reader fetches batch ``k + 1``. Before each round the ranks agree (``_group``) that
every batch of the round was read; a failure anywhere stops every rank there.

Moves, by where tensors land:

- CPU (``_loading``'s arena): a batch is one contiguous range of the arena, broadcast in place
  (pieces of at most ``MESSAGE_BYTES``): no staging memory and no copy besides the network's.
- GPU / per-tensor destinations: a piece holding part of one tensor is broadcast in place; small
  tensors are packed into one staging buffer of at most ``STAGE_BYTES`` on the group's device
  (the GPU for NCCL; host memory for gloo), broadcast, and unpacked on the receivers.

Owners broadcast rather than ``all_gather`` padded blocks: shares differ in size (whole tensors),
so padded blocks would move padding and need a staging copy on every rank, while a broadcast
lands straight in each destination. NCCL and gloo both pipeline a broadcast of a large buffer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from . import _arena, _coop_plan, _group, _loading, _ring, _shards
from .errors import LoadCancelled

logger = logging.getLogger("tensorstream")

BATCH_BYTES = 64 << 20  # each rank reads this much per round (at least one tensor)
MESSAGE_BYTES = 64 << 20  # largest single broadcast
STAGE_BYTES = 32 << 20  # staging for packed small tensors (per-tensor destinations)


class CoopLoader:
    """Wraps the loader of a plain load (one file's, or a sharded checkpoint's) for a team."""

    def __init__(self, inner: Any, team: _group.Team, device: torch.device) -> None:
        self.inner = inner
        self.team = team
        self.device = device
        self.batch_bytes = BATCH_BYTES
        sharded = isinstance(inner, _shards.ShardedLoader)
        self.core_loader = inner.parts[0] if sharded else inner  # one loader, of every shard if sharded
        self.whole_index = inner.whole_index if sharded else None  # the shards' indexes joined
        self.in_arena = not isinstance(self.core_loader, _ring.RingLoader)
        self._stats: dict[str, Any] = {}
        self._digests: list[Any] = []
        self._lock = threading.Lock()  # figures added from the reading thread, read from others
        self.placed = 0  # bytes in place on this rank: read here or received
        self.received = 0
        self.exchange_seconds = 0.0

    @property
    def backend(self) -> str:
        return self.inner.backend

    def set_decryption(self, **kwargs: Any) -> None:
        self.inner.set_decryption(**kwargs)

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def digests(self) -> list[Any]:
        return list(self._digests)

    def cancel(self) -> None:
        self.inner.cancel()

    @property
    def cancelled(self) -> bool:
        return self.inner.cancelled

    @property
    def progress(self) -> int:
        return self.placed

    def facts(self) -> tuple:
        """What must match across ranks besides the tensors (see ``_coop_plan.fingerprint``)."""
        return self.team.size, self.batch_bytes, MESSAGE_BYTES, STAGE_BYTES, self.in_arena

    def _add(self, stats: dict[str, Any], digests: list[Any]) -> None:
        with self._lock:
            for key, value in stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._stats[key] = self._stats.get(key, 0) + value
            self._digests.extend(digests)


def load(
    loader: CoopLoader, index: Any, records: Sequence[_loading.Record], verify_hash: bool, *, pooled: bool
) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """As :func:`_loading.load`, with the bytes read once across ``loader.team`` and exchanged."""
    team = loader.team
    plan = _coop_plan.make(records, team.size, loader.batch_bytes)
    raws: list[torch.Tensor | None] = []
    whole = stage = None
    failure: BaseException | None = None
    try:
        raws, whole = _destinations(loader, plan)
        if whole is None and plan.size:
            stage = torch.empty(min(STAGE_BYTES, plan.size), dtype=torch.uint8, device=team.device)
    except Exception as exc:
        failure = exc
    team.agree(failure, "allocating the destinations")
    reader = _Reader(loader, index, plan, raws, verify_hash)
    mover = _Mover(loader, plan, raws, whole, stage)
    start = time.perf_counter()
    try:
        for k in range(plan.rounds):
            team.agree(reader.wait(k), f"reading round {k + 1} of {plan.rounds}")
            mover.round(k)
        module_idx = _all_module_indexes(team, plan, reader.module_idx)
    except BaseException:
        loader.cancel()
        raise
    finally:
        reader.stop()
    loader.exchange_seconds += time.perf_counter() - start
    whole = stage = mover = None
    logger.info("rank %d of %d read %.1f MB, received %.1f MB in %d rounds", team.rank, team.size,
                plan.bytes_of(team.rank) / 1e6, loader.received / 1e6, plan.rounds)
    tensors = {r.pos: _loading.typed(raw, r) for r, raw in zip(plan.records, raws, strict=True) if raw is not None}
    tensors.update((r.pos, _loading.empty(r, loader.device)) for r in plan.records if not r.nbytes)
    return tensors, module_idx


def _destinations(loader: CoopLoader, plan: _coop_plan.Plan) -> tuple[list[torch.Tensor | None], Any]:
    """One uint8 buffer per record with data (None for the others), each with a storage of its
    own; for the arena, also one tensor over the whole layout (to broadcast ranges of it)."""
    data = [i for i, r in enumerate(plan.records) if r.nbytes]
    raws: list[torch.Tensor | None] = [None] * len(plan.records)
    if not data:
        return raws, None
    if loader.in_arena:
        spans = [(plan.offsets[i], plan.records[i].nbytes) for i in data]
        slices, whole = _arena.slices_and_whole(spans, plan.size)
        for i, raw in zip(data, slices, strict=True):
            raws[i] = raw
        return raws, whole
    for i in data:
        raws[i] = torch.empty(plan.records[i].nbytes, dtype=torch.uint8, device=loader.device)
    if loader.device.type == "cuda":
        torch.cuda.current_stream(loader.device).synchronize()  # as in _ring.load
    return raws, None


class _Reader:
    """Reads this rank's batches in order, in a thread; ``wait(k)`` gives batch ``k``'s error or None."""

    def __init__(self, loader: CoopLoader, index: Any, plan: _coop_plan.Plan, raws: list, verify: bool) -> None:
        self.loader, self.index, self.plan, self.raws, self.verify = loader, index, plan, raws, verify
        self.mine = plan.batches[loader.team.rank]
        self.module_idx: dict[int, int] = {}
        self.done: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tensorstream-coop-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for k, batch in enumerate(self.mine):
            if self._stopping:
                self.done.put((k, LoadCancelled("the load across ranks stopped")))
                return
            try:
                self._read(batch)
            except BaseException as exc:  # handed to the main thread, which tells the group
                self.done.put((k, exc))
                return
            self.done.put((k, None))

    def _read(self, batch: list[int]) -> None:
        records = [self.plan.records[i] for i in batch]
        raws = [self.raws[i] for i in batch if self.raws[i] is not None]
        with_data = [r for r in records if r.nbytes]
        requests = _loading.plan(records, with_data, raws)
        module_idx = _fill(self.loader, self.index, requests, self.verify)
        self.module_idx.update(zip((p for p, _, _ in requests), module_idx, strict=True))
        self.loader.placed += sum(r.nbytes for r in with_data)

    def wait(self, k: int) -> BaseException | None:
        """Batch ``k``'s outcome (None for a rank whose run has fewer batches)."""
        if k >= len(self.mine):
            return None
        got, error = self.done.get()
        assert got == k, (got, k)
        return error

    def stop(self) -> None:
        self._stopping = True
        self._thread.join()


def _fill(loader: CoopLoader, index: Any, requests: list[tuple], verify: bool) -> list[int]:
    """One core call for ``requests`` (``(pos, address, nbytes)``, index order; a sharded
    checkpoint's through the loader of every shard); the module indexes in request order. Adds
    the call's figures to ``loader``."""
    whole = loader.whole_index if loader.whole_index is not None else index
    return _fill_one(loader, loader.core_loader, whole, requests, verify)


def _fill_one(loader: CoopLoader, part: Any, index: Any, requests: list[tuple], verify: bool) -> list[int]:
    core = getattr(part, "core", part)
    module_idx = core.load(index, requests, verify)
    loader._add(core.stats(), core.digests())
    return list(module_idx)


class _Mover:
    """The broadcasts of each round, in the same order on every rank."""

    def __init__(self, loader: CoopLoader, plan: _coop_plan.Plan, raws: list, whole: torch.Tensor | None,
                 stage: torch.Tensor | None) -> None:
        self.loader, self.plan, self.raws, self.whole, self.stage = loader, plan, raws, whole, stage
        self.team = loader.team

    def round(self, k: int) -> None:
        for owner in range(self.team.size):
            batch = self.plan.batch(owner, k)
            span = self.plan.span(batch)
            if span is None:
                continue
            what = f"round {k + 1} of {self.plan.rounds}, the bytes of rank {owner}"
            try:
                if self.whole is not None:
                    self._arena_range(owner, *span)
                else:
                    self._pieces(owner, *span)
            except Exception as exc:
                raise self.team.broken(exc, what) from exc
            if owner != self.team.rank:
                self.loader.received += span[1] - span[0]
                self.loader.placed += sum(self.plan.records[i].nbytes for i in batch)

    def _broadcast_all(self, owner: int, tensors: list[torch.Tensor]) -> None:
        """Broadcasts ``tensors`` from ``owner`` (all issued, then waited on)."""
        works = [self.team.dist.broadcast(t, group=self.team.group, group_src=owner, async_op=True)
                 for t in tensors]
        for work in works:
            work.wait()

    def _arena_range(self, owner: int, lo: int, hi: int) -> None:
        assert self.whole is not None
        pieces = [self.whole[a:min(a + MESSAGE_BYTES, hi)] for a in range(lo, hi, MESSAGE_BYTES)]
        self._broadcast_all(owner, pieces)

    def _pieces(self, owner: int, lo: int, hi: int) -> None:
        """Per-tensor destinations: in place where a piece lies in one tensor on the group's
        device, else packed into the staging buffer."""
        for group in _packs(self.plan.segments(lo, hi)):
            if len(group) == 1 and self.raws[group[0][0]].device == self.team.device:
                i, a, b = group[0]
                self._broadcast_all(owner, [self.raws[i][a:b]])
                continue
            self._staged(owner, group)

    def _staged(self, owner: int, group: list[tuple[int, int, int]]) -> None:
        total = sum(b - a for _, a, b in group)
        assert self.stage is not None and total <= self.stage.numel()
        buf = self.stage[:total]
        mine = owner == self.team.rank
        at = 0
        if mine:
            for i, a, b in group:
                buf[at:at + b - a].copy_(self.raws[i][a:b])
                at += b - a
        self._broadcast_all(owner, [buf])
        if not mine:
            for i, a, b in group:
                self.raws[i][a:b].copy_(buf[at:at + b - a])
                at += b - a


def _packs(segments: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Segments cut and grouped into pieces of at most ``STAGE_BYTES``, in order. A segment that
    does not fit in the current piece starts a new one, so that a large tensor's pieces hold it
    alone (moved in place, not staged)."""
    out: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    held = 0
    for i, a, b in segments:
        if current and b - a > STAGE_BYTES - held:
            out.append(current)
            current, held = [], 0
        while a < b:
            take = min(b - a, STAGE_BYTES - held)
            current.append((i, a, a + take))
            held += take
            a += take
            if held == STAGE_BYTES:
                out.append(current)
                current, held = [], 0
    if current:
        out.append(current)
    return out


def _all_module_indexes(team: _group.Team, plan: _coop_plan.Plan, mine: dict[int, int]) -> dict[int, int]:
    """Every record's module index (read from the headers by its owner), shared with one all_reduce."""
    values = torch.full((max(len(plan.records), 1),), -1, dtype=torch.int64)
    for i, rec in enumerate(plan.records):
        if rec.pos in mine:
            values[i] = mine[rec.pos]
    values = values.to(team.device)
    try:
        team.dist.all_reduce(values, op=team.dist.ReduceOp.MAX, group=team.group)
    except Exception as exc:
        raise team.broken(exc, "sharing the module indexes") from exc
    got = values.cpu().tolist()
    return {rec.pos: int(got[i]) for i, rec in enumerate(plan.records)}
