#!/usr/bin/env python3
"""Load a sharded safetensors checkpoint with tensorstream and its peers, locally and over HTTP.

One synthetic model (the local benchmark's layout, bf16 / fp16 with float32 norms and head) is
saved twice in fresh processes: as safetensors shards written by ``safetensors.torch.save_file``
with a ``model.safetensors.index.json``, and as one tensorstream ``.tensors`` file of the same
tensors. Every load then runs in a fresh process (bench_local.py --worker), is timed until one
byte of every 4 KiB page of every tensor has been read, and is checked against the reference
checksums outside the timed region, in four parts:

- local-warm: files in the page cache, loaded into CPU memory; ceiling ``cat`` of the shards.
- local-cold: every file dropped from the page cache (fsync + POSIX_FADV_DONTNEED, checked with
  mincore) before every run.
- http, capped: nginx on loopback, plain and with every response capped (``limit_rate``); the
  checkpoint folder as an ``http://`` prefix and, for tensorstream and the Run:ai model streamer,
  as ``s3://bench/ckpt/`` with nginx as a path-style S3 endpoint (as bench_http.py does); the
  Run:ai streamer's concurrency is swept once and its best one timed; ceiling ``curl`` with N
  parallel ranges. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _report  # noqa: E402
import _system  # noqa: E402
import bench_http  # noqa: E402
import bench_local  # noqa: E402
from bench_local import GIB, log  # noqa: E402

PARTS = ("local-warm", "local-cold", "http", "capped")
CKPT, TENSORS = "safetensors-shards", "tensorstream"  # bench_local format names (their files)
INDEX = "model.safetensors.index.json"
ST_VS_TENSORS = 0.95  # safetensors loads within 5% of .tensors loads
COLD_VS_SAFETENSORS = 1.5
WARM_VS_SAFETENSORS = 1.0
REMOTE_VS_RUNAI = 2.0
NOT_EVICTED = 0.01  # a file more resident than this after eviction: eviction did not work


@dataclass(frozen=True)
class Row:
    """One method of a part: the worker's loader (or cat / curl), what it reads (the checkpoint
    folder or prefix, the list of shards, the .tensors file), over which protocol (None: local
    path), N (connections, concurrency or ranges; None: the default) and extra environment."""

    name: str
    loader: str
    reads: str  # "ckpt", "shards" or "tensors"
    proto: str | None = None  # None, "http" or "s3"
    n: int | None = None
    env: dict = field(default_factory=dict)


def local_rows() -> list[Row]:
    return [Row("ts-st", "ts-st", "ckpt"), Row("ts-st-zc", "ts-st-zc", "ckpt"),
            Row("ts-tensors", "ts-tensors", "tensors"), Row("safetensors", "safetensors", "shards"),
            Row("safetensors-lazy", "safetensors-lazy", "shards"),
            Row("runai", "runai", "shards"), Row("cat", "cat", "shards")]


def remote_rows(args) -> list[Row]:
    conns = bench_http.DEFAULT_CONNECTIONS
    rows = [Row("ts-http-st", "ts-http-st", "ckpt", "http", conns),
            Row("ts-http-tensors", "ts-http-tensors", "tensors", "http", conns),
            Row("ts-s3-st", "ts-s3-st", "ckpt", "s3", conns)]
    rows += [Row(f"runai-c{n}", "runai", "shards", "s3", n, {"RUNAI_STREAMER_CONCURRENCY": str(n)})
             for n in args.runai_concurrency]
    return rows + [Row(f"curl-{args.curl_ranges}r", "curl", "tensors", "http", args.curl_ranges)]


# The rows each part's ratios and targets are read from: safetensors through tensorstream, the
# same tensors from the .tensors file, and the ceiling.
ROLES = {"local-warm": ("ts-st", "ts-tensors", "cat"), "local-cold": ("ts-st", "ts-tensors", "cat"),
         "http": ("ts-http-st", "ts-http-tensors", None), "capped": ("ts-http-st", "ts-http-tensors", None)}


@dataclass
class Model:
    """The saved files: the checkpoint folder, its shards' names (sorted), the .tensors file."""

    workdir: str
    ref: dict
    shards: list[str]

    @property
    def folder(self) -> str:
        return bench_local._path(self.workdir, CKPT)

    @property
    def tensors_file(self) -> str:
        return bench_local._path(self.workdir, TENSORS)

    def all_files(self) -> list[str]:
        return [*_system.files_of(self.folder), self.tensors_file]

    def shard_bytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.folder, n)) for n in self.shards)


