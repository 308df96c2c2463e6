"""tensorstream.hf with diffusers pipelines: tiny pipelines built from configs here (nothing
downloaded), saved as .tensors or safetensors into a local folder, behind nginx, or into moto's
S3, built back without weight init; images from the same seeded generator and every weight must
be equal to the original's. Folders cross over with diffusers' own save_pretrained and
from_pretrained in both directions."""

from __future__ import annotations

import json
import os

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from _places import save_and_load_place  # noqa: E402
from tensorstream import TensorSerializer, hf  # noqa: E402

SHARD = 20_000  # bytes: splits the UNets' safetensors into shards


def _ddpm():
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4)
    return diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=20))


def _stable_diffusion():
    """VAE, conditional UNet, CLIP text encoder and tokenizer, DDIM scheduler; no safety checker."""
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
                                  layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                             scheduler=diffusers.DDIMScheduler(num_train_timesteps=20, steps_offset=1,
                                                                                        clip_sample=False),
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _build(make):
    torch.manual_seed(0)
    pipe = make()
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.eval()  # as loaded pipelines are (attention takes another path in training mode)
    return pipe


def _images(pipe):
    generator = torch.Generator().manual_seed(0)
    pipe.set_progress_bar_config(disable=True)
    if isinstance(pipe, diffusers.StableDiffusionPipeline):
        out = pipe("a red cat", num_inference_steps=2, height=16, width=16, generator=generator, output_type="pt")
    else:
        out = pipe(batch_size=2, num_inference_steps=3, generator=generator, output_type="pt")
    return out.images


def _assert_same(loaded, original, dtype=None):
    """Same pipeline and component classes, every weight equal (cast to ``dtype`` when given)."""
    assert type(loaded) is type(original)
    assert _public(loaded.config) == _public(original.config)  # each component's [library, class], other arguments
    for name, part in original.components.items():
        got = getattr(loaded, name)
        assert type(got) is type(part), name
        if part is None:
            continue  # an optional component left out (the safety checker)
        if isinstance(part, torch.nn.Module):
            assert not got.training, name
            mine, theirs = got.state_dict(), part.state_dict()
            assert mine.keys() == theirs.keys(), name
            for key, tensor in theirs.items():
                want = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
                assert mine[key].dtype == want.dtype and torch.equal(mine[key], want), f"{name}.{key}"
        elif hasattr(part, "get_vocab"):
            assert got.get_vocab() == part.get_vocab() and got("a red cat") == part("a red cat"), name
        else:
            assert _public(got.config) == _public(part.config), name


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.fixture
def place(request, tmp_path, monkeypatch):
    """(where to save, where to load from) for one medium."""
    return save_and_load_place(request, tmp_path, monkeypatch, "pipe")


@pytest.mark.parametrize("place", ["file", "http", "s3"], indirect=True)
@pytest.mark.parametrize("fmt", ["tensors", "safetensors"])
@pytest.mark.parametrize("make", [_ddpm, _stable_diffusion], ids=["ddpm", "sd"])
def test_round_trip_gives_the_same_images(place, fmt, make):
    pipe = _build(make)
    dst, src = place
    written = hf.save_pretrained(pipe, dst, format=fmt, max_shard_bytes=SHARD if fmt == "safetensors" else None)
    names = {w.replace(os.sep, "/").split("/", 1)[-1].rstrip("/") for w in written}
    tail = {"/".join(n.split("/")[-2:]) for n in names}
    assert written[-1].endswith("model_index.json") and "scheduler/scheduler_config.json" in tail
    if fmt == "tensors":
        assert "unet/diffusion_pytorch_model.tensors" in tail
    else:
        assert "unet/diffusion_pytorch_model.safetensors.index.json" in tail  # sharded by the small limit
    if make is _stable_diffusion:
        assert "tokenizer/tokenizer.json" in tail and "text_encoder/config.json" in tail
        assert f"text_encoder/model.{fmt}" in tail
    loaded = hf.from_pretrained(src)
    _assert_same(loaded, pipe)
    assert torch.equal(_images(loaded), _images(pipe))


def test_a_folder_diffusers_saved_loads(tmp_path):
    pipe = _build(_stable_diffusion)
    pipe.save_pretrained(tmp_path, max_shard_size=SHARD)  # diffusers' own writer: safetensors, shards
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    loaded = hf.from_pretrained(tmp_path)
    _assert_same(loaded, pipe)
    assert torch.equal(_images(loaded), _images(pipe))


@pytest.mark.parametrize("shard", [None, SHARD], ids=["one-file", "shards"])
def test_a_safetensors_save_loads_in_diffusers(tmp_path, shard):
    pipe = _build(_stable_diffusion)
    hf.save_pretrained(pipe, tmp_path, format="safetensors", max_shard_bytes=shard)
    theirs = diffusers.DiffusionPipeline.from_pretrained(str(tmp_path))
    _assert_same(theirs, pipe)
    assert torch.equal(_images(theirs), _images(pipe))


def test_dtype_casts_the_model_components(tmp_path):
    pipe = _build(_ddpm)
    hf.save_pretrained(pipe, tmp_path, format="safetensors")
    loaded = hf.from_pretrained(tmp_path, dtype=torch.bfloat16)
    _assert_same(loaded, pipe, dtype=torch.bfloat16)
    assert isinstance(loaded.scheduler, diffusers.DDPMScheduler)


@pytest.mark.parametrize("fmt", ["tensors", "safetensors"])
def test_a_missing_weight_raises(tmp_path, fmt):
    pipe = _build(_ddpm)
    hf.save_pretrained(pipe, tmp_path, format=fmt)
    weights = pipe.unet.state_dict()
    weights.pop("conv_in.weight")
    os.remove(tmp_path / "unet" / f"diffusion_pytorch_model.{fmt}")
    if fmt == "tensors":
        with TensorSerializer(str(tmp_path / "unet" / "diffusion_pytorch_model.tensors")) as out:
            out.write_state_dict(weights)
    else:
        safetensors_torch.save_file({k: v.contiguous() for k, v in weights.items()},
                                    str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"unet: the checkpoint lacks conv_in\.weight"):
        hf.from_pretrained(tmp_path)
    os.remove(tmp_path / "unet" / f"diffusion_pytorch_model.{fmt}")
    with pytest.raises(FileNotFoundError, match="unet holds no checkpoint"):
        hf.from_pretrained(tmp_path)


def test_errors(tmp_path):
    pipe = _build(_ddpm)
    with pytest.raises(ValueError, match="own tokenizers"):
        hf.save_pretrained(pipe, tmp_path / "x", tokenizer=object())
    hf.save_pretrained(pipe, tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    with pytest.raises(ValueError, match="not a diffusers pipeline class"):
        hf.from_pretrained(tmp_path / "p", model_class=transformers.LlamaForCausalLM)
    for change, match in [({"_class_name": "NoSuchPipeline"}, "no pipeline class 'NoSuchPipeline'"),
                          ({"unet": ["os", "system"]}, "library 'os' is not diffusers or transformers"),
                          ({"unet": ["diffusers", "NoSuchModel"]}, "has no class 'NoSuchModel'"),
                          ({"unet": [None, None]}, "gives no 'unet'")]:
        (tmp_path / "p" / "model_index.json").write_text(json.dumps({**index, **change}))
        with pytest.raises(ValueError, match=match):
            hf.from_pretrained(tmp_path / "p")
    (tmp_path / "p" / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="names no pipeline class"):
        hf.from_pretrained(tmp_path / "p")
