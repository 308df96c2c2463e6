#!/usr/bin/env python3
"""Save and load a synthetic transformer state dict with tensorstream and its peers.

Every save and every load runs in a fresh process (this script, started with --worker). Loads read
from the warm page cache into CPU memory; a load is timed from before the file is opened until one
byte of every 4 KiB page of every tensor has been read, then checked against the reference
checksums outside the timed region. See BENCHMARKS.md.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _report  # noqa: E402
import _system  # noqa: E402

GIB = 1 << 30
FILES = {"tensorstream": "model.tensorstream.tensors", "tensorizer": "model.tensorizer.tensors",
         "safetensors": "model.safetensors", "torch": "model.pt",
         "safetensors-shards": "ckpt"}  # a folder: shards + model.safetensors.index.json
SAVE_ORDER = ("tensorstream", "tensorizer", "safetensors", "torch")
# method -> (format whose file it reads, extra environment); None: the .tensors file
METHODS = {
    "ts-uring": ("tensorstream", {"TENSORSTREAM_IO_BACKEND": "auto"}),
    "ts-posix": ("tensorstream", {"TENSORSTREAM_IO_BACKEND": "posix"}),
    # Second load in one process: memory recycled from the first, so no fresh-memory cost.
    "ts-reload": ("tensorstream", {"TENSORSTREAM_IO_BACKEND": "auto"}),
    # zero_copy=True: tensors mapped from the page cache (timed until every page is touched).
    "ts-mmap": ("tensorstream", {}),
    "tensorizer": ("tensorizer", {}),
    "safetensors": ("safetensors", {}),
    "torch.load": ("torch", {}),
    "torch.load-mmap": ("torch", {}),
    "cat": (None, {}),
    "copy-4k": (None, {}),
    "copy-thp": (None, {}),
}
CEILINGS = ("cat", "copy-4k", "copy-thp")


def log(msg: str) -> None:
    print(msg, flush=True)


def run_worker(spec: dict, env: dict, workdir: str, timeout: float) -> dict:
    return _system.run_script_worker(__file__, spec, env, timeout, workdir)


def run_cat(path: str | list[str]) -> dict:
    """`cat` of one file, or of several in one process, into /dev/null, timed from here."""
    paths = [path] if isinstance(path, str) else list(path)
    t0 = time.perf_counter()
    proc = subprocess.Popen(["cat", *paths], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    ok = proc.returncode == 0
    # usage.ru_maxrss would report this (parent) process's RSS, inherited across fork + exec
    return {"seconds": seconds, "peak_rss_mib": None, "engine": "",
            "check": "n/a" if ok else f"FAIL: cat exited {proc.returncode}"}


def probe_tensorstream() -> dict:
    code = ("import json, tensorstream as t; f = getattr(t, 'features', None); "
            "print(json.dumps({'version': getattr(t, '__version__', None), "
            "'features': f() if f else None}, default=str))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"available": False, "why": lines[-1] if lines else f"exit {proc.returncode}"}
    return {"available": True, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _path(workdir: str, fmt: str) -> str:
    return os.path.join(workdir, FILES[fmt])


def _reusable(ref_path: str, workdir: str, formats: list[str], size_bytes: int, seed: int,
              options: dict | None = None):
    try:
        with open(ref_path) as f:
            ref = json.load(f)
    except (OSError, ValueError):
        return None
    if (ref.get("size_bytes"), ref.get("seed"), ref.get("options", {})) != \
            (size_bytes, seed, options or {}):
        return None
    for fmt in formats:
        known = ref.get("files", {}).get(fmt)
        path = _path(workdir, fmt)
        if not known or not os.path.exists(path) or _system.tree_size(path) != known["size"]:
            return None
    return ref


def save_all(args, workdir: str, formats: list[str], size_bytes: int,
             options: dict | None = None) -> tuple[list, dict | None]:
    """Generate and save the model in each format, each in a fresh process; the reference.

    options go to every save worker (fp32: mixed float32 tensors; shard_bytes: the shard size of
    safetensors-shards) and are recorded in the reference.
    """
    summaries, tensors, files = [], None, {}
    for fmt in formats:
        log(f"save  {fmt:12} generating {args.size_gib:g} GiB and saving ({args.runs} runs) ...")
        spec = {"kind": "save", "format": fmt, "path": _path(workdir, fmt),
                "size_bytes": size_bytes, "seed": args.seed, "runs": args.runs, **(options or {})}
        res = run_worker(spec, {}, workdir, args.timeout)
        check = res["check"]
        if "tensors" in res:
            if tensors is None:
                tensors = res["tensors"]
            elif tensors != res["tensors"]:
                check = "FAIL: generated tensors differ between processes"
            files[fmt] = {"name": FILES[fmt], "size": res["file_size"]}
        nbytes = sum(t["nbytes"] for t in (tensors or {}).values())
        median = statistics.median(res["seconds"]) if res.get("seconds") else None
        peak, before = res.get("peak_rss_mib"), res.get("model_rss_mib")
        summaries.append({
            "format": fmt, "check": check, "median_s": median, "runs_s": res.get("seconds"),
            "gbps": nbytes / median / 1e9 if median else None, "peak_rss_mib": peak,
            "model_rss_mib": before, "overhead_mib": peak - before if peak and before else None,
            "generate_s": res.get("generate_s"), "peak_reset": res.get("peak_reset"),
            "file_size": res.get("file_size")})
        s = summaries[-1]
        log(f"save  {fmt:12} " + (f"median {median:.3f} s  {s['gbps']:.2f} GB/s  peak RSS "
                                  f"{peak:.0f} MiB (before saving {before:.0f})  {check}"
                                  if median else check))
    if tensors is None:
        return summaries, None
    ref = {"size_bytes": size_bytes, "seed": args.seed, "tensors": tensors, "files": files,
           "model_bytes": sum(t["nbytes"] for t in tensors.values()), "options": options or {}}
    with open(os.path.join(workdir, "reference.json"), "w") as f:
        json.dump(ref, f)
    return summaries, ref


def warm_files(workdir: str, formats: list[str]) -> dict:
    """Read each file (every file of a folder) once so that loads start from the page cache;
    report residency (a folder's: its least resident file's) and the CRC32 (a folder's: of its
    files one after the other)."""
    out = {}
    for fmt in formats:
        paths = _system.files_of(_path(workdir, fmt))
        t0 = time.perf_counter()
        crc = 0
        for p in paths:
            crc = _system.read_once(p, crc=crc)
        seconds = time.perf_counter() - t0
        resident = min(_system.resident_fraction(p) for p in paths)
        out[fmt] = {"crc32": crc, "read_once_s": seconds, "resident": resident}
        warn = "" if resident >= 0.99 else "  WARNING: not all in the page cache"
        log(f"cache {FILES[fmt]:28} {100 * resident:5.1f}% resident after reading it once{warn}")
    return out


def run_method(method: str, args, workdir: str, tensors_file: str, crc: int) -> dict:
    fmt, env = METHODS[method]
    if method == "cat":
        return run_cat(tensors_file)
    spec = {"kind": "copy" if method.startswith("copy") else "load", "method": method,
            "path": tensors_file if fmt is None else _path(workdir, fmt),
            "reference": os.path.join(workdir, "reference.json"), "file_crc32": crc,
            "settle": args.settle}
    return run_worker(spec, env, workdir, args.timeout)


def load_all(args, workdir: str, methods: list[str], ref: dict, cache: dict) -> dict:
    """Warm-up rounds, then timed rounds; every round runs every method once (see round_order)."""
    tensors_fmt = "tensorstream" if "tensorstream" in cache else "tensorizer"
    tensors_file, file_size = _path(workdir, tensors_fmt), ref["files"][tensors_fmt]["size"]
    runs = {m: [] for m in methods}
    warm = {m: [] for m in methods}
    for r in range(args.warmup + args.runs):
        label = "warm-up" if r < args.warmup else f"run {r - args.warmup + 1}/{args.runs}"
        for m in _report.round_order(methods, r):
            res = run_method(m, args, workdir, tensors_file, cache[tensors_fmt]["crc32"])
            (warm if r < args.warmup else runs)[m].append(res)
            nbytes = file_size if m in CEILINGS else ref["model_bytes"]
            rss = res.get("peak_rss_mib")
            speed = (f"{res['seconds']:7.3f} s {nbytes / res['seconds'] / 1e9:6.2f} GB/s" +
                     (f"  peak RSS {rss:6.0f} MiB" if rss else "") if "seconds" in res else "")
            note = res.get("engine") or ""
            if res.get("huge_mib") is not None:
                note += f", {res['huge_mib']:.0f} MiB in huge pages"
            log(f"load  {label:9} {m:16}{speed}  {note}  {res['check']}")
    return {m: _report.summarize(m, runs[m], warm[m],
                                 file_size if m in CEILINGS else ref["model_bytes"])
            for m in methods}


def prepare(args, workdir: str, formats: list[str], size_bytes: int, options: dict | None = None):
    """Saved files (fresh, or reused) -> (save summaries, reference, formats on disk)."""
    ref_path = os.path.join(workdir, "reference.json")
    ref = (_reusable(ref_path, workdir, formats, size_bytes, args.seed, options)
           if args.reuse else None)
    if ref:
        log(f"reusing the files in {workdir} (no save timings)")
        return [], ref, formats
    for fmt in formats:  # never load a stale file left by an earlier run
        path = _path(workdir, fmt)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
    saves, ref = save_all(args, workdir, formats, size_bytes, options)
    os.sync()  # no writeback of the new files while loading
    return saves, ref, [f for f in formats if ref and f in ref["files"]]


def compare_tensors_files(workdir: str, formats: list[str]) -> dict | None:
    if not {"tensorstream", "tensorizer"} <= set(formats):
        return None
    diff = _system.first_difference(_path(workdir, "tensorstream"), _path(workdir, "tensorizer"))
    log("bytes    tensorstream and tensorizer files are " +
        ("byte-identical" if diff is None else f"DIFFERENT from offset {diff}"))
    return {"identical": diff is None, "first_difference": diff}


def report(args, info: dict, ts: dict, saves: list, loads: dict, ref: dict, extra: dict) -> int:
    """Print the tables and targets, write --json; the exit status (1: something failed)."""
    summaries = [loads[m] for m in METHODS if m in loads]
    ref_gbps = loads.get(_report.REFERENCE, {}).get("gbps")
    for s in summaries:
        s["vs_" + _report.REFERENCE] = s["gbps"] / ref_gbps if ref_gbps and s["gbps"] else None
    results = _report.targets(loads, {s["format"]: s for s in saves}, ref["model_bytes"])
    log("")
    if saves:
        log(_report.save_table(saves) + "\n")
    log(_report.load_table(summaries) + "\n")
    log(_report.target_lines(results))
    engine = loads.get("ts-uring", {}).get("engine", "")
    if engine and "io_uring" not in engine:
        log(f"note: ts-uring ran the {engine} engine: io_uring unavailable "
            f"({(ts.get('features') or {}).get('io_uring_error', '?')})")
    failed = [s for s in saves + summaries if s["check"].startswith("FAIL")]
    for s in failed:
        log(f"FAILED {s.get('method') or s.get('format')}: {s.get('failures') or s['check']}")
    if args.json:
        model = {"bytes": ref["model_bytes"], "tensors": len(ref["tensors"]), "files": ref["files"]}
        out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": info,
               "tensorstream": ts, "params": vars(args), "model": model, "save": saves,
               "load": summaries, "targets": results, **extra, "ok": not failed}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 1 if failed else 0


def log_machine(workdir: str) -> dict:
    """Print the machine, its load and the versions; return the machine info (with the load)."""
    info = _system.machine_info(workdir)
    log(f"machine  {info['cpu']}, {info['usable_cpus']}/{info['logical_cpus']} CPUs, "
        f"{info['memory_gib']} GiB, kernel {info['kernel']}, THP {info['thp_enabled']}, "
        f"THP defrag {info['thp_defrag']}")
    load1 = os.getloadavg()[0]
    log(f"loadavg  {load1:.2f} (1 minute)" +
        ("  WARNING: the machine is busy; numbers will be noisy" if load1 > 0.5 else ""))
    log("versions " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    return {**info, "loadavg_start": load1}


def main(args) -> int:
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    size_bytes = int(args.size_gib * GIB)
    info = log_machine(workdir)
    log(f"files    {workdir} on {info['workdir_fs']}")
    ts = probe_tensorstream()
    log("tensorstream " + (str(ts.get("features")) if ts["available"]
                           else "not importable: " + ts["why"]))
    skipped = [m for m in args.methods if m.startswith("ts-") and not ts["available"]]
    methods = [m for m in METHODS if m in args.methods and m not in skipped]
    wanted = {METHODS[m][0] for m in methods} | {"tensorizer"}
    wanted |= {"tensorstream"} if ts["available"] else set()
    saves, ref, formats = prepare(args, workdir, [f for f in SAVE_ORDER if f in wanted], size_bytes)
    if ref is None:
        log("no format could be saved; stopping")
        return 1
    log(f"model    {len(ref['tensors'])} tensors, {ref['model_bytes'] / GIB:.3f} GiB "
        f"({ref['model_bytes'] / 1e9:.3f} GB)")
    identical = compare_tensors_files(workdir, formats)
    cache = warm_files(workdir, formats)
    have = set(formats) | ({"tensors"} if {"tensorstream", "tensorizer"} & set(formats) else set())
    missing = [m for m in methods if (METHODS[m][0] or "tensors") not in have]
    loads = load_all(args, workdir, [m for m in methods if m not in missing], ref, cache)
    for m in missing:
        loads[m] = _report.summarize(m, [{"check": "FAIL: its file could not be saved"}], [], 0)
    for m in skipped:
        loads[m] = _report.summarize(m, [{"check": "skip"}], [], ref["model_bytes"])
    extra = {"tensors_files": identical, "page_cache": cache, "size_bytes": size_bytes,
             "loadavg_start": info["loadavg_start"], "loadavg_end": os.getloadavg()[0]}
    return report(args, info, ts, saves, loads, ref, extra)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=2.0, help="model size (default 2.0)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per method (median; default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument("--workdir", default="bench-out",
                   help="where the files go (default ./bench-out)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   metavar="METHOD", help="load methods: " + " ".join(METHODS))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--reuse", action="store_true",
                   help="reuse the files of an earlier run with the same size and seed")
    p.add_argument("--timeout", type=float, default=900, help="per-process limit in seconds")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds each load process waits before its timed region, so that every "
                        "method starts on memory the machine has settled (default 5; 0: none)")
    p.add_argument("--json", metavar="OUT", help="write all results as JSON to OUT")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.size_gib <= 0:
        p.error("--runs must be >= 1, --warmup >= 0 and --size-gib > 0")
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.worker:
        import _workers

        _workers.main(json.loads(args.worker))
    else:
        sys.exit(main(args))
