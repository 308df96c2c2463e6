"""Tables, ratios and targets of bench_fleet.py, printed and written as JSON and markdown."""

from __future__ import annotations

import json
import os
import time

import _report
from bench_local import log

BYTES_LIMIT = 1.05  # cooperative and cache: the server sends the file once, plus a little
SOONER = 2.0  # cooperative: all processes hold the model at least 2x sooner than independent
WARM_SLACK = 1.10  # a warm cache entry within 10% of a plain local load

NOTES = [
    "time: from the go signal until the slowest process holds every tensor with every 4 KiB page "
    "touched (each process then checks its tensors against the reference checksums)",
    "group setup (gloo init_process_group over TCP and a barrier) happens before the go signal and "
    "is NOT counted in the time; its column shows it, and the cooperative target line gives the "
    "ratio with it added",
    "server sent: the sum of $body_bytes_sent (response bodies, headers left out) over nginx's "
    "access log lines written during the run, as a multiple of the size of the file the mode reads",
    "tensorizer reads the tensorstream file (the two libraries write byte-identical files)",
    "runai-dist: the Run:ai model streamer's distributed mode (each rank streams a share, the group "
    "broadcasts); it runs on a gloo group on the CPU only with RUNAI_STREAMER_DIST=1, reading "
    "s3://bench/model.safetensors from nginx as a path-style endpoint (AWS_ENDPOINT_URL)",
]


def _indep(loads: dict) -> float | None:
    return loads.get("independent", {}).get("median_s")


def rows(loads: dict) -> tuple[list[str], list[list[str]]]:
    f, base = _report._fmt, _indep(loads)
    header = ["mode", "procs", "all hold it, s", "x sooner than independent", "server sent (x file)",
              "max x", "requests", "group setup s", "peak RSS MiB (worst proc)", "notes", "check"]
    out = []
    for s in loads.values():
        ratio = base / s["median_s"] if base and s["median_s"] else None
        out.append([s["mode"], s["procs"], f(s["median_s"], ".3f"), f(ratio, ".2f"), f(s["server_x"], ".3f"),
                    f(s["server_x_max"], ".3f"), f(s["requests"], ".0f"), f(s["group_s"], ".2f"),
                    f(s["peak_rss_mib"], ".0f"), s["engine"] or "-", s["check"]])
    return header, out


def _line(target: str, ok: bool | None, detail: str) -> dict:
    return {"target": target, "ok": ok, "detail": detail, "verdict": _report._verdict(ok)}


def _bytes_target(loads: dict, mode: str, what: str) -> dict:
    goal = f"{mode}: {what} (server sent <= {BYTES_LIMIT:.2f}x the file in every run)"
    s = loads.get(mode)
    if not s or s["check"] != "pass":
        return _line(goal, None, "not measured" if not s else "its runs failed")
    return _line(goal, s["server_x_max"] <= BYTES_LIMIT,
                 f"{s['server_x_max']:.3f}x at most ({s['server_x']:.3f}x median) over {len(s['runs'])} run(s)")


def targets(loads: dict) -> list[dict]:
    out = [_bytes_target(loads, "cooperative", "the group pulls the file once")]
    coop, base = loads.get("cooperative", {}), _indep(loads)
    goal = f"cooperative: every process holds the model >= {SOONER:g}x sooner than independent"
    if coop.get("median_s") and base:
        with_setup = base / (coop["median_s"] + (coop["group_s"] or 0))
        out.append(_line(goal, base / coop["median_s"] >= SOONER,
                         f"{base / coop['median_s']:.2f}x ({coop['median_s']:.3f} vs {base:.3f} s); "
                         f"{with_setup:.2f}x with the group setup counted"))
    else:
        out.append(_line(goal, None, "not measured"))
    out.append(_bytes_target(loads, "cache", "concurrent cold processes pull the file once"))
    warm, local = loads.get("cache-warm", {}).get("median_s"), loads.get("local", {}).get("median_s")
    goal = f"cache-warm within {100 * (WARM_SLACK - 1):.0f}% of local"
    out.append(_line(goal, warm <= WARM_SLACK * local, f"{warm / local:.2f}x local's time ({warm:.3f} vs "
                     f"{local:.3f} s)") if warm and local else _line(goal, None, "not measured"))
    return out


def ratios(loads: dict) -> list[dict]:
    """How much sooner each mode has the model everywhere than independent, and the pairs asked for."""
    pairs = [(m, "independent") for m in loads if m != "independent"]
    pairs += [("cooperative", "runai-dist"), ("cooperative", "tensorizer"), ("cache", "cooperative")]
    out = []
    for a, b in pairs:
        ta, tb = loads.get(a, {}).get("median_s"), loads.get(b, {}).get("median_s")
        if a in loads and b in loads:
            out.append({"mode": a, "vs": b, "sooner": tb / ta if ta and tb else None,
                        "detail": f"{tb / ta:.2f}x sooner ({ta:.3f} vs {tb:.3f} s)" if ta and tb else "not measured"})
    return out


def report(args, info: dict, ref: dict, loads: dict, seconds: float) -> int:
    header, table_rows = rows(loads)
    results, compared = targets(loads), ratios(loads)
    cap = f"every response capped at {args.cap_mbps:g} MB/s" if args.cap_mbps else "no cap"
    title = (f"{args.procs} processes, model {ref['model_bytes'] / 1e9:.3f} GB, nginx on loopback, {cap}; "
             f"medians of {args.runs} run(s)")
    log("\n" + title)
    log(_report.table(header, table_rows) + "\n")
    for note in NOTES:
        log("note   " + note)
    for r in compared:
        log(f"ratio  {r['mode']} vs {r['vs']}: {r['detail']}")
    log(_report.target_lines(results))
    failed = [s for s in loads.values() if s["check"] != "pass"]
    for s in failed:
        log(f"FAILED {s['mode']}: {s['failures']}")
    out_dir = os.path.abspath(args.out_dir or args.workdir)
    os.makedirs(out_dir, exist_ok=True)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": info, "params": vars(args),
           "model": {"bytes": ref["model_bytes"], "tensors": len(ref["tensors"]), "files": ref["files"]},
           "modes": list(loads.values()), "targets": results, "ratios": compared, "notes": NOTES,
           "seconds": seconds, "loadavg_end": os.getloadavg()[0], "ok": not failed}
    with open(os.path.join(out_dir, "bench_fleet.json"), "w") as f:
        json.dump(doc, f, indent=2)
    with open(os.path.join(out_dir, "bench_fleet.md"), "w") as f:
        f.write(f"**{title}**\n\n" + _report.markdown_table(header, table_rows) + "\n\n")
        f.write("\n".join(f"- {n}" for n in NOTES) + "\n\n")
        f.write("\n".join(f"- ratio: {r['mode']} vs {r['vs']}: {r['detail']}" for r in compared) + "\n\n")
        f.write("\n".join(f"- target {t['verdict']}: {t['target']}: {t['detail']}" for t in results) + "\n")
    log(f"results  {out_dir}/bench_fleet.json and .md ({seconds:.0f} s of loading)")
    return 1 if failed else 0