def shard_names(folder: str) -> list[str]:
    """The shard file names the index lists, sorted; ValueError if the index is missing or empty."""
    with open(os.path.join(folder, INDEX)) as f:
        names = sorted(set(json.load(f)["weight_map"].values()))
    if not names:
        raise ValueError(f"{INDEX} in {folder} names no shard")
    return names


def location(row: Row, model: Model, server, capped: bool) -> tuple[object, dict]:
    """What a row opens (a path, a URL, or a list of them for the shards) and its environment."""
    ckpt, tensors = bench_local.FILES[CKPT], bench_local.FILES[TENSORS]
    names = {"ckpt": ckpt + "/", "tensors": tensors,
             "shards": [f"{ckpt}/{n}" for n in model.shards]}[row.reads]
    if row.proto is None:
        join = lambda n: os.path.join(model.workdir, n.rstrip("/"))  # noqa: E731
        return ([join(n) for n in names] if isinstance(names, list) else join(names)), {}
    if row.proto == "http":
        return server.url(names, capped=capped), {}
    endpoint = server.url("", capped=capped).rstrip("/")
    s3 = lambda n: f"s3://{bench_http.BUCKET}/{n}"  # noqa: E731
    env = {**bench_http.S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    return ([s3(n) for n in names] if isinstance(names, list) else s3(names)), env


def run_row(args, row: Row, where, env: dict, model: Model) -> dict:
    """One run of a row: cat / curl timed from here, a load in a fresh worker process."""
    if row.loader == "cat":
        return bench_local.run_cat(where)
    if row.loader == "curl":
        size = os.path.getsize(model.tensors_file)
        return bench_http.run_curl(where, size, row.n, args.timeout)
    if row.proto is not None:
        return bench_http.run_load(args, (row.loader, row.n, row.env), where, model.workdir, 0, env)
    job = {"kind": "load", "method": row.loader, "path": where, "settle": args.settle,
           "reference": os.path.join(model.workdir, "reference.json")}
    return bench_local.run_worker(job, {**env, **row.env}, model.workdir, args.timeout)


def evict_all(model: Model) -> float:
    """Drop every file of the model from the page cache; the largest share still resident."""
    for path in model.all_files():
        _system.evict(path)
    return max(_system.resident_fraction(p) for p in model.all_files())


def warm_all(model: Model) -> float:
    """Read every file of the model once; the smallest share then resident."""
    for path in model.all_files():
        _system.read_once(path)
    return min(_system.resident_fraction(p) for p in model.all_files())


def row_bytes(row: Row, model: Model) -> int:
    if row.loader == "cat":
        return model.shard_bytes()
    if row.loader == "curl":
        return os.path.getsize(model.tensors_file)
    return model.ref["model_bytes"]


def _log_run(part: str, label: str, row: Row, res: dict, nbytes: int) -> None:
    rss = res.get("peak_rss_mib")
    speed = (f"{res['seconds']:7.3f} s {nbytes / res['seconds'] / 1e9:6.2f} GB/s" +
             (f"  peak RSS {rss:6.0f} MiB" if rss else "") if "seconds" in res else "")
    log(f"load  {label:9} {part:10} {row.name:16}{speed}  {res.get('engine', '')}  {res['check']}")


def _active(rows: list[Row], best_runai: str | None) -> list[Row]:
    """After the sweep, the Run:ai rows other than the best one are left out."""
    return [r for r in rows if best_runai is None or not r.name.startswith("runai-")
            or r.name == best_runai]


def _pick_runai(results: dict) -> str | None:
    """The Run:ai row of the sweep that loaded fastest (and correctly)."""
    timed = [(res[-1]["seconds"], name) for name, res in results.items()
             if name.startswith("runai-") and res and res[-1].get("seconds")
             and res[-1]["check"] == "pass"]
    return min(timed)[1] if timed else None


def run_part(args, part: str, model: Model, server) -> tuple[dict, dict]:
    """Every row of a part, in rounds; name -> summary, and facts about the page cache."""
    rows = local_rows() if part.startswith("local") else remote_rows(args)
    cache: dict = {"cold": part == "local-cold", "resident_after_eviction": []}
    if part != "local-cold":
        cache["resident_before"] = warm_all(model)
        if cache["resident_before"] < 0.99:
            log(f"WARNING  {part}: only {100 * cache['resident_before']:.1f}% of a file is in "
                "the page cache after reading it")
    runs = {r.name: [] for r in rows}
    warm = {r.name: [] for r in rows}
    best_runai = None
    for rnd in range(args.warmup + args.runs):
        label = "warm-up" if rnd < args.warmup else f"run {rnd - args.warmup + 1}/{args.runs}"
        counted = rnd >= args.warmup
        for row in _report.round_order(_active(rows, best_runai if counted else None), rnd):
            where, env = location(row, model, server, part == "capped")
            if part == "local-cold":
                cache["resident_after_eviction"].append(evict_all(model))
            res = run_row(args, row, where, env, model)
            (runs if counted else warm)[row.name].append(res)
            _log_run(part, label, row, res, row_bytes(row, model))
        if counted and best_runai is None and part in ("http", "capped"):
            best_runai = _pick_runai(runs)
            if best_runai:
                log(f"runai    {part}: best concurrency of the sweep: {best_runai}; "
                    "only it runs in the next rounds")
    out = {r.name: _report.summarize(r.name, runs[r.name], warm[r.name], row_bytes(r, model))
           for r in rows}
    for r in rows:
        out[r.name]["streams"] = r.n
    cache["best_runai"] = best_runai
    return out, cache


def add_ratios(loads: dict) -> None:
    """Per summary: GB/s over the part's reference row, and share of the part's ceiling."""
    for part, table in loads.items():
        ref, _, ceiling_row = ROLES[part]
        if ceiling_row is None:
            ceiling_row = next((n for n in table if n.startswith("curl")), None)
        ref_gbps = table.get(ref, {}).get("gbps")
        ceiling = table.get(ceiling_row, {}).get("gbps")
        for name, s in table.items():
            s["vs_ref"] = s["gbps"] / ref_gbps if ref_gbps and s["gbps"] else None
            s["ceiling_gbps"] = ceiling
            s["of_ceiling"] = s["gbps"] / ceiling if ceiling and s["gbps"] else None


def _line(target: str, a: dict, b: dict | None, factor: float, what: str) -> dict:
    """target: a's GB/s >= factor x b's."""
    ga, gb = a.get("gbps"), (b or {}).get("gbps")
    if not (ga and gb):
        return {"target": target, "ok": None, "verdict": "SKIP", "ratio": None,
                "detail": "not measured"}
    ok = ga >= factor * gb
    return {"target": target, "ok": ok, "verdict": _report._verdict(ok), "ratio": ga / gb,
            "detail": f"{ga / gb:.2f}x ({ga:.2f} vs {gb:.2f} GB/s{what})"}


def targets(loads: dict, model_bytes: int) -> list[dict]:
    """The issue's targets on this run (informational: they do not change the exit status)."""
    out = []
    for part, table in loads.items():
        st, tn, _ = ROLES[part]
        out.append(_line(f"{part}: {st} >= {100 * ST_VS_TENSORS:.0f}% of {tn} (same tensors)",
                         table.get(st, {}), table.get(tn), ST_VS_TENSORS, ""))
    peers = {"local-warm": (WARM_VS_SAFETENSORS, "safetensors"),
             "local-cold": (COLD_VS_SAFETENSORS, "safetensors")}
    for part, (factor, peer) in peers.items():
        for name in ("ts-st", "ts-st-zc") if part in loads else ():
            out.append(_line(f"{part}: {name} >= {factor:g}x {peer} (mmap + touch)",
                             loads[part].get(name, {}), loads[part].get(peer), factor, ""))
    for part in ("http", "capped"):
        if part not in loads:
            continue
        runai_name, _ = bench_http._best_runai(loads[part])
        for name in ("ts-s3-st", "ts-http-st"):
            out.append(_line(f"{part}: {name} >= {REMOTE_VS_RUNAI:g}x Run:ai at its best concurrency",
                             loads[part].get(name, {}), loads[part].get(runai_name or ""),
                             REMOTE_VS_RUNAI, f", {runai_name}"))
    limit = model_bytes / _report.MIB + _report.RSS_ALLOWANCE_MIB
    names = sorted({n for t in loads.values() for n in t if n.startswith("ts-")})
    for name in names:
        rss = max((t[name]["peak_rss_mib"] for t in loads.values()
                   if t.get(name, {}).get("peak_rss_mib")), default=None)
        ok = None if rss is None else rss <= limit
        out.append({"target": f"{name} peak RSS <= model + {_report.RSS_ALLOWANCE_MIB} MiB",
                    "ok": ok, "verdict": _report._verdict(ok),
                    "detail": "not measured" if rss is None else
                    f"{rss:.0f} MiB vs limit {limit:.0f} MiB (model {model_bytes / _report.MIB:.0f} MiB)"})
    return out


HEADER = ["method", "engine / notes", "median s", "GB/s", "vs ref", "% of ceiling",
          "peak RSS MiB", "base MiB", "check"]


def table_rows(table: dict) -> list[list[str]]:
    f = _report._fmt
    return [[s["method"], s["engine"] or "-", f(s["median_s"], ".3f"), f(s["gbps"], ".2f"),
             f(s["vs_ref"], ".2f"), f(s["of_ceiling"] and 100 * s["of_ceiling"], ".0f"),
             f(s["peak_rss_mib"], ".0f"), f(s["base_rss_mib"], ".0f"), s["check"]]
            for s in table.values()]


def titles(args) -> dict:
    return {"local-warm": "local file -> CPU, warm page cache (vs ref: ts-st; ceiling: cat of the shards)",
            "local-cold": "local file -> CPU, cold page cache (vs ref: ts-st; ceiling: cat of the shards)",
            "http": "nginx on loopback (vs ref: ts-http-st; ceiling: curl ranges on the .tensors file)",
            "capped": f"nginx on loopback, every response capped at {args.cap_mbps:g} MB/s "
                      "(vs ref: ts-http-st; ceiling: curl ranges)"}


def eviction_notes(loads: dict, caches: dict) -> list[str]:
    """Whether eviction worked (mincore), and whether cold reads were slower than warm ones."""
    cold = caches.get("local-cold")
    if not cold:
        return []
    worst = max(cold["resident_after_eviction"], default=0.0)
    notes = [f"eviction: at most {100 * worst:.1f}% of a file was still in the page cache after "
             "fsync + POSIX_FADV_DONTNEED (mincore)"]
    if worst > NOT_EVICTED:
        notes.append("WARNING eviction is not effective on this machine: the cold rows read from "
                      "the page cache (a filesystem such as tmpfs keeps its pages)")
    warm_cat = loads.get("local-warm", {}).get("cat", {}).get("gbps")
    cold_cat = loads["local-cold"].get("cat", {}).get("gbps")
    if warm_cat and cold_cat:
        notes.append(f"cold cat {cold_cat:.2f} GB/s vs warm cat {warm_cat:.2f} GB/s")
        if cold_cat >= 0.8 * warm_cat:
            notes.append("note: cold reads are nearly as fast as warm ones: the storage below "
                         "(e.g. a host's cache under a virtual disk) answers them from memory")
    return notes


def runai_notes(args, caches: dict) -> list[str]:
    return [f"{part}: Run:ai concurrency {', '.join(map(str, args.runai_concurrency))} swept once in "
            f"the first timed round; the best, {caches[part]['best_runai'] or 'none'}, ran in every "
            "round (its median is over all of them)"
            for part in ("http", "capped") if part in caches]


def render(args, loads: dict, results: list[dict], notes: list[str]) -> str:
    """The plain-text report: one table per part, the notes, the target lines."""
    parts = []
    for part, table in loads.items():
        parts.append(f"{titles(args)[part]}\n{_report.table(HEADER, table_rows(table))}")
    return "\n\n".join(parts + ["\n".join(notes), _report.target_lines(results)])


def render_markdown(args, loads: dict, results: list[dict], notes: list[str], model: Model) -> str:
    ref = model.ref
    lines = [f"# bench_safetensors.py, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"Model: {len(ref['tensors'])} tensors, {ref['model_bytes'] / GIB:.3f} GiB, "
             f"{len(model.shards)} safetensors shards (at most {args.shard_mib} MiB each) and one "
             f".tensors file; medians of {args.runs} fresh-process run(s); peak RSS is the "
             "process's, absolute.", ""]
    for part, table in loads.items():
        lines += [f"## {part}: {titles(args)[part]}", "",
                  _report.markdown_table(HEADER, table_rows(table)), ""]
    lines += [*(f"- {n}" for n in notes), "", "## Targets", "",
              _report.markdown_table(["verdict", "target", "detail"],
                                     [[t["verdict"], t["target"], t["detail"]] for t in results]),
              ""]
    return "\n".join(lines)


def write_outputs(args, info: dict, model: Model, saves: list, loads: dict, caches: dict,
                  results: list[dict], notes: list[str], failed: list, seconds: float) -> str:
    out_dir = os.path.abspath(args.out_dir or args.workdir)
    os.makedirs(out_dir, exist_ok=True)
    ref = model.ref
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": info, "params": vars(args),
           "model": {"bytes": ref["model_bytes"], "tensors": len(ref["tensors"]),
                     "files": ref["files"], "shards": model.shards,
                     "dtypes": sorted({t["dtype"] for t in ref["tensors"].values()})},
           "save": saves, "load": {p: list(t.values()) for p, t in loads.items()},
           "page_cache": caches, "targets": results, "notes": notes, "ok": not failed,
           "seconds": seconds}
    with open(os.path.join(out_dir, "bench_safetensors.json"), "w") as f:
        json.dump(doc, f, indent=2)
    with open(os.path.join(out_dir, "bench_safetensors.md"), "w") as f:
        f.write(render_markdown(args, loads, results, notes, model))
    return out_dir


