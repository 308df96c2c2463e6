#!/usr/bin/env python3
"""Page cache -> GPU: tensorstream against tensorizer, safetensors, fastsafetensors, the Run:ai
model streamer and torch.load, and the ceiling.

The same synthetic model (see _model.py) is saved once per format and read into the page cache.
Every load then runs in a fresh process that has already started CUDA: a load is timed from before
the file is opened until every tensor is on the device and the device has synchronized, and is
checked afterwards against fingerprints taken when the model was made (exact integer sums of the
bytes, computed on the device). Peak host RSS is the process's peak over its RSS just before the
load. The ceiling is torch copying the same number of bytes from a pinned host buffer to the
device. `ts-read` is tensorstream reading through its ring with the device copy left out (the
read side alone). `ts-st` is tensorstream reading the safetensors file of the same tensors;
`fastsafetensors` (its `nogds` copier) and `runai` read that file too, each where its package is
installed (a missing one is reported and skipped).

--cpu-dry-run runs every step on the CPU (tensorstream through the ring's host stand-in, the peers
into CPU memory, the ceiling as a host copy): for checking the script where there is no GPU; its
numbers mean nothing for the GPU targets.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _report  # noqa: E402
import _system  # noqa: E402

GIB, MIB = 1 << 30, 1 << 20
FILES = {"tensors": "model.tensors", "safetensors": "model.safetensors", "torch": "model.pt"}
PEERS = ("tensorizer", "safetensors", "fastsafetensors", "runai", "torch.load")
# Peers that are optional: (method, module) run only where the module imports.
OPTIONAL = {"fastsafetensors": "fastsafetensors", "runai": "runai_model_streamer"}
RSS_ALLOWANCE_MIB = 300  # the target: peak host RSS <= ring + this
FP_CHUNK = 8 << 20


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# Fingerprints: exact, order-sensitive integer sums of a tensor's bytes, on any device


def fingerprint(t) -> list[int]:
    import torch

    flat = t.detach().reshape(-1).view(torch.uint8)
    weights = (torch.arange(min(FP_CHUNK, flat.numel()), device=flat.device, dtype=torch.int64) % 251) + 1
    plain = weighted = 0
    for start in range(0, flat.numel(), FP_CHUNK):
        part = flat[start:start + FP_CHUNK].to(torch.int64)
        plain += int(part.sum())
        weighted += int((part * weights[:part.numel()]).sum())
    return [plain, weighted]


def compare(reference: dict, tensors: dict) -> str:
    if sorted(reference) != sorted(tensors):
        return f"FAIL: names differ ({len(tensors)} loaded, {len(reference)} expected)"
    for name, want in reference.items():
        got = tensors[name]
        if str(got.dtype).removeprefix("torch.") != want["dtype"] or list(got.shape) != want["shape"]:
            return f"FAIL: {name}: {got.dtype} {list(got.shape)} != {want['dtype']} {want['shape']}"
        if fingerprint(got) != want["fp"]:
            return f"FAIL: {name}: bytes differ"
    return "pass"


# --------------------------------------------------------------------------------------------
# The child: one load per process


def _loader(method: str, device):
    """The method's load(path) -> (name -> tensor, notes); imports happen here, before timing."""
    import torch

    if method == "tensorstream" or (method.startswith("ts-") and method != "ts-read"):
        import tensorstream
        from tensorstream.serialization import TensorDeserializer

        stats: dict = {}
        release = TensorDeserializer._release

        def keep_stats(self):  # the ring's counters, read before the loader is dropped
            if getattr(self, "_loader", None) is not None:
                stats.update(self._loader.stats())
            release(self)

        TensorDeserializer._release = keep_stats

        def load(path):
            with tensorstream.TensorDeserializer(path, device=device) as d:
                tensors = dict(d.items())
                backend = d.io_backend
            notes = {k: stats.get(k) for k in ("ring_bytes", "turns", "alloc_seconds", "slot_wait_seconds",
                                               "header_seconds", "data_seconds")}
            return tensors, {"engine": backend, **notes}
    elif method == "ts-read":
        from tensorstream import _core, _loading

        def load(path):
            source = _core.FileSource(path)
            index = _core.read_index(source)
            records = _loading.describe(index.entries, index.file_size)
            loader = _core.DeviceLoader(source, copier="host", discard=True)
            fake = 1 << 44  # never written: the copy is discarded
            loader.load(index, [(r.pos, fake + r.pos * (1 << 32), r.nbytes) for r in records], False)
            return None, {"engine": loader.backend, "ring_bytes": loader.ring_bytes}
    elif method == "tensorizer":
        from tensorizer import TensorDeserializer

        def load(path):
            d = TensorDeserializer(path, device=device)
            tensors = dict(d.items())
            d.close()
            return tensors, {}
    elif method == "safetensors":
        from safetensors.torch import load_file

        def load(path):
            return load_file(path, device=str(device)), {}
    elif method == "fastsafetensors":
        from fastsafetensors import fastsafe_open

        where = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"

        def load(path):
            with fastsafe_open(path, framework="pt", device=where, nogds=True) as f:
                return {name: f.get_tensor(name) for name in f.keys()}, {"copier": "nogds"}
    elif method == "runai":
        from runai_model_streamer import SafetensorsStreamer

        def load(path):
            with SafetensorsStreamer() as streamer:
                streamer.stream_files([path], device=str(device))
                return dict(streamer.get_tensors()), {}
    elif method == "torch.load":
        def load(path):
            sd = torch.load(path, map_location="cpu", weights_only=True)
            return {k: v.to(device) for k, v in sd.items()}, {}
    else:
        raise ValueError(f"unknown method {method}")
    return load


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ceiling_worker(spec: dict, device) -> dict:
    """torch: the model's bytes from pinned host memory to the device, best of a few copies."""
    import torch

    n = spec["bytes"]
    pinned = device.type == "cuda"
    host = torch.empty(n, dtype=torch.uint8, pin_memory=pinned)
    host[::4096] = 1  # touch every page
    dst = torch.empty(n, dtype=torch.uint8, device=device)
    times = []
    for _ in range(spec["repeats"]):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(host, non_blocking=pinned)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "check": "n/a", "notes": {"copies": len(times)}}


