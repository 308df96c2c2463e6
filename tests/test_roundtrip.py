"""Save with tensorstream, load with tensorstream, through both file engines."""

from __future__ import annotations

import concurrent.futures
import gc
import io
import pickle

import pytest
import torch

import tensorstream
from tensorstream import TensorDeserializer, TensorSerializer, TensorType, _core

import _layout
from _tensors import ALL_DTYPES, COMPLEX, FLOATS, INTS, OPAQUE, assert_same, assert_same_tree, random_tensor

SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (1, 2, 3, 1, 2)]
_ENGINE_ARG = {"io_uring": "uring", "posix": "posix"}  # Loader(backend=...) per engine


def _views(dtype: torch.dtype) -> dict:
    """Non-contiguous inputs: transposed, strided, expanded and offset views."""
    base = random_tensor((6, 8), dtype, seed=7)
    return {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "column": base[:, 5],
        "expanded": base[0:1].expand(3, 8),
        "offset": base[2:4, 3:],
        "permuted": random_tensor((2, 3, 4), dtype, seed=8).permute(2, 0, 1),
    }


def _save(path, tensors) -> None:
    with TensorSerializer(path) as serializer:
        serializer.write_state_dict(tensors)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_every_dtype_and_shape(tmp_path, open_file, dtype, lazy):
    tensors = {f"s{i}": random_tensor(shape, dtype, seed=i) for i, shape in enumerate(SHAPES)}
    tensors.update(_views(dtype))
    path = tmp_path / "t.tensors"
    _save(path, tensors)

    assert _core.read_index(_core.FileSource(str(path))).version == (2 if dtype in OPAQUE else 1)
    with open_file(path, lazy_load=lazy, verify_hash=True) as deserializer:
        assert len(deserializer) == len(tensors)
        for name, want in tensors.items():
            got = deserializer[name]
            assert_same(got, want)
            assert got.is_contiguous()


def test_meta_tensors_load_as_zeros(tmp_path, open_file):
    tensors = {
        "m_f16": torch.empty(3, 4, dtype=torch.float16, device="meta"),
        "m_i64": torch.empty(5, dtype=torch.int64, device="meta"),
        "m_bool": torch.empty(2, 2, 2, dtype=torch.bool, device="meta"),
        "m_bf16": torch.empty(4, 1, dtype=torch.bfloat16, device="meta"),
        "real": random_tensor((3, 3), torch.float32),
    }
    path = tmp_path / "m.tensors"
    _save(path, tensors)
    index = _core.read_index(_core.FileSource(str(path)))
    assert index.version == 4
    assert [e.is_meta for e in index.entries] == [True, True, True, True, False]
    assert [e.data_length for e in index.entries][:4] == [0, 0, 0, 0]
    with open_file(path, verify_hash=True) as deserializer:
        for name, want in tensors.items():
            assert_same(deserializer[name], want)
            assert not deserializer[name].is_meta


def test_long_dimension_writes_version_5(tmp_path, open_file):
    long = 2**32 + 1
    tensors = {
        "before": random_tensor((2, 3), torch.float32),
        "long_empty": torch.empty(long, 0, dtype=torch.uint8),  # a dim >= 2**32, no data
        "long_meta": torch.empty(long, dtype=torch.bool, device="meta"),  # 4 GiB if loaded: never loaded
        "after": random_tensor((4,), torch.int16),
    }
    path = tmp_path / "long.tensors"
    _save(path, tensors)

    index = _core.read_index(_core.FileSource(str(path)))
    assert index.version == 5
    assert index.versioned_headers
    assert index.feature_flags == 2
    assert [e.entry_version for e in index.entries] == [1, 5, 5, 1]
    assert [tuple(e.shape) for e in index.entries] == [(2, 3), (long, 0), (long,), (4,)]
    assert index.entries[2].is_meta and not index.entries[1].is_meta

    with open_file(path, lazy_load=True, verify_hash=True) as deserializer:
        assert list(deserializer) == list(tensors)
        for name in ("before", "long_empty", "after"):
            assert_same(deserializer[name], tensors[name])
    keep = lambda name: name != "long_meta"  # noqa: E731
    with open_file(path, filter_func=keep, verify_hash=True) as deserializer:
        assert sorted(deserializer) == ["after", "before", "long_empty"]
        assert_same(deserializer["long_empty"], tensors["long_empty"])


