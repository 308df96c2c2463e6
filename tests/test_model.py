"""Real transformer architectures (built locally from a config, no download) saved and loaded."""

from __future__ import annotations

import pytest
import tensorizer
import tensorizer.utils
import torch
import transformers

import tensorstream
from tensorstream import TensorSerializer
from tensorstream.utils import no_init_or_tensor


def _gpt2():
    config = transformers.GPT2Config(
        n_layer=2, n_embd=128, n_head=4, vocab_size=512, n_positions=64, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    )
    return lambda: transformers.GPT2LMHeadModel(config)


def _llama():
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    return lambda: transformers.LlamaForCausalLM(config)


ARCHITECTURES = {"gpt2": _gpt2, "llama": _llama}


def _reference(factory):
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():  # make biases and norms non-trivial, so a mix-up shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _tokens(model):
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (2, 16), generator=gen)


def _logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def _assert_same_model(loaded, reference):
    want = dict(reference.named_parameters())
    got = dict(loaded.named_parameters())
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert not got[name].is_meta, name
        assert torch.equal(got[name], tensor), name
        assert got[name].requires_grad == tensor.requires_grad, name
    for name, buf in reference.named_buffers():
        assert torch.equal(dict(loaded.named_buffers())[name], buf), name
    tokens = _tokens(reference)
    assert torch.equal(_logits(loaded.eval(), tokens), _logits(reference, tokens))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_write_module_then_load_into_module(tmp_path, open_file, arch):
    factory = ARCHITECTURES[arch]()
    reference = _reference(factory)
    path = tmp_path / f"{arch}.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_module(reference)

    model = no_init_or_tensor(factory)
    # Weight matrices come from torch.empty: not allocated, not initialised (biases and norm
    # weights made with torch.zeros / torch.ones are real, as with tensorizer).
    assert all(p.is_meta for p in model.parameters() if p.dim() == 2), "no_init_or_tensor allocated weights"
    with open_file(path, verify_hash=True) as deserializer:
        assert deserializer.load_into_module(model) > 0
    _assert_same_model(model, reference)
    if arch == "gpt2":
        assert model.lm_head.weight is model.transformer.wte.weight, "tied weights stay tied"


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_load_module_short_form(tmp_path, engine, arch):
    factory = ARCHITECTURES[arch]()
    reference = _reference(factory)
    path = tmp_path / f"{arch}.tensors"
    tensorstream.save(reference, path)
    model = tensorstream.load_module(path, factory, verify_hash=True)
    _assert_same_model(model, reference)


def test_tensorizer_written_model_loads(tmp_path, open_file):
    factory = _llama()
    reference = _reference(factory)
    path = tmp_path / "tz.tensors"
    serializer = tensorizer.TensorSerializer(str(path))
    serializer.write_module(reference)
    serializer.close()
    with open_file(path, verify_hash=True) as deserializer:
        model = no_init_or_tensor(factory)
        deserializer.load_into_module(model)
    _assert_same_model(model, reference)


def test_tensorstream_model_loads_in_tensorizer(tmp_path):
    factory = _gpt2()
    reference = _reference(factory)
    path = tmp_path / "ts.tensors"
    tensorstream.save(reference, path)
    model = tensorizer.utils.no_init_or_tensor(factory)
    with tensorizer.TensorDeserializer(str(path), verify_hash=True, device="cpu") as deserializer:
        deserializer.load_into_module(model)
    tokens = _tokens(reference)
    assert torch.equal(_logits(model.eval(), tokens), _logits(reference, tokens))
