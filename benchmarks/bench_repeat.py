#!/usr/bin/env python3
"""Many deserializers in a row in one process: what a process keeps between loads.

A server that loads several models, or reloads one, pays each deserializer's set-up again unless
the process keeps it: read workers, io_uring rings, connections, and the ring's pinned memory
(pinning runs at 1-2 GB/s). This runs ``--loads`` deserializers in a row in one fresh process per
method and run, each loading every tensor of a ``--tensors``-tensor, ``--size-mb`` file, and
reports the median of loads 2..N beside load 1, how many ring slots the process allocated
(``cuMemHostAlloc`` calls on CUDA; the host stand-in's allocations on a CPU), and how many worker
threads it started.

Methods (``--methods``): ``ts`` (eager load to the device), ``ts-ring-nopool`` (the same with
``TENSORSTREAM_PINNED_MB=0``: every deserializer allocates its ring, as before the pool), ``ts-lazy``
(lazy deserializer, every tensor read one by one), ``tensorizer`` (CoreWeave's tensorizer, the
same loop), and with ``--http`` the same over loopback nginx. Ceiling: reading the file from the
page cache (local), or ``curl`` of it to /dev/null (HTTP).

On a machine without a GPU, ``--device cpu`` routes the ``ts`` methods through the ring with the
host stand-in (``TENSORSTREAM_DEVICE_STANDIN=host``), so the pool's allocations are counted there;
``ts-copy`` is the plain CPU load (no ring). ``--device cuda`` uses the GPU.

``--before DIR`` adds every ``ts`` method again as ``<method>@before``, run with another build of
the package found in DIR (e.g. ``pip install --no-deps --target DIR`` of an earlier commit), for a
before/after comparison in the same run.
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
import _system  # noqa: E402

DEFAULT_METHODS = ["ts", "ts-ring-nopool", "ts-copy", "ts-lazy", "tensorizer"]


def _make_file(path: Path, tensors: int, size_mb: int) -> int:
    import torch

    import tensorstream

    per = max(1, size_mb * (1 << 20) // tensors // 4)
    gen = torch.Generator().manual_seed(7)
    sd = {f"layer.{i}.weight": torch.randn(per, generator=gen) for i in range(tensors)}
    tensorstream.save(sd, path)
    return sum(t.numel() * 4 for t in sd.values())


# ------------------------------------------------------------------------------------------
# The worker: one fresh process runs every load of one method


def _worker(spec: dict) -> dict:
    import torch

    device, method, uri, loads = spec["device"], spec["method"].partition("@")[0], spec["uri"], spec["loads"]
    if method.startswith("ts"):
        import tensorstream
        from tensorstream import _core

        def one() -> int:
            lazy = method == "ts-lazy"
            with tensorstream.TensorDeserializer(uri, device=device, lazy_load=lazy) as d:
                names = list(d.keys())
                got = [d[n] for n in names]
            return sum(t.numel() * t.element_size() for t in got)
    else:
        from tensorizer import TensorDeserializer, stream_io

        def one() -> int:
            with stream_io.open_stream(uri, "rb") as f:
                d = TensorDeserializer(f, device=device)
                n = sum(t.numel() * t.element_size() for t in d.values())
                d.close()
            return n

    times, nbytes = [], 0
    for _ in range(loads):
        start = time.perf_counter()
        nbytes = one()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    out = {"times": times, "bytes": nbytes, "peak_rss_mib": _system.peak_rss_mib()}
    if method.startswith("ts"):
        out["pool"] = _core.host_pool_info() if hasattr(_core, "host_pool_info") else None
        out["runtime"] = _core.runtime_info()
        out["package"] = os.path.dirname(tensorstream.__file__)
    return out


def _run_worker(spec: dict, env: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-600:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env_for(method: str, device: str, before: str | None = None) -> dict:
    method, _, variant = method.partition("@")
    paths = ([before] if variant == "before" and before else []) + [str(HERE), *sys.path]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    for var in ("TENSORSTREAM_DEVICE_STANDIN", "TENSORSTREAM_PINNED_MB"):
        env.pop(var, None)
    ring = method in ("ts", "ts-ring-nopool", "ts-lazy")
    if device == "cpu" and ring:
        env["TENSORSTREAM_DEVICE_STANDIN"] = "host"
    if method == "ts-ring-nopool":
        env["TENSORSTREAM_PINNED_MB"] = "0"
    return env


# ------------------------------------------------------------------------------------------


def _ceiling(path: Path, url: str | None) -> float:
    """Seconds to read the file from the page cache into one reused buffer, or to fetch it with
    curl to /dev/null."""
    start = time.perf_counter()
    if url:
        subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)
    else:
        buf = bytearray(8 << 20)
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--tensors", type=int, default=1000)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--loads", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per method (medians over them)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--http", action="store_true", help="load over loopback nginx instead of the local file")
    ap.add_argument("--before", default=None, help="another build of the package, run as <method>@before")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-repeat-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "model.tensors"
    nbytes = _make_file(path, args.tensors, args.size_mb)
    server, url = None, None
    if args.http:
        from _nginx import Nginx, nginx_binary

        binary = nginx_binary()
        if not binary:
            sys.exit("--http needs nginx")
        server = Nginx(binary, work, work / "nginx", access_log=False)
        server.start()
        url = server.url(path.name)
    methods = [m for m in args.methods.split(",") if m]
    if args.before:
        methods += [f"{m}@before" for m in methods if m.startswith("ts") and m != "ts-ring-nopool"]
    if "tensorizer" in methods:
        try:
            import tensorizer  # noqa: F401
        except ImportError:
            methods.remove("tensorizer")
            print("tensorizer is not installed: its row is left out", file=sys.stderr)
    print(f"{args.loads} deserializers in a row, {args.tensors} tensors, {nbytes / 1e6:.0f} MB, "
          f"device {args.device}, {'HTTP (loopback nginx)' if url else 'local file, warm page cache'}; "
          f"{args.runs} fresh processes per method", flush=True)
    try:
        _system.read_once(str(path))  # warm: every method reads from the page cache
        results: dict[str, list[dict]] = {m: [] for m in methods}
        ceilings = []
        for r in range(args.runs):
            ceilings.append(_ceiling(path, url))
            for m in _report.round_order(methods, r):
                spec = {"device": args.device, "method": m, "uri": url or str(path), "loads": args.loads}
                results[m].append(_run_worker(spec, _env_for(m, args.device, args.before), timeout=1800))
    finally:
        if server:
            server.stop()
    rows, summary = [], {}
    ceiling_s = statistics.median(ceilings)
    for m in methods:
        runs = [r for r in results[m] if "error" in r or r.get("bytes") == nbytes]
        errors = [r["error"] for r in runs if "error" in r]
        ok = [r for r in runs if "error" not in r]
        if errors or not ok:
            rows.append([m, "FAIL", "", "", "", "", ""])
            summary[m] = {"error": (errors or ["wrong byte count"])[0]}
            print(f"{m}: {summary[m]['error']}", file=sys.stderr)
            continue
        first = statistics.median(r["times"][0] for r in ok)
        later = statistics.median(statistics.median(r["times"][1:]) for r in ok)
        made = [r["pool"]["blocks_made"] for r in ok if r.get("pool")]
        threads = [r["runtime"]["threads_started"] for r in ok if "runtime" in r]
        rss = max(r["peak_rss_mib"] for r in ok)
        summary[m] = {"first_s": first, "later_median_s": later, "gbps_later": nbytes / later / 1e9,
                      "ring_allocations": statistics.median(made) if made else None,
                      "threads_started": statistics.median(threads) if threads else None, "peak_rss_mib": rss}
        rows.append([m, f"{first * 1e3:.1f}", f"{later * 1e3:.1f}", f"{nbytes / later / 1e9:.2f}",
                     "-" if not made else f"{statistics.median(made):.0f}",
                     "-" if not threads else f"{statistics.median(threads):.0f}", f"{rss:.0f}"])
    header = ["method", "load 1 ms", f"loads 2-{args.loads} median ms", "GB/s", "ring allocations",
              "threads started", "peak RSS MiB"]
    print(_report.table(header, rows))
    print(f"ceiling: {'curl to /dev/null' if url else 'page-cache read'} {ceiling_s * 1e3:.1f} ms "
          f"({nbytes / ceiling_s / 1e9:.2f} GB/s)")
    base = summary.get("ts-ring-nopool", {}).get("later_median_s")
    for m in ("ts", "ts-copy", "ts-lazy"):
        if summary.get(m, {}).get("later_median_s") and summary.get("tensorizer", {}).get("later_median_s"):
            print(f"{m} vs tensorizer, loads 2-{args.loads}: "
                  f"{summary['tensorizer']['later_median_s'] / summary[m]['later_median_s']:.2f}x")
    if base and summary.get("ts", {}).get("later_median_s"):
        print(f"ts (pooled ring) vs ts-ring-nopool, loads 2-{args.loads}: "
              f"{base / summary['ts']['later_median_s']:.2f}x")
    for m in methods:
        old = summary.get(f"{m}@before", {}).get("later_median_s")
        if "@" not in m and old and summary.get(m, {}).get("later_median_s"):
            print(f"{m} now vs before, loads 2-{args.loads}: {old / summary[m]['later_median_s']:.2f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps({"bytes": nbytes, "ceiling_s": ceiling_s, "methods": summary,
                                               "runs": results}, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
