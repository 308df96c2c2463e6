"""``--load-format tensorstream`` in a real vLLM (CPU build), against vLLM's own loaders."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import (
    assert_same_state,
    close,
    engine_state,
    greedy_tokens,
    load_directly,
    make_llm,
)

import tensorstream
from tensorstream import vllm as ts_vllm

MARKER = ".vllm_tensorized_marker"


def _state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def test_entry_point_registers_the_format():
    from importlib.metadata import entry_points

    from vllm.model_executor.model_loader import get_model_loader
    from vllm.config.load import LoadConfig
    from vllm.plugins import load_general_plugins

    assert "tensorstream" in {ep.name for ep in entry_points(group="vllm.general_plugins")}
    load_general_plugins()
    loader = get_model_loader(LoadConfig(load_format="tensorstream", model_loader_extra_config={"tensorizer_uri": "x"}))
    assert type(loader).__name__ == "TensorstreamLoader"


def test_importing_tensorstream_does_not_import_vllm():
    code = "import sys, tensorstream, tensorstream.vllm; assert 'vllm' not in sys.modules, 'vllm imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_tensors_in_the_model_folder_is_the_default(checkpoint, safetensors_engine, tmp_path):
    folder, state = checkpoint
    import shutil

    served = tmp_path / "served"
    shutil.copytree(folder, served)
    (served / "model.safetensors").unlink()
    tensorstream.save(state, str(served / "model.tensors"))
    model = load_directly(str(served), {})
    assert_same_state(_state_of(model), engine_state(safetensors_engine))


def _serialize_with_vllm(llm, path: str, monkeypatch) -> None:
    """vLLM's own serialize_vllm_model (with tensorizer) on the engine's processed model."""
    import vllm.model_executor.model_loader.tensorizer as vllm_tensorizer

    # It would also copy the tokenizer and configs from the hub: not reachable, not needed here.
    monkeypatch.setattr(vllm_tensorizer, "serialize_extra_artifacts", lambda *args, **kwargs: None)

    def write(worker):
        model = worker.model_runner.model
        config = vllm_tensorizer.TensorizerConfig(tensorizer_uri=path)
        vllm_tensorizer.serialize_vllm_model(model, config, worker.vllm_config.model_config)
        del model.vllm_tensorized_marker  # serialize_vllm_model leaves it on the live model

    llm.collective_rpc(write)


def test_file_written_by_vllm_serialize_vllm_model(checkpoint, safetensors_engine, tmp_path, monkeypatch):
    path = str(tmp_path / "vllm.tensors")
    _serialize_with_vllm(safetensors_engine, path, monkeypatch)
    with tensorstream.TensorDeserializer(path, lazy_load=True) as file:
        assert MARKER in file
    model = load_directly(checkpoint[0], {"tensorizer_uri": path})
    assert not hasattr(model, MARKER[1:])
    assert_same_state(_state_of(model), engine_state(safetensors_engine))


def test_save_vllm_model_round_trip(checkpoint, safetensors_engine, tmp_path):
    """save_vllm_model(llm) writes what the format loads back, and what tensorizer reads."""
    from tensorizer import TensorDeserializer as TensorizerDeserializer

    want = engine_state(safetensors_engine)
    template = str(tmp_path / "served-%03d.tensors")
    assert ts_vllm.save_vllm_model(safetensors_engine, template) == [template % 0]
    assert not engine_state(safetensors_engine).keys() - want.keys()  # the marker is gone again
    with TensorizerDeserializer(template % 0, device="cpu") as theirs:
        assert MARKER in theirs
        assert_same_state({k: theirs[k] for k in want}, want)  # it also has non-persistent buffers
    model = load_directly(checkpoint[0], {"tensorizer_uri": template})
    assert_same_state(_state_of(model), want)


def _corrupt(path: str, tensor: torch.Tensor) -> None:
    """Flip one byte of ``tensor``'s data in the file."""
    with open(path, "r+b") as f:
        content = f.read()
        at = content.find(tensor.numpy().tobytes())
        assert at > 0
        f.seek(at)
        f.write(bytes([content[at] ^ 0xFF]))


def test_verify_hash_catches_a_corrupted_file(checkpoint, safetensors_engine, tmp_path):
    folder, state = checkpoint
    path = str(tmp_path / "model.tensors")
    tensorstream.save(state, path)
    _corrupt(path, state["model.norm.weight"])
    load_directly(folder, {"tensorizer_uri": path})  # without the check it loads
    with pytest.raises(tensorstream.HashMismatchError):
        load_directly(folder, {"tensorizer_uri": path, "verify_hash": True})


def test_bad_uri_is_a_clear_error(checkpoint, safetensors_engine, tmp_path):
    missing = str(tmp_path / "nope.tensors")
    with pytest.raises(FileNotFoundError, match="nope.tensors"):
        load_directly(checkpoint[0], {"tensorizer_uri": missing})


def test_a_file_lacking_a_weight_is_an_error(checkpoint, safetensors_engine, tmp_path):
    folder, state = checkpoint
    path = str(tmp_path / "partial.tensors")
    tensorstream.save({k: v for k, v in state.items() if k != "model.norm.weight"}, path)
    with pytest.raises(ValueError, match=r"lacks 1 weight.*model\.norm\.weight"):
        load_directly(folder, {"tensorizer_uri": path})


def test_unknown_key_is_a_clear_error(checkpoint, safetensors_engine):
    with pytest.raises(ValueError, match="unknown key.*'tensorizer_url'"):
        load_directly(checkpoint[0], {"tensorizer_url": "x.tensors"})


def test_hf_named_file_serves_as_safetensors_does(checkpoint, safetensors_engine, tmp_path):
    """Same greedy tokens and same processed weights as --load-format safetensors; the URI is a
    per-rank template (rank 0 here). Last in this file: closing a second engine in this process
    also ends the parallel state that load_directly needs."""
    folder, state = checkpoint
    tensorstream.save(state, str(tmp_path / "model-rank-000.tensors"))
    extra = {"tensorizer_uri": str(tmp_path / "model-rank-%03d.tensors"), "verify_hash": True}
    llm = make_llm(folder, "tensorstream", extra)
    try:
        assert greedy_tokens(llm) == greedy_tokens(safetensors_engine)
        assert_same_state(engine_state(llm), engine_state(safetensors_engine))
    finally:
        close(llm)