def test_nested_state_dict(tmp_path, open_file):
    tree = {
        "model": {
            "layers": [
                {"w": random_tensor((3, 4), torch.float32, 1), "b": random_tensor((4,), torch.float32, 2)},
                {"w": random_tensor((3, 4), torch.bfloat16, 3), "b": random_tensor((4,), torch.float16, 4)},
            ],
            "embed": random_tensor((5, 3), torch.float32, 5),
        },
        "step": torch.tensor(12, dtype=torch.int64),
        "lists": [[random_tensor((2,), torch.int8, 6)], [random_tensor((1,), torch.uint8, 7)]],
    }
    path = tmp_path / "tree.tensors"
    _save(path, tree)
    names = [e.name for e in _core.read_index(_core.FileSource(str(path))).entries]
    assert names[0] == b'\x1e["model","layers",0,"w"]'
    assert b"step" in names

    with open_file(path, verify_hash=True) as deserializer:
        assert_same_tree(deserializer.tree(), tree)
        assert_same(deserializer["model"]["layers"][1]["w"], tree["model"]["layers"][1]["w"])
        assert_same(deserializer["step"], tree["step"])
        assert_same_tree(deserializer.tree(("model", "layers")), tree["model"]["layers"])
        assert deserializer.tree(("absent",), default="x") == "x"
    seen = []
    with open_file(path, filter_func=lambda n: seen.append(n) or "embed" in n) as deserializer:
        assert list(deserializer) == ["model"]
        assert_same_tree(deserializer.tree(), {"model": {"embed": tree["model"]["embed"]}})
    assert ("model", "embed") in seen and "step" in seen


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.register_buffer("stat", torch.arange(3, dtype=torch.float32))
        self.register_buffer("scratch", torch.full((2,), 7, dtype=torch.int32), persistent=False)


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([1.5, -2.0]))
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])
        self.register_buffer("steps", torch.tensor(3, dtype=torch.int64))


def _module_records(path):
    with TensorDeserializer(path, verify_hash=True) as deserializer:
        return [(idx, kind, name, t) for idx, kind, name, t in deserializer.read_tensors()]


def test_write_module_names_types_and_module_idx(tmp_path, open_file):
    torch.manual_seed(0)
    net = _Net()
    path = tmp_path / "net.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_module(net)

    modules = [name for name, _ in net.named_modules()]
    expected = []
    for idx, (prefix, module) in enumerate(net.named_modules()):
        for attr, t in module.named_parameters(recurse=False):
            expected.append((idx, TensorType.PARAM, f"{prefix}.{attr}", t))
        for attr, t in module.named_buffers(recurse=False):
            expected.append((idx, TensorType.BUFFER, f"{prefix}.{attr}", t))
    got = _module_records(path)
    assert [(i, k, n) for i, k, n, _ in got] == [(i, int(k), n) for i, k, n, _ in expected]
    for (_, _, _, g), (_, _, _, w) in zip(got, expected):
        assert_same(g, w)
    assert got[0][2] == ".scale" and modules[0] == ""
    assert any(n.endswith("scratch") for _, _, n, _ in got), "non-persistent buffers are saved by default"

    with open_file(path) as deserializer:
        fresh = _Net()
        for p in fresh.parameters():
            torch.nn.init.zeros_(p)
        assert deserializer.load_into_module(fresh) == len(expected)
    for (name, want), (_, got_t) in zip(net.state_dict().items(), fresh.state_dict().items()):
        assert_same(got_t, want)


def test_write_module_without_non_persistent_buffers(tmp_path):
    path = tmp_path / "net.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_module(_Net(), include_non_persistent_buffers=False)
    with TensorDeserializer(path) as deserializer:
        names = list(deserializer)
    assert not any("scratch" in n for n in names)
    assert "blocks.0.stat" in names and ".steps" in names


