"""bench_repeat.py at a tiny size: every method loads the right bytes, and the counts it reports
(ring slots allocated, loads timed) are the process's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_repeat.py"


def test_repeated_loads_pin_the_ring_once_and_report_each_method(tmp_path):
    out = tmp_path / "repeat.json"
    methods = "ts,ts-ring-nopool,ts-copy,ts-lazy" + (",tensorizer" if _has("tensorizer") else "")
    cmd = [sys.executable, str(BENCH), "--tensors", "40", "--size-mb", "2", "--loads", "4", "--runs", "1",
           "--methods", methods, "--workdir", str(tmp_path / "work"), "--json", str(out)]
    env = dict(os.environ, TENSORSTREAM_RING_MB="4")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for name in methods.split(","):
        m = report["methods"][name]
        assert "error" not in m, (name, m)
        assert m["later_median_s"] > 0 and m["first_s"] > 0
        run = report["runs"][name][0]
        assert len(run["times"]) == 4 and run["bytes"] == report["bytes"]
    # 2 MB in slots of 1 MiB: the slots it fills are allocated once with the pool, once per load
    # without it.
    slots = report["methods"]["ts"]["ring_allocations"]
    assert 2 <= slots <= 4 and report["methods"]["ts-ring-nopool"]["ring_allocations"] == 4 * slots
    assert "vs ts-ring-nopool" in proc.stdout


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("flag", ["--http"])
def test_over_http(tmp_path, flag):
    import shutil

    if not any(p and os.access(p, os.X_OK) for p in (shutil.which("nginx"), "/usr/sbin/nginx")):
        pytest.skip("nginx is not installed")
    out = tmp_path / "repeat.json"
    cmd = [sys.executable, str(BENCH), "--tensors", "20", "--size-mb", "1", "--loads", "3", "--runs", "1",
           "--methods", "ts,ts-lazy", flag, "--workdir", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert all("error" not in m for m in report["methods"].values()), report["methods"]
    assert "curl to /dev/null" in proc.stdout
