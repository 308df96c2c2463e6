"""``load_into_module`` as tensorizer does it (the default), side by side with tensorizer itself,
and the strict policy that ``tensorstream.load_module`` keeps by default."""

from __future__ import annotations

import copy

import pytest
import tensorizer
import torch

import tensorstream
from tensorstream import TensorDeserializer, TensorSerializer, TensorType
from tensorstream.utils import no_init_or_tensor


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24, bias=False)
        self.norm = torch.nn.LayerNorm(8)


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])
        self.head = torch.nn.Linear(8, 10, bias=False)
        self.register_buffer("scale", torch.ones(8))


def _write(path, tensors) -> None:
    """``tensors``: (name, type, tensor); written with module index 0, as write_tensor does."""
    with TensorSerializer(path) as serializer:
        for name, kind, tensor in tensors:
            serializer.write_tensor(0, name, kind, tensor)


def _state(m: torch.nn.Module) -> dict[str, tuple[str, tuple, torch.dtype, torch.Tensor]]:
    """Every parameter and buffer: (kind, shape, dtype, values) by name."""
    out = {}
    for name, t in m.named_parameters():
        out[name] = ("param", tuple(t.shape), t.dtype, t.detach().clone() if not t.is_meta else None)
    for name, t in m.named_buffers():
        out[name] = ("buffer", tuple(t.shape), t.dtype, t.clone() if not t.is_meta else None)
    return out


def _assert_same_state(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    a, b = _state(ours), _state(theirs)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name][:3] == b[name][:3], name
        if a[name][3] is None or b[name][3] is None:
            assert a[name][3] is None and b[name][3] is None, name
        else:
            assert torch.equal(a[name][3], b[name][3]), name


def _vllm_like_file(path) -> dict[str, torch.Tensor]:
    """What vLLM's serialize_vllm_model writes: a root marker and post-processed weights whose
    shapes and dtypes differ from a freshly built model's, plus a buffer the model lacks."""
    torch.manual_seed(1)
    tensors = {
        ".vllm_tensorized_marker": torch.zeros(1),
        "embed.weight": torch.randn(10, 8),
        "blocks.0.qkv.weight": torch.randn(24, 8).to(torch.float16),  # dtype replaced
        "blocks.1.qkv.weight": torch.randn(3, 8, 8),  # shape replaced ("processed" layout)
        "blocks.1.qkv.weight_scale": torch.rand(24),  # a parameter the module lacks
        "head.weight": torch.randn(10, 8),
    }
    buffers = {"blocks.0.norm.running": torch.arange(8.0)}  # a buffer the module lacks
    _write(
        path,
        [(n, TensorType.PARAM, t) for n, t in tensors.items()]
        + [(n, TensorType.BUFFER, t) for n, t in buffers.items()],
    )
    return {**tensors, **buffers}


def test_registers_replaces_and_keeps_like_tensorizer(tmp_path):
    path = tmp_path / "vllm-like.tensors"
    written = _vllm_like_file(path)
    ours = no_init_or_tensor(_Net)
    theirs = copy.deepcopy(ours)
    with TensorDeserializer(path) as deserializer:
        count = deserializer.load_into_module(ours)
    with tensorizer.TensorDeserializer(str(path), device="cpu") as deserializer:
        assert deserializer.load_into_module(theirs) == count == len(written)
    _assert_same_state(ours, theirs)
    # The marker sits on the root; the others took the file's shape, dtype and kind.
    assert isinstance(ours.vllm_tensorized_marker, torch.nn.Parameter)
    assert ours.blocks[0].qkv.weight.dtype == torch.float16
    assert ours.blocks[1].qkv.weight.shape == (3, 8, 8)
    assert "running" in ours.blocks[0].norm._buffers and "running" in dict(ours.blocks[0].norm.state_dict())
    assert isinstance(ours.blocks[1].qkv.weight_scale, torch.nn.Parameter)
    # What the file lacks stays as the module had it (here: unallocated meta tensors).
    assert ours.blocks[0].norm.weight.is_meta and torch.equal(ours.scale, torch.ones(8))


def test_loaded_model_runs(tmp_path):
    """A module filled from a file with every tensor computes as the original."""
    torch.manual_seed(2)
    reference = _Net()
    path = tmp_path / "net.tensors"
    tensorstream.save(reference, path)
    fresh = no_init_or_tensor(_Net)
    with TensorDeserializer(path) as deserializer:
        deserializer.load_into_module(fresh)
    tokens = torch.tensor([1, 2, 3])
    assert torch.equal(fresh.head(fresh.embed(tokens)), reference.head(reference.embed(tokens)))
    assert fresh.head.weight.requires_grad and isinstance(fresh.scale, torch.Tensor)


