#!/usr/bin/env python3
"""Load a synthetic model over HTTP and S3 from nginx on loopback: tensorstream and its peers.

The model of bench_local.py is saved with tensorstream, tensorizer and safetensors and served by
nginx from two server blocks: a plain one and one that caps every response at --cap-mbps (an
S3-like link). The same folder is an S3 endpoint for reads: ``<root>/bench/<key>`` answers
path-style requests for ``s3://bench/<key>`` (nginx ignores the signatures, so this measures the
clients). tensorstream and tensorizer read ``http://`` and ``s3://``, the Run:ai model streamer
reads the safetensors file through its S3 client. Every load runs in a fresh process
(bench_local.py --worker), is timed like the local ones and verified against the reference
checksums; `curl` downloads, timed from here, give the ceilings. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _nginx  # noqa: E402
import _report  # noqa: E402
import _system  # noqa: E402
import bench_local  # noqa: E402
from bench_local import GIB, log  # noqa: E402

DEFAULT_CONNECTIONS = 64  # TENSORSTREAM_HTTP_CONNECTIONS unset: auto, which ramps up to 64 per host
REFERENCE = "ts-http"
TARGET_SHARE = 0.85
TARGET_VS_TENSORIZER = 10
BUCKET = "bench"  # s3://bench/<key> is <root>/bench/<key> on nginx
S3_LOADERS = ("ts-s3", "tensorizer-s3", "runai")
S3_PACKAGES = ("boto3", "runai-model-streamer", "runai-model-streamer-s3")
# Every S3 client gets these, plus AWS_ENDPOINT_URL naming the link's nginx port. The keys are
# placeholders: nginx checks no signature. The Run:ai client is kept off the EC2 metadata service
# and on path-style URLs.
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench-access-key", "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
          "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
          "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0"}
# Cleared at the start: no profile, token or other endpoint steers a client, and the default rows
# run with the libraries' defaults.
S3_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
            "AWS_DEFAULT_REGION", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
            "TENSORSTREAM_S3_ADDRESSING", "RUNAI_STREAMER_CONCURRENCY",
            "RUNAI_STREAMER_OBJ_CONCURRENCY", "RUNAI_STREAMER_MEMORY_LIMIT")


def methods(args, link: str) -> dict:
    """name -> (worker loader or 'curl', N, extra environment).

    N counts tensorstream's connections, curl's streams or the Run:ai streamer's concurrency; None
    is the library's default.
    """
    out = {REFERENCE: ("ts-http", DEFAULT_CONNECTIONS, {})}
    for n in args.connections:
        out[f"ts-http-c{n}"] = ("ts-http", n, {"TENSORSTREAM_HTTP_CONNECTIONS": str(n)})
    out["tensorizer"] = ("tensorizer", None, {})
    if args.s3:
        out["ts-s3"] = ("ts-s3", DEFAULT_CONNECTIONS, {})
        for n in args.s3_connections:
            out[f"ts-s3-c{n}"] = ("ts-s3", n, {"TENSORSTREAM_HTTP_CONNECTIONS": str(n)})
        out["tensorizer-s3"] = ("tensorizer-s3", None, {})
        out["runai"] = ("runai", None, {})
        for n in args.runai_concurrency:
            out[f"runai-c{n}"] = ("runai", n, {"RUNAI_STREAMER_CONCURRENCY": str(n)})
    if link == "loopback":
        out["curl-1"] = ("curl", 1, {})
    for n in args.curl_ranges:
        out[f"curl-{n}r"] = ("curl", n, {})
    return out


def _served(spec: tuple) -> str:
    """The saved file a method reads: tensorizer its own, Run:ai the safetensors one, the rest
    tensorstream's."""
    return {"tensorizer": "tensorizer", "tensorizer-s3": "tensorizer",
            "runai": "safetensors"}.get(spec[0], "tensorstream")


