"""Check every tensor's hashes (CRC32, SHA-256), and its decryption for an encrypted file.

Tensors are read in file order, about 256 MB at a time, through the same loader a load uses,
with hash checking on; memory stays at one batch. The first bad tensor is reported and the
exit code is 1.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .. import _progress
from ..errors import CryptographyError, FormatError, HashMismatchError, KeyRequiredError
from . import _common, _index


def register(sub: Any) -> None:
    p = _common.add_command(sub, "verify", __doc__, run)
    p.add_argument("uri", help="a path, http(s):// URL or s3://bucket/key")
    _common.add_key(p)
    _common.add_json(p)
    _common.add_progress(p)


def run(args: argparse.Namespace) -> int:
    report = check(args.uri, _common.decryption(args), _common.progress(args))
    _common.emit(args, report, _text)
    return _common.OK if report["ok"] else _common.CHECK_FAILED


def check(uri: str, encryption: Any = None, progress: bool = False) -> dict[str, Any]:
    """``{"ok", "tensors", "bytes", "seconds", ...}``; a failed check adds ``"tensor"`` and ``"error"``."""
    start = time.perf_counter()
    try:
        index, records, source = _index.read(uri)
    except FormatError as exc:
        return _failed(uri, exc, 0, 0, start)
    done = count = 0
    with _progress.Bar(sum(r.nbytes for r in records), "verifying", progress) as bar:
        try:
            for batch, nbytes in _index.tensors(uri, records, verify_hash=True, encryption=encryption):
                count += len(batch)
                done += nbytes
                bar.update(nbytes)
                del batch
        except KeyRequiredError:
            raise _common.UsageError(f"{source.name} is encrypted: give --key-file or --passphrase-env") from None
        except (HashMismatchError, CryptographyError, FormatError) as exc:
            return _failed(source.name, exc, count, done, start)
    return {"ok": True, "uri": source.name, "tensors": count, "bytes": done, "encrypted": bool(index.encrypted),
            "seconds": time.perf_counter() - start}


def _failed(uri: str, exc: Exception, count: int, done: int, start: float) -> dict[str, Any]:
    return {"ok": False, "uri": uri, "tensor": getattr(exc, "tensor", None), "error": _common.one_line(exc),
            "tensors_ok": count, "bytes_ok": done, "seconds": time.perf_counter() - start}


def _text(d: dict[str, Any]) -> str:
    if d["ok"]:
        how = "hashes and decryption" if d["encrypted"] else "hashes"
        return f"OK: {d['tensors']} tensors, {_common.size(d['bytes'])}: {how} match ({d['uri']}, {d['seconds']:.2f} s)"
    where = f"tensor {d['tensor']!r}" if d["tensor"] else "the file"
    return f"FAILED: {where}: {d['error']}"
