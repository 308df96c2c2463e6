"""safetensors read through the same engine: files written by the safetensors package load as
``safetensors.torch.load_file`` loads them, through every loader and keyword; ``safe_open`` and
``load_file`` behave as the package's; hostile headers raise typed errors."""

from __future__ import annotations

import json
import os
import struct

import pytest
import safetensors
import safetensors.torch
import torch

import tensorstream
from _tensors import assert_same, random_tensor
from tensorstream import FormatError, TensorDeserializer
from tensorstream.safetensors import load_file


def _tensors():
    t = {
        "embed.weight": random_tensor((30, 70), torch.float16, 1),
        "attn.weight": random_tensor((64, 48), torch.bfloat16, 2),
        "attn.bias": random_tensor((48,), torch.float32, 3),
        "positions": random_tensor((77,), torch.int64, 5),
        "mask": random_tensor((9, 9), torch.bool, 6),
        "scalar": random_tensor((), torch.float64, 7),
        "empty": torch.empty(0, 4),
        "q8": random_tensor((16, 8), torch.float32, 8).to(torch.float8_e4m3fn),
        "q5": random_tensor((5, 3, 4), torch.float32, 9).to(torch.float8_e5m2),
        "u16": torch.arange(12, dtype=torch.int32).reshape(3, 4).to(torch.uint16),
        "c": random_tensor((6,), torch.complex64, 10),
    }
    return t


