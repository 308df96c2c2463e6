"""Writing safetensors files as a stream: each file's header comes from the tensors' records
(names, dtypes, shapes) before any data is read, then the data follows tensor by tensor.

A file is an 8-byte little-endian header length, the JSON header (padded with spaces to a
multiple of 8 bytes, as the safetensors package writes it) and the tensors' bytes, contiguous,
in the order given. Several shards come with a ``*.safetensors.index.json`` naming each tensor's
shard (``metadata.total_size`` and ``weight_map``, as transformers writes it). Outputs are local
files or ``s3://`` objects (streamed as multipart uploads); a failed write leaves no file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ._dtypes import SAFETENSORS as _NAMES
from ._loading import Record
from ._sources import is_remote
from .stream_io import open_stream

INDEX_SUFFIX = ".safetensors.index.json"


def is_folder(dst: str) -> bool:
    """Whether ``dst`` names a folder or prefix (ends with '/', or is a local folder)."""
    return dst.endswith("/") or (not is_remote(dst) and os.path.isdir(dst))


def join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name if is_remote(prefix) else os.path.join(prefix, name)


def flat_name(name: Any) -> str:
    """A structured name (a path tuple) as one dotted string, as state dicts name tensors."""
    return ".".join(map(str, name)) if isinstance(name, tuple) else str(name)


def write(dst: str, records: Sequence[Record], batches: Iterator[list[tuple]], metadata: dict[str, str],
          max_shard: int | None) -> list[str]:
    """Write the tensors of ``batches`` (in ``records``' order) under ``dst``; the files written."""
    names = [flat_name(r.name) for r in records]
    if len(set(names)) != len(names):
        raise ValueError("two tensors have the same dotted name: safetensors names must be unique")
    meta = {"format": "pt", **metadata}
    groups = _shards(records, max_shard)
    folder, base, want_index = _layout(dst)
    paths = [join(folder, f"{base}.safetensors")] if len(groups) == 1 and not want_index else [
        join(folder, f"{base}-{i + 1:05d}-of-{len(groups):05d}.safetensors") for i in range(len(groups))]
    items = (item for batch in batches for item in batch)
    for path, group in zip(paths, groups, strict=True):
        header = header_bytes([(names[i], records[i]) for i in group], meta)
        with output(path) as out:
            out.write(header)
            for i in group:
                _write_tensor(out, next(items), records[i])
    if len(groups) > 1 or want_index:
        weight_map = {names[i]: posixpath.basename(path.replace(os.sep, "/"))
                      for path, group in zip(paths, groups, strict=True) for i in group}
        index = {"metadata": {"total_size": sum(r.nbytes for r in records)}, "weight_map": weight_map}
        index_path = join(folder, base + INDEX_SUFFIX)
        with output(index_path) as out:
            out.write(json.dumps(index, indent=2).encode())
        paths.append(index_path)
    return paths


def header_bytes(tensors: Sequence[tuple[str, Record]], metadata: dict[str, str]) -> bytes:
    """The length prefix and JSON header of a file holding ``tensors`` in this order."""
    doc: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, rec in tensors:
        if rec.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: safetensors has no dtype for {rec.dtype}")
        doc[name] = {"dtype": _NAMES[rec.dtype], "shape": list(rec.shape), "data_offsets": [offset, offset + rec.nbytes]}
        offset += rec.nbytes
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _shards(records: Sequence[Record], max_shard: int | None) -> list[list[int]]:
    """Consecutive groups of record positions of at most ``max_shard`` bytes (one tensor at least)."""
    groups: list[list[int]] = [[]]
    size = 0
    for i, rec in enumerate(records):
        if max_shard is not None and groups[-1] and size + rec.nbytes > max_shard:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += rec.nbytes
    return groups


def _layout(dst: str) -> tuple[str, str, bool]:
    """(folder, base name, whether an index is asked for) of a destination: a folder (or prefix)
    unless the name ends with '.safetensors' or '.safetensors.index.json'."""
    if is_folder(dst):
        return dst, "model", False
    name = posixpath.basename(dst) if is_remote(dst) else os.path.basename(dst)
    folder = dst[: len(dst) - len(name)] or "."
    if name.endswith(INDEX_SUFFIX):
        return folder, name[: -len(INDEX_SUFFIX)], True
    if name.endswith(".safetensors"):
        return folder, name[: -len(".safetensors")], False
    return dst, "model", False  # any other name is a folder, made if missing


def _write_tensor(out: Any, item: tuple, rec: Record) -> None:
    tensor = item[3].detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype != rec.dtype or tuple(tensor.shape) != rec.shape:
        raise ValueError(f"tensor {flat_name(item[2])!r} is {tensor.dtype} {tuple(tensor.shape)}, "
                         f"not {rec.dtype} {rec.shape} as its record says")
    if tensor.numel():
        out.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))


@contextlib.contextmanager
def output(path: str) -> Iterator[Any]:
    """A binary stream to ``path``; on an error a local file is removed, an upload aborted."""
    if is_remote(path):
        if not path.lower().startswith("s3://"):
            raise ValueError(f"cannot write to {path.split('?')[0]}: write to a local path or s3://")
        with open_stream(path, "wb") as out:  # aborts the multipart upload on an error
            yield out
        return
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    try:
        with open(path, "wb") as out:
            yield out
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def is_remote(path: str) -> bool:
    return path.lower().startswith(("http://", "https://", "s3://"))