def worker(spec: dict) -> dict:
    import torch

    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.zeros(1, device=device)  # start CUDA outside the timed region
        _sync(device)
    if spec["method"] == "ceiling":
        return _ceiling_worker(spec, device)
    load = _loader(spec["method"], device)
    base = _system.status_mib("VmRSS")
    _system.reset_peak_rss()
    t0 = time.perf_counter()
    tensors, notes = load(spec["path"])
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = _system.status_mib("VmHWM")
    if tensors is None:
        check = "n/a"
    else:
        with open(spec["reference"]) as f:
            check = compare(json.load(f)["tensors"], tensors)
    return {"seconds": seconds, "peak_rss_mib": peak, "base_rss_mib": base, "check": check, "notes": notes}


# --------------------------------------------------------------------------------------------
# The parent


def run_worker(spec: dict, env: dict, timeout: float) -> dict:
    return _system.run_script_worker(__file__, spec, env, timeout)


def prepare(args, workdir: str) -> dict:
    """Make and save the model in every format (or reuse the files); the reference."""
    ref_path = os.path.join(workdir, "reference.json")
    size = int(args.size_gib * GIB)
    if args.reuse and os.path.exists(ref_path):
        with open(ref_path) as f:
            ref = json.load(f)
        if (ref["size_bytes"], ref["seed"]) == (size, args.seed) and all(
                os.path.exists(os.path.join(workdir, n)) for n in FILES.values()):
            log(f"reusing the files in {workdir}")
            return ref
    import torch
    from safetensors.torch import save_file

    import _model
    import tensorstream

    t0 = time.perf_counter()
    sd = _model.generate(size, args.seed)
    on = "cpu" if args.cpu_dry_run or not torch.cuda.is_available() else "cuda"  # the device sums faster
    tensors = {name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                      "fp": fingerprint(t.to(on))} for name, t in sd.items()}
    log(f"model    {len(sd)} tensors, {sum(t.nbytes for t in sd.values()) / GIB:.3f} GiB, "
        f"made in {time.perf_counter() - t0:.1f} s")
    saves = {"tensors": lambda p: tensorstream.save(sd, p), "safetensors": lambda p: save_file(sd, p),
             "torch": lambda p: torch.save(sd, p)}
    for fmt, save in saves.items():
        t0 = time.perf_counter()
        save(os.path.join(workdir, FILES[fmt]))
        log(f"save     {FILES[fmt]:18} {time.perf_counter() - t0:6.2f} s")
    ref = {"size_bytes": size, "seed": args.seed, "tensors": tensors,
           "model_bytes": sum(t.nbytes for t in sd.values())}
    with open(ref_path, "w") as f:
        json.dump(ref, f)
    del sd
    os.sync()
    return ref


