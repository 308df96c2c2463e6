"""The concurrency benchmark runs end to end at a tiny size on the file and both links, reports
what the automatic settings chose, and judges them against the fixed ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_concurrency.py"
SMOKE = ["--size-gib", "0.01", "--runs", "1", "--warmup", "0", "--settle", "0", "--depths", "2",
         "--connections", "4", "--cap-mbps", "400"]

pytestmark = pytest.mark.slow


def test_every_medium_and_setting_loads_correct_tensors(tmp_path):
    if not any(p and os.access(p, os.X_OK) for p in (shutil.which("nginx"), "/usr/sbin/nginx")):
        pytest.skip("nginx is not installed (Debian package 'nginx')")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH), "--workdir", str(tmp_path / "work"), "--out-dir", str(out),
                           *SMOKE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "bench_concurrency.json").read_text())
    assert set(report["load"]) == {"local", "loopback", "capped"}
    for medium, rows in report["load"].items():
        names = {r["method"] for r in rows}
        assert names == ({"auto", "fixed-2"} if medium == "local" else {"auto", "auto-2nd", "fixed-4"}), medium
        for r in rows:
            assert r["check"] == "pass" and r["gbps"] > 0, (medium, r)
            if medium != "local":
                assert "in flight" in r["engine"], r  # the level the host ran at is reported
    assert {(t["medium"], t["row"]) for t in report["targets"]} == {
        ("local", "auto"), ("loopback", "auto"), ("loopback", "auto-2nd"), ("capped", "auto"), ("capped", "auto-2nd")}
    assert report["medium"]["kind"] == "cached" and report["medium"]["queue_depth"] == 2
    assert "| auto |" in (out / "bench_concurrency.md").read_text().replace("  ", " ")
