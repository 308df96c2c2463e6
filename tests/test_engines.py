"""Both read paths of the io_uring engine: data already in the page cache (copied inline) and
data evicted from it (queued on the ring), with chunks that split tensors."""

import os

import pytest
import torch

import tensorstream
from _places import evict
from tensorstream import _core

pytestmark = pytest.mark.skipif(not _core.features()["io_uring"], reason="io_uring unavailable here")


_evict = evict


@pytest.mark.parametrize("evict", [False, True], ids=["cached", "evicted"])
def test_uring_reads_cached_and_uncached_data(tmp_path, monkeypatch, evict):
    monkeypatch.setenv("TENSORSTREAM_IO_BACKEND", "uring")
    gen = torch.Generator().manual_seed(3)
    sd = {f"t{i}": torch.randint(0, 255, (300_000 + i * 7919,), generator=gen, dtype=torch.uint8) for i in range(12)}
    path = tmp_path / "m.tensors"
    tensorstream.save(sd, path)
    if evict:
        _evict(path)
    src = _core.FileSource(str(path))
    index = _core.read_index(src)
    loader = _core.Loader(src, backend="uring", chunk_bytes=64 * 1024 + 3, queue_depth=3)
    out = {e.name.decode(): torch.empty(e.data_length, dtype=torch.uint8) for e in index.entries}
    requests = [(i, out[e.name.decode()].data_ptr(), e.data_length) for i, e in enumerate(index.entries)]
    loader.load(index, requests, True)
    assert loader.backend == "io_uring"
    for name, tensor in sd.items():
        assert torch.equal(out[name], tensor), name
    assert 0 <= loader.stats()["queued_bytes"] <= sum(e.data_length for e in index.entries)
