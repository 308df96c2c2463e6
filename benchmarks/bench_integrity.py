#!/usr/bin/env python3
"""Encrypted loads and verify_hash loads, measured against their CPU ceilings and tensorizer.

One synthetic model is saved twice by tensorstream: plain, and encrypted with a random key. Every
load and every ceiling runs in a fresh process (this script, started with --worker), from the warm
page cache into CPU memory; loads are timed as in bench_local.py and checked against the reference
checksums outside the timed region. The ceilings are the same work on the same bytes already in
memory, on all cores: XSalsa20-Poly1305 opening of the encrypted file's 2 MiB chunks with their real
nonces and MACs (libsodium through ctypes), and CRC32 + SHA-256 of every tensor's header and data.
Two more ceilings, the `-fresh` rows, add what every load into new memory must also do: the same
threads first read each chunk from the page cache into fresh anonymous memory (4 KiB pages), then
open or hash it there. They are informative; the targets are measured against the in-memory ones.
Speeds are data bytes (the sum of the tensors' sizes) per second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _report  # noqa: E402
import _system  # noqa: E402
import _workers  # noqa: E402
import bench_local  # noqa: E402

GIB = 1 << 30
FILES = {"plain": "model.plain.tensors", "encrypted": "model.encrypted.tensors"}
SAVERS = {"plain": "tensorstream", "encrypted": "tensorstream-encrypted"}
KEY_FILE = "model.encrypted.key"
REFERENCE = "integrity-reference.json"
# method -> (file it reads, its ceiling, the tensorizer row it is compared with)
METHODS = {
    "ceiling-decrypt": ("encrypted", None, None),
    "ceiling-decrypt-fresh": ("encrypted", None, None),
    "ts-encrypted": ("encrypted", "ceiling-decrypt", "tensorizer-encrypted"),
    "ts-encrypted-verify": ("encrypted", "ceiling-decrypt", None),
    "tensorizer-encrypted": ("encrypted", "ceiling-decrypt", None),
    "ceiling-hash": ("plain", None, None),
    "ceiling-hash-fresh": ("plain", None, None),
    "ts-plain": ("plain", None, None),
    "ts-verify": ("plain", "ceiling-hash", "tensorizer-verify"),
    "tensorizer-verify": ("plain", "ceiling-hash", None),
}
CEILINGS = ("ceiling-decrypt", "ceiling-decrypt-fresh", "ceiling-hash", "ceiling-hash-fresh")
# the informative fresh-memory ceiling of each target's row
FRESH = {"ts-encrypted": "ceiling-decrypt-fresh", "ts-verify": "ceiling-hash-fresh"}
ENV = {"TENSORSTREAM_IO_BACKEND": "auto"}
log = bench_local.log


def run_worker(spec: dict, workdir: str, timeout: float) -> dict:
    """Run one spec in a fresh process of this script; its result, or a FAIL with its error."""
    return _system.run_script_worker(__file__, spec, ENV, timeout, workdir)


# --------------------------------------------------------------------------------------------
# Ceilings (worker side): the file read into memory first, then the timed work on all cores


def _u(buf, pos: int, size: int) -> int:
    return int.from_bytes(buf[pos:pos + size], "little")


def _parse_header(h: bytes, wide: bool, encrypted: bool) -> dict:
    """A per-tensor header's hash fields and crypt info (format spec §4, §8)."""
    pos = 8 + 2 + 1
    pos += 2 + _u(h, pos, 2)  # name
    pos += 1 + h[pos]  # dtype
    pos += 1 + h[pos] * (8 if wide else 4)  # shape
    hash_end = pos + 2 + _u(h, pos, 2)
    pos += 2
    hashes, count = {}, h[pos]
    pos += 1
    for _ in range(count):
        kind, size = h[pos], h[pos + 1]
        hashes[kind] = (pos + 2, size)
        pos += 2 + size
    out = {"hashes": hashes, "hash_end": hash_end, "crypt": None}
    if encrypted:
        pos = hash_end
        crypt_end = pos + 8 + _u(h, pos, 8)
        chunks, pos = _u(h, pos + 8, 2), pos + 10
        for _ in range(chunks):
            length, kind = _u(h, pos, 8), _u(h, pos + 8, 2)
            if kind == 2:
                chunk_size, nonce = _u(h, pos + 10, 8), h[pos + 18:pos + 42]
                macs = _u(h, pos + 42, 8)
                out["crypt"] = (chunk_size, nonce, [h[pos + 50 + 16 * i:pos + 66 + 16 * i]
                                                     for i in range(macs)])
            pos += 8 + length
        out["crypt_span"] = (hash_end, crypt_end)
    return out


