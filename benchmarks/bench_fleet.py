#!/usr/bin/env python3
"""A fleet cold start: N processes load the same model at once over a link capped per connection.

The model of bench_local.py is saved with tensorstream (and safetensors for the Run:ai streamer)
and served by nginx, every response capped at --cap-mbps, with its access log on so that the bytes
the server sent in each run can be summed. Each mode starts its processes fresh; they import their
libraries (and form a gloo group where the mode needs one), say they are ready, and all start
loading when the parent creates a "go" file. A run's time is from go until the slowest process
holds every tensor with every page touched; each process then checks its tensors against the
reference checksums. Modes: independent loads, a cooperative load (process_group=True), the local
cache (one fetches, the others wait), a warm cache entry against a plain local load, tensorizer,
and the Run:ai model streamer in its distributed form. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _fleet_report  # noqa: E402
import _nginx  # noqa: E402
import _report  # noqa: E402
import _system  # noqa: E402
import bench_http  # noqa: E402
import bench_local  # noqa: E402
from bench_local import GIB, log  # noqa: E402

# mode -> (processes: "N" or 1, file it reads, where from, what runs)
MODES = {
    "independent": ("N", "tensorstream", "http", "tensorstream.load(url) in each process"),
    "cooperative": ("N", "tensorstream", "http", "one gloo group, tensorstream.load(url, process_group=True)"),
    "cache": ("N", "tensorstream", "http", "tensorstream.load(url, cache_dir=<fresh empty folder>)"),
    "cache-warm": (1, "tensorstream", "http", "tensorstream.load(url, cache_dir=<folder holding the entry>)"),
    "local": (1, "tensorstream", "local", "tensorstream.load(path) of the same file, warm page cache"),
    "tensorizer": ("N", "tensorstream", "http", "tensorizer.TensorDeserializer(url) in each process"),
    "runai-dist": ("N", "safetensors", "s3", "one gloo group, SafetensorsStreamer.stream_files("
                   "[s3://bench/model.safetensors], is_distributed=True), RUNAI_STREAMER_DIST=1"),
    "runai": ("N", "safetensors", "s3", "SafetensorsStreamer.stream_files([s3://...]) in each process"),
}
DEFAULT_MODES = ("independent", "cooperative", "cache", "cache-warm", "local", "tensorizer", "runai-dist")
GROUP_MODES = ("cooperative", "runai-dist")
UNSET = ("TENSORSTREAM_CACHE_DIR", "TENSORSTREAM_HTTP_CONNECTIONS", "TENSORSTREAM_CACHE_OFFLINE",
         "RUNAI_STREAMER_DIST", "RUNAI_STREAMER_DIST_GLOBAL") + bench_http.S3_UNSET
LOG_LINE = re.compile(r'"[^"]*" (\d{3}) (\d+) ')  # nginx's "combined": "request" status body_bytes_sent
LOG_WAIT_S = 0.3  # nginx writes a request's line when its response ends; give the last ones time


def served_bytes(log_path: str, offset: int) -> tuple[int, int]:
    """(body bytes, requests) of the access log lines written after byte `offset`."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    found = [LOG_LINE.search(line) for line in text.splitlines() if line.strip()]
    if not all(found):
        raise ValueError("an access log line does not have nginx's combined format")
    return sum(int(m.group(2)) for m in found), len(found)


def worker_cmd(spec: dict) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]


def _launch(specs: list[dict], env: dict, run_dir: str) -> list[subprocess.Popen]:
    procs = []
    for spec in specs:
        log_file = open(os.path.join(run_dir, f"proc-{spec['rank']}.log"), "wb")
        procs.append(subprocess.Popen(worker_cmd(spec), env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                      stdout=log_file, stderr=subprocess.STDOUT))
        log_file.close()
    return procs