def methods_for(args) -> list[tuple[str, str, dict]]:
    """(method, file format, extra environment) in the order they run."""
    dry = {"TENSORSTREAM_DEVICE_STANDIN": "host"} if args.cpu_dry_run else {}
    out = [("tensorstream", "tensors", {**dry, "TENSORSTREAM_RING_MB": str(args.ring_mb)})]
    out += [(f"ts-ring-{mb}M", "tensors", {**dry, "TENSORSTREAM_RING_MB": str(mb)}) for mb in args.ring_sweep]
    for name, env in args.variant:
        out.append((f"ts-{name}", "tensors", {**dry, "TENSORSTREAM_RING_MB": str(args.ring_mb), **env}))
    out += [("ts-st", "safetensors", {**dry, "TENSORSTREAM_RING_MB": str(args.ring_mb)}),
            ("ts-read", "tensors", {"TENSORSTREAM_RING_MB": str(args.ring_mb)}), ("tensorizer", "tensors", {}),
            ("safetensors", "safetensors", {}), ("fastsafetensors", "safetensors", {}), ("runai", "safetensors", {}),
            ("torch.load", "torch", {}), ("ceiling", "tensors", {})]
    variants = [m for m in out if m[0].startswith("ts-") and m[0] not in ("ts-read", "ts-st")]
    chosen = [m for m in out if m[0] in args.methods or (m in variants and "tensorstream" in args.methods)]
    missing = [m for m, _, _ in chosen if m in OPTIONAL and importlib.util.find_spec(OPTIONAL[m]) is None]
    for m in missing:
        log(f"skip     {m}: the {OPTIONAL[m]} package is not installed")
    return [m for m in chosen if m[0] not in missing]


def summarize(method: str, runs: list[dict], nbytes: int) -> dict:
    failures = [r["check"] for r in runs if r["check"].startswith("FAIL")]
    timed = [r["seconds"] for r in runs if r.get("seconds") is not None]
    median = statistics.median(timed) if timed and not failures else None
    growth = [r["peak_rss_mib"] - r["base_rss_mib"] for r in runs if r.get("peak_rss_mib") is not None]
    checks = {r["check"] for r in runs}
    return {"method": method, "check": "FAIL" if failures else ("n/a" if checks == {"n/a"} else "pass"),
            "failures": failures[:3], "median_s": median, "runs_s": timed, "bytes": nbytes,
            "gbps": nbytes / median / 1e9 if median else None,
            "rss_growth_mib": max(growth) if growth else None, "notes": runs[-1].get("notes", {}) if runs else {}}


