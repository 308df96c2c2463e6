"""Copy a .tensors file between local paths, http(s):// (source only) and s3:// URIs.

The source is read in 8 MiB ranges, several in flight at once (parallel range requests for a
remote source), and written in order: positioned writes to a local file, a streamed multipart
upload to S3. Memory stays at a few ranges. The copy is then checked: the destination's size
and its index (every tensor's name, dtype, shape and offset) must match the source's;
--verify also checks every hash of the destination.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import time
from typing import Any

from .. import _progress, stream_io
from . import _common, _index, verify

CHUNK = 8 << 20
IN_FLIGHT = 8


def register(sub: Any) -> None:
    p = _common.add_command(sub, "cp", __doc__, run)
    p.add_argument("src", help="a path, http(s):// URL or s3://bucket/key")
    p.add_argument("dst", help="a path or s3://bucket/key (a folder or a URI ending in '/' keeps the name)")
    p.add_argument("--verify", action="store_true", help="also check every hash of the copy")
    p.add_argument("--parallel", type=int, default=IN_FLIGHT, help=f"ranges in flight (default {IN_FLIGHT})")
    _common.add_key(p, what="an encrypted file (with --verify)")
    _common.add_json(p)
    _common.add_progress(p)


def run(args: argparse.Namespace) -> int:
    if args.parallel < 1:
        raise _common.UsageError("--parallel must be at least 1")
    dst = _destination(args.src, args.dst)
    start = time.perf_counter()
    src_index, src_records, source = _index.read(args.src)  # refuses what is not a .tensors file
    with _progress.Bar(source.size, "copying", _common.progress(args)) as bar:
        _copy(source, dst, args.parallel, bar)
    seconds = time.perf_counter() - start
    mismatch = _compare(src_index, src_records, dst)
    report: dict[str, Any] = {"ok": mismatch is None, "src": source.name, "dst": _shown(dst), "bytes": source.size,
                              "seconds": seconds, "gbps": source.size / max(seconds, 1e-9) / 1e9}
    if mismatch is None and args.verify:
        checked = verify.check(dst, _common.decryption(args), False)
        report["verified"] = checked["ok"]
        report["ok"] = checked["ok"]
        mismatch = None if checked["ok"] else checked["error"]
    if mismatch is not None:
        report["error"] = mismatch
    _common.emit(args, report, _text)
    return _common.OK if report["ok"] else _common.CHECK_FAILED


def _destination(src: str, dst: str) -> str:
    name = src.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    if dst.lower().startswith(("http://", "https://")):
        raise _common.UsageError(f"cannot copy to {dst.split('?')[0]}: http(s):// is read-only (use s3://)")
    if dst.endswith("/") or os.path.isdir(dst):
        dst = dst.rstrip("/") + "/" + name if dst.lower().startswith("s3://") else os.path.join(dst, name)
    if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
        raise _common.UsageError(f"{src} and {dst} are the same file")
    return dst


def _shown(uri: str) -> str:
    return uri.split("?")[0]


def _copy(source: Any, dst: str, parallel: int, bar: _progress.Bar) -> None:
    """Reads ``source`` in chunks, ``parallel`` in flight, and writes them in order to ``dst``."""
    ranges = [(at, min(CHUNK, source.size - at)) for at in range(0, source.size, CHUNK)]
    with _writer(dst) as out, concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        pending: collections.deque = collections.deque()
        for at, n in ranges:
            pending.append(pool.submit(_read, source, at, n))
            if len(pending) >= parallel:
                bar.update(out(pending.popleft().result()))
        while pending:
            bar.update(out(pending.popleft().result()))


def _read(source: Any, at: int, n: int) -> bytearray:
    buf = bytearray(n)
    source.read_into(at, buf)
    return buf


class _writer:
    """A callable that writes chunks in order to a local file or an S3 object; on error nothing
    is left (the partial file removed, the upload aborted)."""

    def __init__(self, dst: str) -> None:
        self._dst = dst
        self._stream = stream_io.open_stream(dst, "wb")

    def __enter__(self) -> Any:
        return self

    def __call__(self, chunk: bytearray) -> int:
        self._stream.write(chunk)
        return len(chunk)

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self._stream.close()
            return
        if isinstance(self._stream, stream_io.S3WriteStream):
            self._stream.abort()
        else:
            self._stream.close()
            os.unlink(self._dst)


def _compare(src_index: Any, src_records: list, dst: str) -> str | None:
    """None when ``dst`` has the source's size and index; else what differs."""
    index, records, _ = _index.read(dst)
    if index.file_size != src_index.file_size:
        return f"the copy has {index.file_size} bytes, the source {src_index.file_size}"
    for a, b in zip(src_records, records, strict=False):
        ea, eb = src_index.entries[a.pos], index.entries[b.pos]
        if (a.path, a.dtype, a.shape, ea.data_offset) != (b.path, b.dtype, b.shape, eb.data_offset):
            return f"tensor {a.name!r} differs in the copy's index"
    if len(records) != len(src_records):
        return f"the copy has {len(records)} tensors, the source {len(src_records)}"
    return None


def _text(d: dict[str, Any]) -> str:
    if not d["ok"]:
        return f"FAILED: {d['src']} -> {d['dst']}: {d['error']}"
    checked = "index and hashes match" if d.get("verified") else "index matches"
    return (f"copied {d['src']} -> {d['dst']}: {_common.size(d['bytes'])} in {d['seconds']:.2f} s "
            f"({d['gbps']:.2f} GB/s), {checked}")