def prepare(args, workdir: str) -> tuple[list, Model | None]:
    """The model saved as shards and as a .tensors file (or reused); None if a save failed."""
    save_args = argparse.Namespace(**{**vars(args), "runs": 1})
    options = {"fp32": True, "shard_bytes": args.shard_mib << 20}
    saves, ref, formats = bench_local.prepare(save_args, workdir, [CKPT, TENSORS],
                                              int(args.size_gib * GIB), options)
    if ref is None or formats != [CKPT, TENSORS]:
        return saves, None
    return saves, Model(workdir, ref, shard_names(bench_local._path(workdir, CKPT)))


def start_server(args, workdir: str):
    """nginx serving the work folder, plain and capped, and as the S3 bucket (bench_http's)."""
    bench_http.s3_bucket(workdir, [bench_local.FILES[CKPT], bench_local.FILES[TENSORS]])
    server = bench_http.start_nginx(args, workdir)
    log(f"nginx    {server.url('')}" + (f", capped at {args.cap_mbps:g} MB/s per response: "
                                        f"{server.url('', capped=True)}" if args.cap_mbps else ""))
    return server


def clear_environment() -> None:
    """No variable left in the caller's environment steers a client: the rows set their own."""
    for name in ("TENSORSTREAM_HTTP_CONNECTIONS", "TENSORSTREAM_IO_BACKEND") + bench_http.S3_UNSET:
        if os.environ.pop(name, None) is not None:
            log(f"note     {name} was set; unset for this run")