def _read_file(path: str) -> bytearray:
    size = os.path.getsize(path)
    buf, pos = bytearray(size), 0
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while pos < size:
            n = f.readinto(view[pos:])
            if not n:
                raise OSError(f"{path}: short read at offset {pos}")
            pos += n
    view.release()
    return buf


class _Headers:
    """Byte slices of a file read on demand (pread), for parsing headers without reading the data."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getitem__(self, span: slice) -> bytes:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return os.pread(fd, span.stop - span.start, span.start)
        finally:
            os.close(fd)


class _Fresh:
    """Fresh anonymous memory of a file's size (4 KiB pages) that chunks are read into, each at its
    own file offset, by the thread that then works on it."""

    def __init__(self, path: str) -> None:
        import ctypes

        self.fd = os.open(path, os.O_RDONLY)
        self.view, self._holder = _workers._fresh_buffer(os.fstat(self.fd).st_size, huge=False)
        self.base = ctypes.addressof((ctypes.c_char * len(self.view)).from_buffer(self.view))

    def read(self, offset: int, length: int) -> None:
        _workers._pread_range(self.fd, self.view, offset, offset + length)

    def close(self) -> None:
        os.close(self.fd)


def _tensors(path: str, buf) -> list[tuple]:
    """(name, entry, parsed header) of every tensor, from the file's index and headers."""
    from tensorstream import _core

    index = _core.read_index(_core.FileSource(path))
    out = []
    for e in index.entries:
        header = bytes(buf[e.header_offset:e.data_offset])
        out.append((e.name.decode(), e, _parse_header(header, e.entry_version >= 5,
                                                     index.encrypted)))
    return out


def _ceiling_input(spec: dict) -> tuple[bool, bytearray | None, list[tuple]]:
    """Whether the ceiling works in fresh memory; the whole file in memory (None for a fresh one,
    which reads the data inside its timed region); the tensors, parsed from the file's headers."""
    fresh = spec["kind"].endswith("-fresh")
    buf = None if fresh else _read_file(spec["path"])
    return fresh, buf, _tensors(spec["path"], _Headers(spec["path"]) if fresh else buf)


def _on_threads(work, tasks: list, threads: int) -> list:
    """work(task) for every task, `threads` threads taking the next task from one shared list."""
    import threading

    results, it = [None] * len(tasks), iter(enumerate(tasks))

    def loop():
        for i, task in it:
            results[i] = work(task)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results


def _plaintext_problems(buf: bytearray, tensors: list, expected: dict) -> list[str]:
    import zlib

    view, problems = memoryview(buf), []
    for name, e, _ in tensors:
        want = expected.get(name)
        got = zlib.crc32(view[e.data_offset:e.data_offset + e.data_length])
        if want is None or got != want["crc32"]:
            problems.append(f"{name}: crc32 of the plaintext differs from the reference")
    view.release()
    return problems


