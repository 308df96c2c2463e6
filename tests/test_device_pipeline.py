"""The GPU load path: the pinned ring pipeline through the host stand-in (everywhere), and real
CUDA loads (``cuda`` marker, skipped without a GPU)."""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

import tensorstream
from _tensors import assert_same, random_tensor, raw_bytes
from tensorstream import (
    CryptographyError,
    CudaError,
    CudaUnavailableError,
    DecryptionParams,
    EncryptionParams,
    HashMismatchError,
    LoadCancelled,
    TensorDeserializer,
    _core,
    _loading,
    _ring,
    _staging,
)
from tensorstream.errors import FormatError

FAST = {"opslimit": EncryptionParams.OpsLimit.MIN, "memlimit": EncryptionParams.MemLimit.MIN}
MIB = 1 << 20


def _state(big_bytes: int = 3 * MIB, small: int = 200, seed: int = 0) -> dict:
    """One tensor spanning many small slots, hundreds sharing one, odd dtypes, an empty and a meta tensor."""
    sd = {"big": random_tensor((big_bytes // 4,), torch.float32, seed)}
    for i in range(small):
        sd[f"s{i}"] = random_tensor((1 + i % 17, 3), torch.bfloat16 if i % 2 else torch.int16, seed + i + 1)
    sd["mid"] = random_tensor((300_001,), torch.uint8, seed + 999)
    sd["empty"] = torch.empty(0, 4)
    sd["meta"] = torch.empty(5, 2, device="meta")
    return sd


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ring") / "model.tensors"
    sd = _state()
    tensorstream.save(sd, path)
    return path, sd


def _check(loaded, sd) -> None:
    assert sorted(loaded) == sorted(sd)
    for name, want in sd.items():
        assert_same(loaded[name], want)


def _core_load(path, *, order_seed=None, verify=False, **core):
    """All tensors of ``path`` through a core DeviceLoader with the host copier; (tensors, stats)."""
    source = _core.FileSource(str(path))
    index = _core.read_index(source)
    records = _loading.describe(index.entries, index.file_size)
    if order_seed is not None:
        random.Random(order_seed).shuffle(records)
    loader = _ring.RingLoader(source, torch.device("cpu"), **core)
    loaded, _ = _ring.load(loader, index, records, verify, pooled=order_seed is None)
    by_name = {str(r.name): loaded[r.pos] for r in records}
    return by_name, loader.core.stats()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def standin(monkeypatch):
    """``standin(spec, ring_mb)`` routes CPU loads of TensorDeserializer through the ring."""

    def setup(spec: str = "host", ring_mb: int = 1, slots: int = 4) -> None:
        monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", spec)
        monkeypatch.setenv("TENSORSTREAM_RING_MB", str(ring_mb))
        monkeypatch.setenv("TENSORSTREAM_RING_SLOTS", str(slots))

    return setup


# --------------------------------------------------------------------------------------------
# The pipeline, through the host stand-in


@pytest.mark.parametrize("lanes", [1, 2, 3])
@pytest.mark.parametrize("delay_us", [0, 200])
def test_slots_are_reused_many_times_and_data_lands_in_place(model, lanes, delay_us):
    path, sd = model
    slot = 64 << 10
    loaded, stats = _core_load(path, slots=4, slot_bytes=slot, lanes=lanes, copy_delay_us=delay_us, chunk_bytes=20000)
    _check(loaded, sd)
    data = sum(t.numel() * t.element_size() for t in sd.values() if not t.is_meta)
    assert stats["bytes"] == data
    assert stats["turns"] >= data // slot  # about one fill per slot's worth of data
    assert len(stats["slot_turns"]) == 4 and min(stats["slot_turns"]) >= stats["turns"] // 4 - 1
    assert stats["ring_bytes"] == 4 * slot  # the ring, and only the ring, is held
    if delay_us:
        assert stats["slot_wait_seconds"] > 0  # copies were the slow stage: slots waited for them


def test_requests_in_any_order_and_separate_destinations(model):
    path, sd = model
    loaded, stats = _core_load(path, order_seed=7, slots=3, slot_bytes=32 << 10, lanes=2, copy_delay_us=50)
    _check(loaded, sd)


def test_many_small_tensors_share_a_slot_and_a_big_one_spans_many(model):
    path, sd = model
    slot = 512 << 10
    _, stats = _core_load(path, slots=2, slot_bytes=slot, lanes=1)
    with_data = sum(1 for t in sd.values() if not t.is_meta and t.numel())
    data = stats["bytes"]
    # Every tensor is copied at least once; the big one in about big/slot pieces; the small ones
    # add no fills of their own.
    assert stats["copies"] >= with_data + (3 * MIB) // slot - 1
    assert stats["turns"] <= data // slot + 3


@pytest.mark.parametrize("lanes", [1, 2])
def test_verify_hash_passes_and_catches_a_flipped_byte(model, tmp_path, standin, lanes, monkeypatch):
    path, sd = model
    monkeypatch.setenv("TENSORSTREAM_RING_LANES", str(lanes))
    standin("host,delay_us=20", ring_mb=1)
    with TensorDeserializer(path, verify_hash=True) as loaded:
        _check(loaded, sd)
    bad = tmp_path / "bad.tensors"
    data = bytearray(path.read_bytes())
    index = _core.read_index(_core.MemorySource(bytes(data)))
    big = next(e for e in index.entries if e.name == b"big")
    data[big.data_offset + big.data_length - 1000] ^= 0x10  # in the big tensor's last slot
    bad.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError, match="big") as excinfo:
        TensorDeserializer(bad, verify_hash=True)
    assert excinfo.value.tensor == "big"


def test_encrypted_files_decrypt_in_the_ring(tmp_path, standin):
    sd = {"big": random_tensor((9 * MIB // 4 + 3,), torch.float32, 1), "small": random_tensor((7,), torch.int64, 2)}
    path = tmp_path / "enc.tensors"
    params = EncryptionParams.random()
    with tensorstream.TensorSerializer(path, encryption=params) as writer:
        writer.write_state_dict(sd)
    standin("host", ring_mb=8, slots=2)  # 4 MiB slots hold two 2 MiB crypto chunks
    with TensorDeserializer(path, encryption=DecryptionParams.from_key(params.key), verify_hash=True) as loaded:
        _check(loaded, sd)
    with pytest.raises(CryptographyError, match="wrong key"):
        TensorDeserializer(path, encryption=DecryptionParams.from_key(bytes(32)))
    standin("host", ring_mb=4, slots=4)  # 1 MiB slots: a 2 MiB chunk cannot be opened in one
    with pytest.raises(ValueError, match="TENSORSTREAM_RING_MB"):
        TensorDeserializer(path, encryption=DecryptionParams.from_key(params.key))


def _corrupt(path, tmp_path):
    data = bytearray(path.read_bytes())
    index = _core.read_index(_core.MemorySource(bytes(data)))
    mid = next(e for e in index.entries if e.name == b"mid")
    data[mid.data_offset + 5] ^= 1
    out = tmp_path / "corrupt.tensors"
    out.write_bytes(bytes(data))
    return out, {"verify_hash": True}, HashMismatchError


def _copy_of(path, tmp_path):
    out = tmp_path / "copy.tensors"
    out.write_bytes(path.read_bytes())
    return out, {}, (FormatError, OSError)


@pytest.mark.parametrize(
    "failure, lazy",
    [("corrupt", False), ("corrupt", True), ("copy", False), ("copy", True), ("truncate", True)],
)
def test_an_error_in_the_middle_leaves_nothing_behind(model, tmp_path, standin, failure, lazy):
    path, _ = model
    spec, kwargs, error = "host,delay_us=50", {}, CudaError
    if failure == "copy":
        spec += ",fail_copy_at=5"
    else:
        path, kwargs, error = (_corrupt if failure == "corrupt" else _copy_of)(path, tmp_path)
    standin("host", ring_mb=1)
    with TensorDeserializer(model[0]):  # what a process keeps (workers, the pool's reaper) is there
        pass
    standin(spec, ring_mb=1)
    threads, fds = _threads(), _fds()
    if lazy:
        loaded = TensorDeserializer(path, lazy_load=True, **kwargs)
        if failure == "truncate":  # the file shrinks after its index was read
            os.truncate(path, os.path.getsize(path) - 200_000)
        name = {"copy": "big", "corrupt": "mid", "truncate": "mid"}[failure]
        for _ in range(2):  # a failed tensor is never cached half-filled: it fails again
            with pytest.raises(error):
                loaded[name]
        assert not loaded._cache
        loaded.close()
        del loaded
    else:
        with pytest.raises(error):
            TensorDeserializer(path, **kwargs)
    gc.collect()
    assert _threads() <= threads  # nothing left behind (a kept ring or connection may close meanwhile)
    assert _fds() <= fds


def test_closing_while_loading_stops_the_load(model, standin):
    path, sd = model
    standin("host,delay_us=3000", ring_mb=1, slots=8)  # 128 KiB slots: about 100 ms of copies
    threads = _threads()
    loaded = TensorDeserializer(path, lazy_load=True)
    outcome: dict = {}

    def access():
        try:
            outcome["tensor"] = loaded["big"]
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome["error"] = exc

    worker = threading.Thread(target=access)
    worker.start()
    time.sleep(0.03)
    start = time.perf_counter()
    loaded.close()
    worker.join(5)
    assert not worker.is_alive()
    assert time.perf_counter() - start < 2
    assert "tensor" not in outcome
    assert isinstance(outcome["error"], LoadCancelled) and "cancelled" in str(outcome["error"])
    with pytest.raises(ValueError, match="closed"):
        loaded["s1"]
    del loaded, outcome
    gc.collect()
    assert _threads() == threads  # the loader's copy thread went with it


def test_ctrl_c_stops_a_ring_load_and_the_deserializer_stays_usable(model, standin):
    path, sd = model
    standin("host,delay_us=20000", ring_mb=1, slots=8)  # 24 copies of 20 ms for the big tensor
    loading = threading.Event()

    def handler(signum, frame):
        if loading.is_set():  # a late signal must not escape the test
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with TensorDeserializer(path, lazy_load=True) as lazy:
            timer = threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT))
            loading.set()
            timer.start()
            start = time.perf_counter()
            with pytest.raises(KeyboardInterrupt):
                lazy["big"]
            loading.clear()
            timer.join()
            assert time.perf_counter() - start < 0.4  # stopped, not finished (about 0.5 s)
            assert not lazy._cache
            assert raw_bytes(lazy["big"]) == raw_bytes(sd["big"])  # the next load runs whole
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("lanes", ["1", "2"])
def test_http_sources_fill_the_ring_too(model, nginx, standin, monkeypatch, lanes):
    path, sd = model
    served = nginx.root / "ring-model.tensors"
    served.write_bytes(path.read_bytes())
    monkeypatch.setenv("TENSORSTREAM_RING_LANES", lanes)
    standin("host,delay_us=20", ring_mb=1)
    with TensorDeserializer(nginx.url(served.name), verify_hash=True) as loaded:
        assert loaded.io_backend == "http"
        _check(loaded, sd)


def test_lazy_loads_and_dtype_on_the_ring_path(model, standin):
    path, sd = model
    standin("host", ring_mb=1)
    with TensorDeserializer(path, lazy_load=True, dtype=torch.float16) as lazy:
        assert lazy.total_bytes_read == 0
        got = lazy["big"]
        assert lazy.total_bytes_read == sd["big"].numel() * 4
        assert got.dtype == torch.float16 and raw_bytes(got) == raw_bytes(sd["big"].half())
        assert lazy["s2"].dtype == torch.int16  # integers are not cast
        assert lazy["s1"].dtype == torch.float16


# Peak memory of the child itself: VmHWM after resetting it to the current RSS (ru_maxrss would
# start from the test runner's peak, inherited across fork and exec).
MEMORY_HELPERS = textwrap.dedent(
    """
    def status_kib(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    """
)

PEAK_SCRIPT = MEMORY_HELPERS + textwrap.dedent(
    """
    import json, sys
    from tensorstream import _core, _loading
    path, ring = sys.argv[1], int(sys.argv[2])
    source = _core.FileSource(path)
    index = _core.read_index(source)
    records = _loading.describe(index.entries, index.file_size)
    loader = _core.DeviceLoader(source, copier="host", ring_bytes=ring, discard=True)
    fake = 1 << 44  # never written: the stand-in discards what it copies
    requests = [(r.pos, fake + r.pos * (1 << 32), r.nbytes) for r in records]
    reset_peak()
    before = status_kib("VmRSS")
    loader.load(index, requests, True)
    after = status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "after_kib": after, "stats": loader.stats()}))
    """
)


def test_peak_memory_is_the_ring_not_the_model(tmp_path):
    """A file 12x the ring, read and hash-checked through it: the process grows by about the ring."""
    path = tmp_path / "large.tensors"
    tensorstream.save({f"w{i}": torch.full((4 * MIB,), i, dtype=torch.float32) for i in range(6)}, path)
    ring = 8 * MIB
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), str(ring)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    grown_mib = (out["after_kib"] - out["before_kib"]) / 1024
    assert out["stats"]["bytes"] == 96 * MIB and out["stats"]["turns"] >= 12
    assert grown_mib <= ring / MIB + 24, grown_mib


def test_standin_and_ring_settings_are_checked(model, monkeypatch):
    path, _ = model
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "gpu")
    with pytest.raises(ValueError, match="TENSORSTREAM_DEVICE_STANDIN"):
        TensorDeserializer(path)
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host,delay=3")
    with pytest.raises(ValueError, match="bad option"):
        TensorDeserializer(path)
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    monkeypatch.setenv("TENSORSTREAM_RING_MB", "lots")
    with pytest.raises(ValueError, match="TENSORSTREAM_RING_MB"):
        TensorDeserializer(path)
    monkeypatch.delenv("TENSORSTREAM_RING_MB")  # a bad variable fails every call until it is fixed
    with pytest.raises(ValueError, match="copier"):
        _core.DeviceLoader(_core.FileSource(str(path)), copier="tpu", ring_bytes=MIB)


def test_cpu_loads_do_not_use_the_ring_by_default(model, monkeypatch):
    path, sd = model
    monkeypatch.delenv("TENSORSTREAM_DEVICE_STANDIN", raising=False)
    with TensorDeserializer(path, lazy_load=True) as loaded:
        assert isinstance(loaded._loader, _core.Loader)


# --------------------------------------------------------------------------------------------
# Without a GPU: clear errors, and nothing else changes


def _cuda_usable() -> bool:
    return bool(_core.cuda_driver()["available"]) and torch.cuda.is_available()


needs_no_gpu = pytest.mark.skipif(_cuda_usable(), reason="this machine has a usable GPU")


@needs_no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1", 0, torch.device("cuda", 0)])
def test_asking_for_cuda_without_one_says_why(model, device):
    path, _ = model
    with pytest.raises(CudaUnavailableError) as excinfo:
        TensorDeserializer(path, device=device)
    message = str(excinfo.value)
    assert "libcuda.so.1" in message or "device" in message or "torch" in message
    assert isinstance(excinfo.value, RuntimeError) and isinstance(excinfo.value, CudaError)


def test_cuda_driver_report_is_consistent():
    info = _core.cuda_driver()
    assert set(info) == {"available", "error", "driver_version", "devices"}
    assert info["available"] == (info["error"] == "")
    if not info["available"]:
        assert info["devices"] == 0


def test_a_library_without_the_driver_api_is_refused_by_name(tmp_path):
    code = "from tensorstream import _core; print(_core.cuda_driver()['error'])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TENSORSTREAM_CUDA_LIBRARY": "libz.so.1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "no cuInit" in proc.stdout


@needs_no_gpu
def test_saving_stages_through_ordinary_memory_without_a_driver(tmp_path):
    with pytest.raises(CudaUnavailableError):
        _core.PinnedBuffer(1 << 20)
    stager = _staging.Stager(1 << 20)
    strided = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    copy = stager.copy(strided)
    assert copy.is_contiguous() and torch.equal(copy, strided) and stager.pinned_copies == 0


def test_cuda_errors_pickle():
    import pickle

    err = pickle.loads(pickle.dumps(CudaError("cuMemcpyHtoDAsync failed", code=700)))
    assert err.code == 700 and str(err) == "cuMemcpyHtoDAsync failed"
    assert isinstance(pickle.loads(pickle.dumps(CudaUnavailableError("none"))), CudaUnavailableError)


# --------------------------------------------------------------------------------------------
# On a GPU


@pytest.fixture
def gpu():
    if not _cuda_usable():
        why = f"no usable CUDA GPU: {_core.cuda_driver()['error'] or 'torch sees no CUDA device'}"
        if os.environ.get("TENSORSTREAM_TEST_REQUIRE_CUDA") == "1":  # the GPU check: a skip is a failure
            pytest.fail(why)
        pytest.skip(why)
    return torch.device("cuda", torch.cuda.current_device())


def _check_on(loaded, sd, device) -> None:
    assert sorted(loaded) == sorted(sd)
    for name, want in sd.items():
        got = loaded[name]
        assert got.device == device, name
        assert got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape), name
        if want.is_meta:
            assert not got.cpu().view(torch.uint8).any()
        else:
            assert raw_bytes(got) == raw_bytes(want), name


