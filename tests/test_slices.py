"""Slices of stored tensors: ``TensorDeserializer.get_slice``, ``slices=`` plans and ``shard_plan``,
for ``.tensors`` and safetensors files over a local file, nginx and moto S3. Every result is
compared with the same index applied to the whole tensor; bytes fetched are counted at the source
and, over HTTP, in nginx's access log."""

from __future__ import annotations

import io
import json

import pytest
import safetensors
import safetensors.torch
import torch

import tensorstream
from _tensors import assert_same, random_tensor
from tensorstream import TensorDeserializer, _core, _native, _slices, shard_plan
from test_contract import medium  # noqa: F401 - the contract suite's fixture over media

FORMATS = ["tensors", "safetensors"]


def _tensors(fmt: str = "tensors") -> dict[str, torch.Tensor]:
    """Mixed dtypes (bf16 and float8 included), 0-D to 3-D, odd sizes."""
    out = {
        "w3": random_tensor((6, 7, 5), torch.bfloat16, 1),
        "w2": random_tensor((13, 9), torch.float32, 2),
        "v": random_tensor((11,), torch.float16, 3),
        "i": random_tensor((5, 3), torch.int64, 4),
        "m": random_tensor((4, 5, 3), torch.bool, 5),
        "q": random_tensor((7, 6), torch.float32, 6).to(torch.float8_e4m3fn),
        "s": random_tensor((), torch.float64, 7),
    }
    if fmt == "tensors":
        out["e"] = random_tensor((0, 4), torch.int32, 8)
    return out


def _raw(tensors: dict[str, torch.Tensor], fmt: str) -> bytes:
    if fmt == "safetensors":
        return safetensors.torch.save(tensors)
    buf = io.BytesIO()
    with tensorstream.TensorSerializer(buf) as s:
        s.write_state_dict(tensors)
    return buf.getvalue()


def _publish(medium, tensors, fmt: str, name: str = "m") -> str:
    return medium.publish(f"{name}.{fmt}", _raw(tensors, fmt))


def _owns_its_bytes(t: torch.Tensor) -> None:
    assert t.is_contiguous()
    assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


