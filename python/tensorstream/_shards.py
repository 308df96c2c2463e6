"""Several files read as one: the index of every shard behind one list of entries, and a
loader for all of them.

Most often that loader is one core loader over a ``_native.ShardSource`` (the shards laid end to
end) with the shards' indexes joined (``_native.join_indexes``): a load is one engine run over
every shard, with one set of workers, one connection pool and one ring. Shards read where they
lie (mapped: ``zero_copy``, complete cache entries) get one loader each instead, run in the
caller's thread (nothing to wait on) or, to hash them, all started before any is waited on (the
core releases the GIL). A tensor name that appears in two shards is a FormatError.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from . import _loading
from .errors import FormatError

LoadFn = Callable[..., tuple[dict[int, torch.Tensor], dict[int, int]]]


class ShardedIndex:
    """The entries of several indexes as one list; positions count across shards in order."""

    def __init__(self, indexes: Sequence[Any], names: Sequence[str]) -> None:
        self.parts = list(indexes)
        self.starts: list[int] = []
        self.entries: list[Any] = []
        seen: dict[bytes, str] = {}
        for index, name in zip(self.parts, names, strict=True):
            self.starts.append(len(self.entries))
            for e in index.entries:
                if e.name in seen:
                    label = e.name.decode("utf-8", "replace")
                    raise FormatError(f"tensor {label!r} is in both {seen[e.name]} and {name}", tensor=label,
                                      field="name")
                seen[e.name] = name
            self.entries.extend(index.entries)
        self.file_size = sum(i.file_size for i in self.parts)
        self.encrypted = False
        for index, name in zip(self.parts, names, strict=True):
            if index.format != "safetensors":
                raise FormatError(f"{name} is a {index.format} file: shards of a checkpoint must be safetensors",
                                  field="format")
        self.format = "safetensors"
        self.metadata: dict[str, str] = {}
        for i in self.parts:
            self.metadata.update(i.metadata)

    def locate(self, pos: int) -> tuple[int, int]:
        """(shard, position in that shard) of a position of the whole."""
        shard = bisect.bisect_right(self.starts, pos) - 1
        return shard, pos - self.starts[shard]

    def __len__(self) -> int:
        return len(self.entries)


class ShardedLoader:
    """One loader per shard, driven together; or one loader of every shard (``whole_index``)."""

    def __init__(self, loaders: Sequence[Any], load_one: LoadFn, whole_index: Any = None) -> None:
        """``whole_index``: the shards' indexes joined, when ``loaders`` is one loader over a
        ShardSource of every shard; its positions are those of the ShardedIndex."""
        self.parts = list(loaders)
        self.load_one = load_one
        self.whole_index = whole_index
        if whole_index is not None and len(self.parts) != 1:
            raise ValueError("a joined index goes with one loader of every shard")

    @property
    def backend(self) -> str:
        return self.parts[0].backend

    def set_decryption(self, **kwargs: Any) -> None:
        for loader in self.parts:
            loader.set_decryption(**kwargs)

    def stats(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for loader in self.parts:
            for key, value in loader.stats().items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        return total

    def digests(self) -> list[Any]:
        return []  # shards are safetensors files here, which carry no hashes

    def cancel(self) -> None:
        for loader in self.parts:
            loader.cancel()

    @property
    def cancelled(self) -> bool:
        return any(loader.cancelled for loader in self.parts)

    @property
    def progress(self) -> int:
        """Data bytes the shards' running (or last) loads have read so far."""
        return sum(loader.progress for loader in self.parts)


def load(
    loader: ShardedLoader, index: ShardedIndex, records: Sequence[_loading.Record], verify_hash: bool, *, pooled: bool
) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """As :func:`_loading.load` over shards: one load through the loader of every shard, or each
    shard's records to its loader, all at once."""
    if loader.whole_index is not None:
        return loader.load_one(loader.parts[0], loader.whole_index, records, verify_hash, pooled=pooled)
    by_shard: dict[int, list[_loading.Record]] = {}
    for rec in records:
        shard, local = index.locate(rec.pos)
        by_shard.setdefault(shard, []).append(dataclasses.replace(rec, pos=local))

    def run(shard: int) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
        return loader.load_one(loader.parts[shard], index.parts[shard], by_shard[shard], verify_hash, pooled=pooled)

    # Loaders with no reads to wait on (mapped files without hashing) run here, one after another:
    # starting a thread per shard would cost more than their work.
    inline = not verify_hash and all(getattr(loader.parts[s], "inline", False) for s in by_shard)
    if len(by_shard) == 1 or inline:
        results = {shard: run(shard) for shard in by_shard}
    else:
        with ThreadPoolExecutor(max_workers=len(by_shard), thread_name_prefix="tensorstream-shard") as pool:
            futures = {shard: pool.submit(run, shard) for shard in by_shard}
            results = {}
            for shard, fut in futures.items():
                results[shard] = fut.result()  # waits on each; the first error is raised after all end
    tensors: dict[int, torch.Tensor] = {}
    module_idx: dict[int, int] = {}
    for shard, (got, modules) in results.items():
        base = index.starts[shard]
        tensors.update((base + pos, t) for pos, t in got.items())
        module_idx.update((base + pos, m) for pos, m in modules.items())
    return tensors, module_idx
