"""Show what a file holds: format, data version, tensors, bytes, dtypes, encryption.

The index is read and checked by the core (one read of the file's start); no tensor data is
read, so this is quick for remote files too. Hashes sit in each tensor's own header and are
not read here: `tensorstream verify` checks them.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

from . import _common, _index

_LARGEST = 5


def register(sub: Any) -> None:
    p = _common.add_command(sub, "info", __doc__, run)
    p.add_argument("uri", help="a path, http(s):// URL or s3://bucket/key")
    p.add_argument("--tensors", action="store_true", help="list every tensor (name, dtype, shape, bytes, offset)")
    _common.add_json(p)


def run(args: argparse.Namespace) -> int:
    _common.emit(args, describe(args.uri, args.tensors), _text)
    return _common.OK


def describe(uri: str, with_tensors: bool = False) -> dict[str, Any]:
    index, records, source = _index.read(uri)
    dtypes: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for rec in records:
        row = dtypes[_dtype(rec)]
        row["count"] += 1
        row["bytes"] += rec.nbytes
    largest = sorted(records, key=lambda r: r.nbytes, reverse=True)[:_LARGEST]
    out: dict[str, Any] = {
        "uri": source.name,
        "format": "tensorizer",
        "data_version": index.version,
        "file_bytes": index.file_size,
        "tensor_count": len(records),
        "tensor_bytes": sum(r.nbytes for r in records),
        "meta_tensors": sum(r.is_meta for r in records),
        "encrypted": bool(index.encrypted),
        "dtypes": dict(sorted(dtypes.items())),
        "largest": [_row(r, index) for r in largest],
    }
    if with_tensors:
        out["tensors"] = [_row(r, index) for r in records]
    return out


def _dtype(rec: Any) -> str:
    return str(rec.dtype).removeprefix("torch.")


def _row(rec: Any, index: Any) -> dict[str, Any]:
    return {
        "name": _common.public_name(rec.name),
        "dtype": _dtype(rec),
        "shape": list(rec.shape),
        "bytes": rec.nbytes,
        "offset": index.entries[rec.pos].data_offset,
        "meta": rec.is_meta,
    }


def _text(d: dict[str, Any]) -> str:
    lines = [
        f"{d['uri']}",
        f"  format        tensorizer, data version {d['data_version']}",
        f"  file          {_common.size(d['file_bytes'])} ({d['file_bytes']} bytes)",
        f"  tensors       {d['tensor_count']} ({d['meta_tensors']} meta), "
        f"{_common.size(d['tensor_bytes'])} of data",
        f"  encrypted     {'yes' if d['encrypted'] else 'no'}",
        "  dtypes        " + ", ".join(f"{k} {v['count']} ({_common.size(v['bytes'])})" for k, v in d["dtypes"].items()),
    ]
    if d["largest"]:
        lines.append("  largest")
        lines += [f"    {_tensor_line(t)}" for t in d["largest"]]
    if "tensors" in d:
        lines.append("  all tensors (name, dtype, shape, bytes, offset)")
        lines += [f"    {_tensor_line(t)}" for t in d["tensors"]]
    return "\n".join(lines)


def _tensor_line(t: dict[str, Any]) -> str:
    name = ".".join(map(str, t["name"])) if isinstance(t["name"], list) else t["name"]
    shape = "x".join(map(str, t["shape"])) or "scalar"
    return f"{name}  {t['dtype']}  [{shape}]  {t['bytes']}  @{t['offset']}"
