"""Compatibility both ways with the reference implementation, tensorizer 2.12.1 from PyPI."""

from __future__ import annotations

import pytest
import tensorizer
import torch

import tensorstream
from tensorstream import TensorDeserializer, TensorSerializer, _core

import _layout
from _tensors import FLOAT8, assert_same, assert_same_tree, random_tensor


def _plain():
    dtypes = [torch.float32, torch.float16, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64,
              torch.uint8, torch.bool, torch.complex64, torch.complex128]
    out = {f"t_{str(dt)[6:]}": random_tensor((3, 5), dt, seed=i) for i, dt in enumerate(dtypes)}
    out["scalar"] = torch.tensor(2.5, dtype=torch.float64)
    out["empty"] = torch.empty(0, 4, dtype=torch.float32)
    out["five_d"] = random_tensor((2, 1, 3, 1, 2), torch.int32, seed=40)
    return out


def _unsigned():
    return {f"u{dt.itemsize * 8}": random_tensor((4, 3), dt, seed=i) for i, dt in
            enumerate([torch.uint16, torch.uint32, torch.uint64])}


def _opaque():
    out = {"bf16": random_tensor((4, 4), torch.bfloat16), "c32": random_tensor((3,), torch.complex32, seed=1)}
    out.update({str(dt)[6:]: random_tensor((2, 3), dt, seed=10 + i) for i, dt in enumerate(FLOAT8)})
    out["f32"] = random_tensor((2,), torch.float32, seed=99)
    return out


def _meta():
    return {
        "w": random_tensor((3, 3), torch.float32),
        "m": torch.empty(4, 2, dtype=torch.float16, device="meta"),
        "mi": torch.empty(3, dtype=torch.int32, device="meta"),
    }


def _opaque_meta():
    return {"w": random_tensor((2,), torch.bfloat16), "mb": torch.empty(3, 2, dtype=torch.bfloat16, device="meta")}


def _long():
    return {"small": random_tensor((2,), torch.float32), "long": torch.empty(2**32 + 1, 0, dtype=torch.uint8)}


def _nested():
    return {
        "layers": [{"w": random_tensor((2, 2), torch.float32, i), "b": random_tensor((2,), torch.int64, i)}
                   for i in range(3)],
        "head": {"proj": random_tensor((4, 2), torch.bfloat16, 9)},
        "step": torch.tensor(5),
    }


def _top_list():
    return [random_tensor((2,), torch.float32, 1), {"a.b": random_tensor((3,), torch.int8, 2)},
            [random_tensor((1, 2), torch.float64, 3)]]


def _noncontiguous():
    base = random_tensor((6, 4), torch.float32, 3)
    return {"t": base.t(), "s": base[::2, 1:], "e": base[:1].expand(3, 4)}


# case -> (state dict factory, data version tensorizer writes)
STATE_DICTS = {
    "plain": (_plain, 1),
    "unsigned": (_unsigned, 1),
    "opaque": (_opaque, 2),
    "meta": (_meta, 4),
    "opaque_meta": (_opaque_meta, 4),
    "long_dim": (_long, 5),
    "nested": (_nested, 2),
    "top_list": (_top_list, 1),
    "noncontiguous": (_noncontiguous, 1),
}


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 4)
        self.register_buffer("running", torch.arange(4, dtype=torch.float32))
        self.register_buffer("cache", torch.ones(2, dtype=torch.bfloat16), persistent=False)


class _Model(torch.nn.Module):
    def __init__(self, root_buffer: bool = True) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])
        self.alpha = torch.nn.Parameter(torch.tensor([0.5]))
        if root_buffer:
            self.register_buffer("count", torch.tensor(9, dtype=torch.int64))


def _model(root_buffer: bool = True) -> _Model:
    torch.manual_seed(0)
    return _Model(root_buffer)


def _version(path) -> int:
    return _core.read_index(_core.FileSource(str(path))).version


def _tz_write(path, method: str, obj, **kwargs) -> None:
    serializer = tensorizer.TensorSerializer(str(path))
    getattr(serializer, method)(obj, **kwargs)
    serializer.close()


