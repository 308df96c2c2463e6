"""What ``tensorstream.hf`` does for transformers models and diffusers pipelines alike: small
files (configs, tokenizer files) put and got by URI, a module's weights written as ``.tensors``
or safetensors under a base name, and a module built under ``no_init_or_tensor`` filled from
the first checkpoint found among some candidates."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from . import _safetensors_writer
from ._loading import Record
from ._safetensors_writer import join, output
from ._sources import is_remote as remote
from .serialization import TensorDeserializer, TensorSerializer, TensorType
from .stream_io import open_stream

MAX_SMALL = 64 << 20  # configs and tokenizer files; a bigger one is not what it is named


def as_prefix(uri: str) -> str:
    """A remote URI as a prefix (ending with '/'); a local path as given."""
    if remote(uri):
        return uri if uri.endswith("/") else uri + "/"
    return uri


def put(uri: str, data: bytes) -> str:
    with output(uri) as out:
        out.write(data)
    return uri


def get(uri: str) -> bytes | None:
    """The bytes of a small file, or None where it does not exist."""
    try:
        with open_stream(uri, "rb") as f:
            data = f.read(MAX_SMALL + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_SMALL:
        raise ValueError(f"{uri.split('?')[0]} is over {MAX_SMALL} bytes: not a config or tokenizer file")
    return data


def save_files(obj: Any, dst: str) -> list[str]:
    """What ``obj.save_pretrained`` writes (tokenizer, scheduler, processor files), put under ``dst``."""
    with tempfile.TemporaryDirectory() as tmp:
        obj.save_pretrained(tmp)
        names = sorted(os.path.relpath(os.path.join(root, n), tmp) for root, _, files in os.walk(tmp) for n in files)
        written = []
        for name in names:
            with open(os.path.join(tmp, name), "rb") as f:
                written.append(put(join(dst, name.replace(os.sep, "/")), f.read()))
        return written


def save_weights(model: torch.nn.Module, dst: str, fmt: str, max_shard: int | None, base: str) -> list[str]:
    """``model``'s weights under ``dst`` as ``{base}.tensors``, or ``{base}.safetensors`` (shards
    ``{base}-0000i-of-0000n.safetensors`` and ``{base}.safetensors.index.json`` past ``max_shard``)."""
    tensors = unique_tensors(model)
    if fmt == "tensors":
        target = join(dst, base + ".tensors")
        with TensorSerializer(target) as out:
            for name, tensor in tensors.items():
                out.write_tensor(0, name, TensorType.STATE_DICT, tensor)
        return [target]
    records = [Record(i, (n,), TensorType.STATE_DICT, t.dtype, tuple(t.shape), t.numel() * t.element_size(), False)
               for i, (n, t) in enumerate(tensors.items())]
    items = [(0, TensorType.STATE_DICT, n, t) for n, t in tensors.items()]
    return _safetensors_writer.write(join(dst, base + ".safetensors"), records, iter([items]), {"format": "pt"},
                                     max_shard)


def unique_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
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


def fill(model: torch.nn.Module, candidates: list[str], label: str, target: torch.device,
         dtype: torch.dtype | None, kwargs: dict[str, Any]) -> torch.nn.Module:
    """Load the first checkpoint of ``candidates`` that exists into ``model`` (built under
    ``no_init_or_tensor``), tie its weights where it can, and return it on ``target`` in eval mode.
    A parameter or buffer still unset is a ValueError naming it."""
    if dtype is not None:
        model = model.to(dtype)  # what no_init left real (buffers), cast as the weights are
    with _open_first(candidates, label, target, dtype, kwargs) as weights:
        weights.load_into_module(model)
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ValueError(f"{label}: the checkpoint lacks {', '.join(missing[:8])}"
                         f"{' and more' if len(missing) > 8 else ''}")
    if target.type != "cpu":
        model = model.to(target)  # the buffers built on the CPU; the weights are there already
    return model.eval()


def _open_first(candidates: list[str], label: str, target: torch.device, dtype: torch.dtype | None,
                kwargs: dict[str, Any]) -> TensorDeserializer:
    """A deserializer of the first candidate that exists (a file, an index.json or a prefix)."""
    if len(candidates) == 1:
        return TensorDeserializer(candidates[0], device=target, dtype=dtype, **kwargs)
    for uri in candidates:
        if not remote(uri) and not os.path.isfile(uri):
            continue  # no request for what a listing shows absent
        try:
            return TensorDeserializer(uri, device=target, dtype=dtype, **kwargs)
        except FileNotFoundError:
            if _exists(uri):  # the file is there: a shard it names is missing
                raise
    names = ", ".join(c.replace(os.sep, "/").rsplit("/", 1)[-1] for c in candidates)
    raise FileNotFoundError(f"{label} holds no checkpoint (none of {names})")


def _exists(uri: str) -> bool:
    if not remote(uri):
        return os.path.exists(uri)
    try:
        with open_stream(uri, "rb"):
            return True
    except FileNotFoundError:
        return False
