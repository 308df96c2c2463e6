"""The public API: tensorizer's call signatures, Mapping behaviour, short forms and helpers."""

from __future__ import annotations

import collections.abc
import inspect

import pytest
import tensorizer
import tensorizer.utils
import torch

import tensorstream
from tensorstream import TensorDeserializer, TensorSerializer, TensorType, utils

from _tensors import assert_same, assert_same_tree, random_tensor


def _params(func):
    """(name, kind, default) of every parameter after ``self`` and the file argument."""
    params = list(inspect.signature(func).parameters.values())[1:]
    if func.__name__ == "__init__":
        params = params[1:]
    return [(p.name, p.kind, p.default) for p in params]


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (TensorSerializer.__init__, tensorizer.TensorSerializer.__init__),
        (TensorSerializer.write_module, tensorizer.TensorSerializer.write_module),
        (TensorSerializer.write_state_dict, tensorizer.TensorSerializer.write_state_dict),
        (TensorSerializer.write_tensor, tensorizer.TensorSerializer.write_tensor),
        (TensorDeserializer.__init__, tensorizer.TensorDeserializer.__init__),
        (TensorDeserializer.load_into_module, tensorizer.TensorDeserializer.load_into_module),
        (TensorDeserializer.read_tensors, tensorizer.TensorDeserializer.read_tensors),
        (TensorDeserializer.tree, tensorizer.TensorDeserializer.tree),
    ],
    ids=lambda f: f.__qualname__,
)
def test_signatures_match_tensorizer(ours, theirs):
    """Callers such as vLLM pass keyword arguments by name: names, kinds and defaults must match."""
    theirs_params = _params(theirs)
    ours_params = _params(ours)
    if ours.__name__ == "write_tensor":  # only names and order matter here
        theirs_params = [p[0] for p in theirs_params]
        ours_params = [p[0] for p in ours_params]
    # Ours may add keyword-only arguments after tensorizer's (e.g. load_into_module's strict).
    extra = ours_params[len(theirs_params) :]
    assert ours_params[: len(theirs_params)] == theirs_params
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in extra), extra


def test_issue_signatures():
    ser = inspect.signature(TensorSerializer.__init__).parameters
    assert list(ser)[1] == "path_or_file" and ser["encryption"].kind is inspect.Parameter.KEYWORD_ONLY
    des = inspect.signature(TensorDeserializer.__init__).parameters
    assert list(des)[1:5] == ["path_or_file", "device", "filter_func", "dtype"]
    for name in ("lazy_load", "plaid_mode", "num_readers", "verify_hash", "encryption"):
        assert des[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert not des["verify_hash"].default and not des["lazy_load"].default


@pytest.fixture
def saved(tmp_path):
    tensors = {
        "w": random_tensor((4, 3), torch.float32, 1),
        "b": random_tensor((3,), torch.bfloat16, 2),
        "i": random_tensor((2, 2), torch.int64, 3),
    }
    path = tmp_path / "api.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_state_dict(tensors)
    return path, tensors


@pytest.mark.parametrize("lazy", [False, True])
def test_deserializer_is_a_mapping(saved, open_file, lazy):
    path, tensors = saved
    with open_file(path, lazy_load=lazy) as deserializer:
        assert isinstance(deserializer, collections.abc.Mapping)
        assert len(deserializer) == 3 and list(deserializer) == ["w", "b", "i"]
        assert list(deserializer.keys()) == ["w", "b", "i"]
        assert "w" in deserializer and "x" not in deserializer and 5 not in deserializer
        assert deserializer.get("x", "dflt") == "dflt"
        with pytest.raises(KeyError):
            deserializer["x"]
        for (name, got), value in zip(deserializer.items(), deserializer.values()):
            assert_same(got, tensors[name])
            assert value is got or torch.equal(value, got)
        assert deserializer.total_tensor_bytes == sum(t.nbytes for t in tensors.values())


def test_eager_tensors_survive_close_lazy_ones_do_not(saved):
    path, tensors = saved
    deserializer = TensorDeserializer(path)
    deserializer.close()
    assert_same(deserializer["b"], tensors["b"])
    lazy = TensorDeserializer(path, lazy_load=True)
    assert_same(lazy["w"], tensors["w"])
    lazy.close()
    assert_same(lazy["w"], tensors["w"])  # already loaded: kept
    with pytest.raises(Exception):
        lazy["i"]


def test_read_tensors_continues_and_filters(saved):
    path, tensors = saved
    with TensorDeserializer(path, lazy_load=True) as deserializer:
        first = list(deserializer.read_tensors(num_tensors=1))
        rest = list(deserializer.read_tensors())
    assert [(i, k, n) for i, k, n, _ in first] == [(0, TensorType.STATE_DICT, "w")]
    assert [n for _, _, n, _ in rest] == ["b", "i"]
    with TensorDeserializer(path, lazy_load=True) as deserializer:
        only = list(deserializer.read_tensors(filter_func=lambda n: n != "b", verify_hash=True))
    assert [n for _, _, n, _ in only] == ["w", "i"]
    assert_same(only[1][3], tensors["i"])


def test_dtype_cast_to_bfloat16(saved):
    path, tensors = saved
    with TensorDeserializer(path, dtype=torch.bfloat16) as deserializer:
        assert deserializer["w"].dtype == torch.bfloat16
        assert torch.equal(deserializer["w"], tensors["w"].to(torch.bfloat16))
        assert_same(deserializer["i"], tensors["i"])  # ints are never cast
        assert_same(deserializer["b"], tensors["b"])


def test_save_load_short_forms(tmp_path):
    tree = {"enc": {"w": random_tensor((2, 2), torch.float16)}, "heads": [random_tensor((3,), torch.int8)]}
    path = tmp_path / "tree.tensors"
    tensorstream.save(tree, path)
    assert_same_tree(tensorstream.load(path), tree)
    assert_same_tree(tensorstream.load(str(path), device="cpu", verify_hash=True), tree)
    flat = {"a": random_tensor((5,), torch.float64)}
    tensorstream.save(flat, tmp_path / "flat.tensors")
    loaded = tensorstream.load(tmp_path / "flat.tensors", device=torch.device("cpu"))
    assert isinstance(loaded, dict) and list(loaded) == ["a"]
    assert_same(loaded["a"], flat["a"])


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.emb = torch.nn.Embedding(4, 3)
        self.register_buffer("pos", torch.arange(4, dtype=torch.float32))


def test_load_module_with_class_and_factory(tmp_path):
    torch.manual_seed(0)
    reference = _Tiny()
    path = tmp_path / "tiny.tensors"
    tensorstream.save(reference, path)
    for builder in (_Tiny, lambda: _Tiny()):
        model = tensorstream.load_module(path, builder)
        assert isinstance(model, _Tiny)
        for (name, got), (_, want) in zip(model.state_dict().items(), reference.state_dict().items()):
            assert_same(got, want)
        assert isinstance(model.lin.weight, torch.nn.Parameter) and model.lin.weight.requires_grad


def test_load_into_module_strict_reports_missing_and_unexpected(tmp_path):
    path = tmp_path / "partial.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_tensor(0, "lin.weight", TensorType.PARAM, torch.zeros(2, 3))
        serializer.write_tensor(0, "stray.weight", TensorType.PARAM, torch.zeros(1))
    model = _Tiny()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with TensorDeserializer(path) as deserializer, pytest.raises(RuntimeError) as caught:
        deserializer.load_into_module(model, strict=True)
    assert "unexpected 1: 'stray.weight'" in str(caught.value) and "missing" in str(caught.value)
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())  # nothing changed
    with TensorDeserializer(path) as deserializer:
        model = _Tiny()
        assert deserializer.load_into_module(model, filter_func=lambda n: n == "lin.weight", strict=True) == 1
        assert torch.equal(model.lin.weight, torch.zeros(2, 3))
    with pytest.raises(RuntimeError):
        tensorstream.load_module(path, _Tiny, filter_func=lambda n: n == "lin.weight")