def _wait_ready(procs: list, ready_dir: str, timeout: float) -> str:
    """'' once every process is ready; else why not (a process exited, or the time ran out)."""
    deadline = time.monotonic() + timeout
    while len(os.listdir(ready_dir)) < len(procs):
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        if dead:
            return f"process {dead[0]} exited with status {procs[dead[0]].returncode} before it was ready"
        if time.monotonic() > deadline:
            return f"not every process was ready within {timeout:.0f} s"
        time.sleep(0.01)
    return ""


def _wait_done(procs: list, timeout: float, grace: float = 15.0) -> str:
    """Waits for every process; once one fails, the rest get `grace` seconds (a group waits on
    its failed rank until its timeout). Kills what is left; '' when all exited with status 0."""
    deadline, problem = time.monotonic() + timeout, ""
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed and not problem:
            problem = f"process {failed[0]} exited with status {procs[failed[0]].returncode}"
            deadline = min(deadline, time.monotonic() + grace)
        time.sleep(0.01)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
            problem = problem or f"timed out after {timeout:.0f} s"
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    return problem or (f"process {failed[0]} exited with status {procs[failed[0]].returncode}" if failed else "")


def _tail(run_dir: str, rank: int) -> str:
    path = os.path.join(run_dir, f"proc-{rank}.log")
    if not os.path.exists(path):
        return "no output"
    with open(path, errors="replace") as f:
        return " | ".join(f.read().strip().splitlines()[-3:])


def run_once(args, mode: str, procs: int, target: str, env: dict, run_dir: str, server, extra: dict) -> dict:
    """Starts `procs` fresh processes of a mode, gives the go, collects what they report."""
    shutil.rmtree(run_dir, ignore_errors=True)
    ready_dir = os.path.join(run_dir, "ready")
    os.makedirs(ready_dir)
    go = os.path.join(run_dir, "go")
    port = _nginx.free_port() if mode in GROUP_MODES else None
    specs = [{"mode": mode, "rank": r, "procs": procs, "uri": target, "port": port, "go": go,
              "ready_dir": ready_dir, "out": os.path.join(run_dir, f"result-{r}.json"),
              "reference": os.path.join(args.workdir, "reference.json"), "settle": args.settle,
              "timeout": args.timeout, **extra} for r in range(procs)]
    children = _launch(specs, env, run_dir)
    problem = _wait_ready(children, ready_dir, args.timeout)
    offset = os.path.getsize(server.access_log)
    go_wall = time.time()
    if not problem:
        with open(go + ".tmp", "w") as f:
            f.write(repr(go_wall))
        os.rename(go + ".tmp", go)
        problem = _wait_done(children, args.timeout)
    else:
        _wait_done(children, 0.0, grace=0.0)
    time.sleep(LOG_WAIT_S)
    nbytes, requests = served_bytes(server.access_log, offset)
    results = []
    for spec in specs:
        try:
            with open(spec["out"]) as f:
                results.append(json.load(f))
        except (OSError, ValueError):
            results.append({"rank": spec["rank"], "check": f"FAIL: no result ({_tail(run_dir, spec['rank'])})"})
    return combine(results, go_wall, nbytes, requests, problem)


def combine(results: list[dict], go_wall: float, nbytes: int, requests: int, problem: str) -> dict:
    """One run of a mode: the slowest process's time from go, the server's bytes, the checks."""
    failures = [f"rank {r['rank']}: {r['check']}" for r in results if r["check"] != "pass"]
    if problem and not failures:
        failures = [problem]
    done = [r for r in results if "end_wall" in r]
    groups = [r["group_s"] for r in results if r.get("group_s") is not None]
    return {
        "seconds": max(r["end_wall"] for r in done) - go_wall if done and not failures else None,
        "process_s": [r.get("seconds") for r in results],
        "group_s": max(groups) if groups else None,
        "server_bytes": nbytes, "requests": requests,
        "peak_rss_mib": [r.get("peak_rss_mib") for r in results],
        "base_rss_mib": [r.get("base_rss_mib") for r in results],
        "engine": next((r["engine"] for r in results if r.get("engine")), ""),
        "check": "FAIL: " + "; ".join(failures[:3]) if failures else "pass",
    }


