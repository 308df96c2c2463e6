"""Time loading a file as a program would, beside what the medium itself delivers.

Each run opens a TensorDeserializer (--device, --lazy, --verify as given), takes every tensor
(with --lazy, one at a time) and waits for the device. Printed per run: seconds, GB/s, time to
the first tensor, peak growth of resident memory; then the median and the per-stage figures
(`deserializer.stats`). The ceiling is measured on the spot after the runs: a local file is
read from the page cache with plain positioned reads in parallel threads; an http(s):// or
s3:// object with parallel range requests through the package's HTTP source; a GPU gets a
pinned host-to-device copy. Each line says what was measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import time
from typing import Any

import torch

from .. import _sources
from ..demo import PeakRss
from ..serialization import TensorDeserializer
from . import _common

CHUNK = 8 << 20


def register(sub: Any) -> None:
    p = _common.add_command(sub, "bench", __doc__, run)
    p.add_argument("uri", help="a path, http(s):// URL or s3://bucket/key")
    p.add_argument("--device", default="cpu", help="where to load: cpu (default), cuda, cuda:N")
    p.add_argument("--lazy", action="store_true", help="lazy_load=True: each tensor read on first access")
    p.add_argument("--verify", action="store_true", help="verify_hash=True")
    p.add_argument("--runs", type=int, default=3, help="timed loads (default 3; the median is shown)")
    p.add_argument("--threads", type=int, default=8, help="threads / ranges in flight for the ceiling (default 8)")
    p.add_argument("--no-ceiling", action="store_true", help="skip measuring the medium's ceiling")
    _common.add_key(p)
    _common.add_json(p)


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.threads < 1:
        raise _common.UsageError("--runs and --threads must be at least 1")
    device = torch.device(args.device)
    encryption = _common.decryption(args)
    runs = [_one_run(args, device, encryption) for _ in range(args.runs)]
    nbytes = runs[-1]["bytes"]
    report: dict[str, Any] = {
        "uri": args.uri.split("?")[0], "device": str(device), "lazy": args.lazy, "verify": args.verify,
        "tensor_bytes": nbytes, "runs": [{k: v for k, v in r.items() if not k.startswith("stages")} for r in runs],
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_gbps": statistics.median(r["gbps"] for r in runs),
        "stages": runs[-1]["stages"], "stages_summary": runs[-1]["stages_summary"],
        "ceilings": [] if args.no_ceiling else ceilings(args.uri, device, args.threads),
    }
    _common.emit(args, report, _text)
    return _common.OK


def _one_run(args: argparse.Namespace, device: torch.device, encryption: Any) -> dict[str, Any]:
    with PeakRss() as rss:
        start = time.perf_counter()
        with TensorDeserializer(args.uri, device=device, lazy_load=args.lazy, verify_hash=args.verify,
                                encryption=encryption, progress=False) as d:
            first = None
            held = []
            for key in d:
                held.append(d[key])
                if first is None:
                    first = time.perf_counter() - start
            _sync(device)
            seconds = time.perf_counter() - start
            nbytes, stats = d.total_tensor_bytes, d.stats
        del held
    return {"seconds": seconds, "gbps": nbytes / max(seconds, 1e-9) / 1e9, "first_tensor_seconds": first or seconds,
            "peak_rss_growth_bytes": rss.peak, "bytes": nbytes, "stages": stats.stages(),
            "stages_summary": stats.summary()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ceilings(uri: str, device: torch.device, threads: int) -> list[dict[str, Any]]:
    """What the medium (and the device link) carries, measured now."""
    source = _sources.open_source(uri)
    remote = uri.lower().startswith(("http://", "https://", "s3://"))
    if remote:
        what = f"parallel range GETs: {threads} in flight, 8 MiB each, through the package's HTTP source"
        out = [_timed(what, source.size, lambda: _read_all(source, threads, _remote_reader(source)))]
    else:
        fd = os.open(uri, os.O_RDONLY | os.O_CLOEXEC)
        try:
            what = f"page-cache read: {threads} threads of plain 8 MiB preads over the same file"
            out = [_timed(what, source.size, lambda: _read_all(source, threads, _file_reader(fd)))]
        finally:
            os.close(fd)
    if device.type == "cuda":
        out.append(_h2d(device))
    return out


def _timed(what: str, nbytes: int, fn: Any) -> dict[str, Any]:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return {"what": what, "bytes": nbytes, "seconds": seconds, "gbps": nbytes / max(seconds, 1e-9) / 1e9}


def _file_reader(fd: int) -> Any:
    return lambda at, buf: os.preadv(fd, [buf], at)


def _remote_reader(source: Any) -> Any:
    return lambda at, buf: source.read_into(at, buf)


def _read_all(source: Any, threads: int, read: Any) -> None:
    """Every byte of ``source`` once, ``threads`` chunks at a time, each thread reusing its buffer."""
    starts = list(range(0, source.size, CHUNK))
    per_thread = [starts[i::threads] for i in range(threads)]

    def worker(mine: list[int]) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        for at in mine:
            read(at, view[: min(CHUNK, source.size - at)])

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(worker, mine) for mine in per_thread if mine]:
            f.result()


def _h2d(device: torch.device, nbytes: int = 256 << 20, repeat: int = 4) -> dict[str, Any]:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dest = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dest.copy_(host, non_blocking=True)
    _sync(device)

    def copies() -> None:
        for _ in range(repeat):
            dest.copy_(host, non_blocking=True)
        _sync(device)

    return _timed("pinned host-to-device copy: 256 MiB x 4 with torch", nbytes * repeat, copies)


def _text(d: dict[str, Any]) -> str:
    mode = ("lazy" if d["lazy"] else "eager") + (", hashes verified" if d["verify"] else "")
    lines = [f"{d['uri']}: {_common.size(d['tensor_bytes'])} of tensors to {d['device']}, {mode}"]
    for i, r in enumerate(d["runs"], 1):
        lines.append(f"  run {i}: {r['seconds']:.3f} s  {r['gbps']:.2f} GB/s  first tensor {r['first_tensor_seconds']:.3f} s"
                     f"  peak RSS +{_common.size(r['peak_rss_growth_bytes'])}")
    lines.append(f"  median: {d['median_gbps']:.2f} GB/s ({d['median_seconds']:.3f} s)")
    lines.append(f"  stages (last run; hash/decrypt: busy time summed over threads): {d['stages_summary']}")
    for c in d["ceilings"]:
        lines.append(f"  ceiling: {c['gbps']:.2f} GB/s ({c['what']})")
    return "\n".join(lines)