def _decrypt_ceiling(spec: dict, threads: int, expected: dict) -> dict:
    import ctypes

    sodium = ctypes.CDLL("libsodium.so.23")
    if sodium.sodium_init() < 0:
        raise RuntimeError("sodium_init failed")
    open_detached = sodium.crypto_secretbox_open_detached
    open_detached.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                              ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_char_p]
    open_detached.restype = ctypes.c_int
    with open(spec["key_file"]) as f:
        key = bytes.fromhex(f.read().strip())
    fresh, buf, tensors = _ceiling_input(spec)
    base = 0 if fresh else ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    tasks = []  # (address, length, MAC, nonce, tensor name), in file order
    for name, e, h in tensors:
        if e.data_length == 0:
            continue
        if h["crypt"] is None:
            return {"check": f"FAIL: {name} has no XSalsa20 crypt-info chunk"}
        chunk, nonce, macs = h["crypt"]
        first = int.from_bytes(nonce, "little")
        for i, pos in enumerate(range(0, e.data_length, chunk)):
            n = ((first + i) % (1 << 192)).to_bytes(24, "little")
            tasks.append((e.data_offset + pos, min(chunk, e.data_length - pos),
                          macs[i] if i < len(macs) else b"\0" * 16, n, name))

    def work(task):
        at, size, mac, n, _ = task
        if fresh:
            mem.read(at, size)
        return open_detached(base + at, base + at, mac, size, n, key)

    if fresh:
        _workers.settle(spec)
    base_rss = _system.status_mib("VmRSS")
    t0 = time.perf_counter()
    if fresh:  # the fresh memory is allocated and first touched inside the timed region
        mem = _Fresh(spec["path"])
        buf, base = mem.view, mem.base
    codes = _on_threads(work, tasks, threads)
    seconds = time.perf_counter() - t0
    if fresh:
        mem.close()
    bad = [t[4] for t, c in zip(tasks, codes) if c != 0]
    problems = ([f"{len(bad)} of {len(tasks)} chunks did not open (first in {bad[0]})"]
                if bad else _plaintext_problems(buf, tensors, expected))
    chunk_mib = tensors[0][2]["crypt"][0] / (1 << 20) if tensors and tensors[0][2]["crypt"] else 0
    return {"seconds": seconds, "base_rss_mib": base_rss,
            "engine": f"{threads} threads, {len(tasks)} chunks of {chunk_mib:g} MiB",
            "check": "FAIL: " + "; ".join(problems[:3]) if problems else "pass"}


def _hash_ceiling(spec: dict, threads: int, expected: dict) -> dict:
    import hashlib
    import zlib

    fresh, buf, tensors = _ceiling_input(spec)
    headers = _Headers(spec["path"]) if fresh else buf
    tasks = []
    for name, e, h in tensors:
        header = bytearray(headers[e.header_offset:e.data_offset])
        stored = {k: bytes(header[p:p + n]) for k, (p, n) in h["hashes"].items()}
        for p, n in h["hashes"].values():
            header[p:p + n] = bytes(n)
        if 0 not in stored or 1 not in stored:
            return {"check": f"FAIL: {name} lacks a CRC32 or SHA-256 hash"}
        tasks.append((bytes(header), e.data_offset, e.data_length,
                      int.from_bytes(stored[0], "little"), stored[1], name))
    tasks.sort(key=lambda t: -t[2])  # largest first: the threads finish together

    def work(task):
        header, at, length, crc, sha, _ = task
        if fresh:
            mem.read(at, length)
        data = view[at:at + length]
        digest = hashlib.sha256(header)
        digest.update(data)
        return zlib.crc32(data, zlib.crc32(header)) == crc and digest.digest() == sha

    base_rss = _system.status_mib("VmRSS")
    single = None
    if not fresh:
        view = memoryview(buf)
        t0 = time.perf_counter()
        _on_threads(work, tasks, 1)  # shows whether the threads below really run in parallel
        single = time.perf_counter() - t0
    if fresh:
        _workers.settle(spec)
    t0 = time.perf_counter()
    if fresh:  # the fresh memory is allocated and first touched inside the timed region
        mem = _Fresh(spec["path"])
        buf = view = mem.view
    oks = _on_threads(work, tasks, threads)
    seconds = time.perf_counter() - t0
    if fresh:
        mem.close()
    bad = [t[5] for t, ok in zip(tasks, oks) if not ok]
    problems = ([f"{len(bad)} of {len(tasks)} tensors do not match their stored hashes "
                 f"(first {bad[0]})"] if bad else _plaintext_problems(buf, tensors, expected))
    tasks.clear()
    return {"seconds": seconds, "single_s": single, "base_rss_mib": base_rss,
            "engine": f"{threads} threads" + (", into fresh memory" if fresh else ""),
            "parallel_x": None if single is None else single / seconds,
            "check": "FAIL: " + "; ".join(problems[:3]) if problems else "pass"}


