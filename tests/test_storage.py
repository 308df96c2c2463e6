"""Every tensor a load hands out owns a storage of exactly its own bytes, as tensorizer's and
safetensors' do, and dropping a tensor gives its memory back while its neighbours live."""

from __future__ import annotations

import gc
import io
import pickle

import psutil
import pytest
import safetensors.torch
import torch
from transformers.pytorch_utils import id_tensor_storage

import tensorstream
from tensorstream import TensorDeserializer

MIB = 1 << 20


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(5)
    sd = {
        "a.weight": torch.randn(64, 33, generator=gen),
        "a.bias": torch.randn(33, generator=gen).to(torch.float16),
        "b.ids": torch.arange(7, dtype=torch.int64),
        "b.flag": torch.tensor(True),
        "c.empty": torch.empty(0, 4),
        "c.big": torch.randn(1024, 257, generator=gen),
    }
    path = tmp_path_factory.mktemp("storage") / "m.tensors"
    tensorstream.save(sd, path)
    return path, sd


def _assert_own_storages(tensors: dict, expected: dict) -> None:
    seen = set()
    for name, t in tensors.items():
        storage = t.untyped_storage()
        assert storage.nbytes() == t.numel() * t.element_size(), name
        assert t.storage_offset() == 0, name
        if storage.nbytes():
            assert storage.data_ptr() not in seen, f"{name} shares a storage"
            seen.add(storage.data_ptr())
        assert torch.equal(t, expected[name].to(t.dtype)), name


MODES = {
    "eager": {},
    "lazy": {"lazy_load": True},
    "cast": {"dtype": torch.float64},
    "verified": {"verify_hash": True},
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_tensor_owns_its_storage(model_file, mode):
    path, sd = model_file
    with TensorDeserializer(path, **MODES[mode]) as d:
        loaded = {name: d[name] for name in sd}
    _assert_own_storages(loaded, sd)


def test_filtered_load_owns_its_storages(model_file):
    path, sd = model_file
    keep = {"a.bias", "c.big"}
    loaded = tensorstream.load(path, filter_func=lambda n: n in keep)
    assert set(loaded) == keep
    _assert_own_storages(loaded, sd)


def test_ring_pipeline_owns_its_storages(model_file, monkeypatch):
    """The GPU path's allocation, run through the host stand-in for the device copy."""
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    path, sd = model_file
    for lazy in (False, True):
        with TensorDeserializer(path, lazy_load=lazy) as d:
            assert d.io_backend  # loaded through the ring
            loaded = {name: d[name] for name in sd}
        _assert_own_storages(loaded, sd)


def test_meta_tensors_own_their_storage(tmp_path):
    path = tmp_path / "meta.tensors"
    tensorstream.save({"m": torch.empty(3, 5, device="meta"), "x": torch.ones(4)}, path)
    loaded = tensorstream.load(path)
    _assert_own_storages(loaded, {"m": torch.zeros(3, 5), "x": torch.ones(4)})


def test_saving_one_tensor_writes_only_it(model_file, tmp_path):
    path, sd = model_file
    loaded = tensorstream.load(path)
    for name in ("a.weight", "c.big"):
        ours, alone = io.BytesIO(), io.BytesIO()
        torch.save(loaded[name], ours)
        torch.save(sd[name].clone(), alone)
        assert len(ours.getvalue()) == len(alone.getvalue()), name
        assert len(pickle.dumps(loaded[name])) < 2 * loaded[name].nbytes + 4096
        assert torch.equal(torch.load(io.BytesIO(ours.getvalue())), sd[name])


def test_no_two_tensors_share_a_storage(model_file, tmp_path):
    """transformers' save_pretrained takes tensors with one storage for tied weights and drops
    all but one of them: loaded tensors must each have their own; safetensors saves them as is."""
    path, sd = model_file
    loaded = tensorstream.load(path)
    storages = {id_tensor_storage(t) for t in loaded.values() if t.numel()}
    assert len(storages) == sum(1 for t in loaded.values() if t.numel())
    out = tmp_path / "again.safetensors"
    safetensors.torch.save_file(loaded, out)
    back = safetensors.torch.load_file(out)
    _assert_own_storages(back, sd)


def test_share_memory_keeps_values(model_file):
    path, sd = model_file
    loaded = tensorstream.load(path)
    for name in ("a.weight", "c.big", "b.ids"):
        loaded[name].share_memory_()
        assert loaded[name].is_shared()
    _assert_own_storages(loaded, sd)


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_dropped_tensors_give_memory_back(tmp_path):
    gen = torch.Generator().manual_seed(6)
    sd = {f"w{i}": torch.randn(4 * MIB // 4 * 4, generator=gen) for i in range(8)}  # 16 MiB each
    path = tmp_path / "big.tensors"
    tensorstream.save(sd, path)
    loaded = tensorstream.load(path)
    loaded_rss = _rss()
    for i in range(0, 8, 2):  # every other one: each dropped tensor sits between live ones
        del loaded[f"w{i}"]
    dropped_rss = _rss()
    assert loaded_rss - dropped_rss > 4 * 16 * MIB * 0.9, (loaded_rss, dropped_rss)
    for i in range(1, 8, 2):  # the neighbours are intact
        assert torch.equal(loaded[f"w{i}"], sd[f"w{i}"])
    loaded.clear()
    assert dropped_rss - _rss() > 4 * 16 * MIB * 0.9