def warm_entry(args, target: str, server, workdir: str) -> tuple[str, dict]:
    """A cache folder holding the complete entry (one untimed cold load fills it); its run."""
    folder = os.path.join(workdir, "warm-cache")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    res = run_once(args, "cache", 1, target, {}, os.path.join(workdir, "runs", "fill-warm-cache"), server,
                   {"cache_dir": folder})
    log(f"fill  warm cache entry: {res['check']}")
    return folder, res


def _read_tree(folder: str) -> None:
    """Every file under `folder` read once (into the page cache)."""
    for root, _, names in os.walk(folder):
        for name in names:
            _system.read_once(os.path.join(root, name))


class Fleet:
    """What a mode's run needs: the server, the targets of each file and link, the folders."""

    def __init__(self, args, workdir: str, server, paths: dict) -> None:
        self.args, self.workdir, self.server, self.paths = args, workdir, server, paths
        self.warm_cache: str | None = None

    def target(self, mode: str) -> tuple[str, dict]:
        _, fmt, link, _ = MODES[mode]
        name = bench_local.FILES[fmt]
        capped = bool(self.args.cap_mbps)
        if link == "local":
            return self.paths[fmt], {}
        if link == "s3":
            url, env = bench_http._location(self.server, name, "runai", capped)
            return url, ({**env, "RUNAI_STREAMER_DIST": "1"} if mode in GROUP_MODES else env)
        return self.server.url(name, capped=capped), {}

    def run(self, mode: str, r: int) -> dict:
        procs = self.args.procs if MODES[mode][0] == "N" else 1
        target, env = self.target(mode)
        run_dir = os.path.join(self.workdir, "runs", f"{mode}-{r}")
        extra = {}
        if mode == "cache":
            extra["cache_dir"] = os.path.join(run_dir, "cache")
        elif mode == "cache-warm":
            if self.warm_cache is None:
                self.warm_cache, _ = warm_entry(self.args, target, self.server, self.workdir)
            _read_tree(self.warm_cache)
            extra["cache_dir"] = self.warm_cache
        elif mode == "local":
            _system.read_once(target)
        res = run_once(self.args, mode, procs, target, env, run_dir, self.server, extra)
        res["procs"] = procs
        if mode == "cache":
            shutil.rmtree(extra["cache_dir"], ignore_errors=True)  # the next run starts empty again
        return res


def measure(fleet: Fleet, modes: list[str], sizes: dict) -> dict:
    runs: dict = {m: [] for m in modes}
    for r in range(fleet.args.runs):
        for mode in _report.round_order(modes, r):
            res = fleet.run(mode, r)
            runs[mode].append(res)
            size = sizes[MODES[mode][1]]
            secs = f"{res['seconds']:7.3f} s" if res["seconds"] is not None else "      - s"
            group = f", group setup {res['group_s']:.2f} s" if res["group_s"] is not None else ""
            log(f"load  run {r + 1}/{fleet.args.runs} {mode:12} {res['procs']} proc  {secs}  server sent "
                f"{res['server_bytes'] / size:5.2f}x the file in {res['requests']} requests{group}  "
                f"peak RSS {max((x for x in res['peak_rss_mib'] if x), default=0):.0f} MiB  {res['check']}")
    return {m: summarize(m, runs[m], sizes[MODES[m][1]]) for m in modes}


def summarize(mode: str, runs: list[dict], file_size: int) -> dict:
    failures = [r["check"] for r in runs if r["check"] != "pass"]
    timed = [r["seconds"] for r in runs if r["seconds"] is not None]
    groups = [r["group_s"] for r in runs if r["group_s"] is not None]
    multiples = [r["server_bytes"] / file_size for r in runs]
    rss = [x for r in runs for x in r["peak_rss_mib"] if x]
    return {
        "mode": mode, "procs": runs[0]["procs"], "what": MODES[mode][3], "file": MODES[mode][1],
        "file_bytes": file_size, "check": "FAIL" if failures else "pass", "failures": failures[:3],
        "median_s": statistics.median(timed) if timed and not failures else None, "runs_s": timed,
        "group_s": statistics.median(groups) if groups else None,
        "server_x": statistics.median(multiples), "server_x_max": max(multiples),
        "requests": statistics.median(r["requests"] for r in runs),
        "peak_rss_mib": max(rss) if rss else None, "engine": runs[0]["engine"], "runs": runs,
    }