def ceiling_worker(spec: dict) -> None:
    with open(spec["reference"]) as f:
        expected = json.load(f)["tensors"]
    threads = len(os.sched_getaffinity(0))
    run = _decrypt_ceiling if spec["kind"].startswith("ceiling-decrypt") else _hash_ceiling
    result = run(spec, threads, expected)
    result["peak_rss_mib"] = _system.peak_rss_mib()
    with open(spec["out"], "w") as f:
        json.dump(result, f)


# --------------------------------------------------------------------------------------------
# Parent side


def _path(workdir: str, which: str) -> str:
    return os.path.join(workdir, FILES[which])


def _reusable(workdir: str, size_bytes: int, seed: int) -> dict | None:
    try:
        with open(os.path.join(workdir, REFERENCE)) as f:
            ref = json.load(f)
    except (OSError, ValueError):
        return None
    if (ref.get("size_bytes"), ref.get("seed")) != (size_bytes, seed):
        return None
    if not os.path.exists(os.path.join(workdir, KEY_FILE)):
        return None
    for which in FILES:
        path, known = _path(workdir, which), ref.get("files", {}).get(which)
        if not known or not os.path.exists(path) or os.path.getsize(path) != known["size"]:
            return None
    return ref


def save_all(args, workdir: str, size_bytes: int) -> tuple[list, dict | None]:
    """Generate and save the model plain and encrypted, each in a fresh process; the reference."""
    summaries, tensors, files = [], None, {}
    for which in FILES:
        log(f"save  {which:10} generating {args.size_gib:g} GiB and saving ...")
        spec = {"kind": "save", "format": SAVERS[which], "path": _path(workdir, which),
                "size_bytes": size_bytes, "seed": args.seed, "runs": 1,
                "key_file": os.path.join(workdir, KEY_FILE)}
        res = run_worker(spec, workdir, args.timeout)
        check = res["check"]
        if "tensors" in res:
            if tensors is None:
                tensors = res["tensors"]
            elif tensors != res["tensors"]:
                check = "FAIL: generated tensors differ between processes"
            files[which] = {"name": FILES[which], "size": res["file_size"]}
        seconds = res["seconds"][0] if res.get("seconds") else None
        nbytes = sum(t["nbytes"] for t in (tensors or {}).values())
        summaries.append({"format": which, "check": check, "median_s": seconds,
                          "gbps": nbytes / seconds / 1e9 if seconds else None,
                          "peak_rss_mib": res.get("peak_rss_mib"),
                          "generate_s": res.get("generate_s"), "file_size": res.get("file_size")})
        log(f"save  {which:10} " + (f"{seconds:.3f} s  {summaries[-1]['gbps']:.2f} GB/s  {check}"
                                    if seconds else check))
    if tensors is None or len(files) != len(FILES):
        return summaries, None
    ref = {"size_bytes": size_bytes, "seed": args.seed, "tensors": tensors, "files": files,
           "model_bytes": sum(t["nbytes"] for t in tensors.values())}
    with open(os.path.join(workdir, REFERENCE), "w") as f:
        json.dump(ref, f)
    return summaries, ref


def prepare(args, workdir: str, size_bytes: int) -> tuple[list, dict | None]:
    ref = _reusable(workdir, size_bytes, args.seed) if args.reuse else None
    if ref:
        log(f"reusing the files in {workdir} (no save timings)")
        return [], ref
    for name in [*FILES.values(), KEY_FILE, REFERENCE]:  # never load a stale file
        if os.path.exists(os.path.join(workdir, name)):
            os.unlink(os.path.join(workdir, name))
    saves, ref = save_all(args, workdir, size_bytes)
    os.sync()  # no writeback of the new files while loading
    return saves, ref