def _ts_write(path, method: str, obj, **kwargs) -> None:
    with TensorSerializer(path) as serializer:
        getattr(serializer, method)(obj, **kwargs)


def _tz_read(path):
    """Everything tensorizer loads, with hash checks, as ``[(module_idx, type, name, tensor)]``."""
    # read_tensors yields nothing after tensorizer's eager load, hence lazy_load.
    with tensorizer.TensorDeserializer(str(path), verify_hash=True, device="cpu", lazy_load=True) as deserializer:
        return [(i, int(k), n, t.clone()) for i, k, n, t in deserializer.read_tensors()]


def _ts_read(path):
    with TensorDeserializer(path, verify_hash=True) as deserializer:
        return [(i, int(k), n, t) for i, k, n, t in deserializer.read_tensors()]


def _same_records(got, want) -> None:
    assert [r[:3] for r in got] == [r[:3] for r in want]
    for g, w in zip(got, want):
        assert_same(g[3], w[3])


@pytest.mark.parametrize("case", list(STATE_DICTS))
def test_tensorizer_state_dicts_load_in_tensorstream(tmp_path, open_file, case):
    make, version = STATE_DICTS[case]
    state = make()
    path = tmp_path / "tz.tensors"
    _tz_write(path, "write_state_dict", state)
    assert _version(path) == version
    with open_file(path, verify_hash=True) as deserializer:
        assert_same_tree(deserializer.tree(), state)
    if case not in ("long_dim", "opaque_meta"):  # tensorizer itself is the oracle for the record tuples
        _same_records(_ts_read(path), _tz_read(path))


@pytest.mark.parametrize("case", list(STATE_DICTS))
def test_state_dicts_byte_identical_to_tensorizer(tmp_path, case):
    make, version = STATE_DICTS[case]
    ours, theirs = tmp_path / "ts.tensors", tmp_path / "tz.tensors"
    _ts_write(ours, "write_state_dict", make())
    _tz_write(theirs, "write_state_dict", make())
    assert _version(ours) == _version(theirs) == version
    assert ours.read_bytes() == theirs.read_bytes()


# tensorizer 2.12.1 cannot read its own opaque meta tensors (numpy.dtype("<V2\\x00torch.bfloat16")).
@pytest.mark.parametrize("case", [c for c in STATE_DICTS if c != "opaque_meta"])
def test_tensorstream_state_dicts_load_in_tensorizer(tmp_path, case):
    make, _ = STATE_DICTS[case]
    state = make()
    path = tmp_path / "ts.tensors"
    _ts_write(path, "write_state_dict", state)
    with tensorizer.TensorDeserializer(str(path), verify_hash=True, device="cpu") as deserializer:
        assert_same_tree(deserializer.tree(), state)


# With include_non_persistent_buffers=False tensorizer 2.12.1 also drops the root module's
# persistent buffers (it compares ".count" with "count"); tensorstream keeps them, so the
# byte-for-byte comparison uses a model without root buffers there.
@pytest.mark.parametrize("non_persistent", [True, False])
def test_write_module_both_ways(tmp_path, open_file, non_persistent):
    root_buffer = non_persistent
    ours, theirs = tmp_path / "ts.tensors", tmp_path / "tz.tensors"
    _ts_write(ours, "write_module", _model(root_buffer), include_non_persistent_buffers=non_persistent)
    _tz_write(theirs, "write_module", _model(root_buffer), include_non_persistent_buffers=non_persistent)
    assert ours.read_bytes() == theirs.read_bytes()
    assert _version(ours) == (2 if non_persistent else 1)  # the bf16 buffer is non-persistent

    records = _tz_read(ours)  # tensorizer, verify_hash=True
    names = [n for _, _, n, _ in records]
    assert "blocks.1.lin.weight" in names and (".count" in names) == root_buffer
    assert ("blocks.0.cache" in names) == non_persistent
    _same_records(_ts_read(theirs), records)
    with open_file(theirs) as deserializer:
        fresh = tensorstream.utils.no_init_or_tensor(lambda: _Model(root_buffer))
        deserializer.load_into_module(fresh)
    for (name, got), (_, want) in zip(fresh.state_dict().items(), _model(root_buffer).state_dict().items()):
        assert_same(got, want)


