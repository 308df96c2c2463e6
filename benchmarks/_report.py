"""Summaries, tables and target lines for the local benchmark (stdlib only)."""

from __future__ import annotations

import statistics

MIB = 1 << 20
RSS_ALLOWANCE_MIB = 250
REFERENCE = "ts-uring"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """The same table as GitHub markdown (pipes in cells escaped)."""
    cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def round_order(methods: list, r: int) -> list:
    """The order of round r: the methods shuffled with r as the seed, so that no method always
    runs right after the same neighbour (what a process leaves behind can slow the next one)."""
    import random

    order = list(methods)
    random.Random(r).shuffle(order)
    return order


def summarize(name: str, runs: list[dict], warmups: list[dict], nbytes: int) -> dict:
    """One method's counted runs -> median seconds, GB/s, worst peak RSS, overall check."""
    everything = runs + warmups
    failures = [r["check"] for r in everything if r["check"].startswith("FAIL")]
    checks = {r["check"] for r in everything}
    check = "FAIL" if failures else ("skip" if checks == {"skip"} else
                                     "n/a" if checks == {"n/a"} else "pass")
    timed = [r["seconds"] for r in runs if r.get("seconds") is not None]
    median = statistics.median(timed) if timed and not failures else None
    rss = [r["peak_rss_mib"] for r in everything if r.get("peak_rss_mib") is not None]
    notes = sorted({r["engine"] for r in everything if r.get("engine")})
    huge = [r["huge_mib"] for r in runs if r.get("huge_mib") is not None]
    if huge:
        notes.append(f"{statistics.median(huge):.0f} MiB in huge pages")
    return {
        "method": name, "check": check, "failures": failures[:3],
        "median_s": median, "runs_s": timed, "warmup_s": [r.get("seconds") for r in warmups],
        "bytes": nbytes, "gbps": nbytes / median / 1e9 if median else None,
        "peak_rss_mib": max(rss) if rss else None,
        "base_rss_mib": max((r["base_rss_mib"] for r in everything if r.get("base_rss_mib")),
                            default=None),
        "engine": ", ".join(notes),
    }


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def load_table(summaries: list[dict]) -> str:
    ref = next((s["gbps"] for s in summaries if s["method"] == REFERENCE), None)
    rows = []
    for s in summaries:
        ratio = s["gbps"] / ref if ref and s["gbps"] else None
        rows.append([s["method"], s["engine"] or "-", _fmt(s["median_s"], ".3f"),
                     _fmt(s["gbps"], ".2f"), _fmt(ratio, ".2f"), _fmt(s["peak_rss_mib"], ".0f"),
                     _fmt(s["base_rss_mib"], ".0f"), s["check"]])
    header = ["method", "engine / notes", "median s", "GB/s", f"vs {REFERENCE}",
              "peak RSS MiB", "base MiB", "check"]
    return table(header, rows)


def save_table(summaries: list[dict]) -> str:
    ref = next((s["gbps"] for s in summaries if s["format"] == "tensorstream"), None)
    rows = []
    for s in summaries:
        ratio = s["gbps"] / ref if ref and s["gbps"] else None
        rows.append([s["format"], _fmt(s["median_s"], ".3f"), _fmt(s["gbps"], ".2f"),
                     _fmt(ratio, ".2f"), _fmt(s["peak_rss_mib"], ".0f"),
                     _fmt(s["model_rss_mib"], ".0f"), _fmt(s["overhead_mib"], ".0f"),
                     s["check"]])
    header = ["format", "median s", "GB/s", "vs tensorstream", "peak RSS MiB",
              "RSS before MiB", "extra MiB", "check"]
    return table(header, rows)


def _verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "FAIL")


def targets(loads: dict, saves: dict, model_bytes: int) -> list[dict]:
    """The issue's targets, evaluated on this run (informational)."""
    out = []
    tz, cat = loads.get("tensorizer", {}).get("gbps"), loads.get("cat", {}).get("gbps")
    for name in ("ts-uring", "ts-posix"):
        ts = loads.get(name, {})
        gbps, rss = ts.get("gbps"), ts.get("peak_rss_mib")
        if gbps and tz:
            out.append({"target": f"{name} >= 1.5x tensorizer", "ok": gbps >= 1.5 * tz,
                        "detail": f"{gbps / tz:.2f}x ({gbps:.2f} vs {tz:.2f} GB/s)"})
        else:
            out.append({"target": f"{name} >= 1.5x tensorizer", "ok": None,
                        "detail": "not measured"})
        if gbps and cat:
            need = 0.8 * cat
            out.append({"target": f"{name} >= 60% of cat", "ok": gbps >= 0.6 * cat,
                        "detail": f"{100 * gbps / cat:.0f}% of cat ({gbps:.2f} vs {cat:.2f} GB/s);"
                                  f" 80% would be {need:.2f} GB/s, {need - gbps:+.2f} GB/s away"})
        else:
            out.append({"target": f"{name} >= 60% of cat", "ok": None, "detail": "not measured"})
        limit = model_bytes / MIB + RSS_ALLOWANCE_MIB
        out.append({"target": f"{name} peak RSS <= model + {RSS_ALLOWANCE_MIB} MiB",
                    "ok": None if rss is None else rss <= limit,
                    "detail": "not measured" if rss is None else
                    f"{rss:.0f} MiB vs limit {limit:.0f} MiB (model {model_bytes / MIB:.0f} MiB)"})
    ts_save, tz_save = saves.get("tensorstream", {}), saves.get("tensorizer", {})
    a, b = ts_save.get("gbps"), tz_save.get("gbps")
    out.append({"target": "tensorstream save >= tensorizer write_state_dict",
                "ok": None if not (a and b) else a >= b,
                "detail": f"{a:.2f} vs {b:.2f} GB/s" if a and b else "not measured"})
    for t in out:
        t["verdict"] = _verdict(t["ok"])
    return out


def target_lines(results: list[dict]) -> str:
    return "\n".join(f"target {t['verdict']:4}  {t['target']}: {t['detail']}" for t in results)