@pytest.fixture(scope="module")
def st_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    tensors = _tensors()
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt", "who": "tests"})
    return path, tensors


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """Three shards and an index.json, as save_pretrained lays them out."""
    folder = tmp_path_factory.mktemp("sharded")
    tensors = _tensors()
    names = list(tensors)
    weight_map = {}
    for i, part in enumerate([names[:4], names[4:8], names[8:]]):
        shard = f"model-0000{i + 1}-of-00003.safetensors"
        safetensors.torch.save_file({n: tensors[n] for n in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update((n, shard) for n in part)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder, tensors


def _same_as_package(got, path):
    want = safetensors.torch.load_file(str(path))
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert_same(got[name], tensor)


def test_format_is_picked_from_the_bytes(st_file, tmp_path):
    path, tensors = st_file
    renamed = tmp_path / "weights.tensors"  # the name says tensorizer; the bytes say safetensors
    renamed.write_bytes(path.read_bytes())
    with TensorDeserializer(renamed) as d:
        assert d.format == "safetensors"
        assert d.metadata == {"format": "pt", "who": "tests"}
        _same_as_package(dict(d.items()), path)
    tz = tmp_path / "model.safetensors"
    tensorstream.save(tensors, tz)
    with TensorDeserializer(tz) as d:
        assert d.format == "tensorizer" and d.metadata == {}


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_load_matches_the_package(st_file, lazy, check_engine):
    path, _ = st_file
    with TensorDeserializer(path, lazy_load=lazy) as d:
        check_engine(d)
        _same_as_package({n: d[n] for n in d.keys()}, path)


def test_ring_standin_matches_the_package(st_file, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    path, _ = st_file
    for lazy in (False, True):
        with TensorDeserializer(path, lazy_load=lazy) as d:
            _same_as_package({n: d[n] for n in d.keys()}, path)


def test_zero_copy(st_file):
    path, _ = st_file
    with TensorDeserializer(path, zero_copy=True) as d:
        _same_as_package(dict(d.items()), path)


def test_each_tensor_owns_its_storage(st_file):
    path, _ = st_file
    got = tensorstream.load(path)
    sizes = {n: t.untyped_storage().nbytes() for n, t in got.items()}
    assert sizes == {n: t.numel() * t.element_size() for n, t in got.items()}
    ptrs = [t.untyped_storage().data_ptr() for t in got.values() if t.numel()]
    assert len(set(ptrs)) == len(ptrs)


def test_filter_dtype_and_module(st_file):
    path, tensors = st_file
    got = tensorstream.load(path, filter_func=lambda n: n.startswith("attn."), dtype=torch.float32)
    assert sorted(got) == ["attn.bias", "attn.weight"]
    assert got["attn.weight"].dtype == torch.float32
    assert_same(got["attn.weight"], tensors["attn.weight"].float())
    module = torch.nn.Linear(70, 30, dtype=torch.float16)
    file = path.parent / "linear.safetensors"
    safetensors.torch.save_file(module.state_dict(), str(file))
    fresh = tensorstream.load_module(file, lambda: torch.nn.Linear(70, 30, dtype=torch.float16))
    for name, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)


def test_verify_hash_is_refused_not_faked(st_file):
    path, _ = st_file
    with pytest.raises(ValueError, match="no hashes"):
        TensorDeserializer(path, verify_hash=True)
    with TensorDeserializer(path, lazy_load=True) as d:
        with pytest.raises(ValueError, match="no hashes"):
            list(d.read_tensors(verify_hash=True))
        with pytest.raises(ValueError, match="no hashes"):
            d.verify_module(torch.nn.Linear(2, 2))


def test_sharded_index_folder_and_file(sharded):
    folder, tensors = sharded
    for where in (folder / "model.safetensors.index.json", folder, str(folder) + "/"):
        for lazy in (False, True):
            with TensorDeserializer(where, lazy_load=lazy) as d:
                assert d.format == "safetensors" and sorted(d.keys()) == sorted(tensors)
                for name, tensor in tensors.items():
                    assert_same(d[name], tensor)
    got = tensorstream.load(folder, filter_func=lambda n: n in ("mask", "c", "embed.weight"))
    assert sorted(got) == ["c", "embed.weight", "mask"]


def test_sharded_through_the_ring_standin(sharded, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    folder, tensors = sharded
    got = tensorstream.load(folder)
    for name, tensor in tensors.items():
        assert_same(got[name], tensor)


def _mapped_files() -> list[tuple[int, int, str]]:
    """(start, end, path) of this process's file mappings."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                out.append((lo, hi, fields[5].strip()))
    return out


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_sharded_zero_copy_slices_each_shards_mapping(sharded, lazy):
    """zero_copy over shards: every tensor is a slice of its own shard's mapping (no copy: its
    bytes lie at the shard's data in the page cache), owns its storage, and writing to it leaves
    the file as it was."""
    folder, tensors = sharded
    with TensorDeserializer(folder, zero_copy=True, lazy_load=lazy) as d:
        got = {name: d[name] for name in d.keys()}
    assert sorted(got) == sorted(tensors)
    mapped = _mapped_files()
    for name, tensor in tensors.items():
        assert_same(got[name], tensor)
        if tensor.numel():
            assert got[name].untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
            where = next(path for lo, hi, path in mapped if lo <= got[name].data_ptr() < hi)
            assert where.endswith(".safetensors") and where.startswith(str(folder)), (name, where)
    first = next(n for n, t in got.items() if t.numel() and t.is_floating_point())
    got[first].zero_()
    for shard in sorted(folder.glob("*.safetensors")):
        for name, tensor in safetensors.torch.load_file(str(shard)).items():
            assert_same(tensor, tensors[name])  # the file is unchanged by the write


def test_a_shard_cut_short_after_opening_names_the_shard_and_tensor(sharded, tmp_path):
    folder, tensors = sharded
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    with TensorDeserializer(tmp_path, lazy_load=True) as d:
        second = tmp_path / "model-00002-of-00003.safetensors"
        victim = next(n for n in safetensors.torch.load_file(str(second)) if tensors[n].numel())
        header = struct.unpack("<Q", second.read_bytes()[:8])[0]
        os.truncate(second, 8 + header)  # every tensor of the shard is gone
        with pytest.raises(FormatError) as caught:
            d[victim]
    assert caught.value.tensor == victim and second.name in str(caught.value)


def test_shard_folder_without_index(tmp_path):
    a, b = {"x": torch.arange(4.0)}, {"y": torch.ones(2, 2)}
    safetensors.torch.save_file(a, str(tmp_path / "a.safetensors"))
    safetensors.torch.save_file(b, str(tmp_path / "b.safetensors"))
    assert sorted(tensorstream.load(tmp_path)) == ["x", "y"]
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(FormatError, match="both") as info:
        tensorstream.load(tmp_path)
    assert info.value.tensor == "x"


@pytest.mark.parametrize(
    "weight_map", [{"x": "../x.safetensors"}, {"x": "/etc/passwd"}, {"x": "http://h/x"}, {"x": 3}, {}],
)
def test_index_json_that_points_outside_is_refused(tmp_path, weight_map):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(FormatError):
        TensorDeserializer(tmp_path)


# safe_open and load_file side by side with the package -------------------------------------


def test_load_file_matches_the_package(st_file):
    path, _ = st_file
    got = load_file(path)
    assert isinstance(got, dict)
    _same_as_package(got, path)


def test_safe_open_matches_the_package(st_file):
    path, _ = st_file
    with safetensors.safe_open(str(path), framework="pt") as want, tensorstream.safe_open(path) as got:
        assert got.keys() == list(want.keys())
        assert got.metadata() == want.metadata()
        for name in want.keys():
            assert_same(got.get_tensor(name), want.get_tensor(name))
            ws, gs = want.get_slice(name), got.get_slice(name)
            assert gs.get_shape() == ws.get_shape() and gs.get_dtype() == ws.get_dtype()
        a, b = got.get_tensor("mask"), got.get_tensor("mask")
        assert a.data_ptr() != b.data_ptr()  # a new tensor on each call, as the package gives
        with pytest.raises(KeyError, match="nope"):
            got.get_tensor("nope")
        with pytest.raises(KeyError):
            got.get_slice("nope")


SLICES = [
    (slice(None),), (slice(2, 5),), (1,), (-1,), (slice(1, None, 2),), (Ellipsis, 2), (slice(None), slice(1, 3)),
    (2, slice(None, None, 3)), (slice(None, 2), 1, Ellipsis), (slice(10, 10),), (slice(None), slice(None)),
]


@pytest.mark.parametrize("index", SLICES, ids=[repr(s) for s in SLICES])
def test_slices_match_the_package(tmp_path, index):
    tensors = {
        "m": random_tensor((7, 6, 5), torch.bfloat16, 11),
        "f8": random_tensor((8, 9, 4), torch.float32, 12).to(torch.float8_e4m3fn),
        "i": torch.arange(7 * 6 * 3, dtype=torch.int32).reshape(7, 6, 3),
    }
    path = tmp_path / "s.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    with safetensors.safe_open(str(path), framework="pt") as want, tensorstream.safe_open(path) as got:
        for name in tensors:
            assert_same(got.get_slice(name)[index], want.get_slice(name)[index])


def test_first_dimension_slice_reads_whole_rows_only(tmp_path, monkeypatch):
    t = torch.arange(100 * 8, dtype=torch.float32).reshape(100, 8)
    path = tmp_path / "rows.safetensors"
    safetensors.torch.save_file({"t": t}, str(path))
    reads = []
    real = tensorstream._native.read_many

    def counting(source, ranges):
        reads.append([(offset, len(buf)) for offset, buf in ranges])
        return real(source, ranges)

    monkeypatch.setattr(tensorstream._native, "read_many", counting)
    with tensorstream.safe_open(path) as f:
        assert torch.equal(f.get_slice("t")[10:20], t[10:20])
        assert [[n for _, n in call] for call in reads] == [[10 * 8 * 4]]
        reads.clear()
        # Two runs of 8 bytes, 24 bytes apart: read as one range, not two.
        assert torch.equal(f.get_slice("t")[3:5, 1:3], t[3:5, 1:3])
        assert [[n for _, n in call] for call in reads] == [[8 + 24 + 8]]


def test_slice_errors(st_file):
    path, _ = st_file
    with tensorstream.safe_open(path) as f:
        s = f.get_slice("attn.weight")
        with pytest.raises(IndexError):
            s[64]
        with pytest.raises(IndexError):
            s[0, 0, 0]
        with pytest.raises(ValueError):
            s[::-1]
        with pytest.raises(TypeError):
            s["a"]
    with pytest.raises(ValueError, match="framework"):
        tensorstream.safe_open(path, framework="np")


# Hostile headers ----------------------------------------------------------------------------


def _file(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


GOOD = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'

HOSTILE = {
    "truncated data": (_file(GOOD, b"\0" * 7), "a", "data_offsets"),
    "huge length": (struct.pack("<Q", 1 << 40) + b"{}", None, "header_len"),
    "length past the end": (struct.pack("<Q", 100) + b"{}", None, "header_len"),
    "bad json": (_file(b'{"a":{"dtype":"F32",}}'), None, "header"),
    "not utf-8": (_file(b'{"\xff":1}'), None, "header"),
    "duplicate key": (_file(GOOD[:-1] + b',"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', b"\0" * 16),
                      None, "header"),
    "overlap": (_file(GOOD[:-1] + b',"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}', b"\0" * 8), "b",
                "data_offsets"),
    "gap": (_file(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', b"\0" * 12), "a", "data_offsets"),
    "unknown dtype": (_file(b'{"a":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8), "a", "dtype"),
    "shape mismatch": (_file(b'{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', b"\0" * 8), "a",
                       "data_offsets"),
    "negative offset": (_file(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}'), "a", "data_offsets"),
    "metadata not strings": (_file(b'{"__metadata__":{"k":[1]}}'), None, "__metadata__"),
    "shape overflow": (_file(b'{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}}',
                             b"\0" * 8), "a", "shape"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_header_is_a_typed_error(case):
    raw, tensor, field = HOSTILE[case]
    with pytest.raises(FormatError) as info:
        TensorDeserializer(raw)
    assert info.value.field == field, info.value
    assert info.value.tensor == tensor, info.value


def test_truncated_at_every_header_byte(st_file):
    path, _ = st_file
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    for cut in [*range(1, 8 + n + 1, 7), 8 + n, len(raw) - 1]:
        with pytest.raises(FormatError):
            TensorDeserializer(bytearray(raw[:cut]))