def main(args) -> int:
    start = time.perf_counter()
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    info = bench_local.log_machine(workdir)
    info["versions"].update(bench_http.s3_versions())
    log(f"files    {workdir} on {info['workdir_fs']}")
    clear_environment()
    saves, model = prepare(args, workdir)
    if model is None:
        log("the model could not be saved in both formats; stopping")
        return 1
    ref = model.ref
    log(f"model    {len(ref['tensors'])} tensors, {ref['model_bytes'] / GIB:.3f} GiB, "
        f"{len(model.shards)} shards, dtypes "
        f"{', '.join(sorted({t['dtype'] for t in ref['tensors'].values()}))}")
    remote = [p for p in args.only if p in ("http", "capped")]
    server = start_server(args, workdir) if remote else None
    loads, caches = {}, {}
    try:
        for part in args.only:
            loads[part], caches[part] = run_part(args, part, model, server)
    finally:
        if server:
            server.stop()
    add_ratios(loads)
    results = targets(loads, ref["model_bytes"])
    notes = eviction_notes(loads, caches) + runai_notes(args, caches)
    failed = [(p, s) for p, t in loads.items() for s in t.values() if s["check"].startswith("FAIL")]
    failed += [("save", s) for s in saves if s["check"].startswith("FAIL")]
    log("\n" + render(args, loads, results, notes))
    for part, s in failed:
        log(f"FAILED {part} {s.get('method') or s.get('format')}: {s.get('failures') or s['check']}")
    seconds = time.perf_counter() - start
    out_dir = write_outputs(args, info, model, saves, loads, caches, results, notes, failed, seconds)
    log(f"results  {out_dir}/bench_safetensors.json and .md ({seconds:.0f} s in all)")
    return 1 if failed else 0


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are a comma-separated subset of {','.join(PARTS)}")
    return [p for p in PARTS if p in parts]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", type=_parts, default=list(PARTS), metavar="PARTS",
                   help="comma-separated parts to run: " + ",".join(PARTS) + " (default: all)")
    p.add_argument("--size-gib", type=float, default=2.0, help="model size (default 2.0)")
    p.add_argument("--shard-mib", type=int, default=512,
                   help="largest shard, MiB of tensors (default 512)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per method (median; default 3)")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed rounds of every method before the timed ones (default 0)")
    p.add_argument("--runai-concurrency", type=int, nargs="+", default=[4, 8, 16, 32], metavar="N",
                   help="the Run:ai streamer's RUNAI_STREAMER_CONCURRENCY values swept in the first "
                        "timed round of http and capped; the best one runs the others "
                        "(default 4 8 16 32)")
    p.add_argument("--curl-ranges", type=int, default=32,
                   help="ceiling of http and capped: N parallel curl ranges (default 32)")
    p.add_argument("--cap-mbps", type=float, default=50,
                   help="rate of the capped link per response, MB/s (default 50)")
    p.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes (default 1)")
    p.add_argument("--workdir", default="bench-out-st",
                   help="where the files go (default ./bench-out-st)")
    p.add_argument("--out-dir", help="where bench_safetensors.json and .md go (default: the workdir)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--reuse", action="store_true",
                   help="reuse the files of an earlier run with the same size, shards and seed")
    p.add_argument("--timeout", type=float, default=900, help="per-process limit in seconds")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds each load process waits before its timed region (default 2; "
                        "bench_local.py explains why)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.size_gib <= 0 or args.shard_mib < 1:
        p.error("--runs and --shard-mib must be >= 1, --warmup >= 0 and --size-gib > 0")
    if any(n < 1 for n in args.runai_concurrency) or args.curl_ranges < 1 or args.nginx_workers < 1:
        p.error("concurrency, range and worker counts must be >= 1")
    if "capped" in args.only and args.cap_mbps <= 0:
        p.error("--cap-mbps must be > 0 for the capped part")
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args()))
