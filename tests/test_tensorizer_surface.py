"""tensorizer's public surface beyond load/save: verify_module, read_numpy_arrays, the memory-usage
helpers of utils, and the default device; each compared with what tensorizer 2.12 itself returns."""

from __future__ import annotations

import numpy
import pytest
import torch

import tensorstream
from tensorstream import TensorDeserializer, TensorSerializer, _device, utils

tensorizer = pytest.importorskip("tensorizer")
import tensorizer.utils as tz_utils  # noqa: E402


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LayerNorm(6), torch.nn.Embedding(5, 4))
    m[1].register_buffer("steps", torch.arange(3))
    m[1].register_buffer("scratch", torch.ones(2), persistent=False)
    m.register_buffer("bf", torch.randn(7).to(torch.bfloat16))  # a root tensor: ".bf" in the file
    return m


@pytest.fixture
def model_file(tmp_path):
    """A module written by tensorizer, and the module."""
    m = _module()
    path = tmp_path / "m.tensors"
    serializer = tensorizer.TensorSerializer(str(path))
    serializer.write_module(m)
    serializer.close()
    return path, m


# ------------------------------------------------------------------------------ verify_module


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy-before-loading"])
def test_verify_module_matches_tensorizer(model_file, lazy):
    path, m = model_file
    with TensorDeserializer(path, lazy_load=lazy) as d:
        ours = d.verify_module(m)
    theirs = tensorizer.TensorDeserializer(str(path)).verify_module(m)
    assert ours == theirs
    ok = dict(ours[1])
    assert ok["0.weight"] and ok["1.steps"] and ok["1.scratch"]  # a non-persistent buffer is checked too
    assert not ok[".bf"]  # tensorizer's root names are not state_dict names: reported failed, as there


def test_verify_module_after_a_ring_load(model_file, monkeypatch):
    """The ring pipeline (here with its host stand-in for the GPU copy) keeps the digests too."""
    path, m = model_file
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    with TensorDeserializer(path) as d:
        assert d._loader is None  # eager: released, the digests came from the load
        assert d.verify_module(m) == tensorizer.TensorDeserializer(str(path)).verify_module(m)


def test_verify_module_finds_the_changed_tensor(model_file):
    path, m = model_file
    with torch.no_grad():
        m[0].bias[3] += 1
    with TensorDeserializer(path) as d:
        passed, results = d.verify_module(m)
    assert not passed
    assert [name for name, ok in results if not ok] == [".bf", "0.bias", ".bf"]
    assert (passed, results) == tensorizer.TensorDeserializer(str(path)).verify_module(m)


def test_verify_module_with_another_dtype_or_shape_fails(model_file):
    path, m = model_file
    m[0].weight = torch.nn.Parameter(m[0].weight.detach().double())
    m[2].weight = torch.nn.Parameter(m[2].weight.detach()[:4])
    with TensorDeserializer(path) as d:
        results = dict(d.verify_module(m)[1])
    assert not results["0.weight"] and not results["2.weight"] and results["0.bias"]


def test_verify_module_after_lazy_loads_and_close(model_file):
    path, m = model_file
    d = TensorDeserializer(path, lazy_load=True, filter_func=lambda name: name.startswith("0."))
    d.load_into_module(m, filter_func=lambda name: name.startswith("0."))
    d.close()
    assert d.verify_module(m)[0]  # digests kept from the load; the file is no longer needed
    d = TensorDeserializer(path, lazy_load=True)
    d.close()
    with pytest.raises(RuntimeError, match="hashes"):
        d.verify_module(m)


def test_verify_module_on_an_encrypted_file(tmp_path):
    m = _module()
    params = tensorstream.EncryptionParams.random()
    path = tmp_path / "enc.tensors"
    with TensorSerializer(path, encryption=params) as s:
        s.write_module(m)
    key = tensorstream.DecryptionParams.from_key(params.key)
    with TensorDeserializer(path, lazy_load=True, encryption=key) as d:
        results = dict(d.verify_module(m)[1])
    assert results["0.weight"] and results["1.steps"]


# ------------------------------------------------------------------------------ read_numpy_arrays


def _mixed_file(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4),
        "i64": torch.arange(5),
        "flag": torch.tensor([True, False]),
        "bf16": torch.randn(6).to(torch.bfloat16),
        "half": torch.randn(2, 2).half(),
    }
    path = tmp_path / "mixed.tensors"
    serializer = tensorizer.TensorSerializer(str(path))
    serializer.write_state_dict(tensors)
    serializer.close()
    return path, tensors


def test_read_numpy_arrays_as_tensorizer(tmp_path):
    path, tensors = _mixed_file(tmp_path)
    ours = list(TensorDeserializer(path).read_numpy_arrays(allow_raw_data=True))
    theirs = list(tensorizer.TensorDeserializer(str(path), lazy_load=True).read_numpy_arrays(allow_raw_data=True))
    assert len(ours) == len(theirs) == len(tensors)
    for a, b in zip(ours, theirs):
        assert a[:3] == b[:3] and a[4:] == b[4:]
        assert a[3].dtype == b[3].dtype and numpy.array_equal(a[3], b[3])
    by_name = {row[2]: row for row in ours}
    assert by_name["bf16"][4:] == (True, "torch.bfloat16") and by_name["bf16"][3].dtype == numpy.int16
    assert torch.equal(torch.from_numpy(by_name["bf16"][3]).view(torch.bfloat16), tensors["bf16"])
    assert by_name["f32"][4:] == (False, None)


