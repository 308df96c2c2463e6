"""torch_compat: torch.save / torch.load with a .tensors sidecar, both ways with tensorizer's own."""

from __future__ import annotations

import io
import pickle
import threading

import pytest
import torch

import tensorstream
from tensorstream import torch_compat as ours

tensorizer_compat = pytest.importorskip("tensorizer.torch_compat")

LIBS = {"tensorstream": ours, "tensorizer": tensorizer_compat}


def _payload():
    torch.manual_seed(1)
    base = torch.arange(12, dtype=torch.int32)
    linear = torch.nn.Linear(5, 3)
    return {
        "module": linear,
        "state": {"w": torch.randn(4, 4), "bf": torch.randn(6).to(torch.bfloat16)},
        "view": base[3:9],  # a view into a larger storage
        "same": base,  # the same storage again: saved once, shared after loading
        "empty": torch.empty(0),
        "meta": torch.empty(3, device="meta"),
        "plain": [1, "two", 3.0],
    }


def _check(back, sent):
    assert torch.equal(back["module"].weight, sent["module"].weight)
    assert isinstance(back["module"], torch.nn.Linear)
    assert torch.equal(back["state"]["w"], sent["state"]["w"]) and torch.equal(back["state"]["bf"], sent["state"]["bf"])
    assert torch.equal(back["view"], sent["view"]) and back["view"].storage_offset() == 3
    assert back["view"].untyped_storage().data_ptr() == back["same"].untyped_storage().data_ptr()
    assert back["same"].untyped_storage().nbytes() == 48  # the storage, not a larger block holding it
    assert back["empty"].shape == (0,) and back["meta"].is_meta and back["plain"] == [1, "two", 3.0]


@pytest.mark.parametrize("saver, loader", [("tensorizer", "tensorstream"), ("tensorstream", "tensorizer"),
                                           ("tensorstream", "tensorstream")])
def test_files_move_between_the_libraries(tmp_path, saver, loader):
    sent = _payload()
    path = tmp_path / "obj.pt"
    with LIBS[saver].tensorizer_saving():
        torch.save(sent, path)
    assert (tmp_path / "obj.pt.tensors").stat().st_size > 0
    with LIBS[loader].tensorizer_loading():
        back = torch.load(path, weights_only=False)
    _check(back, sent)


def test_the_sidecar_is_byte_identical_to_tensorizers(tmp_path):
    sent = _payload()
    for name, lib in LIBS.items():
        with lib.tensorizer_saving():
            torch.save(sent, tmp_path / f"{name}.pt")
    assert (tmp_path / "tensorstream.pt.tensors").read_bytes() == (tmp_path / "tensorizer.pt.tensors").read_bytes()


def test_the_pt_file_holds_no_tensor_data(tmp_path):
    big = {"w": torch.randn(256, 256)}
    with ours.tensorizer_saving():
        torch.save(big, tmp_path / "a.pt")
    torch.save(big, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").stat().st_size < 4096 < (tmp_path / "b.pt").stat().st_size
    with pytest.raises((pickle.UnpicklingError, AssertionError), match="TensorizerPickler"):  # plain torch.load
        torch.load(tmp_path / "a.pt", weights_only=False)


def test_file_obj_path_and_callable(tmp_path):
    sent = {"w": torch.randn(3)}
    with ours.tensorizer_saving(tmp_path / "elsewhere.tensors"):
        torch.save(sent, tmp_path / "a.pt")
    assert not (tmp_path / "a.pt.tensors").exists()
    with ours.tensorizer_loading(str(tmp_path / "elsewhere.tensors")):
        assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=False)["w"], sent["w"])
    seen = []
    with ours.tensorizer_saving(lambda f: seen.append(f) or str(f) + ".side"):
        torch.save(sent, tmp_path / "b.pt")
    assert seen == [tmp_path / "b.pt"] and (tmp_path / "b.pt.side").exists()
    with tensorizer_compat.tensorizer_loading(lambda f: str(f) + ".side"):
        assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=False)["w"], sent["w"])
    with ours.tensorizer_saving(lambda f: None):  # None: plain torch.save
        torch.save(sent, tmp_path / "c.pt")
    assert not list(tmp_path.glob("c.pt.*"))
    assert torch.equal(torch.load(tmp_path / "c.pt")["w"], sent["w"])


