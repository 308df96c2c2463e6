"""benchmarks/bench_vllm.py runs end to end at a tiny size, and its token check holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_vllm.py"


def test_bench_vllm_tiny(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(BENCH), "--hidden", "128", "--layers", "1", "--vocab", "512", "--rounds", "1",
           "--workdir", str(tmp_path), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["same_tokens"] is True
    assert set(report["median_start_s"]) == {"safetensors", "tensorstream"}
    assert all(s > 0 for s in report["median_start_s"].values())
