"""bench_lazy.py at a tiny size: the same tensors through every method, and nginx's own count of
the requests and connections each load made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_lazy.py"


def test_lazy_reads_are_counted_by_the_server(tmp_path):
    if not any(p and os.access(p, os.X_OK) for p in (shutil.which("nginx"), "/usr/sbin/nginx")):
        pytest.skip("nginx is not installed (Debian package 'nginx')")
    out = tmp_path / "lazy.json"
    cmd = [sys.executable, str(BENCH), "--tensors", "40", "--size-mb", "2", "--reads", "8", "--runs", "1",
           "--workdir", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    ts = report["methods"]["tensorstream"]
    assert "error" not in ts, ts
    # the probe, the index, then one request per tensor read (its header and data together)
    assert ts["requests"] == 2 + 8 and ts["connections"] == 1
    for name, m in report["methods"].items():
        assert "error" not in m, (name, m)
    assert report["ceiling_s"] > 0