def start_nginx(args, workdir: str) -> _nginx.Nginx:
    binary = _nginx.nginx_binary()
    if binary is None:
        raise SystemExit("nginx is not installed (Debian package 'nginx')")
    server = _nginx.Nginx(binary, workdir, os.path.join(workdir, "nginx"), limit_rate=int(args.cap_mbps * 1e6) or None,
                          workers=args.nginx_workers, access_log=True)
    server.start()
    return server


def main(args) -> int:
    args.workdir = workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    info = bench_local.log_machine(workdir)
    for name in UNSET:
        if os.environ.pop(name, None) is not None:
            log(f"note     {name} was set; unset for these runs")
    formats = ["tensorstream"] + (["safetensors"] if any(MODES[m][1] == "safetensors" for m in args.modes) else [])
    save_args = argparse.Namespace(**{**vars(args), "runs": 1})
    _, ref, saved = bench_local.prepare(save_args, workdir, formats, int(args.size_gib * GIB))
    if ref is None or saved != formats:
        log("the model could not be saved; stopping")
        return 1
    bench_local.warm_files(workdir, formats)
    sizes = {fmt: ref["files"][fmt]["size"] for fmt in formats}
    paths = {fmt: os.path.join(workdir, bench_local.FILES[fmt]) for fmt in formats}
    if "safetensors" in formats:
        bench_http.s3_bucket(workdir, [bench_local.FILES["safetensors"]])
    server = start_nginx(args, workdir)
    log(f"model    {len(ref['tensors'])} tensors, {ref['model_bytes'] / 1e9:.3f} GB; {args.procs} processes per "
        f"fleet mode; nginx {server.url('', capped=bool(args.cap_mbps))}" +
        (f", every response capped at {args.cap_mbps:g} MB/s" if args.cap_mbps else ", no cap"))
    started = time.monotonic()
    try:
        loads = measure(Fleet(args, workdir, server, paths), list(args.modes), sizes)
    finally:
        server.stop()
    return _fleet_report.report(args, info, ref, loads, time.monotonic() - started)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, default=4, help="processes of the fleet modes (default 4)")
    p.add_argument("--size-gib", type=float, default=1.0, help="model size (default 1.0)")
    p.add_argument("--runs", type=int, default=3, help="runs of every mode (median; default 3)")
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(DEFAULT_MODES),
                   help="comma-separated, of: " + ", ".join(MODES) + " (default: all but runai)")
    p.add_argument("--cap-mbps", type=float, default=50,
                   help="rate of every response, MB/s (default 50; 0: no cap)")
    p.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes (default 1)")
    p.add_argument("--workdir", default="bench-out-fleet", help="where the files go (default ./bench-out-fleet)")
    p.add_argument("--out-dir", help="where bench_fleet.json and .md go (default: the workdir)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--reuse", action="store_true", help="reuse the files of an earlier run with the same size and seed")
    p.add_argument("--timeout", type=float, default=600, help="limit per run of a mode, in seconds")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds each process waits after its imports, before it says it is ready (default 1)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    if args.procs < 1 or args.runs < 1 or args.size_gib <= 0 or args.cap_mbps < 0 or args.nginx_workers < 1:
        p.error("--procs, --runs and --nginx-workers must be >= 1, --size-gib > 0, --cap-mbps >= 0")
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.worker:
        import _fleet_worker

        _fleet_worker.main(json.loads(args.worker))
    else:
        sys.exit(main(args))