def test_write_module_keeps_root_buffers_without_non_persistent(tmp_path):
    path = tmp_path / "ts.tensors"
    _ts_write(path, "write_module", _model(), include_non_persistent_buffers=False)
    names = [n for _, _, n, _ in _tz_read(path)]
    assert ".count" in names and "blocks.0.running" in names and "blocks.0.cache" not in names


def test_tensorizer_write_tensor_types_and_module_idx(tmp_path):
    path = tmp_path / "tz.tensors"
    serializer = tensorizer.TensorSerializer(str(path))
    serializer.write_tensor(3, "p", tensorizer.TensorType.PARAM, random_tensor((2, 2), torch.float32))
    serializer.write_tensor(7, "b", tensorizer.TensorType.BUFFER, random_tensor((3,), torch.int16))
    serializer.write_tensor(0, "s", tensorizer.TensorType.STATE_DICT, random_tensor((1,), torch.bfloat16))
    serializer.close()
    want = _tz_read(path)
    assert [r[:3] for r in want] == [(3, 0, "p"), (7, 1, "b"), (0, 2, "s")]
    _same_records(_ts_read(path), want)


def test_tensorizer_file_through_every_input_kind(tmp_path, engine):
    state = _opaque()
    path = tmp_path / "tz.tensors"
    _tz_write(path, "write_state_dict", state)
    data = path.read_bytes()
    with open(path, "rb") as handle:
        for source in (path, str(path), handle, data):
            loaded = tensorstream.load(source, verify_hash=True)
            for name, want in state.items():
                assert_same(loaded[name], want)


def test_encrypted_tensorizer_file_needs_a_key(tmp_path, engine):
    try:
        encryption = tensorizer.EncryptionParams.random()
    except Exception as exc:  # libsodium missing
        pytest.skip(f"tensorizer cannot encrypt here: {exc}")
    path = tmp_path / "enc.tensors"
    serializer = tensorizer.TensorSerializer(str(path), encryption=encryption)
    serializer.write_state_dict({"w": random_tensor((8, 8), torch.float32), "m": torch.empty(2, device="meta")})
    serializer.close()

    index = _core.read_index(_core.FileSource(str(path)))
    assert index.encrypted
    with pytest.raises(tensorstream.KeyRequiredError, match=r"(?i)encrypt.*key|key.*encrypt"):
        TensorDeserializer(path)
    with pytest.raises(tensorstream.KeyRequiredError):
        tensorstream.load(path, lazy_load=True)
    assert issubclass(tensorstream.KeyRequiredError, tensorstream.CryptographyError)
    w = torch.empty(64, dtype=torch.float32)
    loader = _core.Loader(_core.FileSource(str(path)), backend="posix")
    with pytest.raises(tensorstream.KeyRequiredError, match="key"):
        loader.load(index, [(0, w.data_ptr(), w.nbytes)])


@pytest.mark.parametrize("metadata_len", ["compact", 300_000, 1 << 20])
def test_any_index_length_is_read(tmp_path, open_file, metadata_len):
    """Writers reserve 256 KiB for the index; readers accept any length (tensorizer is the oracle)."""
    state = _opaque()
    original = tmp_path / "orig.tensors"
    _tz_write(original, "write_state_dict", state)
    data = original.read_bytes()
    fields = _layout.layout(data)
    if metadata_len == "compact":
        metadata_len = max(f.end for f in fields if f.name.startswith("index.")) - _layout.FILE_HEADER_SIZE
    path = tmp_path / "resized.tensors"
    path.write_bytes(_layout.with_index_length(data, metadata_len))
    assert _core.read_index(_core.FileSource(str(path))).metadata_len == metadata_len
    with open_file(path, verify_hash=True) as deserializer:
        assert_same_tree(deserializer.tree(), state)
    _same_records(_ts_read(path), _tz_read(path))
