"""Converting checkpoints between formats and places, streaming, with memory bounded by a batch.

``convert(src, dst, to=...)`` reads any checkpoint the deserializer opens (a ``.tensors`` file,
a safetensors file, a sharded checkpoint by its index.json, a folder or prefix; local,
``http(s)://`` or ``s3://``) or a local ``.pt`` / ``.pth`` / ``.bin`` state dict, and writes:

- ``"tensors"``: one ``.tensors`` file through TensorSerializer (a path or ``s3://``, streamed as
  a multipart upload), encrypted when ``encryption`` is given;
- ``"safetensors"``: one ``.safetensors`` file, or shards of at most ``max_shard_bytes`` each with
  a ``model.safetensors.index.json`` (local or ``s3://``). The header is computed from the
  source's index before any data is read, then tensors are streamed in order;
- ``"torch"``: a local state dict (``torch.save`` needs every tensor at once: not bounded).

Tensors are read lazily, ``batch_bytes`` at a time (a tensor larger than that is one batch), so
host memory holds about two batches whatever the checkpoint's size. Tensors keep their bytes,
dtypes and shapes exactly; a safetensors source's ``__metadata__`` goes to a safetensors output
(with ``"format": "pt"`` added when absent, as transformers expects); ``.tensors`` files have no
place for metadata, so it does not survive a trip through one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch

from . import _progress, _safetensors_writer
from ._loading import Record
from .serialization import TensorDeserializer, TensorSerializer, TensorType

__all__ = ["convert", "Converted", "BATCH_BYTES", "FORMATS"]

BATCH_BYTES = 256 << 20
FORMATS = {".tensors": "tensors", ".safetensors": "safetensors", ".json": "safetensors",
           ".pt": "torch", ".pth": "torch", ".bin": "torch"}
_TORCH_NAMES = (".pt", ".pth", ".bin")

Item = tuple[int, int, Any, torch.Tensor]  # module_idx, tensor_type, name, tensor


@dataclasses.dataclass(frozen=True)
class Converted:
    """What a conversion did: the format read and written, tensors, bytes, the files written."""

    src_format: str
    dst_format: str
    tensors: int
    bytes: int
    files: list[str]
    encrypted: bool


def convert(
    src: Any,
    dst: str | os.PathLike,
    *,
    to: str | None = None,
    src_format: str | None = None,
    encryption: Any = None,
    decryption: Any = None,
    max_shard_bytes: int | None = None,
    batch_bytes: int = BATCH_BYTES,
    progress: bool | None = None,
) -> Converted:
    """Convert ``src`` into ``dst`` in format ``to`` (default: from ``dst``'s name); see the module."""
    dst = os.fspath(dst)
    to = to or format_of(dst)
    if to not in ("tensors", "safetensors", "torch"):
        raise ValueError(f"cannot write format {to!r}: use 'tensors', 'safetensors' or 'torch'")
    if encryption is not None and to != "tensors":
        raise ValueError("only .tensors files can be encrypted")
    if max_shard_bytes is not None and (to != "safetensors" or max_shard_bytes < 1):
        raise ValueError("max_shard_bytes is a positive size, and only safetensors output is sharded")
    if not isinstance(batch_bytes, int) or batch_bytes < 1:
        raise ValueError(f"batch_bytes must be a positive int, not {batch_bytes!r}")
    with _open_source(src, src_format, decryption) as reader:
        with _progress.Bar(reader.nbytes, "converting", _progress.wanted(progress)) as bar:
            files = _write(to, dst, reader, batch_bytes, encryption, max_shard_bytes, bar)
        return Converted(reader.format, to, len(reader.records), reader.nbytes, files, encryption is not None)


def format_of(name: str) -> str:
    """The format a file name stands for; ValueError when the name does not tell."""
    base = name.split("?")[0]
    ext = os.path.splitext(base)[1].lower()
    if ext not in FORMATS or (ext == ".json" and not base.endswith(".safetensors.index.json")):
        raise ValueError(f"cannot tell the format of {base} from its name: give to= ('tensors', 'safetensors', 'torch')")
    return FORMATS[ext]


# Reading ---------------------------------------------------------------------------------------


class _Reader:
    """A source's records (names, dtypes, shapes in order) and its tensors in bounded batches."""

    def __init__(self, deserializer: TensorDeserializer | None, records: list[Record], fmt: str,
                 metadata: dict[str, str], state: dict[str, torch.Tensor] | None = None) -> None:
        self._d = deserializer
        self.records = records
        self.format = fmt
        self.metadata = metadata
        self._state = state
        self.nbytes = sum(r.nbytes for r in records)

    def batches(self, limit: int) -> Iterator[list[Item]]:
        """Every tensor in order, ``limit`` bytes at a time; nothing is kept once handed out."""
        for run in batches(self.records, limit):
            if self._state is not None:
                yield [(0, TensorType.STATE_DICT, r.name, self._state[r.name]) for r in run]
                continue
            d = self._d
            with d._lock:  # one arena per batch, unmapped when its tensors go: malloc would keep it
                d._fetch(run, d._verify_hash, pooled=True)
            items = list(d.read_tensors(num_tensors=len(run)))
            for rec in run:
                d._cache.pop(rec.path, None)  # the batch is the caller's alone now
            yield items

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._d is not None:
            self._d.close()


def batches(records: list[Record], limit: int = BATCH_BYTES) -> Iterator[list[Record]]:
    """Runs of consecutive records holding about ``limit`` bytes each (at least one record)."""
    run: list[Record] = []
    size = 0
    for rec in records:
        if run and size + rec.nbytes > limit:
            yield run
            run, size = [], 0
        run.append(rec)
        size += rec.nbytes
    if run:
        yield run


def _open_source(src: Any, src_format: str | None, decryption: Any) -> _Reader:
    is_torch = src_format == "torch" or (
        src_format is None and isinstance(src, (str, os.PathLike)) and os.fspath(src).lower().endswith(_TORCH_NAMES))
    if is_torch:
        if decryption is not None:
            raise ValueError("only .tensors files can be decrypted")
        return _torch_reader(src)
    if src_format not in (None, "tensors", "safetensors"):
        raise ValueError(f"cannot read format {src_format!r}: use 'tensors', 'safetensors' or 'torch'")
    d = TensorDeserializer(src, lazy_load=True, encryption=decryption, progress=False)
    if src_format is not None and d.format != {"tensors": "tensorizer"}.get(src_format, src_format):
        fmt = d.format
        d.close()
        raise ValueError(f"{os.fspath(src)} is a {fmt} checkpoint, not {src_format}")
    fmt = "tensors" if d.format == "tensorizer" else d.format
    return _Reader(d, list(d._records), fmt, d.metadata)


def _torch_reader(src: Any) -> _Reader:
    path = os.fspath(src)
    if path.lower().startswith(("http://", "https://", "s3://")):
        raise ValueError(f"state dicts are read from local files only, not {path.split('?')[0]}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        state = torch.load(path, map_location="cpu", weights_only=True)  # the legacy format cannot be mapped
    tensors = _flat_tensors(state, path)
    records = [Record(i, (k,), TensorType.STATE_DICT, t.dtype, tuple(t.shape), t.numel() * t.element_size(), False)
               for i, (k, t) in enumerate(tensors.items())]
    return _Reader(None, records, "torch", {}, tensors)


def _flat_tensors(state: Any, src: str) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{src} holds a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{src}: not a tensor: {', '.join(map(str, bad[:5]))}")
    return {str(k): v for k, v in state.items()}


# Writing ---------------------------------------------------------------------------------------


def _write(to: str, dst: str, reader: _Reader, limit: int, encryption: Any, max_shard: int | None,
           bar: _progress.Bar) -> list[str]:
    batches = _counted(reader.batches(limit), bar)
    if to == "tensors":
        target = _safetensors_writer.join(dst, "model.tensors") if _safetensors_writer.is_folder(dst) else dst
        with TensorSerializer(target, encryption=encryption) as out:
            for batch in batches:
                for idx, kind, name, tensor in batch:
                    out.write_tensor(idx, name, kind, tensor)
        return [target]
    if to == "safetensors":
        return _safetensors_writer.write(dst, reader.records, batches, reader.metadata, max_shard)
    if dst.lower().startswith(("http://", "https://", "s3://")):
        raise ValueError("state dicts are written to local files only")
    everything = {_safetensors_writer.flat_name(name): tensor for batch in batches for _, _, name, tensor in batch}
    torch.save(everything, dst)
    return [dst]


def _counted(batches: Iterator[list[Item]], bar: _progress.Bar) -> Iterator[list[Item]]:
    for batch in batches:
        yield batch
        bar.update(sum(t.numel() * t.element_size() for *_, t in batch))
