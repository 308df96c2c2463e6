"""The GPU benchmark runs end to end on the CPU (--cpu-dry-run), and its check catches wrong bytes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
BENCH = BENCH_DIR / "bench_gpu.py"


def _bench_module():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(BENCH_DIR))
    return bench_gpu


@pytest.mark.slow
def test_dry_run_loads_every_method_and_writes_its_results(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH), "--cpu-dry-run", "--size-gib", "0.01", "--runs", "1", "--ring-mb", "2",
           "--ring-sweep", "1", "--variant", "one:TENSORSTREAM_RING_LANES=1", "--workdir", str(tmp_path / "work"), "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "bench_gpu.json").read_text())
    assert report["ok"] and report["dry_run"]
    loads = {s["method"]: s for s in report["loads"]}
    optional = [m for m, module in _bench_module().OPTIONAL.items() if importlib.util.find_spec(module)]
    assert sorted(loads) == sorted(["tensorstream", "ts-ring-1M", "ts-one", "ts-st", "ts-read", "tensorizer",
                                    "safetensors", "torch.load", "ceiling", *optional])
    for name, s in loads.items():
        assert s["check"] == ("n/a" if name in ("ts-read", "ceiling") else "pass"), (name, s)
        assert s["gbps"] > 0, (name, s)
    assert loads["tensorstream"]["notes"]["ring_bytes"] == 2 << 20
    assert loads["tensorstream"]["notes"]["turns"] >= 5  # the model went through the small ring
    assert len(report["targets"]) == 9
    st = next(t for t in report["targets"] if t["target"].startswith("ts-st (safetensors)"))
    assert st["detail"] != "not measured"  # the safetensors file went through the ring too
    text = (out / "bench_gpu.txt").read_text()
    assert "ceiling" in text and "target" in text


def test_fingerprints_are_exact_and_order_sensitive():
    bench = _bench_module()
    t = torch.arange(3000, dtype=torch.int16).view(torch.bfloat16)
    ref = {"t": {"dtype": "bfloat16", "shape": [3000], "fp": bench.fingerprint(t)}}
    assert bench.compare(ref, {"t": t.clone()}) == "pass"
    swapped = t.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert bench.fingerprint(swapped)[0] == ref["t"]["fp"][0]  # same bytes, other order
    assert bench.compare(ref, {"t": swapped}).startswith("FAIL")
    assert bench.compare(ref, {"t": t.view(torch.float16)}).startswith("FAIL")
    assert bench.compare(ref, {}).startswith("FAIL")
