"""A file's index as the core parses it, and its tensors in batches of bounded size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import _loading, _native, _sources
from ..serialization import TensorDeserializer

BATCH_BYTES = 256 << 20


def read(uri: str) -> tuple[Any, list[_loading.Record], Any]:
    """``(index, records, source)`` of ``uri``: the core reads and validates the index."""
    source = _sources.open_source(uri)
    index = _native.read_index(source)
    return index, _loading.describe(index.entries, index.file_size), source


def batches(records: list[_loading.Record], limit: int = BATCH_BYTES) -> Iterator[list[_loading.Record]]:
    """Runs of consecutive records holding about ``limit`` bytes each (at least one record)."""
    run: list[_loading.Record] = []
    size = 0
    for rec in records:
        if run and size + rec.nbytes > limit:
            yield run
            run, size = [], 0
        run.append(rec)
        size += rec.nbytes
    if run:
        yield run


def tensors(uri: str, records: list[_loading.Record], *, verify_hash: bool = False, encryption: Any = None,
            limit: int = BATCH_BYTES) -> Iterator[tuple[list[tuple[int, int, Any, Any]], int]]:
    """Every tensor as ``(module_idx, tensor_type, name, tensor)``, in file order, a batch of about
    ``limit`` bytes at a time (with the batch's bytes): memory stays at one batch."""
    for run in batches(records, limit):
        wanted = {r.name for r in run}
        with TensorDeserializer(uri, filter_func=wanted.__contains__, verify_hash=verify_hash,
                                encryption=encryption, progress=False) as d:
            yield list(d.read_tensors()), sum(r.nbytes for r in run)