def test_serializer_refuses_bad_input(tmp_path):
    with TensorSerializer(tmp_path / "bad.tensors") as serializer:
        serializer.write_tensor(0, "x", TensorType.PARAM, torch.zeros(1))
        with pytest.raises(ValueError):
            serializer.write_tensor(0, "x", TensorType.PARAM, torch.zeros(1))  # same name twice
        with pytest.raises(TypeError):
            serializer.write_state_dict({"y": [1, 2, 3]})
        with pytest.raises(ValueError):
            serializer.write_tensor(0, ("a", 0), TensorType.PARAM, torch.zeros(1))  # structured PARAM
    with pytest.raises(ValueError):
        serializer.write_tensor(0, "z", TensorType.PARAM, torch.zeros(1))  # closed
    assert list(tensorstream.load(tmp_path / "bad.tensors")) == ["x"]


def test_empty_file_matches_tensorizer(tmp_path):
    path, theirs = tmp_path / "empty.tensors", tmp_path / "tz_empty.tensors"
    TensorSerializer(path).close()
    tensorizer.TensorSerializer(str(theirs)).close()
    assert path.read_bytes() == theirs.read_bytes()
    with TensorDeserializer(path) as deserializer:  # (tensorizer refuses to read it back)
        assert len(deserializer) == 0


def test_environment_and_argument_errors(saved, monkeypatch):
    path, _ = saved
    monkeypatch.setenv("TENSORSTREAM_IO_BACKEND", "carrier-pigeon")
    with pytest.raises(ValueError, match="carrier-pigeon"):
        TensorDeserializer(path)
    monkeypatch.delenv("TENSORSTREAM_IO_BACKEND")
    with pytest.raises(ValueError):
        TensorDeserializer(path, num_readers=0)
    with TensorDeserializer(path, num_readers=1) as deserializer:
        assert len(deserializer) == 3


def test_features():
    features = tensorstream.features()
    assert isinstance(features["io_uring"], bool)
    assert features["default_backend"] in ("io_uring", "posix")
    assert features["io_uring"] or features["io_uring_error"]


def test_utils_match_tensorizer():
    for num in (0, 999, 1500, 2**20, 2**30, 10**13, 10**16):
        for decimal in (True, False):
            assert utils.convert_bytes(num, decimal) == tensorizer.utils.convert_bytes(num, decimal)
    real_empty = torch.empty
    with utils.no_init_or_tensor():
        layer = torch.nn.Linear(1000, 1000)
    assert layer.weight.is_meta and torch.empty is real_empty
    built = utils.no_init_or_tensor(lambda: torch.nn.Embedding(10, 4))
    assert built.weight.is_meta and not torch.nn.Linear(2, 2).weight.is_meta


def test_loads_and_saves_are_logged(tmp_path, caplog):
    import logging

    import torch

    import tensorstream

    path = tmp_path / "logged.tensors"
    with caplog.at_level(logging.INFO, logger="tensorstream"):
        tensorstream.save({"a": torch.ones(1000)}, path)
        tensorstream.load(path, verify_hash=True)
    text = caplog.text
    assert "wrote 1 tensors" in text
    assert "loaded 1 tensors, 0.0 MB" in text and "hashes verified" in text
