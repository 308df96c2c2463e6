"""Fixtures for the vLLM tests: a tiny random LLaMA saved as an HF checkpoint, and a vLLM engine.

These run in a virtualenv with vLLM (scripts/test_vllm.sh). vLLM runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0) on the CPU, so loaders can also be called directly here.
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default would take far more
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the cores are shared

import pytest
import torch

MAX_MODEL_LEN = 128
PROMPTS = [[1, 17, 42, 99, 250, 7], [5, 300, 12, 8]]
DTYPE = "float32"


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_MODEL_LEN * 2,
        tie_word_embeddings=False, torch_dtype=torch.float32,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a random model whose greedy tokens depend on every weight
        for p in model.parameters():
            p.normal_(0, 0.5 if p.dim() == 1 else 0.08)
    return model


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """An HF checkpoint folder (config.json + model.safetensors) and its state dict."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = _tiny_llama()
    model.save_pretrained(folder, safe_serialization=True)
    return str(folder), {k: v.detach().clone() for k, v in model.state_dict().items()}


def engine_args(model: str, load_format: str, extra: dict | None = None) -> dict:
    return dict(
        model=model, load_format=load_format, model_loader_extra_config=extra or {},
        skip_tokenizer_init=True, enforce_eager=True, max_model_len=MAX_MODEL_LEN, dtype=DTYPE,
        max_num_seqs=4, seed=0,
    )


def make_llm(model: str, load_format: str, extra: dict | None = None):
    from vllm import LLM

    return LLM(**engine_args(model, load_format, extra))


def greedy_tokens(llm) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def engine_state(llm) -> dict[str, torch.Tensor]:
    """The served model's parameters and buffers, copied to the CPU."""
    states = llm.apply_model(lambda m: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()})
    return states[0]


def close(llm, *, last: bool = False) -> None:
    """Shut an engine down; ``last`` also tears down the process-wide parallel state all share."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    if last:
        cleanup_dist_env_and_memory()


@pytest.fixture(scope="session")
def safetensors_engine(checkpoint):
    """The reference: vLLM's own safetensors loader on the checkpoint; its tokens and weights."""
    llm = make_llm(checkpoint[0], "safetensors")
    yield llm
    close(llm, last=True)


def load_directly(model: str, extra: dict) -> torch.nn.Module:
    """``--load-format tensorstream`` called as a worker calls it (here: this process), without
    starting an engine: for files whose processed weights vLLM cannot run on the CPU."""
    from vllm.config import set_current_vllm_config
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model_loader

    config = EngineArgs(**engine_args(model, "tensorstream", extra)).create_engine_config()
    with set_current_vllm_config(config):
        return get_model_loader(config.load_config).load_model(config, config.model_config)


def assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name].cpu(), tensor.cpu()), name
