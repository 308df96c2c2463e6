"""Several files read as one: the index of every shard behind one list of entries, and one
loader for all of them.

The loader reads a ``_native.ShardSource`` (the shards laid end to end) with the shards' indexes
joined (``_native.join_indexes``): a load is one engine run over every shard, with one set of
workers, one connection pool and one ring (a zero-copy load slices each shard's own mapping). A
tensor name that appears in two shards is a FormatError.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
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
    """The loader of every shard (over their ShardSource) and the shards' indexes joined, whose
    positions are those of the ShardedIndex."""

    def __init__(self, loader: Any, load_one: LoadFn, whole_index: Any) -> None:
        self.parts = [loader]
        self.load_one = load_one
        self.whole_index = whole_index

    @property
    def backend(self) -> str:
        return self.parts[0].backend

    def set_decryption(self, **kwargs: Any) -> None:
        self.parts[0].set_decryption(**kwargs)

    def stats(self) -> dict[str, Any]:
        return self.parts[0].stats()

    def digests(self) -> list[Any]:
        return []  # shards are safetensors files here, which carry no hashes

    def cancel(self) -> None:
        self.parts[0].cancel()

    @property
    def cancelled(self) -> bool:
        return self.parts[0].cancelled

    @property
    def progress(self) -> int:
        """Data bytes the running (or last) load has read so far."""
        return self.parts[0].progress


def load(
    loader: ShardedLoader, index: ShardedIndex, records: Sequence[_loading.Record], verify_hash: bool, *, pooled: bool
) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """As :func:`_loading.load` over shards: one load of every shard through the loader of all."""
    return loader.load_one(loader.parts[0], loader.whole_index, records, verify_hash, pooled=pooled)