def targets(s: dict, ring_mb: int) -> list[dict]:
    def gbps(m):
        return (s.get(m) or {}).get("gbps")

    ts, out = gbps("tensorstream"), []

    def add(name, ok, detail):
        out.append({"target": name, "ok": ok, "detail": detail})

    ceiling = gbps("ceiling")
    add(">= 70% of the pinned-copy ceiling", ts and ceiling and ts >= 0.7 * ceiling,
        f"{ts / ceiling:.0%} of the ceiling" if ts and ceiling else "not measured")
    tz = gbps("tensorizer")
    add(">= 5x tensorizer", ts and tz and ts >= 5 * tz, f"{ts / tz:.1f}x" if ts and tz else "not measured")
    for peer in ("safetensors", "torch.load"):
        p = gbps(peer)
        add(f"faster than {peer}", ts and p and ts > p, f"{ts / p:.2f}x" if ts and p else "not measured")
    st = gbps("ts-st")  # the safetensors file through the same engine
    add("ts-st (safetensors) >= 95% of tensorstream (.tensors)", st and ts and st >= 0.95 * ts,
        f"{st / ts:.2f}x" if st and ts else "not measured")
    for peer in ("safetensors", "fastsafetensors", "runai"):
        p = gbps(peer)
        add(f"ts-st faster than {peer}", st and p and st > p, f"{st / p:.2f}x" if st and p else "not measured")
    growth = (s.get("tensorstream") or {}).get("rss_growth_mib")
    add(f"peak host RSS <= ring ({ring_mb} MiB) + {RSS_ALLOWANCE_MIB} MiB",
        growth is not None and growth <= ring_mb + RSS_ALLOWANCE_MIB,
        f"grew by {growth:.0f} MiB" if growth is not None else "not measured")
    return out


def render(summaries: list[dict], results: list[dict]) -> str:
    rows = [[s["method"], _report._fmt(s["median_s"], ".3f"), _report._fmt(s["gbps"], ".2f"),
             _report._fmt(s["rss_growth_mib"], ".0f"), s["check"],
             ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["notes"].items())]
            for s in summaries]
    table = _report.table(["method", "median s", "GB/s", "RSS growth MiB", "check", "notes"], rows)
    lines = [f"target {'PASS' if r['ok'] else 'MISS'}  {r['target']}: {r['detail']}" for r in results]
    return table + "\n\n" + "\n".join(lines)


def gpu_info(dry: bool) -> dict:
    import torch

    from tensorstream import _core

    info = {"cuda_driver": _core.cuda_driver(), "torch_cuda": torch.version.cuda}
    if not dry and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, memory_gib=round(p.total_memory / GIB, 1), multiprocessors=p.multi_processor_count)
    return info


