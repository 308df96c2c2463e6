"""tensorstream.hf: save a transformers model (tiny LLaMA and GPT-2 built from configs here, nothing
downloaded) as .tensors or safetensors into a local folder, behind nginx, or into moto's S3 (with
signatures checked), build it back without weight init, and compare logits with the original's."""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _places import save_and_load_place  # noqa: E402
from tensorstream import hf  # noqa: E402


def _llama():
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config)


def _gpt2():
    config = transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return transformers.GPT2LMHeadModel(config)  # ties lm_head to the embedding


def _logits(model):
    ids = torch.arange(1, 17).reshape(2, 8) % 128
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def place(request, tmp_path, monkeypatch):
    """(where to save, where to load from) for one medium."""
    return save_and_load_place(request, tmp_path, monkeypatch, "model")


@pytest.mark.parametrize("place", ["file", "http", "s3"], indirect=True)
@pytest.mark.parametrize("fmt", ["tensors", "safetensors"])
@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_round_trip_gives_the_same_logits(place, fmt, build):
    torch.manual_seed(0)
    model = build().eval()
    dst, src = place
    written = hf.save_pretrained(model, dst, format=fmt, max_shard_bytes=40_000 if fmt == "safetensors" else None)
    assert any(w.endswith("config.json") for w in written)
    if fmt == "safetensors":
        assert any(w.endswith("model.safetensors.index.json") for w in written)  # sharded by the small limit
    loaded = hf.from_pretrained(src)
    assert type(loaded) is type(model) and not loaded.training
    assert torch.equal(_logits(loaded), _logits(model))
    if build is _gpt2:
        assert loaded.lm_head.weight is loaded.transformer.wte.weight  # tied again, as transformers does


def test_safetensors_folder_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    model = _llama().eval()
    hf.save_pretrained(model, tmp_path, format="safetensors", max_shard_bytes=40_000)
    theirs = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert torch.equal(_logits(theirs), _logits(model))
    ours = hf.from_pretrained(tmp_path, model_class=transformers.AutoModelForCausalLM, dtype=torch.bfloat16)
    assert ours.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(ours.model.embed_tokens.weight, model.model.embed_tokens.weight.to(torch.bfloat16))


def test_errors(tmp_path):
    model = _llama()
    with pytest.raises(ValueError, match="format must be"):
        hf.save_pretrained(model, tmp_path / "x", format="bin")
    with pytest.raises(ValueError, match="max_shard_bytes"):
        hf.save_pretrained(model, tmp_path / "x", max_shard_bytes=10)
    with pytest.raises(ValueError, match="no transformers config"):
        hf.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.from_pretrained(tmp_path / "absent")
    hf.save_pretrained(model, tmp_path / "part", format="safetensors")
    os.remove(tmp_path / "part" / "model.safetensors")
    (tmp_path / "part" / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="lacks"):
        hf.from_pretrained(tmp_path / "part")


def test_tokenizer_files_are_written(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    written = hf.save_pretrained(_gpt2(), tmp_path / "m", tokenizer=tokenizer)
    assert any(w.endswith("tokenizer.json") for w in written)
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    assert again("hello world")["input_ids"] == [1, 2]