def s3_bucket(workdir: str, files: list[str]) -> None:
    """<workdir>/bench/<file> -> ../<file>, so that nginx serves s3://bench/<file> path-style."""
    folder = os.path.join(workdir, BUCKET)
    os.makedirs(folder, exist_ok=True)
    for name in files:
        link = os.path.join(folder, name)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.join("..", name), link)


def _location(server: _nginx.Nginx, name: str, loader: str, capped: bool) -> tuple[str, dict]:
    """What a method opens on a link, and the environment that points it there."""
    if loader not in S3_LOADERS:
        return server.url(name, capped=capped), {}
    endpoint = server.url("", capped=capped).rstrip("/")
    return f"s3://{BUCKET}/{name}", {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}


def run_curl(url: str, size: int, streams: int, timeout: float) -> dict:
    """`curl -o /dev/null`: the whole file, or `streams` parallel range requests covering it."""
    cuts = [size * i // streams for i in range(streams + 1)]
    cmds, want = [], []
    for a, b in zip(cuts, cuts[1:]):
        cmd = ["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
        cmds.append(cmd + (["-r", f"{a}-{b - 1}"] if streams > 1 else []) + [url])
        want.append(f"{206 if streams > 1 else 200} {b - a}")
    deadline = time.monotonic() + timeout
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    outs, problems = [], []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            problems.append(f"timed out after {timeout:.0f} s")
        outs.append(out.strip())
        if p.returncode and not problems:
            problems.append(f"curl exited {p.returncode}: {err.strip()[:200]}")
    seconds = time.perf_counter() - t0
    problems += [f"got '{o}' (status, bytes), expected '{w}'" for o, w in zip(outs, want) if o != w]
    return {"seconds": seconds, "peak_rss_mib": None,
            "engine": f"{streams} stream" if streams == 1 else f"{streams} ranges",
            "check": "FAIL: " + "; ".join(problems[:3]) if problems else "pass"}


def run_load(args, spec: tuple, url: str, workdir: str, crc: int, env: dict) -> dict:
    loader, connections, own_env = spec
    job = {"kind": "load", "method": loader, "path": url, "file_crc32": crc,
           "reference": os.path.join(workdir, "reference.json"), "settle": args.settle}
    res = bench_local.run_worker(job, {**env, **own_env}, workdir, args.timeout)
    engine = res.get("engine", "")
    if loader.startswith("ts-") and res["check"] == "pass" and engine != "http":
        res["check"] = f"FAIL: loaded through the {engine!r} engine, not http"
    if loader == "runai":
        res["engine"] = f"concurrency {connections or 'default'}"
    elif loader.startswith("ts-") and "TENSORSTREAM_HTTP_CONNECTIONS" not in own_env:
        level = max((h["connections"] for h in res.get("hosts") or []), default=None)
        res["engine"] = f"{engine or '?'}, auto" + (f" ({level} in flight)" if level else "")
    elif connections:
        res["engine"] = f"{engine or '?'}, {connections} connections"
    return res


def load_all(args, servers: dict, urls: dict, sizes: dict, ref: dict, crc: int, workdir: str):
    """Rounds of every method on every link; name -> summary, per link."""
    plan = {link: methods(args, link) for link in servers}
    runs = {link: {m: [] for m in plan[link]} for link in servers}
    warm = copy.deepcopy(runs)
    for r in range(args.warmup + args.runs):
        label = "warm-up" if r < args.warmup else f"run {r - args.warmup + 1}/{args.runs}"
        for link in servers:
            for name in _report.round_order(list(plan[link]), r):
                spec = plan[link][name]
                fmt = _served(spec)
                if fmt not in urls:
                    res = {"check": f"FAIL: its {fmt} file could not be saved"}
                elif spec[0] == "curl":
                    url = servers[link].url(urls[fmt], capped=link == "capped")
                    res = run_curl(url, sizes[fmt], spec[1], args.timeout)
                else:
                    url, env = _location(servers[link], urls[fmt], spec[0], link == "capped")
                    res = run_load(args, spec, url, workdir, crc, env)
                (warm if r < args.warmup else runs)[link][name].append(res)
                nbytes = sizes.get(fmt, 0) if spec[0] == "curl" else ref["model_bytes"]
                rss = res.get("peak_rss_mib")
                speed = (f"{res['seconds']:7.3f} s {nbytes / res['seconds'] / 1e9:6.2f} GB/s" +
                         (f"  peak RSS {rss:6.0f} MiB" if rss else "") if "seconds" in res else "")
                log(f"load  {label:9} {link:8} {name:13}{speed}  {res.get('engine', '')}  "
                    f"{res['check']}")
    out = {}
    for link in servers:
        out[link] = {}
        for name, spec in plan[link].items():
            fmt = _served(spec)
            nbytes = sizes.get(fmt, 0) if spec[0] == "curl" else ref["model_bytes"]
            out[link][name] = _report.summarize(name, runs[link][name], warm[link][name], nbytes)
            out[link][name]["streams"] = spec[1]
    return out


def _readers(summary: dict) -> int | None:
    match = re.search(r"(\d+) readers", summary.get("engine", ""))
    return int(match.group(1)) if match else None


def add_ceilings(loads: dict, cap_gbps: float | None) -> float | None:
    """Each summary's ceiling (GB/s) and its share of it, and the ratio to ts-http; best curl."""
    best = max((s["gbps"] for n, s in loads["loopback"].items()
                if n.startswith("curl") and s["gbps"]), default=None)
    for link, table in loads.items():
        ref = table.get(REFERENCE, {}).get("gbps")
        for name, s in table.items():
            s["vs_" + REFERENCE] = s["gbps"] / ref if ref and s["gbps"] else None
            if link == "loopback":
                ceiling = best
            else:
                streams = (_readers(s) if name.startswith("tensorizer") else
                           None if name.startswith("runai") else s["streams"])
                # Run:ai's S3 client opens as many connections as it sees fit: no ceiling.
                ceiling = streams * cap_gbps if streams else None
                if ceiling and best:
                    ceiling = min(ceiling, best)
            s["ceiling_gbps"] = ceiling
            s["of_ceiling"] = s["gbps"] / ceiling if ceiling and s["gbps"] else None
    return best


def load_table(summaries: list[dict]) -> str:
    f = _report._fmt
    rows = [[s["method"], s["engine"] or "-", f(s["median_s"], ".3f"), f(s["gbps"], ".2f"),
             f(s["vs_" + REFERENCE], ".2f"), f(s["ceiling_gbps"], ".2f"),
             f(s["of_ceiling"] and 100 * s["of_ceiling"], ".0f"), f(s["peak_rss_mib"], ".0f"),
             s["check"]] for s in summaries]
    header = ["method", "engine / notes", "median s", "GB/s", f"vs {REFERENCE}", "ceiling GB/s",
              "% of ceiling", "peak RSS MiB", "check"]
    return _report.table(header, rows)


def _line(target: str, ok: bool | None, detail: str) -> dict:
    return {"target": target, "ok": ok, "detail": detail, "verdict": _report._verdict(ok)}


def _peer(name: str) -> str:
    """The tensorizer row a tensorstream row is held against: the same protocol."""
    return "tensorizer-s3" if name.startswith("ts-s3") else "tensorizer"


def _best_runai(table: dict) -> tuple[str | None, float | None]:
    rows = [(s["gbps"], n) for n, s in table.items() if n.startswith("runai") and s["gbps"]]
    return (max(rows)[1], max(rows)[0]) if rows else (None, None)


def targets(loads: dict, best_curl: float | None, model_bytes: int, s3: bool) -> list[dict]:
    """The issue's targets for every tensorstream method, evaluated on this run (informational)."""
    out = []
    ts_names = [n for n in loads["loopback"] if n.startswith("ts-")]
    for name in ts_names:
        s = loads["loopback"][name]
        goal = f"{name} loopback >= {100 * TARGET_SHARE:.0f}% of the best curl"
        out.append(_line(goal, None, "not measured") if not (s["gbps"] and best_curl) else
                   _line(goal, s["gbps"] >= TARGET_SHARE * best_curl,
                         f"{100 * s['of_ceiling']:.0f}% ({s['gbps']:.2f} vs {best_curl:.2f} GB/s)"))
    capped = loads.get("capped", {})
    runai_name, runai = _best_runai(capped)
    for name in ts_names if capped else []:
        s = capped[name]
        goal = f"{name} capped >= {100 * TARGET_SHARE:.0f}% of min(connections x cap, curl)"
        out.append(_line(goal, None, "not measured") if not (s["gbps"] and s["ceiling_gbps"]) else
                   _line(goal, s["gbps"] >= TARGET_SHARE * s["ceiling_gbps"],
                         f"{100 * s['of_ceiling']:.0f}% ({s['gbps']:.2f} vs "
                         f"{s['ceiling_gbps']:.2f} GB/s)"))
        peer = _peer(name)
        tz = capped.get(peer, {}).get("gbps")
        goal = f"{name} capped >= {TARGET_VS_TENSORIZER}x {peer}"
        readers = _readers(capped.get(peer, {}))
        bound = (f"; at the cap, {s['streams']} connections against {readers} readers allow "
                 f"{s['streams'] / readers:.0f}x at most" if readers else "")
        out.append(_line(goal, None, "not measured") if not (s["gbps"] and tz) else
                   _line(goal, s["gbps"] >= TARGET_VS_TENSORIZER * tz,
                         f"{s['gbps'] / tz:.1f}x ({s['gbps']:.2f} vs {tz:.2f} GB/s){bound}"))
        if name.startswith("ts-s3"):
            goal = f"{name} capped >= the Run:ai model streamer at its best concurrency"
            out.append(_line(goal, None, "not measured: no Run:ai row succeeded") if not runai else
                       _line(goal, None, "not measured") if not s["gbps"] else
                       _line(goal, s["gbps"] >= runai,
                             f"{s['gbps'] / runai:.2f}x ({s['gbps']:.2f} vs {runai:.2f} GB/s, "
                             f"{runai_name})"))
    limit = model_bytes / _report.MIB + _report.RSS_ALLOWANCE_MIB
    for name in ts_names:
        rss = max((t[name]["peak_rss_mib"] for t in loads.values()
                   if t.get(name, {}).get("peak_rss_mib")), default=None)
        out.append(_line(f"{name} peak RSS <= model + {_report.RSS_ALLOWANCE_MIB} MiB",
                         None if rss is None else rss <= limit,
                         "not measured" if rss is None else
                         f"{rss:.0f} MiB vs limit {limit:.0f} MiB (model "
                         f"{model_bytes / _report.MIB:.0f} MiB)"))
    if not s3 or not capped:
        out.append(_line("capped >= the Run:ai model streamer at its best concurrency", None,
                         "not measured: " + ("--no-s3" if not s3 else "no capped link")))
    return out


def ratios(loads: dict) -> list[dict]:
    """ts-s3 against tensorizer-s3, the best Run:ai row and its ceiling, on every link."""
    out = []
    for link, table in loads.items():
        ts = table.get("ts-s3", {})
        if not ts:
            continue
        runai_name, runai = _best_runai(table)
        peers = [("tensorizer-s3", table.get("tensorizer-s3", {}).get("gbps")),
                 (f"Run:ai best ({runai_name or 'none succeeded'})", runai),
                 ("its ceiling", ts.get("ceiling_gbps"))]
        for peer, gbps in peers:
            ratio = ts["gbps"] / gbps if ts["gbps"] and gbps else None
            out.append({"link": link, "method": "ts-s3", "vs": peer, "ratio": ratio,
                        "detail": "not measured" if ratio is None else
                        f"{ratio:.2f}x ({ts['gbps']:.2f} vs {gbps:.2f} GB/s)"})
    return out


def ratio_lines(rows: list[dict]) -> str:
    return "\n".join(f"ratio        {r['link']:8} {r['method']} / {r['vs']}: {r['detail']}"
                     for r in rows)


def report(args, info, ts, saves, loads, ref, best_curl, extra) -> int:
    results = targets(loads, best_curl, ref["model_bytes"], args.s3)
    compared = ratios(loads)
    log("")
    titles = {"loopback": "nginx on loopback",
              "capped": f"nginx on loopback, every response capped at {args.cap_mbps:g} MB/s"}
    for link, table in loads.items():
        log(f"{titles[link]} (model {ref['model_bytes'] / 1e9:.3f} GB)")
        log(load_table(list(table.values())) + "\n")
    if "capped" in loads:
        log(f"capped link: a ceiling is N x {args.cap_mbps:g} MB/s for N connections, ranges or "
            f"readers, at most the best loopback curl ({_report._fmt(best_curl, '.2f')} GB/s)\n")
    if args.s3:
        log(f"s3 rows: s3://{BUCKET}/<file> from nginx as a path-style endpoint "
            "(AWS_ENDPOINT_URL); runai reads the safetensors file with "
            "RUNAI_STREAMER_CONCURRENCY=N (default: unset) and its default memory limit "
            "(RUNAI_STREAMER_MEMORY_LIMIT unset); its S3 client chooses how many connections to "
            "open, so it has no ceiling on the capped link\n")
    if compared:
        log(ratio_lines(compared))
    log(_report.target_lines(results))
    failed = [(link, s) for link, t in loads.items() for s in t.values()
              if s["check"].startswith("FAIL")]
    failed += [("save", s) for s in saves if s["check"].startswith("FAIL")]
    for link, s in failed:
        name = s.get("method") or s.get("format")
        log(f"FAILED {link} {name}: {s.get('failures') or s['check']}")
    if args.json:
        model = {"bytes": ref["model_bytes"], "tensors": len(ref["tensors"]), "files": ref["files"]}
        out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": info,
               "tensorstream": ts, "params": vars(args), "model": model, "save": saves,
               "load": {link: list(t.values()) for link, t in loads.items()},
               "best_curl_gbps": best_curl, "targets": results, "ratios": compared, **extra,
               "ok": not failed}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 1 if failed else 0


def s3_versions() -> dict:
    out = {}
    for name in S3_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def start_nginx(args, workdir: str) -> _nginx.Nginx:
    binary = _nginx.nginx_binary()
    if binary is None:
        raise SystemExit("nginx is not installed (Debian package 'nginx')")
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed (the ceilings and tensorizer's HTTP reads use it)")
    server = _nginx.Nginx(binary, workdir, os.path.join(workdir, "nginx"),
                          limit_rate=int(args.cap_mbps * 1e6) or None,
                          workers=args.nginx_workers, access_log=False)
    server.start()
    return server


def main(args) -> int:
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    size_bytes = int(args.size_gib * GIB)
    info = bench_local.log_machine(workdir)
    if args.s3:
        info["versions"].update(s3_versions())
        log("versions " + ", ".join(f"{k} {info['versions'][k]}" for k in S3_PACKAGES))
    else:
        log("not measured: s3:// and the Run:ai model streamer (--no-s3)")
    for name in ("TENSORSTREAM_HTTP_CONNECTIONS",) + S3_UNSET:
        if os.environ.pop(name, None) is not None:
            log(f"note     {name} was set; unset for the default runs")
    if args.s3 and os.path.exists(os.path.expanduser("~/.s3cfg")):
        log("WARNING  ~/.s3cfg exists: tensorstream takes its keys and host_base before the "
            "AWS variables, so ts-s3 may not read from this benchmark's nginx")
    ts = bench_local.probe_tensorstream()
    if not ts["available"]:
        log("tensorstream is not importable: " + ts["why"])
        return 1
    save_args = argparse.Namespace(**{**vars(args), "runs": 1})
    wanted = ["tensorstream", "tensorizer"] + (["safetensors"] if args.s3 else [])
    saves, ref, formats = bench_local.prepare(save_args, workdir, wanted, size_bytes)
    if ref is None or formats[:2] != ["tensorstream", "tensorizer"]:
        log("the model could not be saved with both libraries; stopping")
        return 1
    log(f"model    {len(ref['tensors'])} tensors, {ref['model_bytes'] / GIB:.3f} GiB "
        f"({ref['model_bytes'] / 1e9:.3f} GB)")
    identical = bench_local.compare_tensors_files(workdir, formats)
    cache = bench_local.warm_files(workdir, formats)
    urls = {fmt: bench_local.FILES[fmt] for fmt in formats}
    sizes = {fmt: ref["files"][fmt]["size"] for fmt in formats}
    if args.s3:
        s3_bucket(workdir, list(urls.values()))
    server = start_nginx(args, workdir)
    links = {"loopback": server, **({"capped": server} if args.cap_mbps else {})}
    log(f"nginx    {server.url('')} ({args.nginx_workers} worker(s))" +
        (f", capped at {args.cap_mbps:g} MB/s per response: {server.url('', capped=True)}"
         if args.cap_mbps else ""))
    if args.s3:
        log(f"s3       s3://{BUCKET}/<file>, path-style from the same ports (AWS_ENDPOINT_URL)")
    try:
        loads = load_all(args, links, urls, sizes, ref, cache["tensorstream"]["crc32"], workdir)
    finally:
        server.stop()
    best_curl = add_ceilings(loads, args.cap_mbps / 1e3 if args.cap_mbps else None)
    extra = {"tensors_files": identical, "page_cache": cache, "size_bytes": size_bytes,
             "nginx": {"workers": args.nginx_workers, "cap_mbps": args.cap_mbps},
             "loadavg_start": info["loadavg_start"], "loadavg_end": os.getloadavg()[0]}
    return report(args, info, ts, saves, loads, ref, best_curl, extra)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=2.0, help="model size (default 2.0)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per method (median; default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument("--connections", type=int, nargs="*", default=[4, 16, 64], metavar="N",
                   help="tensorstream variants with TENSORSTREAM_HTTP_CONNECTIONS=N "
                        "(default 4 16 64; none: only the default)")
    p.add_argument("--s3-connections", type=int, nargs="*", default=[16], metavar="N",
                   help="ts-s3 variants with TENSORSTREAM_HTTP_CONNECTIONS=N (default 16; none: "
                        "only the default)")
    p.add_argument("--runai-concurrency", type=int, nargs="*", default=[4, 32], metavar="N",
                   help="Run:ai streamer variants with RUNAI_STREAMER_CONCURRENCY=N (default 4 32; "
                        "none: only its default)")
    p.add_argument("--no-s3", dest="s3", action="store_false",
                   help="skip the s3:// rows (ts-s3, tensorizer-s3, runai) and the safetensors "
                        "save")
    p.add_argument("--curl-ranges", type=int, nargs="*", default=[4, 16, 32], metavar="N",
                   help="ceilings: N parallel curl range requests (default 4 16 32)")
    p.add_argument("--cap-mbps", type=float, default=50,
                   help="rate of the capped link per response, MB/s (default 50; 0: none)")
    p.add_argument("--nginx-workers", type=int, default=1,
                   help="nginx worker processes (default 1)")
    p.add_argument("--workdir", default="bench-out-http",
                   help="where the files go (default ./bench-out-http)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--reuse", action="store_true",
                   help="reuse the files of an earlier run with the same size and seed")
    p.add_argument("--timeout", type=float, default=900, help="per-process limit in seconds")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds each load process waits before its timed region, so that every "
                        "method starts on memory the machine has settled (default 5; 0: none)")
    p.add_argument("--json", metavar="OUT", help="write all results as JSON to OUT")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.size_gib <= 0 or args.cap_mbps < 0:
        p.error("--runs must be >= 1, --warmup >= 0, --size-gib > 0 and --cap-mbps >= 0")
    counts = args.connections + args.s3_connections + args.runai_concurrency + args.curl_ranges
    if any(n < 1 for n in counts) or args.nginx_workers < 1:
        p.error("connection, range and worker counts must be >= 1")
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args()))