def test_read_numpy_arrays_refuses_opaque_dtypes_without_allow_raw_data(tmp_path):
    path, _ = _mixed_file(tmp_path)
    rows = TensorDeserializer(path).read_numpy_arrays()
    assert [next(rows)[2] for _ in range(3)] == ["f32", "i64", "flag"]
    with pytest.raises(ValueError, match=r"bf16 has an opaque datatype: \(Torch: torch.bfloat16, Numpy: <i2\)"):
        next(rows)


def test_read_numpy_arrays_continues_after_read_tensors(tmp_path):
    path, _ = _mixed_file(tmp_path)
    d = TensorDeserializer(path, lazy_load=True)
    assert [name for _, _, name, _ in d.read_tensors(num_tensors=2)] == ["f32", "i64"]
    assert [row[2] for row in d.read_numpy_arrays(num_tensors=1)] == ["flag"]
    assert [row[2] for row in d.read_numpy_arrays(filter_func=lambda n: n != "bf16")] == ["half"]


# ------------------------------------------------------------------------------ utils


def test_memory_usage_string_forms_match_tensorizer():
    values = {
        "CPUMemoryUsage": (5 << 30, 3 << 20),
        "GlobalGPUMemoryUsage": (80 << 30, 1 << 30, 79 << 30),
        "TorchGPUMemoryUsage": (1 << 30, 2 << 30, 3 << 20, 4 << 20),
    }
    pairs = [(getattr(utils, cls)(*v), getattr(tz_utils, cls)(*v)) for cls, v in values.items()]
    for ours, theirs in pairs:
        assert str(ours) == str(theirs) and ours._fields == theirs._fields and tuple(ours) == tuple(theirs)
    combined = utils.MemoryUsage(pairs[0][0], None, pairs[2][0])
    assert str(combined) == str(tz_utils.MemoryUsage(pairs[0][1], None, pairs[2][1]))
    assert utils.MemoryUsage._fields == tz_utils.MemoryUsage._fields


@pytest.mark.parametrize("num", [0, 999, 1000, 123_456_789, 5e15, 7e18, 2**70])
@pytest.mark.parametrize("decimal", [True, False])
def test_convert_bytes_matches_tensorizer(num, decimal):
    assert utils.convert_bytes(num, decimal) == tz_utils.convert_bytes(num, decimal)


def test_memory_usage_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    now = utils.MemoryUsage.now()
    assert now.gpu is None and now.torch is None
    assert now.cpu.maxrss > 1 << 20 and now.cpu.maxrss % 1024 == 0 and now.cpu.free > 0
    assert utils.get_mem_usage().startswith("CPU: (maxrss: ") and "GPU" not in utils.get_mem_usage()
    assert utils.get_gpu_name() == "N/A"
    assert utils.get_device() == torch.device("cpu")


def test_memory_usage_with_a_gpu_reads_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 << 30, 16 << 30))
    stats = {"reserved_bytes.all.current": 5 << 20, "reserved_bytes.all.peak": 6 << 20,
             "allocated_bytes.all.current": 1 << 20, "allocated_bytes.all.peak": 2 << 20}
    monkeypatch.setattr(torch.cuda.memory, "memory_stats", lambda device=None: stats)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    now = utils.MemoryUsage.now()
    assert now.gpu == (16 << 30, 3 << 30, 13 << 30)
    assert now.torch == (5 << 20, 6 << 20, 1 << 20, 2 << 20)
    gpu_part = "GPU: (U: 13,312MiB F: 3,072MiB T: 16,384MiB) TORCH: (R: 5MiB/6MiB, A: 1MiB/2MiB)"
    assert utils.get_mem_usage().endswith(gpu_part)
    assert utils.get_gpu_name() == "Fake GPU"


# ------------------------------------------------------------------------------ default device


def _fake_cuda(monkeypatch, current: int = 0):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def test_default_device_without_cuda_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device.resolve(None) == torch.device("cpu")


def test_default_device_is_cuda_when_available(monkeypatch):
    _fake_cuda(monkeypatch, current=1)
    assert _device.resolve(None) == torch.device("cuda", 1)


def test_a_device_context_wins_over_cuda(monkeypatch):
    _fake_cuda(monkeypatch)
    with torch.device("cpu"):
        assert _device.resolve(None) == torch.device("cpu")
    with torch.device("cuda:2"):
        assert _device.resolve(None) == torch.device("cuda", 2)
        assert _device.resolve("cuda") == torch.device("cuda", 2)
        assert _device.resolve("cpu") == torch.device("cpu")  # an explicit device wins over the context


def test_set_default_device(monkeypatch):
    _fake_cuda(monkeypatch)
    torch.set_default_device("cpu")
    try:
        assert _device.resolve(None) == torch.device("cpu")
    finally:
        torch.set_default_device(None)
    assert _device.resolve(None) == torch.device("cuda", 0)


def test_a_meta_default_is_passed_over(monkeypatch, tmp_path):
    path = tmp_path / "t.tensors"
    tensorstream.save({"w": torch.arange(4.0)}, path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expected = torch.arange(4.0)
    with torch.device("meta"):  # building a module without memory, then filling it in the same block
        assert _device.resolve(None) == torch.device("cpu")
        for lazy in (False, True):
            with TensorDeserializer(path, lazy_load=lazy) as d:
                w = d["w"]
            assert d.device == torch.device("cpu") and w.device == torch.device("cpu")
    assert torch.equal(w, expected)
    _fake_cuda(monkeypatch)
    torch.set_default_device("meta")
    try:
        assert _device.resolve(None) == torch.device("cuda", 0)
    finally:
        torch.set_default_device(None)
    with pytest.raises(ValueError, match="meta"):
        _device.resolve("meta")