def test_bytesio_without_file_obj_falls_back_to_plain_torch_save(caplog):
    buf = io.BytesIO()
    with ours.tensorizer_saving():
        torch.save({"w": torch.ones(2)}, buf)
    assert "io.BytesIO" in caplog.text
    buf.seek(0)
    assert torch.equal(torch.load(buf)["w"], torch.ones(2))


def test_bytesio_sidecar(tmp_path):
    side = io.BytesIO()
    with ours.tensorizer_saving(side):
        torch.save({"w": torch.arange(5)}, tmp_path / "a.pt")
    with tensorizer_compat.tensorizer_loading(io.BytesIO(side.getvalue())):
        assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=False)["w"], torch.arange(5))


def test_save_func_and_load_func(tmp_path):
    calls = []

    def save_func(file_obj, tensors, kwargs):
        calls.append(("save", file_obj, kwargs))
        tensorstream.save(list(tensors), file_obj)

    def load_func(file_obj, kwargs):
        calls.append(("load", file_obj, kwargs))
        return tensorstream.load(file_obj)

    with ours.tensorizer_saving(save_func=save_func, limit_cpu_concurrency=1):
        torch.save({"w": torch.arange(3.0)}, tmp_path / "a.pt")
    with ours.tensorizer_loading(load_func=load_func, verify_hash=True):
        back = torch.load(tmp_path / "a.pt", weights_only=False)
    assert torch.equal(back["w"], torch.arange(3.0))
    side = str(tmp_path / "a.pt") + ".tensors"
    assert calls == [("save", side, {"limit_cpu_concurrency": 1}), ("load", side, {"verify_hash": True})]


def test_kwargs_reach_the_serializer_and_deserializer(tmp_path):
    params = tensorstream.EncryptionParams.random()
    with ours.tensorizer_saving(encryption=params):
        torch.save({"w": torch.arange(4.0)}, tmp_path / "a.pt")
    with ours.tensorizer_loading():
        with pytest.raises(tensorstream.KeyRequiredError):
            torch.load(tmp_path / "a.pt", weights_only=False)
    with ours.tensorizer_loading(encryption=tensorstream.DecryptionParams.from_key(params.key), verify_hash=True):
        assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=False)["w"], torch.arange(4.0))


def test_weights_only(tmp_path):
    with ours.tensorizer_saving():
        torch.save({"w": torch.arange(4.0)}, tmp_path / "a.pt")
    with ours.tensorizer_loading():
        with pytest.raises(Exception):
            torch.load(tmp_path / "a.pt", weights_only=True)
    with ours.tensorizer_loading(suppress_weights_only=True):
        assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], torch.arange(4.0))


def test_other_pickle_modules_are_refused(tmp_path):
    with ours.tensorizer_saving():
        with pytest.raises(ValueError, match="pickle_module"):
            torch.save({"w": torch.ones(1)}, tmp_path / "a.pt", pickle_module=io)


def test_torch_is_restored_and_other_threads_are_untouched(tmp_path):
    original_save, original_load = torch.save, torch.load
    other = []

    def save_elsewhere():
        torch.save({"w": torch.ones(2)}, tmp_path / "thread.pt")
        other.append(True)

    with ours.tensorizer_saving():
        with ours.tensorizer_saving():  # nested blocks
            assert torch.save is not original_save
        assert torch.save is not original_save
        worker = threading.Thread(target=save_elsewhere)
        worker.start()
        worker.join()
    assert torch.save is original_save and torch.load is original_load
    assert other == [True] and not (tmp_path / "thread.pt.tensors").exists()
    assert torch.equal(torch.load(tmp_path / "thread.pt")["w"], torch.ones(2))


def test_a_bad_storage_index_is_a_clear_error(tmp_path):
    with ours.tensorizer_saving():
        torch.save({"w": torch.arange(4.0)}, tmp_path / "a.pt")
    tensorstream.save([], str(tmp_path / "a.pt") + ".tensors")  # a sidecar with no storages
    with ours.tensorizer_loading():
        with pytest.raises(pickle.UnpicklingError, match="storage #0"):
            torch.load(tmp_path / "a.pt", weights_only=False)