def main(args) -> int:
    start = time.perf_counter()
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    out_dir = args.out_dir or os.environ.get("OUT") or workdir
    os.makedirs(out_dir, exist_ok=True)
    info = _system.machine_info(workdir)
    gpu = gpu_info(args.cpu_dry_run)
    log(f"machine  {info['cpu']}, {info['usable_cpus']} CPUs, {info['memory_gib']} GiB, kernel {info['kernel']}")
    log(f"gpu      {gpu.get('name', 'none (CPU dry run)' if args.cpu_dry_run else 'none')}, "
        f"driver {gpu['cuda_driver']}")
    ref = prepare(args, workdir)
    for name in FILES.values():
        _system.read_once(os.path.join(workdir, name))
    device = "cpu" if args.cpu_dry_run else "cuda"
    methods = methods_for(args)
    runs: dict[str, list[dict]] = {m: [] for m, _, _ in methods}
    skipped = 0
    for r in range(args.runs):
        for method, fmt, env in methods:
            if time.perf_counter() - start > args.budget_s and runs[method]:
                skipped += 1
                continue
            spec = {"method": method, "path": os.path.join(workdir, FILES[fmt]), "device": device,
                    "dry": args.cpu_dry_run, "reference": os.path.join(workdir, "reference.json"),
                    "bytes": ref["model_bytes"], "repeats": 5}
            res = run_worker(spec, env, args.timeout)
            runs[method].append(res)
            speed = f"{res['seconds']:7.3f} s {ref['model_bytes'] / res['seconds'] / 1e9:6.2f} GB/s" \
                if "seconds" in res else ""
            rss = f"  RSS +{res['peak_rss_mib'] - res['base_rss_mib']:.0f} MiB" if res.get("peak_rss_mib") else ""
            log(f"load  run {r + 1}/{args.runs} {method:14}{speed}{rss}  {res['check']}")
    if skipped:
        log(f"note: {skipped} loads skipped to stay within --budget-s {args.budget_s:.0f}")
    summaries = [summarize(m, runs[m], ref["model_bytes"]) for m, _, _ in methods]
    by_name = {s["method"]: s for s in summaries}
    results = targets(by_name, args.ring_mb)
    text = render(summaries, results)
    header = (f"GPU: {gpu.get('name', 'none: CPU dry run')}; model {ref['model_bytes'] / GIB:.2f} GiB, "
              f"{len(ref['tensors'])} tensors; ring {args.ring_mb} MiB; medians of {args.runs} runs, "
              f"each load in a fresh process, files in the page cache")
    log("\n" + header + "\n" + text)
    failed = [s for s in summaries if s["check"] == "FAIL"]
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": info, "gpu": gpu, "params": vars(args),
           "model_bytes": ref["model_bytes"], "loads": summaries, "targets": results, "ok": not failed,
           "dry_run": args.cpu_dry_run, "seconds": time.perf_counter() - start}
    with open(os.path.join(out_dir, "bench_gpu.json"), "w") as f:
        json.dump(doc, f, indent=2)
    with open(os.path.join(out_dir, "bench_gpu.txt"), "w") as f:
        f.write(header + "\n" + text + "\n")
    return 1 if failed else 0


def _variant(text: str) -> tuple[str, dict]:
    name, sep, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if "=" in a)
    if not sep or not name or not env or len(env) != len(assignments.split(",")):
        raise argparse.ArgumentTypeError(f"expected NAME:VAR=VALUE[,VAR=VALUE], not {text!r}")
    return name, env


def parse_args(argv=None) -> argparse.Namespace:
    all_methods = ["tensorstream", "ts-st", "ts-read", *PEERS, "ceiling"]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=2.0, help="model size (default 2.0)")
    p.add_argument("--runs", type=int, default=3, help="loads per method, each in a fresh process (median)")
    p.add_argument("--ring-mb", type=int, default=256, help="tensorstream's ring (TENSORSTREAM_RING_MB)")
    p.add_argument("--ring-sweep", type=int, nargs="*", default=[], metavar="MB",
                   help="further ring sizes to time tensorstream with")
    p.add_argument("--variant", action="append", type=_variant, default=[], metavar="NAME:VAR=V[,VAR=V]",
                   help="tensorstream again with these environment variables, as method ts-NAME "
                        "(e.g. lanes1:TENSORSTREAM_RING_LANES=1); repeatable")
    p.add_argument("--methods", nargs="+", choices=all_methods, default=all_methods, metavar="METHOD",
                   help="methods: " + " ".join(all_methods))
    p.add_argument("--workdir", default="bench-gpu", help="where the model files go (default ./bench-gpu)")
    p.add_argument("--out-dir", help="where bench_gpu.json and .txt go (default $OUT, else the workdir)")
    p.add_argument("--cpu-dry-run", action="store_true", help="no GPU: run every step on the CPU")
    p.add_argument("--reuse", action="store_true", help="reuse the files of an earlier run (same size, seed)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--budget-s", type=float, default=330, help="start no further loads after this long")
    p.add_argument("--timeout", type=float, default=120, help="per-process limit in seconds")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1 or args.size_gib <= 0 or args.ring_mb < 1:
        p.error("--runs, --size-gib and --ring-mb must be positive")
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        result = worker(spec)
        with open(spec["out"], "w") as f:
            json.dump(result, f)
    else:
        sys.exit(main(args))
