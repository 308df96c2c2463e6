"""Hugging Face transformers models and diffusers pipelines in one call, to and from a folder, a URL
prefix or a bucket prefix.

``save_pretrained(model, dst, format="tensors")`` writes ``config.json`` (and
``generation_config.json`` when the model has one), the weights (``model.tensors``, or
``model.safetensors`` / shards of ``max_shard_bytes`` with ``model.safetensors.index.json``) and
the tokenizer's files when one is given, into a local folder or an ``s3://bucket/prefix/``.
Weights that share storage (tied embeddings) are written once, under their first name, as
transformers does. A ``diffusers.DiffusionPipeline`` is written as diffusers lays it out: each
component in its subfolder (diffusers models as ``config.json`` and
``diffusion_pytorch_model.tensors`` / ``.safetensors``, transformers models as above, schedulers
and tokenizers through their own ``save_pretrained``), then ``model_index.json``.

``from_pretrained(src)`` reads the config, builds the model without allocating or initialising
its weights (``utils.no_init_or_tensor``), loads the checkpoint it finds under ``src`` (a local
folder, ``http(s)://`` prefix or ``s3://`` prefix; ``.tensors`` or safetensors) straight onto
``device``, ties the weights as transformers does and returns the model in eval mode. A weight
that the checkpoint lacks and tying does not provide is a ValueError naming it. Where ``src``
holds a ``model_index.json`` it builds every component of the pipeline that way (schedulers and
tokenizers from their files) and returns the pipeline class the index names. Nothing is
downloaded from the Hugging Face hub. Needs the ``transformers`` package, and ``diffusers`` for
pipelines.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from . import _device, _hf_pipeline, utils
from ._hf_io import as_prefix, fill, get, put, save_files, save_weights
from ._safetensors_writer import join

__all__ = ["save_pretrained", "from_pretrained"]

_SMALL_FILES = ("config.json", "generation_config.json")


def save_pretrained(model: torch.nn.Module, dst: str | os.PathLike, *, format: str = "tensors",  # noqa: A002
                    tokenizer: Any = None, max_shard_bytes: int | None = None) -> list[str]:
    """Write ``model`` (config, weights, tokenizer files) under ``dst``; returns the files written.

    ``model`` may also be a ``diffusers.DiffusionPipeline``: then ``model_index.json`` and each
    component in its subfolder are written (``max_shard_bytes`` applies to each model component;
    a pipeline carries its own tokenizers, so ``tokenizer`` must be None).
    """
    dst = as_prefix(os.fspath(dst))
    if format not in ("tensors", "safetensors"):
        raise ValueError(f"format must be 'tensors' or 'safetensors', not {format!r}")
    if max_shard_bytes is not None and format != "safetensors":
        raise ValueError("max_shard_bytes applies to format='safetensors' only")
    if _hf_pipeline.is_pipeline(model):
        if tokenizer is not None:
            raise ValueError("a pipeline saves its own tokenizers: pass tokenizer=None")
        return _hf_pipeline.save(model, dst, format, max_shard_bytes)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        raise ValueError(f"{type(model).__name__} has no transformers config: save it with tensorstream.save")
    if not getattr(config, "architectures", None):
        config.architectures = [type(model).__name__]  # what from_pretrained builds; transformers does the same
    written = [put(join(dst, "config.json"), config.to_json_string().encode())]
    generation = getattr(model, "generation_config", None)
    if generation is not None and _can_generate(model):
        written.append(put(join(dst, "generation_config.json"), generation.to_json_string().encode()))
    written += save_weights(model, dst, format, max_shard_bytes, "model")
    if tokenizer is not None:
        written += save_files(tokenizer, dst)
    return written


def from_pretrained(src: str | os.PathLike, model_class: Any = None, device: _device.DeviceLike = None,
                    dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """The model (or diffusers pipeline) saved under ``src``, built without weight init and loaded onto ``device``.

    ``model_class``: a transformers class (``AutoModelForCausalLM``, ``LlamaForCausalLM``, ...);
    default: the config's first ``architectures`` entry. Where ``src`` holds a ``model_index.json``
    it is a diffusers pipeline, and ``model_class`` may name a pipeline class (default: the one
    the index names). ``kwargs`` go to the deserializer (``encryption``, ``num_readers``,
    ``verify_hash`` for ``.tensors``).
    """
    prefix = as_prefix(os.fspath(src))
    target = _device.resolve(device)
    index = get(join(prefix, _hf_pipeline.INDEX))
    if index is not None:
        return _hf_pipeline.load(prefix, index, model_class, target, dtype, kwargs)
    transformers = _need_transformers()
    config = _read_config(transformers, prefix)
    cls = model_class or _architecture(transformers, config)
    with utils.no_init_or_tensor():
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    return fill(model, [prefix], prefix, target, dtype, kwargs)


def _can_generate(model: Any) -> bool:
    can = getattr(model, "can_generate", None)
    return bool(can()) if callable(can) else False


# Loading -------------------------------------------------------------------------------------


def _read_config(transformers: Any, prefix: str) -> Any:
    """The config (with its generation config when there is one), through a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in _SMALL_FILES:
            data = get(join(prefix, name))
            if data is None and name == "config.json":
                raise FileNotFoundError(f"{join(prefix, name).split('?')[0]} not found (nor {_hf_pipeline.INDEX}): "
                                        "is this a saved model?")
            if data is not None:
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
        return transformers.AutoConfig.from_pretrained(tmp)


def _architecture(transformers: Any, config: Any) -> Any:
    names = getattr(config, "architectures", None) or []
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise ValueError(f"the config names no transformers class ({names or 'no architectures'}): give model_class")


def _need_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError("tensorstream.hf needs the 'transformers' package (pip install transformers)") from None
    return transformers
