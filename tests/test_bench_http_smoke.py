"""The HTTP and S3 benchmark runs end to end at a tiny size, and its checks catch wrong data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_http.py"
LOADERS = ["ts-http", "ts-http-c4", "tensorizer", "ts-s3", "tensorizer-s3", "runai", "runai-c4"]
CEILINGS = {"loopback": ["curl-1", "curl-4r"], "capped": ["curl-4r"]}
# A tiny model, one run, one connection variant per library, a cap high enough to finish in moments.
SMOKE = ["--size-gib", "0.02", "--runs", "1", "--warmup", "0", "--settle", "0", "--connections", "4",
         "--s3-connections", "--runai-concurrency", "4", "--curl-ranges", "4", "--cap-mbps", "400"]

pytestmark = pytest.mark.slow


def _nginx_installed() -> bool:
    return any(p and os.access(p, os.X_OK) for p in (shutil.which("nginx"), "/usr/sbin/nginx"))


def _bench(workdir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    if not _nginx_installed():
        pytest.skip("nginx is not installed (Debian package 'nginx')")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = workdir / "result.json"
    cmd = [sys.executable, str(BENCH), "--workdir", str(workdir), "--json", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench-http")
    proc, report = _bench(workdir, *SMOKE)
    return workdir, proc, report


def test_every_method_loads_correct_tensors_on_both_links(smoke):
    _, proc, report = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert report["ok"] is True
    assert set(report["load"]) == {"loopback", "capped"}
    for link, summaries in report["load"].items():
        loads = {s["method"]: s for s in summaries}
        assert sorted(loads) == sorted(LOADERS + CEILINGS[link]), link
        for name, s in loads.items():
            assert s["check"] == "pass", (link, name, s)
            assert s["median_s"] > 0 and s["gbps"] > 0, (link, name, s)
            if name in LOADERS:
                assert s["peak_rss_mib"] > s["bytes"] / 2**20, (link, name, s)
        assert loads["ts-http"]["engine"].startswith("http, auto (")  # the default: ramped per host
        assert loads["ts-http-c4"]["engine"] == "http, 4 connections"
        assert loads["ts-s3"]["engine"].startswith("http, auto (")
        assert loads["tensorizer"]["engine"].endswith("readers")
        assert loads["tensorizer-s3"]["engine"].endswith("readers")
        assert loads["runai"]["engine"] == "concurrency default"
        assert loads["runai-c4"]["engine"] == "concurrency 4"
    assert report["tensors_files"] == {"identical": True, "first_difference": None}
    assert report["model"]["files"]["safetensors"]["size"] > report["model"]["bytes"]


def test_ceilings_and_targets_are_reported(smoke):
    _, proc, report = smoke
    capped = {s["method"]: s for s in report["load"]["capped"]}
    best = report["best_curl_gbps"]
    curls = [s["gbps"] for s in report["load"]["loopback"] if s["method"].startswith("curl")]
    assert best == max(curls)
    assert capped["curl-4r"]["ceiling_gbps"] == pytest.approx(min(4 * 0.4, best))
    assert capped["ts-http"]["ceiling_gbps"] == pytest.approx(min(16 * 0.4, best))
    assert capped["ts-s3"]["ceiling_gbps"] == pytest.approx(min(16 * 0.4, best))
    readers = int(capped["tensorizer-s3"]["engine"].split()[0])
    assert capped["tensorizer-s3"]["ceiling_gbps"] == pytest.approx(min(readers * 0.4, best))
    assert capped["runai"]["ceiling_gbps"] is None  # its client picks its own connections
    verdicts = {t["target"]: t["verdict"] for t in report["targets"]}
    assert verdicts["ts-http peak RSS <= model + 250 MiB"] in ("PASS", "FAIL")
    assert verdicts["ts-s3 peak RSS <= model + 250 MiB"] in ("PASS", "FAIL")
    assert verdicts["ts-http capped >= 10x tensorizer"] in ("PASS", "FAIL")
    assert verdicts["ts-s3 capped >= 10x tensorizer-s3"] in ("PASS", "FAIL")
    runai = "ts-s3 capped >= the Run:ai model streamer at its best concurrency"
    assert verdicts[runai] in ("PASS", "FAIL")
    assert "target " in proc.stdout and "% of ceiling" in proc.stdout
    assert "not measured" not in proc.stdout


def test_ts_s3_is_compared_with_tensorizer_runai_and_its_ceiling(smoke):
    _, proc, report = smoke
    ratios = {(r["link"], r["vs"].split(" (")[0]): r for r in report["ratios"]}
    assert set(ratios) == {(link, vs) for link in ("loopback", "capped")
                           for vs in ("tensorizer-s3", "Run:ai best", "its ceiling")}
    for link in ("loopback", "capped"):
        loads = {s["method"]: s for s in report["load"][link]}
        ts = loads["ts-s3"]["gbps"]
        best = max(loads["runai"]["gbps"], loads["runai-c4"]["gbps"])
        assert ratios[link, "tensorizer-s3"]["ratio"] == pytest.approx(
            ts / loads["tensorizer-s3"]["gbps"])
        assert ratios[link, "Run:ai best"]["ratio"] == pytest.approx(ts / best)
        assert ratios[link, "its ceiling"]["ratio"] == pytest.approx(
            ts / loads["ts-s3"]["ceiling_gbps"])
        assert f"ratio        {link:8} ts-s3 / tensorizer-s3: " in proc.stdout


def test_a_corrupted_file_fails_the_run(smoke, tmp_path):
    workdir, proc, _ = smoke
    assert proc.returncode == 0
    files = ("model.tensorstream.tensors", "model.tensorizer.tensors", "model.safetensors")
    for name in ("reference.json", *files):
        shutil.copy(workdir / name, tmp_path / name)
    for name in files:
        victim = tmp_path / name
        with open(victim, "r+b") as f:  # one bit of the last tensor's data
            f.seek(os.path.getsize(victim) - 4096)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x01]))
    proc, report = _bench(tmp_path, "--reuse", "--size-gib", "0.02", "--runs", "1", "--warmup", "0",
                          "--connections", "--s3-connections", "--runai-concurrency",
                          "--curl-ranges", "--cap-mbps", "0")
    assert "reusing the files" in proc.stdout
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    loads = {s["method"]: s for s in report["load"]["loopback"]}
    assert sorted(loads) == ["curl-1", "runai", "tensorizer", "tensorizer-s3", "ts-http", "ts-s3"]
    for name in ("tensorizer", "tensorizer-s3", "runai"):
        assert loads[name]["check"] == "FAIL" and "crc32" in loads[name]["failures"][0], name
    assert loads["ts-http"]["check"] == "FAIL"
    assert loads["ts-s3"]["check"] == "FAIL"
    assert "FAILED loopback runai: " in proc.stdout
    assert loads["curl-1"]["check"] == "pass"  # curl counts bytes; it cannot see a flipped bit