@pytest.mark.cuda
@pytest.mark.parametrize("verify", [False, True])
def test_cuda_load_matches_the_cpu_load(model, gpu, verify, monkeypatch):
    path, sd = model
    monkeypatch.setenv("TENSORSTREAM_RING_MB", "1")  # many slot turns even for this small file
    for device in ("cuda", f"cuda:{gpu.index}", gpu, gpu.index):
        with TensorDeserializer(path, device=device, verify_hash=verify) as loaded:
            _check_on(loaded, sd, gpu)


@pytest.mark.cuda
def test_cuda_dtype_casts_run_on_the_gpu(model, gpu):
    path, sd = model
    with TensorDeserializer(path, device=gpu, dtype=torch.float32) as loaded:
        assert loaded["s1"].dtype == torch.float32 and loaded["s1"].device == gpu
        assert raw_bytes(loaded["s1"]) == raw_bytes(sd["s1"].float())
        assert loaded["s2"].dtype == torch.int16  # not floating point: unchanged


@pytest.mark.cuda
def test_cuda_lazy_load_reads_on_first_access(model, gpu):
    path, sd = model
    with TensorDeserializer(path, device=gpu, lazy_load=True) as lazy:
        assert lazy.total_bytes_read == 0
        assert raw_bytes(lazy["big"]) == raw_bytes(sd["big"])
        assert lazy.total_bytes_read == sd["big"].numel() * 4
        assert lazy["big"].device == gpu