def test_several_writes_append_to_one_file(tmp_path, open_file):
    a = random_tensor((4, 4), torch.float32, 1)
    b = random_tensor((3,), torch.bfloat16, 2)
    c = random_tensor((2, 2), torch.int32, 3)
    path = tmp_path / "multi.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_tensor(0, "a", TensorType.PARAM, a)
        serializer.write_state_dict({"b": b})
        serializer.write_tensor(5, "c", TensorType.BUFFER, c)
        serializer.write_state_dict({"m": torch.empty(2, device="meta")})
        assert serializer.total_tensor_bytes == a.nbytes + b.nbytes + c.nbytes
    index = _core.read_index(_core.FileSource(str(path)))
    assert index.version == 4
    assert len(index.entries) == 4
    data = path.read_bytes()
    fields = _layout.layout(data)
    stored = [_layout.read_uint(data, _layout.find(fields, "header.module_idx", i)) for i in range(4)]
    assert stored == [0, 0, 5, 0], "module_idx is written into the per-tensor header"
    with open_file(path, verify_hash=True) as deserializer:
        records = list(deserializer.read_tensors())
    assert [(i, k, n) for i, k, n, _ in records] == [(0, 0, "a"), (0, 2, "b"), (5, 1, "c"), (0, 2, "m")]
    for (_, _, _, got), want in zip(records, [a, b, c, torch.empty(2, device="meta")]):
        assert_same(got, want)


def test_dtype_casts_floating_point_only(tmp_path, open_file):
    tensors = {str(dt).split(".")[1]: random_tensor((3, 2), dt, seed=i) for i, dt in enumerate(ALL_DTYPES)}
    tensors["meta_f32"] = torch.empty(2, 2, device="meta")
    path = tmp_path / "cast.tensors"
    _save(path, tensors)
    with open_file(path, dtype=torch.float16) as deserializer:
        for name, want in tensors.items():
            got = deserializer[name]
            if want.dtype in FLOATS:
                assert got.dtype == torch.float16, name
                expected = want.to(torch.float16) if not want.is_meta else torch.zeros(2, 2, dtype=torch.float16)
                assert torch.equal(got, expected) or raw_equal_nan(got, expected), name
            else:
                assert want.dtype in INTS + COMPLEX + [torch.bool]
                assert_same(got, want)


def raw_equal_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()))


def test_filter_func_and_lazy_load(tmp_path, open_file):
    tensors = {f"t{i}": random_tensor((64, 64), torch.float32, i) for i in range(6)}
    path = tmp_path / "f.tensors"
    _save(path, tensors)
    with open_file(path, filter_func=lambda n: n in ("t1", "t4")) as deserializer:
        assert list(deserializer) == ["t1", "t4"]
        assert "t0" not in deserializer
        with pytest.raises(KeyError):
            deserializer["t0"]
        assert deserializer.total_tensor_bytes == 2 * 64 * 64 * 4
        assert_same(deserializer["t4"], tensors["t4"])

    with open_file(path, lazy_load=True, verify_hash=True) as deserializer:
        assert deserializer.total_bytes_read == 0
        assert_same(deserializer["t3"], tensors["t3"])
        assert deserializer.total_bytes_read == 64 * 64 * 4
        assert_same(deserializer["t3"], tensors["t3"])  # cached, not read again
        assert deserializer.total_bytes_read == 64 * 64 * 4


@pytest.mark.parametrize("kind", ["file_object", "bytesio", "bytes", "bytearray", "fd"])
def test_reading_from_file_objects_and_memory(tmp_path, kind, monkeypatch):
    monkeypatch.delenv("TENSORSTREAM_IO_BACKEND", raising=False)
    tensors = {"a": random_tensor((5, 5), torch.float64), "b": random_tensor((3,), torch.bfloat16)}
    path = tmp_path / "src.tensors"
    _save(path, tensors)
    data = path.read_bytes()
    with open(path, "rb") as handle:
        source = {
            "file_object": handle,
            "bytesio": io.BytesIO(data),
            "bytes": data,
            "bytearray": bytearray(data),
            "fd": handle.fileno(),
        }[kind]
        with TensorDeserializer(source, verify_hash=True) as deserializer:
            for name, want in tensors.items():
                assert_same(deserializer[name], want)
            if kind in ("bytesio", "bytes", "bytearray"):
                assert deserializer.io_backend == "memory"
            else:
                assert deserializer.io_backend in ("io_uring", "posix")


@pytest.mark.parametrize("kind", ["path_str", "file_object", "bytesio"])
def test_writing_to_file_objects(tmp_path, kind):
    tensors = {"a": random_tensor((4, 3), torch.float32), "b": random_tensor((2,), torch.complex64)}
    reference = tmp_path / "ref.tensors"
    _save(reference, tensors)
    target = tmp_path / "out.tensors"
    if kind == "path_str":
        _save(str(target), tensors)
        data = target.read_bytes()
    elif kind == "file_object":
        with open(target, "wb+") as handle:
            _save(handle, tensors)
            assert not handle.closed
        data = target.read_bytes()
    else:
        buffer = io.BytesIO()
        _save(buffer, tensors)
        data = buffer.getvalue()
    assert data == reference.read_bytes()
    loaded = tensorstream.load(data)
    for name, want in tensors.items():
        assert_same(loaded[name], want)