def warm_files(workdir: str) -> dict:
    out = {}
    for which in FILES:
        path = _path(workdir, which)
        _system.read_once(path)
        resident = _system.resident_fraction(path)
        out[which] = {"resident": resident}
        warn = "" if resident >= 0.99 else "  WARNING: not all in the page cache"
        log(f"cache {FILES[which]:24} {100 * resident:5.1f}% resident after reading it once{warn}")
    return out


def load_all(args, workdir: str, methods: list[str], ref: dict) -> dict:
    """Warm-up rounds, then timed rounds; every round runs every method once (see round_order)."""
    runs = {m: [] for m in methods}
    warm = {m: [] for m in methods}
    for r in range(args.warmup + args.runs):
        label = "warm-up" if r < args.warmup else f"run {r - args.warmup + 1}/{args.runs}"
        for m in _report.round_order(methods, r):
            spec = {"kind": m if m in CEILINGS else "load", "method": m,
                    "path": _path(workdir, METHODS[m][0]),
                    "reference": os.path.join(workdir, REFERENCE),
                    "key_file": os.path.join(workdir, KEY_FILE), "settle": args.settle}
            t0 = time.perf_counter()
            res = run_worker(spec, workdir, args.timeout)
            wall = time.perf_counter() - t0
            (warm if r < args.warmup else runs)[m].append(res)
            rss = res.get("peak_rss_mib")
            speed = (f"{res['seconds']:7.3f} s {ref['model_bytes'] / res['seconds'] / 1e9:6.2f} "
                     f"GB/s  peak RSS {rss:6.0f} MiB" if "seconds" in res else "")
            par = f" ({res['parallel_x']:.2f}x one thread)" if res.get("parallel_x") else ""
            log(f"load  {label:9} {m:20}{speed}  {res.get('engine') or ''}{par}  {res['check']}"
                f"  ({wall:.1f} s with start-up)")
    return {m: _report.summarize(m, runs[m], warm[m], ref["model_bytes"]) for m in methods}


def _ratio(a: dict, b: dict) -> float | None:
    return a["gbps"] / b["gbps"] if a.get("gbps") and b.get("gbps") else None


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def load_table(loads: dict) -> str:
    rows = []
    for m, s in loads.items():
        ceiling, tz = METHODS[m][1], METHODS[m][2]
        rows.append([m, s["engine"] or "-", _fmt(s["median_s"], ".3f"), _fmt(s["gbps"], ".2f"),
                     ceiling or "-", _fmt(_ratio(s, loads.get(ceiling, {})), ".2f"),
                     _fmt(_ratio(s, loads.get(tz, {})), ".2f"), _fmt(s["peak_rss_mib"], ".0f"),
                     s["check"]])
    header = ["method", "engine / notes", "median s", "GB/s", "ceiling", "vs ceiling",
              "vs tensorizer", "peak RSS MiB", "check"]
    return _report.table(header, rows)


def _target(name: str, ok: bool | None, detail: str) -> dict:
    verdict = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    return {"target": name, "ok": ok, "detail": detail if ok is not None else "not measured",
            "verdict": verdict}


def targets(loads: dict) -> list[dict]:
    """The issue's targets, evaluated on this run."""
    out = []
    for m, share, speedup in (("ts-encrypted", 0.8, 1.5), ("ts-verify", 0.8, 1.0)):
        s, (_, ceiling, tz) = loads.get(m, {}), METHODS[m]
        c, t = loads.get(ceiling, {}), loads.get(tz, {})
        r = _ratio(s, c)
        out.append(_target(f"{m} >= {100 * share:.0f}% of {ceiling}",
                           None if r is None else r >= share,
                           r and f"{100 * r:.0f}% ({s['gbps']:.2f} vs {c['gbps']:.2f} GB/s)"))
        r = _ratio(s, t)
        name = f"{m} >= {speedup:g}x {tz}" if speedup > 1 else f"{m} faster than {tz}"
        out.append(_target(name, None if r is None else (r >= speedup if speedup > 1 else r > 1),
                           r and f"{r:.2f}x ({s['gbps']:.2f} vs {t['gbps']:.2f} GB/s)"))
    return out


