"""Show what a file holds: format, data version, tensors, bytes, dtypes, encryption, hashes.

The index is read and checked by the core (one read of the file's start); no tensor data is
read, so this is quick for remote files too. The hashes a .tensors file stores sit in each
tensor's own header: reading which ones are there costs one small read per tensor (over the
same connection for a URL); `--no-hashes` skips it. `tensorstream verify` checks them.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

from .. import _native
from . import _common, _index

_LARGEST = 5


def register(sub: Any) -> None:
    p = _common.add_command(sub, "info", __doc__, run)
    p.add_argument("uri", help="a path, http(s):// URL or s3://bucket/key")
    p.add_argument("--tensors", action="store_true",
                   help="list every tensor (name, dtype, shape, bytes, offset, hashes)")
    p.add_argument("--no-hashes", dest="hashes", action="store_false",
                   help="do not read the per-tensor headers to list the hashes they store")
    _common.add_json(p)


def run(args: argparse.Namespace) -> int:
    _common.emit(args, describe(args.uri, args.tensors, args.hashes), _text)
    return _common.OK


def describe(uri: str, with_tensors: bool = False, with_hashes: bool = True) -> dict[str, Any]:
    index, records, source = _index.read(uri)
    kinds = _hash_kinds(source, index, records) if with_hashes else None
    dtypes: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for rec in records:
        row = dtypes[_dtype(rec)]
        row["count"] += 1
        row["bytes"] += rec.nbytes
    largest = sorted(records, key=lambda r: r.nbytes, reverse=True)[:_LARGEST]
    out: dict[str, Any] = {
        "uri": source.name,
        "format": index.format,
        "data_version": index.version,
        "file_bytes": index.file_size,
        "tensor_count": len(records),
        "tensor_bytes": sum(r.nbytes for r in records),
        "meta_tensors": sum(r.is_meta for r in records),
        "encrypted": bool(index.encrypted),
        "dtypes": dict(sorted(dtypes.items())),
        "hashes": _hash_summary(kinds, index),
        "largest": [_row(r, index, kinds) for r in largest],
    }
    if with_tensors:
        out["tensors"] = [_row(r, index, kinds) for r in records]
    return out


def _hash_kinds(source: Any, index: Any, records: list[Any]) -> dict[int, list[str]] | None:
    """Index position -> the hashes its header stores; None where the format has none."""
    if index.format != "tensorizer":
        return None
    positions = [r.pos for r in records]
    return {d.entry: list(d.kinds) for d in _native.read_digests(source, index, positions)}


def _hash_summary(kinds: dict[int, list[str]] | None, index: Any) -> dict[str, Any]:
    """How many tensors store each hash ("none": tensors without one)."""
    if kinds is None:
        why = "not read (--no-hashes)" if index.format == "tensorizer" else f"{index.format} stores no hashes"
        return {"read": False, "why": why}
    counts = collections.Counter(k for ks in kinds.values() for k in ks)
    counts["none"] = sum(not ks for ks in kinds.values())
    return {"read": True, **{k: counts[k] for k in ("crc32", "sha256", "none")}}


def _dtype(rec: Any) -> str:
    return str(rec.dtype).removeprefix("torch.")


def _row(rec: Any, index: Any, kinds: dict[int, list[str]] | None) -> dict[str, Any]:
    return {
        "name": _common.public_name(rec.name),
        "dtype": _dtype(rec),
        "shape": list(rec.shape),
        "bytes": rec.nbytes,
        "offset": index.entries[rec.pos].data_offset,
        "meta": rec.is_meta,
        "hashes": None if kinds is None else kinds.get(rec.pos, []),
    }


def _text(d: dict[str, Any]) -> str:
    lines = [
        f"{d['uri']}",
        f"  format        {d['format']}" + (f", data version {d['data_version']}" if d["format"] == "tensorizer" else ""),
        f"  file          {_common.size(d['file_bytes'])} ({d['file_bytes']} bytes)",
        f"  tensors       {d['tensor_count']} ({d['meta_tensors']} meta), "
        f"{_common.size(d['tensor_bytes'])} of data",
        f"  encrypted     {'yes' if d['encrypted'] else 'no'}",
        "  dtypes        " + ", ".join(f"{k} {v['count']} ({_common.size(v['bytes'])})" for k, v in d["dtypes"].items()),
        "  hashes        " + _hash_text(d["hashes"]),
    ]
    if d["largest"]:
        lines.append("  largest")
        lines += [f"    {_tensor_line(t)}" for t in d["largest"]]
    if "tensors" in d:
        lines.append("  all tensors (name, dtype, shape, bytes, offset, hashes)")
        lines += [f"    {_tensor_line(t)}" for t in d["tensors"]]
    return "\n".join(lines)


def _tensor_line(t: dict[str, Any]) -> str:
    name = ".".join(map(str, t["name"])) if isinstance(t["name"], list) else t["name"]
    shape = "x".join(map(str, t["shape"])) or "scalar"
    hashes = "" if t["hashes"] is None else "  " + ("+".join(t["hashes"]) or "no hash")
    return f"{name}  {t['dtype']}  [{shape}]  {t['bytes']}  @{t['offset']}{hashes}"


def _hash_text(h: dict[str, Any]) -> str:
    if not h["read"]:
        return h["why"]
    return f"crc32 on {h['crc32']}, sha256 on {h['sha256']}, none on {h['none']} tensor(s)"
