"""zero_copy=True: CPU tensors of a local, unencrypted file used where they lie in the page cache."""

from __future__ import annotations

import os

import pytest
import torch

import tensorstream
from tensorstream import EncryptionParams, TensorDeserializer, TensorSerializer
from tensorstream.errors import HashMismatchError

MIB = 1 << 20


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    gen = torch.Generator().manual_seed(9)
    sd = {f"layer{i}.weight": torch.randn(512, 256 + i, generator=gen) for i in range(16)}  # ~8 MiB
    sd["ids"] = torch.arange(11, dtype=torch.int16)  # odd sizes: later tensors start unaligned
    sd["half"] = torch.randn(7, generator=gen).to(torch.bfloat16)
    sd["empty"] = torch.empty(0, 3)
    path = tmp_path_factory.mktemp("zc") / "m.tensors"
    tensorstream.save(sd, path)
    return path, sd


def _anonymous_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    raise AssertionError("no Anonymous line")


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("verify", [False, True])
def test_tensors_are_the_files_and_own_their_storages(model, lazy, verify):
    path, sd = model
    with TensorDeserializer(path, zero_copy=True, lazy_load=lazy, verify_hash=verify) as d:
        assert d.io_backend == "mmap"
        got = {name: d[name] for name in sd}
    for name, tensor in sd.items():
        assert torch.equal(got[name], tensor), name
        assert got[name].untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_no_fresh_memory_and_the_file_is_never_written(model):
    path, sd = model
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        before = f.read()
    anon = _anonymous_kib()
    got = tensorstream.load(path, zero_copy=True)
    mapped_anon = _anonymous_kib() - anon
    copied = tensorstream.load(path)
    copied_anon = _anonymous_kib() - anon - mapped_anon
    assert copied_anon * 1024 > 0.9 * size  # the copying load fills fresh memory
    assert mapped_anon * 1024 < 0.1 * size, mapped_anon  # the mapping does not
    got["layer3.weight"].mul_(2)  # copy-on-write: a private page, the file stays as it was
    assert torch.equal(got["layer3.weight"], 2 * sd["layer3.weight"])
    assert torch.equal(copied["layer3.weight"], sd["layer3.weight"])
    with open(path, "rb") as f:
        assert f.read() == before


def test_verify_hash_reads_the_mapped_bytes(model, tmp_path):
    path, sd = model
    bad = tmp_path / "bad.tensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor's data
    bad.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError):
        TensorDeserializer(bad, zero_copy=True, verify_hash=True)
    TensorDeserializer(bad, zero_copy=True).close()  # without verification it loads


def test_open_file_objects_map_too(model):
    path, sd = model
    with open(path, "rb") as f, TensorDeserializer(f, zero_copy=True) as d:
        assert torch.equal(d["layer0.weight"], sd["layer0.weight"])


def test_refused_where_it_cannot_apply(model, tmp_path):
    path, _ = model
    with pytest.raises(ValueError, match="local file"):
        TensorDeserializer("http://127.0.0.1:9/m.tensors", zero_copy=True)
    with pytest.raises(ValueError, match="local file"):
        TensorDeserializer(path.read_bytes(), zero_copy=True)
    with pytest.raises(ValueError, match="CPU memory"):
        TensorDeserializer(path, zero_copy=True, device="cuda")
    params = EncryptionParams.random()
    secret = tmp_path / "secret.tensors"
    with TensorSerializer(secret, encryption=params) as s:
        s.write_state_dict({"x": torch.ones(4)})
    from tensorstream import DecryptionParams

    with pytest.raises(ValueError, match="encrypted"):
        TensorDeserializer(secret, zero_copy=True, encryption=DecryptionParams.from_key(params.key))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        TensorDeserializer(fifo, zero_copy=True)  # never blocks waiting for a writer


def test_dtype_casts_copy(model):
    path, sd = model
    got = tensorstream.load(path, zero_copy=True, dtype=torch.float64)
    assert got["layer1.weight"].dtype == torch.float64
    assert torch.equal(got["layer1.weight"], sd["layer1.weight"].double())


def test_verify_module_after_a_mapped_load(model):
    path, sd = model
    with TensorDeserializer(path, zero_copy=True) as d:
        state = {name: d[name] for name in sd}
        passed, results = d.verify_module(_Holder(state))
        assert passed and len(results) == len(sd)
        state["ids"] = state["ids"] + 1
        passed, results = d.verify_module(_Holder(state))
    assert not passed and dict(results)["ids"] is False


class _Holder(torch.nn.Module):
    """A module whose state_dict() names are the file's."""

    def __init__(self, tensors: dict) -> None:
        super().__init__()
        self._tensors = tensors

    def state_dict(self, *args, **kwargs):  # noqa: D401 - torch's signature
        return dict(self._tensors)

    def named_buffers(self, *args, **kwargs):
        return iter(())
