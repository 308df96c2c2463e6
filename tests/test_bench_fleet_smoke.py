"""The fleet benchmark runs every mode end to end at a tiny size with two processes: every load
passes its checks, the server's bytes are counted per run, and the JSON has the targets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tensorstream

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fleet.py"
PACKAGE_ROOT = str(Path(tensorstream.__file__).resolve().parents[1])
MODES = ["independent", "cooperative", "cache", "cache-warm", "local", "tensorizer", "runai-dist", "runai"]

pytestmark = pytest.mark.slow


def test_every_mode_loads_correct_tensors_and_counts_the_servers_bytes(tmp_path):
    if not any(p and os.access(p, os.X_OK) for p in (shutil.which("nginx"), "/usr/sbin/nginx")):
        pytest.skip("nginx is not installed (Debian package 'nginx')")
    pytest.importorskip("runai_model_streamer")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(BENCH), "--procs", "2", "--size-gib", "0.01", "--runs", "1", "--settle", "0",
           "--cap-mbps", "400", "--modes", ",".join(MODES), "--workdir", str(tmp_path / "work"), "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "bench_fleet.json").read_text())
    modes = {m["mode"]: m for m in report["modes"]}
    assert list(modes) == MODES and report["ok"]
    for name, m in modes.items():
        assert m["check"] == "pass" and m["median_s"] > 0, (name, m)
        assert m["procs"] == (1 if name in ("cache-warm", "local") else 2), name
        run = m["runs"][0]
        assert len(run["process_s"]) == m["procs"] and all(x > 0 for x in run["peak_rss_mib"]), (name, run)
        assert max(run["process_s"]) <= run["seconds"], (name, run)  # go -> the slowest holds the model
    # The access log's bytes: each independent process pulls the whole file, the cache and the
    # group pull it once, a local load and a warm entry pull nothing (a warm entry: one probe).
    assert 1.99 <= modes["independent"]["server_x"] <= 2.1
    assert 1.99 <= modes["runai"]["server_x"]
    for name in ("cooperative", "cache", "runai-dist"):
        assert 0.99 <= modes[name]["server_x"] <= 1.1, (name, modes[name]["server_x"])
    assert modes["local"]["requests"] == 0 and modes["cache-warm"]["server_x"] < 0.01
    assert modes["cooperative"]["group_s"] > 0 and modes["runai-dist"]["group_s"] > 0
    assert modes["runai-dist"]["engine"] == "distributed"
    assert [t["target"].split(":")[0] for t in report["targets"]] == [
        "cooperative", "cooperative", "cache", "cache-warm within 10% of local"]
    assert all(t["verdict"] in ("PASS", "FAIL") for t in report["targets"])
    assert "| cooperative | 2 |" in (out / "bench_fleet.md").read_text()