@pytest.mark.cuda
def test_cuda_encrypted_and_module_loads(tmp_path, gpu):
    sd = {"weight": random_tensor((5 * MIB // 4,), torch.float32, 3), "bias": random_tensor((9,), torch.float32, 4)}
    path = tmp_path / "enc.tensors"
    params = EncryptionParams.random()
    with tensorstream.TensorSerializer(path, encryption=params) as writer:
        writer.write_state_dict(sd)
    with TensorDeserializer(path, device=gpu, encryption=DecryptionParams.from_key(params.key), verify_hash=True) as d:
        _check_on(d, sd, gpu)
    module = torch.nn.Linear(4, 4)
    module.weight = torch.nn.Parameter(torch.empty(5 * MIB // 4))
    module.bias = torch.nn.Parameter(torch.empty(9))
    with TensorDeserializer(path, device=gpu, encryption=DecryptionParams.from_key(params.key)) as d:
        d.load_into_module(module)
    assert module.weight.device == gpu and raw_bytes(module.weight) == raw_bytes(sd["weight"])


@pytest.mark.cuda
def test_cuda_saving_from_the_gpu_round_trips(tmp_path, gpu):
    sd = {"a": random_tensor((1000, 33), torch.bfloat16, 5).to(gpu), "b": torch.arange(10, device=gpu)}
    path = tmp_path / "from-gpu.tensors"
    tensorstream.save(sd, path)
    with TensorDeserializer(path, device=gpu) as loaded:
        for name, want in sd.items():
            assert loaded[name].device == gpu and raw_bytes(loaded[name]) == raw_bytes(want)


@pytest.mark.cuda
def test_cuda_saving_reuses_one_pinned_buffer_batch_after_batch(tmp_path, gpu, monkeypatch):
    from tensorstream import serialization

    made = []

    class Recording(_staging.Stager):
        def __init__(self, capacity):
            super().__init__(capacity)
            made.append(self)

    monkeypatch.setattr(serialization, "_STAGING_BYTES", 1 << 20)
    monkeypatch.setattr(_staging, "Stager", Recording)
    sd = {f"t{i}": random_tensor((100_000 + i,), torch.float32, i).to(gpu) for i in range(12)}
    sd["conj"] = torch.randn(1000, dtype=torch.complex64, device=gpu).conj()
    sd["strided"] = torch.randn(300, 200, device=gpu).t()
    sd["huge"] = random_tensor((700_000,), torch.float32, 99).to(gpu)  # larger than the buffer
    path = tmp_path / "staged.tensors"
    tensorstream.save(sd, path)
    assert len(made) == 1 and made[0].pinned_copies >= 13 and made[0].capacity == 1 << 20
    with TensorDeserializer(path) as loaded:
        for name, want in sd.items():
            assert raw_bytes(loaded[name]) == raw_bytes(want.resolve_conj()), name


CUDA_PEAK_SCRIPT = MEMORY_HELPERS + textwrap.dedent(
    """
    import json, sys, torch, tensorstream
    path = sys.argv[1]
    torch.zeros(1, device="cuda")  # the CUDA context's own memory is not the load's
    reset_peak()
    before = status_kib("VmRSS")
    with tensorstream.TensorDeserializer(path, device="cuda", verify_hash=True) as d:
        total = sum(t.numel() * t.element_size() for t in d.values())
        first = float(d["w0"][0])
    after = status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "after_kib": after, "bytes": total, "first": first}))
    """
)


@pytest.mark.cuda
def test_cuda_peak_host_memory_is_the_ring_plus_a_little(tmp_path, gpu):
    """A model 8x the ring: the process grows by at most the ring + 300 MiB (the issue's target)."""
    path = tmp_path / "large.tensors"
    tensorstream.save({f"w{i}": torch.full((16 * MIB,), float(i + 1)) for i in range(8)}, path)  # 512 MiB
    ring_mb = 64
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TENSORSTREAM_RING_MB": str(ring_mb)}
    proc = subprocess.run([sys.executable, "-c", CUDA_PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bytes"] == 512 * MIB and out["first"] == 1.0
    assert (out["after_kib"] - out["before_kib"]) / 1024 <= ring_mb + 300


def test_the_shards_of_a_checkpoint_load_through_one_ring(standin, tmp_path):
    from safetensors.torch import save_file

    standin("host", ring_mb=64, slots=4)
    want = {f"layer.{i}.weight": random_tensor((256, 256), torch.float32, 40 + i) for i in range(6)}
    names = sorted(want)
    weight_map = {}
    for k, part in enumerate((names[:2], names[2:4], names[4:])):
        file = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file({n: want[n] for n in part}, str(tmp_path / file))
        weight_map.update({n: file for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with TensorDeserializer(str(tmp_path), device="cpu", lazy_load=True) as d:  # lazy: the loaders stay
        for name, t in want.items():
            assert_same(d[name], t)
        rings = [part.core.ring_bytes for part in d._loader.parts]
    assert rings == [64 << 20]  # one loader, one ring for every shard: not one ring per shard


def test_device_memory_is_checked_before_anything_is_allocated(monkeypatch):
    """The room check of a GPU load, with the device's figures faked (no GPU needed)."""
    GIB = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * GIB)  # 1 GiB cached, unused
    rec = lambda pos, nbytes, shape, meta=False: _loading.Record(  # noqa: E731
        pos, (f"t{pos}",), 0, torch.float32, shape, 0 if meta else nbytes, meta)
    device = torch.device("cuda:0")
    _ring.check_room(device, [rec(0, 2 * GIB, (GIB // 2,)), rec(1, 0, (GIB // 2,), meta=True)])  # 4 GiB fit
    with pytest.raises(MemoryError, match=r"needs 4\.00 GiB, but it has 4\.00 GiB free") as caught:
        _ring.check_room(device, [rec(0, 2 * GIB, (GIB // 2,)), rec(1, 0, (GIB // 2 + 1,), meta=True)])
    assert "nothing was allocated" in str(caught.value)
    # meta tensors count their zeros: a huge one is refused though it has no data in the file
    with pytest.raises(MemoryError):
        _ring.check_room(device, [rec(0, 0, (1 << 40,), meta=True)])


@pytest.mark.cuda
def test_cuda_meta_tensors_too_large_for_the_gpu_are_refused_before_loading(tmp_path, gpu):
    free, _ = torch.cuda.mem_get_info(gpu)
    elems = free // 4 + (1 << 28)  # more zeros than the GPU has room for
    path = tmp_path / "meta.tensors"
    tensorstream.save({"big": torch.empty(elems, device="meta"), "w": torch.ones(4)}, path)
    with pytest.raises(MemoryError, match="free of"):
        TensorDeserializer(path, device=gpu)
