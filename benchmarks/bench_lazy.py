#!/usr/bin/env python3
"""Lazy loads over HTTP: open a file of many tensors, read a few of them one by one.

A server process that touches a handful of tensors of a large file (a debugger, an evaluation of
one layer, a lazy vLLM path) pays one round trip per access at best. This serves a
``--tensors``-tensor file from nginx on loopback and, in a fresh process per method and run, opens
it lazily and reads ``--reads`` tensors spread over the file one by one, timing from the open to
the last tensor. nginx logs each request's connection, so the table shows requests and connections
per load beside the time: tensorstream (``TensorDeserializer(url, lazy_load=True)``) against
tensorizer's lazy deserializer over its own HTTP stream, and with ``--before DIR`` an earlier build
of tensorstream. The ceiling is a single ``curl`` range request per tensor, sequential, over one
kept connection.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _report  # noqa: E402
from _nginx import Nginx, nginx_binary  # noqa: E402


def _make_file(path: Path, tensors: int, size_mb: int) -> list[str]:
    import torch

    import tensorstream

    per = max(1, size_mb * (1 << 20) // tensors // 4)
    gen = torch.Generator().manual_seed(11)
    sd = {f"layer.{i}.weight": torch.randn(per, generator=gen) for i in range(tensors)}
    tensorstream.save(sd, path)
    return list(sd)


def _worker(spec: dict) -> dict:
    import zlib

    url, names = spec["url"], spec["names"]
    crc = 0
    if spec["method"].startswith("tensorstream"):
        import tensorstream

        start = time.perf_counter()  # imports are not timed
        with tensorstream.TensorDeserializer(url, device="cpu", lazy_load=True) as d:
            for name in names:
                crc = zlib.crc32(d[name].detach().numpy().tobytes(), crc)
    else:
        from tensorizer import TensorDeserializer, stream_io

        start = time.perf_counter()
        with stream_io.open_stream(url, "rb") as f:
            d = TensorDeserializer(f, device="cpu", lazy_load=True)
            for name in names:
                crc = zlib.crc32(d[name].detach().numpy().tobytes(), crc)
            d.close()
    return {"seconds": time.perf_counter() - start, "crc": crc}


def _curl_ceiling(url: str, ranges: list[tuple[int, int]]) -> float:
    args = []
    for i, (a, b) in enumerate(ranges):
        args += ["-r", f"{a}-{b}", url, "-o", "/dev/null"] + (["--next"] if i < len(ranges) - 1 else [])
    start = time.perf_counter()
    subprocess.run(["curl", "-s", *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--tensors", type=int, default=500)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--reads", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", default=None, help="an earlier build of the package, run as tensorstream@before")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    binary = nginx_binary()
    if not binary:
        sys.exit("nginx is needed (Debian package 'nginx')")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-lazy-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "model.tensors"
    names = _make_file(path, args.tensors, args.size_mb)
    step = max(1, len(names) // args.reads)
    chosen = names[::step][: args.reads]
    methods = ["tensorstream"] + (["tensorstream@before"] if args.before else [])
    try:
        import tensorizer  # noqa: F401

        methods.append("tensorizer")
    except ImportError:
        print("tensorizer is not installed: its row is left out", file=sys.stderr)
    server = Nginx(binary, work, work / "nginx", log_connections=True)
    server.start()
    url = server.url(path.name)
    from tensorstream import _core

    where = {e.name.decode(): e for e in _core.read_index(_core.FileSource(str(path))).entries}
    ranges = [(where[n].data_offset, where[n].data_offset + where[n].data_length - 1) for n in chosen]
    results: dict[str, list[dict]] = {m: [] for m in methods}
    ceilings = []
    print(f"{args.tensors} tensors, {path.stat().st_size / 1e6:.0f} MB over loopback nginx; {len(chosen)} read one "
          f"by one after a lazy open; {args.runs} fresh processes per method", flush=True)
    try:
        for r in range(args.runs):
            ceilings.append(_curl_ceiling(url, ranges))
            for m in _report.round_order(methods, r):
                paths = ([args.before] if m.endswith("@before") else []) + sys.path
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
                offset = os.path.getsize(server.access_log)
                proc = subprocess.run([sys.executable, __file__, "--worker",
                                       json.dumps({"method": m, "url": url, "names": chosen})],
                                      capture_output=True, text=True, env=env, timeout=1800)
                time.sleep(0.2)  # nginx writes its log line after the reply
                if proc.returncode:
                    results[m].append({"error": proc.stderr[-600:]})
                    continue
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                out["connections"], out["requests"] = server.connections_and_requests(offset)
                results[m].append(out)
    finally:
        server.stop()
    crcs = {r["crc"] for runs in results.values() for r in runs if "crc" in r}
    rows, summary = [], {}
    for m in methods:
        ok = [r for r in results[m] if "error" not in r]
        if len(ok) != len(results[m]) or len(crcs) != 1:
            summary[m] = {"error": next((r["error"] for r in results[m] if "error" in r), "tensors differ")}
            rows.append([m, "FAIL", "", "", ""])
            continue
        s = statistics.median(r["seconds"] for r in ok)
        conns = statistics.median(r["connections"] for r in ok)
        reqs = statistics.median(r["requests"] for r in ok)
        summary[m] = {"median_s": s, "connections": conns, "requests": reqs}
        rows.append([m, f"{s * 1e3:.0f}", f"{reqs:.0f}", f"{conns:.0f}", "pass"])
    print(_report.table(["method", "open + reads ms", "requests", "connections", "check"], rows))
    ceiling = statistics.median(ceilings)
    print(f"ceiling: curl, {len(ranges)} ranges in a row over one connection: {ceiling * 1e3:.0f} ms")
    ts, tz = summary.get("tensorstream", {}), summary.get("tensorizer", {})
    if ts.get("median_s") and tz.get("median_s"):
        print(f"tensorstream vs tensorizer: {tz['median_s'] / ts['median_s']:.2f}x")
    old = summary.get("tensorstream@before", {})
    if ts.get("median_s") and old.get("median_s"):
        print(f"tensorstream now vs before: {old['median_s'] / ts['median_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"ceiling_s": ceiling, "methods": summary, "runs": results}, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
