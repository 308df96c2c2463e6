"""Hugging Face transformers models in one call, to and from a folder, a URL prefix or a bucket prefix.

``save_pretrained(model, dst, format="tensors")`` writes ``config.json`` (and
``generation_config.json`` when the model has one), the weights (``model.tensors``, or
``model.safetensors`` / shards of ``max_shard_bytes`` with ``model.safetensors.index.json``) and
the tokenizer's files when one is given, into a local folder or an ``s3://bucket/prefix/``.
Weights that share storage (tied embeddings) are written once, under their first name, as
transformers does.

``from_pretrained(src)`` reads the config, builds the model without allocating or initialising
its weights (``utils.no_init_or_tensor``), loads the checkpoint it finds under ``src`` (a local
folder, ``http(s)://`` prefix or ``s3://`` prefix; ``.tensors`` or safetensors) straight onto
``device``, ties the weights as transformers does and returns the model in eval mode. A weight
that the checkpoint lacks and tying does not provide is a ValueError naming it. Nothing is
downloaded from the Hugging Face hub. Needs the ``transformers`` package; diffusers pipelines are
not handled yet.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from . import _device, _safetensors_writer, utils
from ._loading import Record
from ._safetensors_writer import join, output
from .serialization import TensorDeserializer, TensorSerializer, TensorType
from .stream_io import open_stream

__all__ = ["save_pretrained", "from_pretrained"]

_SMALL_FILES = ("config.json", "generation_config.json")
_MAX_SMALL = 64 << 20


def save_pretrained(model: torch.nn.Module, dst: str | os.PathLike, *, format: str = "tensors",  # noqa: A002
                    tokenizer: Any = None, max_shard_bytes: int | None = None) -> list[str]:
    """Write ``model`` (config, weights, tokenizer files) under ``dst``; returns the files written."""
    dst = _as_prefix(os.fspath(dst))
    if format not in ("tensors", "safetensors"):
        raise ValueError(f"format must be 'tensors' or 'safetensors', not {format!r}")
    if max_shard_bytes is not None and format != "safetensors":
        raise ValueError("max_shard_bytes applies to format='safetensors' only")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        raise ValueError(f"{type(model).__name__} has no transformers config: save it with tensorstream.save")
    if not getattr(config, "architectures", None):
        config.architectures = [type(model).__name__]  # what from_pretrained builds; transformers does the same
    written = [_put(join(dst, "config.json"), config.to_json_string().encode())]
    generation = getattr(model, "generation_config", None)
    if generation is not None and _can_generate(model):
        written.append(_put(join(dst, "generation_config.json"), generation.to_json_string().encode()))
    written += _save_weights(model, dst, format, max_shard_bytes)
    if tokenizer is not None:
        written += _save_tokenizer(tokenizer, dst)
    return written


def from_pretrained(src: str | os.PathLike, model_class: Any = None, device: _device.DeviceLike = None,
                    dtype: torch.dtype | None = None, **kwargs: Any) -> torch.nn.Module:
    """The model saved under ``src``, built without weight init and loaded onto ``device``.

    ``model_class``: a transformers class (``AutoModelForCausalLM``, ``LlamaForCausalLM``, ...);
    default: the config's first ``architectures`` entry. ``kwargs`` go to the deserializer
    (``encryption``, ``num_readers``, ``verify_hash`` for ``.tensors``).
    """
    transformers = _need_transformers()
    prefix = _as_prefix(os.fspath(src))
    config = _read_config(transformers, prefix)
    cls = model_class or _architecture(transformers, config)
    target = _device.resolve(device)
    with utils.no_init_or_tensor():
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    if dtype is not None:
        model = model.to(dtype)  # what no_init left real (buffers), cast as the weights are
    with TensorDeserializer(prefix, device=target, dtype=dtype, **kwargs) as weights:
        weights.load_into_module(model)
    model.tie_weights()
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ValueError(f"{prefix}: the checkpoint lacks {', '.join(missing[:8])}"
                         f"{' and more' if len(missing) > 8 else ''}")
    if target.type != "cpu":
        model = model.to(target)  # the buffers built on the CPU; the weights are there already
    return model.eval()


# Saving --------------------------------------------------------------------------------------


def _save_weights(model: torch.nn.Module, dst: str, fmt: str, max_shard: int | None) -> list[str]:
    tensors = _unique_tensors(model)
    if fmt == "tensors":
        target = join(dst, "model.tensors")
        with TensorSerializer(target) as out:
            for name, tensor in tensors.items():
                out.write_tensor(0, name, TensorType.STATE_DICT, tensor)
        return [target]
    records = [Record(i, (n,), TensorType.STATE_DICT, t.dtype, tuple(t.shape), t.numel() * t.element_size(), False)
               for i, (n, t) in enumerate(tensors.items())]
    items = [(0, TensorType.STATE_DICT, n, t) for n, t in tensors.items()]
    return _safetensors_writer.write(dst, records, iter([items]), {"format": "pt"}, max_shard)


def _unique_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict, each storage once (tied weights under their first name), on the CPU."""
    seen: set[tuple] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[name] = tensor.detach().cpu()
    return out


def _save_tokenizer(tokenizer: Any, dst: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        names = sorted(n for n in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, n)))
        written = []
        for name in names:
            with open(os.path.join(tmp, name), "rb") as f:
                written.append(_put(join(dst, name), f.read()))
        return written


def _put(uri: str, data: bytes) -> str:
    with output(uri) as out:
        out.write(data)
    return uri


def _can_generate(model: Any) -> bool:
    can = getattr(model, "can_generate", None)
    return bool(can()) if callable(can) else False


# Loading -------------------------------------------------------------------------------------


def _read_config(transformers: Any, prefix: str) -> Any:
    """The config (with its generation config when there is one), through a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in _SMALL_FILES:
            data = _get(join(prefix, name), required=name == "config.json")
            if data is not None:
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
        return transformers.AutoConfig.from_pretrained(tmp)


def _get(uri: str, *, required: bool) -> bytes | None:
    try:
        with open_stream(uri, "rb") as f:
            data = f.read(_MAX_SMALL + 1)
    except FileNotFoundError:
        if required:
            raise FileNotFoundError(f"{uri.split('?')[0]} not found: is this a saved model?") from None
        return None
    if len(data) > _MAX_SMALL:
        raise ValueError(f"{uri.split('?')[0]} is over {_MAX_SMALL} bytes: not a model config")
    return data


def _architecture(transformers: Any, config: Any) -> Any:
    names = getattr(config, "architectures", None) or []
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise ValueError(f"the config names no transformers class ({names or 'no architectures'}): give model_class")


def _as_prefix(uri: str) -> str:
    if uri.lower().startswith(("http://", "https://", "s3://")):
        return uri if uri.endswith("/") else uri + "/"
    return uri


def _need_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError("tensorstream.hf needs the 'transformers' package (pip install transformers)") from None
    return transformers
