#!/usr/bin/env python3
"""How many reads in flight: the setting tensorstream picks per medium against every fixed one.

One synthetic model (bench_local.py's) is loaded into CPU memory from three media: the local file
(warm page cache; --cold adds the file dropped from the cache before every run), nginx on
loopback, and nginx capping every response at --cap-mbps (an object-store-like link). On each,
every fixed setting runs beside the automatic one: TENSORSTREAM_QUEUE_DEPTH=N for the file
(io_uring reads in flight per worker; auto probes the page cache and the disk), and
TENSORSTREAM_HTTP_CONNECTIONS=N for HTTP (requests in flight per host; auto ramps up during the
first load and keeps its choice for the process). HTTP's automatic setting runs twice: in a fresh
process (the ramp inside the timed load) and as the second load of a process (the ramp done).
Every load runs in a fresh process, is timed until every page has been read, and is checked
against the reference checksums. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _report  # noqa: E402
import _system  # noqa: E402
import bench_http  # noqa: E402
import bench_local  # noqa: E402
from bench_local import GIB, log  # noqa: E402

TARGET = 0.90  # auto within 10% of the best fixed setting
KNOBS = {"local": "TENSORSTREAM_QUEUE_DEPTH", "local-cold": "TENSORSTREAM_QUEUE_DEPTH",
         "loopback": "TENSORSTREAM_HTTP_CONNECTIONS", "capped": "TENSORSTREAM_HTTP_CONNECTIONS"}


def variants(args, medium: str) -> dict:
    """name -> (fixed setting or None for auto, preload): what runs on one medium."""
    levels = args.depths if medium.startswith("local") else args.connections
    out = {"auto": (None, False)}
    if not medium.startswith("local"):
        out["auto-2nd"] = (None, True)
    for n in levels:
        out[f"fixed-{n}"] = (n, False)
    return out


def run_one(args, medium: str, setting, preload: bool, target: str, workdir: str, crc: int) -> dict:
    env = {"TENSORSTREAM_IO_BACKEND": "auto"}
    if setting is not None:
        env[KNOBS[medium]] = str(setting)
    if medium == "local-cold":
        _system.evict(target)
    spec = {"kind": "load", "method": "ts-uring" if medium.startswith("local") else "ts-http",
            "path": target, "reference": os.path.join(workdir, "reference.json"),
            "file_crc32": crc, "settle": args.settle, "preload": preload}
    res = bench_local.run_worker(spec, env, workdir, args.timeout)
    hosts = res.get("hosts") or []
    if not medium.startswith("local") and hosts:
        h = hosts[0]
        res["engine"] = f"{h['connections']} in flight" + ("" if h["fixed"] else
                                                            " (settled)" if h["settled"] else " (ramping)")
    return res


def measure(args, targets: dict, workdir: str, ref: dict, crc: int) -> dict:
    plan = {m: variants(args, m) for m in targets}
    runs = {m: {n: [] for n in plan[m]} for m in targets}
    warm = {m: {n: [] for n in plan[m]} for m in targets}
    for r in range(args.warmup + args.runs):
        label = "warm-up" if r < args.warmup else f"run {r - args.warmup + 1}/{args.runs}"
        for medium, target in targets.items():
            for name in _report.round_order(list(plan[medium]), r):
                setting, preload = plan[medium][name]
                res = run_one(args, medium, setting, preload, target, workdir, crc)
                (warm if r < args.warmup else runs)[medium][name].append(res)
                speed = (f"{res['seconds']:7.3f} s {ref['model_bytes'] / res['seconds'] / 1e9:6.2f} GB/s"
                         if "seconds" in res else "")
                log(f"load  {label:9} {medium:10} {name:9}{speed}  {res.get('engine', '')}  {res['check']}")
    out = {}
    for medium in targets:
        out[medium] = {}
        for name, (setting, _) in plan[medium].items():
            s = _report.summarize(name, runs[medium][name], warm[medium][name], ref["model_bytes"])
            s["setting"] = setting
            out[medium][name] = s
    return out


def judge(table: dict) -> tuple[list[dict], float | None]:
    """Each automatic row against the best fixed one; the best fixed GB/s."""
    fixed = [(s["gbps"], n) for n, s in table.items() if s["setting"] is not None and s["gbps"]]
    best, best_name = max(fixed) if fixed else (None, None)
    lines = []
    for name, s in table.items():
        s["vs_best_fixed"] = s["gbps"] / best if best and s["gbps"] else None
        if s["setting"] is None:
            ok = None if s["vs_best_fixed"] is None else s["vs_best_fixed"] >= TARGET
            lines.append({"row": name, "ok": ok, "verdict": _report._verdict(ok),
                          "detail": "not measured" if ok is None else
                          f"{100 * s['vs_best_fixed']:.0f}% of the best fixed ({best_name}, "
                          f"{best:.2f} GB/s) with {s['engine'] or '?'}"})
    return lines, best


def tables(loads: dict) -> tuple[str, str, list[dict]]:
    text, md, verdicts = [], [], []
    header = ["setting", "median s", "GB/s", "vs best fixed", "peak RSS MiB", "notes", "check"]
    for medium, table in loads.items():
        lines, _ = judge(table)
        f = _report._fmt
        rows = [[n, f(s["median_s"], ".3f"), f(s["gbps"], ".2f"), f(s["vs_best_fixed"], ".2f"),
                 f(s["peak_rss_mib"], ".0f"), s["engine"] or "-", s["check"]] for n, s in table.items()]
        title = f"{medium} ({KNOBS[medium]})"
        text.append(title + "\n" + _report.table(header, rows))
        md.append(f"**{title}**\n\n" + _report.markdown_table(header, rows))
        for line in lines:
            line["medium"] = medium
            verdicts.append(line)
    return "\n\n".join(text), "\n\n".join(md), verdicts


def main(args) -> int:
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    info = bench_local.log_machine(workdir)
    for knob in set(KNOBS.values()):
        if os.environ.pop(knob, None) is not None:
            log(f"note     {knob} was set; unset for the automatic rows")
    save_args = argparse.Namespace(**{**vars(args), "runs": 1})
    _, ref, formats = bench_local.prepare(save_args, workdir, ["tensorstream"], int(args.size_gib * GIB))
    if ref is None or formats != ["tensorstream"]:
        log("the model could not be saved; stopping")
        return 1
    cache = bench_local.warm_files(workdir, formats)
    name = bench_local.FILES["tensorstream"]
    path = os.path.join(workdir, name)
    import tensorstream

    medium = tensorstream._core.medium(tensorstream._core.FileSource(path))
    log(f"medium   {name}: {medium}")
    targets = {"local": path}
    if args.cold:
        targets["local-cold"] = path
    server = None
    if args.http:
        server = bench_http.start_nginx(args, workdir)
        targets["loopback"] = server.url(name)
        if args.cap_mbps:
            targets["capped"] = server.url(name, capped=True)
    try:
        loads = measure(args, targets, workdir, ref, cache["tensorstream"]["crc32"])
    finally:
        if server:
            server.stop()
    text, md, verdicts = tables(loads)
    log(f"\nmodel {ref['model_bytes'] / 1e9:.3f} GB, medians of {args.runs}, fresh processes\n")
    log(text)
    log("")
    for v in verdicts:
        log(f"target {v['verdict']:4}  {v['medium']} {v['row']} >= {100 * TARGET:.0f}% of the best fixed "
            f"setting: {v['detail']}")
    failed = [s for t in loads.values() for s in t.values() if s["check"].startswith("FAIL")]
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "bench_concurrency.json"), "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": info, "params": vars(args),
                       "medium": medium, "model_bytes": ref["model_bytes"],
                       "load": {m: list(t.values()) for m, t in loads.items()}, "targets": verdicts}, f, indent=2)
        with open(os.path.join(args.out_dir, "bench_concurrency.md"), "w") as f:
            f.write(md + "\n")
    return 1 if failed else 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0, help="model size (default 1.0)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per setting (median; default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument("--depths", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32], metavar="N",
                   help="fixed TENSORSTREAM_QUEUE_DEPTH values for the file (default 1 2 4 8 16 32)")
    p.add_argument("--connections", type=int, nargs="*", default=[2, 4, 8, 16, 32, 64], metavar="N",
                   help="fixed TENSORSTREAM_HTTP_CONNECTIONS values (default 2 4 8 16 32 64)")
    p.add_argument("--cold", action="store_true", help="also the file dropped from the page cache")
    p.add_argument("--no-http", dest="http", action="store_false", help="only the local file")
    p.add_argument("--cap-mbps", type=float, default=50, help="the capped link's rate per response, "
                                                               "MB/s (default 50; 0: no capped link)")
    p.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes (default 1)")
    p.add_argument("--workdir", default="bench-out-concurrency", help="where the files go")
    p.add_argument("--out-dir", help="write bench_concurrency.json and .md here")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--reuse", action="store_true", help="reuse the files of an earlier run")
    p.add_argument("--timeout", type=float, default=600, help="per-process limit in seconds")
    p.add_argument("--settle", type=float, default=1.0, help="seconds each load process waits before "
                                                              "its timed region (default 1)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.size_gib <= 0 or args.cap_mbps < 0:
        p.error("--runs must be >= 1, --warmup >= 0, --size-gib > 0, --cap-mbps >= 0")
    if any(n < 1 for n in args.depths + args.connections):
        p.error("fixed settings must be >= 1")
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args()))