def test_large_unaligned_tensors_cross_read_chunks(tmp_path, open_file):
    """Sizes that are not multiples of a page or of the engines' 8 MiB pieces."""
    tensors = {
        "big": random_tensor((17 * 2**20 + 3,), torch.uint8, 1),
        "odd": random_tensor((1021, 1031), torch.float32, 2),
        "tiny": random_tensor((3,), torch.int8, 3),
    }
    path = tmp_path / "large.tensors"
    _save(path, tensors)
    with open_file(path, verify_hash=True) as deserializer:
        for name, want in tensors.items():
            assert_same(deserializer[name], want)


@pytest.mark.parametrize("chunk_bytes, queue_depth, threads", [(4097, 1, 1), (65536, 3, 2), (1, 2, 3)])
def test_core_with_small_pieces(tmp_path, engine, chunk_bytes, queue_depth, threads):
    tensors = {f"t{i}": random_tensor((i * 4099 + 1,), torch.uint8, i) for i in range(6)}
    path = tmp_path / "pieces.tensors"
    _save(path, tensors)
    source = _core.FileSource(str(path))
    index = _core.read_index(source)
    loader = _core.Loader(source, backend=_ENGINE_ARG[engine], threads=threads, chunk_bytes=chunk_bytes,
                          queue_depth=queue_depth)
    assert loader.backend == engine
    outs = [torch.empty(e.data_length, dtype=torch.uint8) for e in index.entries]
    requests = [(i, t.data_ptr(), t.numel()) for i, t in enumerate(outs)]
    loader.load(index, requests[::-1], True)  # any order
    for out, want in zip(outs, tensors.values()):
        assert torch.equal(out, want)
    assert loader.stats()["bytes"] == sum(t.numel() for t in outs)



def test_lazy_access_from_many_threads(tmp_path, open_file):
    tensors = {f"t{i}": random_tensor((257, 33), torch.float32, i) for i in range(24)}
    path = tmp_path / "threads.tensors"
    _save(path, tensors)
    with open_file(path, lazy_load=True, verify_hash=True) as deserializer:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            got = dict(pool.map(lambda n: (n, deserializer[n]), list(tensors) * 2))
        for name, want in tensors.items():
            assert_same(got[name], want)


def test_unicode_names(tmp_path, open_file):
    tensors = {"wé.ïght": random_tensor((2,), torch.float32), "层.权重": random_tensor((3,), torch.int32),
               "emoji.🙂": random_tensor((1,), torch.bool)}
    path = tmp_path / "uni.tensors"
    _save(path, tensors)
    with open_file(path) as deserializer:
        assert list(deserializer) == list(tensors)
        for name, want in tensors.items():
            assert_same(deserializer[name], want)


def test_loaded_tensors_outlive_the_deserializer(tmp_path, engine):
    gen = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(100, 10, dtype=torch.float64, generator=gen) for i in range(4)}
    path = tmp_path / "live.tensors"
    _save(path, tensors)
    loaded = dict(TensorDeserializer(path))
    gc.collect()
    for name, want in tensors.items():
        assert_same(loaded[name], want)
    loaded["t0"].add_(1)  # writable, and independent of its neighbours
    assert torch.equal(loaded["t0"], tensors["t0"] + 1)
    assert_same(loaded["t1"], tensors["t1"])
    assert_same(pickle.loads(pickle.dumps(loaded["t2"])), tensors["t2"])
    buffer = io.BytesIO()
    torch.save(loaded, buffer)
    buffer.seek(0)
    assert_same(torch.load(buffer)["t3"], tensors["t3"])


def test_index_overflow_is_an_error_and_keeps_the_file_valid(tmp_path):
    path = tmp_path / "full.tensors"
    first = {"kept": random_tensor((4,), torch.float32)}
    too_many = {f"t{i}": torch.zeros(1) for i in range(10000)}  # ~40 bytes of index each
    with TensorSerializer(path) as serializer:
        serializer.write_state_dict(first)
        with pytest.raises(ValueError, match="(?i)index|too many"):
            serializer.write_state_dict(too_many)
    loaded = tensorstream.load(path, verify_hash=True)
    assert list(loaded) == ["kept"]
    assert_same(loaded["kept"], first["kept"])