def fresh_lines(loads: dict) -> str:
    """Each target row against its fresh-memory ceiling (informative, not a target)."""
    lines = []
    for m, f in FRESH.items():
        r = _ratio(loads.get(m, {}), loads.get(f, {}))
        if r is not None:
            lines.append(f"info     {m} = {100 * r:.0f}% of {f} ({loads[m]['gbps']:.2f} vs "
                         f"{loads[f]['gbps']:.2f} GB/s; reading into new memory included)")
    return "\n".join(lines)


def report(args, info: dict, ts: dict, saves: list, loads: dict, ref: dict, extra: dict) -> int:
    """Print the tables and targets, write --json; the exit status (1: something failed)."""
    results = targets(loads)
    log("")
    if saves:
        rows = [[s["format"], _fmt(s["median_s"], ".3f"), _fmt(s["gbps"], ".2f"),
                 _fmt(s["peak_rss_mib"], ".0f"), s["check"]] for s in saves]
        log(_report.table(["save (tensorstream)", "s", "GB/s", "peak RSS MiB", "check"], rows))
        log("")
    log(load_table(loads) + "\n")
    log(_report.target_lines(results))
    if fresh_lines(loads):
        log(fresh_lines(loads))
    tz = loads.get("tensorizer-encrypted")
    if tz:
        log("compat   tensorizer " + ("reads" if tz["check"] == "pass" else "did NOT read") +
            " tensorstream's encrypted file" + ("" if tz["check"] == "pass" else
                                                 f": {tz['failures'] or tz['check']}"))
    failed = [s for s in saves if s["check"].startswith("FAIL")]
    failed += [s for s in loads.values() if s["check"].startswith("FAIL")]
    for s in failed:
        log(f"FAILED {s.get('method') or s.get('format')}: {s.get('failures') or s['check']}")
    if args.json:
        model = {"bytes": ref["model_bytes"], "tensors": len(ref["tensors"]), "files": ref["files"]}
        out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": info,
               "tensorstream": ts, "params": vars(args), "model": model, "save": saves,
               "load": list(loads.values()), "targets": results, **extra, "ok": not failed}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 1 if failed else 0


def main(args) -> int:
    started = time.perf_counter()
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    size_bytes = int(args.size_gib * GIB)
    info = bench_local.log_machine(workdir)
    log(f"files    {workdir} on {info['workdir_fs']}")
    ts = bench_local.probe_tensorstream()
    if not ts["available"]:
        log("tensorstream is not importable, so there are no files to load: " + ts["why"])
        return 1
    log(f"tensorstream {ts.get('features')}")
    saves, ref = prepare(args, workdir, size_bytes)
    if ref is None:
        for s in saves:
            log(f"FAILED save {s['format']}: {s['check']}")
        return 1
    log(f"model    {len(ref['tensors'])} tensors, {ref['model_bytes'] / GIB:.3f} GiB "
        f"({ref['model_bytes'] / 1e9:.3f} GB of data)")
    cache = warm_files(workdir)
    loads = load_all(args, workdir, [m for m in METHODS if m in args.methods], ref)
    extra = {"page_cache": cache, "size_bytes": size_bytes,
             "loadavg_start": info["loadavg_start"], "loadavg_end": os.getloadavg()[0]}
    status = report(args, info, ts, saves, loads, ref, extra)
    log(f"took     {time.perf_counter() - started:.0f} s in all")
    return status


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0, help="model size (default 1.0)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per method (median; default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument("--workdir", default=os.path.join("bench-out", "integrity"),
                   help="where the files go (default ./bench-out/integrity)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   metavar="METHOD", help="methods: " + " ".join(METHODS))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--reuse", action="store_true",
                   help="reuse the files and key of an earlier run with the same size and seed")
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
        spec = json.loads(args.worker)
        if spec["kind"] in CEILINGS:
            ceiling_worker(spec)
        else:
            import _workers

            _workers.main(spec)
    else:
        sys.exit(main(args))