INDEXES = [
    0, -1, 2, slice(None), slice(1, 4), slice(None, None, 2), slice(1, None, 3), slice(5, 2), slice(-3, None),
    Ellipsis, (), None, (Ellipsis, 1), (Ellipsis, slice(None, None, 2)), (slice(None), 1), (1, slice(None, None, 2)),
    (None, slice(1, 3)), (slice(None, None, 2), Ellipsis, slice(1, None, 2)), (0, 0, 0), (-1, Ellipsis, None),
    (slice(1, 3), slice(2, 5), slice(None, None, 4)), (slice(None), slice(2, 3), slice(1, 4)),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_index_form_matches_slicing_the_whole_tensor(medium, fmt):
    tensors = _tensors(fmt)
    where = _publish(medium, tensors, fmt)
    checked = 0
    with TensorDeserializer(where, lazy_load=True, device="cpu") as d:
        assert d.format == ("tensorizer" if fmt == "tensors" else "safetensors")
        for name, full in tensors.items():
            s = d.get_slice(name)
            assert s.get_shape() == list(full.shape)
            assert s.get_dtype() == tensorstream._dtypes.safetensors_name(full.dtype)
            for index in INDEXES:
                try:
                    want = full[index]
                except IndexError:
                    continue  # more indices than this tensor has dimensions: see the error tests
                got = s[index]
                assert_same(got, want)
                _owns_its_bytes(got)
                checked += 1
        assert not d._cache  # slices are not kept
    assert checked > 100


@pytest.mark.parametrize("path", ["window", "bounce"])
def test_every_index_form_through_the_window_and_bounce_buffers(tmp_path, monkeypatch, path):
    """Small tensors take neither path by default: force each, for every index form."""
    if path == "window":
        monkeypatch.setattr(_slices, "MAX_RUNS", 0)
    else:
        monkeypatch.setattr(_slices, "LOCAL_GAP", 1 << 20)
    tensors = _tensors()
    file = tmp_path / "m.tensors"
    file.write_bytes(_raw(tensors, "tensors"))
    with TensorDeserializer(file, lazy_load=True, device="cpu") as d:
        for name, full in tensors.items():
            for index in INDEXES:
                try:
                    want = full[index]
                except IndexError:
                    continue
                got = d.get_slice(name)[index]
                assert_same(got, want)
                _owns_its_bytes(got)


def test_many_runs_and_nearby_runs(tmp_path):
    """Past MAX_RUNS runs a slice reads the span it covers; runs closer than a page are merged."""
    full = random_tensor((5000, 8), torch.float32, 11)
    path = tmp_path / "tall.safetensors"
    safetensors.torch.save_file({"t": full}, str(path))
    with TensorDeserializer(path, lazy_load=True, device="cpu") as d:
        for index in [(slice(None), slice(1, 3)), (slice(None, None, 2), slice(None, None, 3)), (slice(7, 4900, 5), 4)]:
            assert_same(d.get_slice("t")[index], full[index])
    lay = _slices.layout(_slices.select((slice(None), slice(1, 3)), (5000, 8)), (5000, 8), 4)
    assert lay.window == (5000, 8) and lay.reads == [(4, 4 * (4999 * 8 + 2), 4)]  # first to last byte
    lay = _slices.layout(_slices.select((slice(10, 20), 1), (5000, 8)), (5000, 8), 4)
    assert lay.window is None and [n for _, n, _ in lay.reads] == [4] * 10
    reads = [(o, n, bytearray(n)) for o, n, _ in lay.reads]
    ranges, copies = _slices.coalesce(reads, gap=_slices.LOCAL_GAP)
    assert [(o, len(b)) for o, b in ranges] == [(10 * 32 + 4, 9 * 32 + 4)] and len(copies) == 10
    ranges, copies = _slices.coalesce(reads, gap=16)
    assert len(ranges) == 10 and not copies  # 28 bytes apart: each straight into place


# Bytes fetched ------------------------------------------------------------------------------------


def _big_tensors() -> dict[str, torch.Tensor]:
    """About 3.6 MB; every tensor over 128 KiB, so that the parts other ranks need lie farther
    apart than a remote read merges across (``_slices.REMOTE_GAP``)."""
    return {
        "embed": random_tensor((512, 1024), torch.float32, 21),
        "proj": random_tensor((384, 1001), torch.bfloat16, 22),
        "conv": random_tensor((130, 20, 63), torch.float16, 23),
        "ids": random_tensor((40001,), torch.int64, 24),
        "mask": random_tensor((401, 410), torch.bool, 25),
    }


@pytest.fixture
def counted(monkeypatch):
    """Every ``read_many`` call of the slice reader, as the lengths of the ranges it asked for."""
    calls: list[list[int]] = []
    real = _native.read_many

    def counting(source, ranges):
        calls.append([memoryview(buf).nbytes for _, buf in ranges])
        return real(source, ranges)

    monkeypatch.setattr(_native, "read_many", counting)
    return calls


def _log_bytes(nginx, name: str) -> int:
    """Body bytes nginx sent for ``name``, summed over its access log."""
    total = 0
    for line in nginx.access_log.read_text().splitlines():
        request = line.split('"')[1] if '"' in line else ""
        if f"/{name} " in request:
            total += int(line.split('"')[2].split()[1])
    return total


@pytest.mark.parametrize("fmt", FORMATS)
def test_quarter_of_the_first_dimension_reads_under_30_percent(medium, fmt, counted):
    tensors = _big_tensors()
    raw = _raw(tensors, fmt)
    where = medium.publish(f"big.{fmt}", raw)
    name = where.rsplit("/", 1)[-1]
    before = _log_bytes(medium.nginx, name) if medium.kind == "http" else 0
    with TensorDeserializer(where, device="cpu", slices=shard_plan(1, 4)) as d:
        for key, full in tensors.items():
            want = torch.tensor_split(full, 4, 0)[1]
            assert_same(d[key], want)
            _owns_its_bytes(d[key])
        fetched = d.total_bytes_read
        assert d.stats.bytes == fetched and d.stats.reads == len(counted[0])
    assert len(counted) == 1  # one engine run for the whole load
    assert sum(counted[0]) == fetched
    data = sum(t.numel() * t.element_size() for t in tensors.values())
    assert data // 4 <= fetched <= 0.3 * len(raw)
    if medium.kind == "http":
        # On the wire: what the sliced load cost beyond opening the file (a size probe and one
        # read of the header and index, up to 256 KiB, that any load pays).
        sent = _log_bytes(medium.nginx, name) - before
        with TensorDeserializer(where, device="cpu", lazy_load=True):
            pass
        opening = _log_bytes(medium.nginx, name) - before - sent
        assert data // 4 <= sent - opening <= 0.3 * len(raw)
        with TensorDeserializer(where, device="cpu"):  # the measure can tell a full load apart
            pass
        assert _log_bytes(medium.nginx, name) - before - sent - 2 * opening >= data


# Plans over ranks -------------------------------------------------------------------------------

RULE = {"w3": 2, "w2": 1, "v": 0, "i": 0, "m": 1, "q": 0, "s": None, "e": 1}


def _ints(t: torch.Tensor) -> torch.Tensor:
    """The same bytes as an integer tensor of the same shape (for torch.cat of any dtype)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("fmt", FORMATS)
def test_plan_over_ranks_reassembles(medium, fmt, world):
    tensors = _tensors(fmt)
    where = _publish(medium, tensors, fmt)
    parts = [tensorstream.load(where, device="cpu", slices=shard_plan(r, world, dim=lambda n, s: RULE[n]))
             for r in range(world)]
    for name, full in tensors.items():
        dim = RULE[name]
        for rank, part in enumerate(parts):
            assert_same(part[name], full if dim is None else torch.tensor_split(full, world, dim)[rank])
            _owns_its_bytes(part[name])
        if dim is not None:
            whole = torch.cat([_ints(p[name]) for p in parts], dim)
            assert torch.equal(whole, _ints(full))


def test_int_dim_splits_what_has_it_and_reads_the_rest_whole(tmp_path):
    tensors = _tensors()
    path = tmp_path / "m.tensors"
    path.write_bytes(_raw(tensors, "tensors"))
    for dim in (0, 1, -1):
        for rank in range(3):
            got = tensorstream.load(path, device="cpu", slices=shard_plan(rank, 3, dim))
            for name, full in tensors.items():
                has = -full.dim() <= dim < full.dim()
                assert_same(got[name], torch.tensor_split(full, 3, dim)[rank] if has else full)


def test_lazy_plan_dtype_and_eager_get_slice(tmp_path, counted):
    tensors = _tensors()
    path = tmp_path / "m.tensors"
    path.write_bytes(_raw(tensors, "tensors"))
    plan = shard_plan(0, 2)
    with TensorDeserializer(path, device="cpu", lazy_load=True, slices=plan, dtype=torch.float16) as d:
        assert_same(d["w2"], torch.tensor_split(tensors["w2"], 2)[0].half())
        assert_same(d["i"], torch.tensor_split(tensors["i"], 2)[0])  # not floating point: not cast
        assert len(counted) == 2
        # get_slice is of the stored tensor, whatever the plan.
        assert_same(d.get_slice("w2")[10:], tensors["w2"][10:].half())
    counted.clear()
    with TensorDeserializer(path, device="cpu") as d:  # eager: the file is released after loading
        assert_same(d.get_slice("w3")[1, ::2], tensors["w3"][1, ::2])  # sliced from memory
        assert not counted
    with TensorDeserializer(path, device="cpu", lazy_load=True) as d:
        s = d.get_slice("w3")
    with pytest.raises(ValueError, match="closed"):
        s[0]


def test_sharded_checkpoint_reads_each_shard_once(tmp_path, counted):
    tensors = _tensors("safetensors")
    names = list(tensors)
    weight_map = {}
    for i, part in enumerate([names[:3], names[3:]]):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        safetensors.torch.save_file({n: tensors[n] for n in part}, str(tmp_path / shard))
        weight_map.update((n, shard) for n in part)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    got = tensorstream.load(tmp_path, device="cpu", slices=shard_plan(1, 2))
    for name, full in tensors.items():
        assert_same(got[name], torch.tensor_split(full, 2)[1] if full.dim() else full)
    assert len(counted) == 2  # one read_many per shard, run side by side


def test_load_into_module_with_a_plan(tmp_path):
    torch.manual_seed(0)
    full = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.Linear(12, 5))
    path = tmp_path / "mlp.tensors"
    tensorstream.save(full, path)
    rule = {"0.weight": 0, "0.bias": 0, "1.weight": 1, "1.bias": None}  # column- then row-parallel
    for rank in range(2):
        part = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 5))
        with TensorDeserializer(path, device="cpu", slices=shard_plan(rank, 2, dim=lambda n, s: rule[n])) as d:
            d.load_into_module(part, strict=True)
        assert torch.equal(part[0].weight, full[0].weight[6 * rank:6 * rank + 6])
        assert torch.equal(part[1].weight, full[1].weight[:, 6 * rank:6 * rank + 6])
        assert torch.equal(part[1].bias, full[1].bias)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with TensorDeserializer(path, device="cpu", slices=shard_plan(0, 2)) as d:
            d.load_into_module(full, strict=True)


def test_device_standin(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    tensors = _tensors()
    path = tmp_path / "m.tensors"
    path.write_bytes(_raw(tensors, "tensors"))
    with TensorDeserializer(path, device="cpu", slices=shard_plan(1, 2)) as d:
        for name, full in tensors.items():
            assert_same(d[name], torch.tensor_split(full, 2)[1] if full.dim() else full)


# Whole tensors first: encryption and hashes --------------------------------------------------------


@pytest.mark.parametrize("standin", [False, True], ids=["cpu", "ring"])
def test_encrypted_files_are_read_whole_then_sliced(tmp_path, monkeypatch, standin, counted):
    if standin:
        monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    tensors = _tensors()
    params = tensorstream.EncryptionParams.random()
    path = tmp_path / "enc.tensors"
    with tensorstream.TensorSerializer(path, encryption=params) as s:
        s.write_state_dict(tensors)
    key = tensorstream.DecryptionParams.from_key(params.key)
    with TensorDeserializer(path, device="cpu", encryption=key, slices=shard_plan(0, 2, dim=-1)) as d:
        for name, full in tensors.items():
            assert_same(d[name], torch.tensor_split(full, 2, -1)[0] if full.dim() else full)
            _owns_its_bytes(d[name])
    with TensorDeserializer(path, device="cpu", encryption=key, lazy_load=True, slices=shard_plan(1, 2)) as d:
        assert_same(d["w3"], tensors["w3"][3:])
        assert_same(d.get_slice("w3")[:, 2:4, ::2], tensors["w3"][:, 2:4, ::2])  # of the stored tensor
        assert_same(d.get_slice("w2")[::3, 1], tensors["w2"][::3, 1])
        assert list(d._cache) == [("w3",)]
    assert not counted  # decryption runs in the core's loader, never through byte ranges


def test_verify_hash_checks_the_whole_tensor_behind_a_slice(tmp_path):
    tensors = _tensors()
    raw = _raw(tensors, "tensors")
    entry = next(e for e in _core.read_index(_core.MemorySource(raw)).entries if e.name == b"w2")
    bad = bytearray(raw)
    bad[entry.data_offset + entry.data_length - 1] ^= 0x10  # in the last row
    good_path, bad_path = tmp_path / "good.tensors", tmp_path / "bad.tensors"
    good_path.write_bytes(raw)
    bad_path.write_bytes(bytes(bad))
    with TensorDeserializer(good_path, device="cpu", lazy_load=True, verify_hash=True) as d:
        assert_same(d.get_slice("w2")[:2], tensors["w2"][:2])
    with TensorDeserializer(bad_path, device="cpu", lazy_load=True, verify_hash=True) as d:
        with pytest.raises(tensorstream.HashMismatchError):
            d.get_slice("w2")[:2]  # the damaged byte is outside the slice, yet found
    with pytest.raises(tensorstream.HashMismatchError):
        TensorDeserializer(bad_path, device="cpu", verify_hash=True, slices=shard_plan(0, 4))
    with TensorDeserializer(bad_path, device="cpu", lazy_load=True) as d:  # without: only the bytes asked for
        assert_same(d.get_slice("w2")[:2], tensors["w2"][:2])


# Errors ---------------------------------------------------------------------------------------------

BAD = [5, -6, (0, 0, 0, 0), (0, 3), (Ellipsis, 9), slice(None, None, 0), slice(None, None, -1), (0, slice(3, 0, -1))]


@pytest.mark.parametrize("index", BAD, ids=[repr(b) for b in BAD])
def test_bad_indexes_raise_what_safetensors_raises(tmp_path, index):
    full = random_tensor((5, 3, 4), torch.bfloat16, 31)
    path = tmp_path / "e.safetensors"
    safetensors.torch.save_file({"t": full}, str(path))
    with safetensors.safe_open(str(path), framework="pt") as f:
        with pytest.raises(Exception) as theirs:
            f.get_slice("t")[index]
    assert theirs.type in (IndexError, ValueError)
    tensors_path = tmp_path / "e.tensors"
    tensorstream.save({"t": full}, tensors_path)
    for where in (path, tensors_path):
        with TensorDeserializer(where, lazy_load=True, device="cpu") as d:
            with pytest.raises(theirs.type):
                d.get_slice("t")[index]
        with tensorstream.safe_open(where) as f:
            with pytest.raises(theirs.type):
                f.get_slice("t")[index]
        with pytest.raises(theirs.type, match="'t'"):  # a plan's bad index names the tensor
            TensorDeserializer(where, device="cpu", slices=lambda name, shape: index)


def test_unknown_names_and_bad_plans(tmp_path):
    path = tmp_path / "m.tensors"
    path.write_bytes(_raw(_tensors(), "tensors"))
    with TensorDeserializer(path, lazy_load=True, device="cpu") as d:
        with pytest.raises(KeyError, match="nope"):
            d.get_slice("nope")
        with pytest.raises(TypeError):
            d.get_slice("w2")["a"]
    with pytest.raises(TypeError, match="callable"):
        TensorDeserializer(path, device="cpu", slices=(slice(0, 2),))
    with pytest.raises(ValueError, match="zero_copy"):
        TensorDeserializer(path, device="cpu", zero_copy=True, slices=shard_plan(0, 2))
    with pytest.raises(IndexError, match="'v'"):
        TensorDeserializer(path, device="cpu", slices=shard_plan(0, 2, dim=lambda n, s: 1))
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="rank"):
            shard_plan(rank, world)
    with pytest.raises(TypeError):
        shard_plan(0, 2, dim=1.0)