def test_filter_func_loads_only_the_chosen(tmp_path):
    path = tmp_path / "vllm-like.tensors"
    written = _vllm_like_file(path)
    module = _Net()
    before = module.embed.weight.detach().clone()
    with TensorDeserializer(path) as deserializer:
        assert deserializer.load_into_module(module, filter_func=lambda n: n.startswith("blocks.1")) == 2
    assert torch.equal(module.embed.weight, before)
    assert torch.equal(module.blocks[1].qkv.weight, written["blocks.1.qkv.weight"])


def test_strict_refuses_what_tensorizer_accepts(tmp_path):
    path = tmp_path / "vllm-like.tensors"
    _vllm_like_file(path)
    module = no_init_or_tensor(_Net)
    with TensorDeserializer(path) as deserializer, pytest.raises(RuntimeError) as caught:
        deserializer.load_into_module(module, strict=True)
    message = str(caught.value)
    assert "unexpected 3: '.vllm_tensorized_marker'" in message
    assert "shape mismatch 1: 'blocks.1.qkv.weight: file [3, 8, 8] vs module [24, 8]'" in message
    assert "missing" in message and "'blocks.0.norm.weight'" in message
    assert not hasattr(module, "vllm_tensorized_marker")  # nothing changed
    with pytest.raises(RuntimeError, match="unexpected"):
        tensorstream.load_module(path, _Net)  # strict by default


def test_load_module_lenient_still_refuses_unallocated(tmp_path):
    path = tmp_path / "vllm-like.tensors"
    _vllm_like_file(path)
    with pytest.raises(RuntimeError, match="still unallocated after loading: blocks.0.norm.weight"):
        tensorstream.load_module(path, _Net, strict=False)


@pytest.mark.parametrize(
    "name, kind, message",
    [
        ("nothere.weight", TensorType.PARAM, "no such submodule 1: 'nothere.weight'"),
        ("blocks", TensorType.PARAM, "not a parameter or buffer of the module 1: 'blocks'"),
        ("head.extra", TensorType.STATE_DICT, "a state-dict entry: parameter or buffer unknown"),
    ],
)
def test_names_that_cannot_go_in_are_errors(tmp_path, name, kind, message):
    path = tmp_path / "bad.tensors"
    _write(path, [("embed.weight", TensorType.PARAM, torch.ones(10, 8)), (name, kind, torch.zeros(2))])
    module = _Net()
    before = module.embed.weight.detach().clone()
    with TensorDeserializer(path) as deserializer, pytest.raises(RuntimeError) as caught:
        deserializer.load_into_module(module)
    assert message in str(caught.value)
    assert torch.equal(module.embed.weight, before)  # all or nothing


def test_state_dict_entries_fill_existing_slots(tmp_path):
    """A file from write_state_dict fills the parameters it names (tensorizer refuses such files;
    loading them is a deliberate extension)."""
    torch.manual_seed(3)
    reference = _Net()
    path = tmp_path / "sd.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_state_dict(reference.state_dict())
    fresh = no_init_or_tensor(_Net)
    with TensorDeserializer(path) as deserializer:
        deserializer.load_into_module(fresh)
    assert torch.equal(fresh.head.weight, reference.head.weight)
    assert isinstance(fresh.head.weight, torch.nn.Parameter)


def test_structured_names_raise_not_implemented(tmp_path):
    path = tmp_path / "nested.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_state_dict({"layers": [torch.zeros(2)]})
    with TensorDeserializer(path) as deserializer, pytest.raises(NotImplementedError, match="structured"):
        deserializer.load_into_module(_Net())


def test_tied_weights_stay_tied(tmp_path):
    torch.manual_seed(4)
    reference = _Net()
    reference.head.weight = reference.embed.weight  # tied, as many LMs have it
    path = tmp_path / "tied.tensors"
    tensorstream.save(reference, path)
    fresh = no_init_or_tensor(_Net)
    fresh.head.weight = fresh.embed.weight
    with TensorDeserializer(path) as deserializer:
        deserializer.load_into_module(fresh)
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.head.weight, reference.embed.weight)
