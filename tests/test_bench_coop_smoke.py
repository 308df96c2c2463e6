"""The load-across-ranks benchmark runs end to end at a tiny size with two ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tensorstream

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_coop.py"
PACKAGE_ROOT = str(Path(tensorstream.__file__).resolve().parents[1])

pytestmark = pytest.mark.slow


def test_coop_and_alone_load_the_same_tensors(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(BENCH), "--ranks", "2", "--make-mb", "2", "--batch-mb", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and [r["method"] for r in report["rows"]] == ["coop", "alone"]
    coop, alone = report["rows"]
    assert alone["bytes_read"] == 2 * coop["bytes_read"]  # alone, each rank read everything
