"""The local benchmark runs end to end at a tiny size, and its checks catch wrong data."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
BENCH = BENCH_DIR / "bench_local.py"
ALL_METHODS = ["ts-uring", "ts-posix", "ts-reload", "ts-mmap", "tensorizer", "safetensors", "torch.load",
               "torch.load-mmap", "cat", "copy-4k", "copy-thp"]
SIZE = ["--size-gib", "0.02", "--settle", "0"]


def _bench(workdir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = workdir / "result.json"
    cmd = [sys.executable, str(BENCH), *SIZE, "--workdir", str(workdir), "--json", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    proc, report = _bench(workdir, "--runs", "1")
    return workdir, proc, report


@pytest.mark.slow
def test_every_method_loads_correct_tensors(smoke):
    _, proc, report = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert report["ok"] is True
    loads = {s["method"]: s for s in report["load"]}
    assert sorted(loads) == sorted(ALL_METHODS)
    for name, s in loads.items():
        assert s["check"] == ("n/a" if name == "cat" else "pass"), (name, s)
        assert s["median_s"] > 0 and s["gbps"] > 0, (name, s)
        if name != "cat":
            assert s["peak_rss_mib"] > s["bytes"] / 2**20, (name, s)
    formats = {s["format"] for s in report["save"]}
    assert formats == {"tensorstream", "tensorizer", "safetensors", "torch"}
    assert all(s["check"] == "pass" and s["gbps"] > 0 for s in report["save"]), report["save"]
    assert loads["ts-posix"]["engine"] == "posix"
    assert loads["ts-uring"]["engine"] in ("io_uring", "posix")
    assert "target " in proc.stdout and "median s" in proc.stdout


@pytest.mark.slow
def test_tensorstream_and_tensorizer_write_the_same_bytes(smoke):
    _, _, report = smoke
    assert report["tensors_files"] == {"identical": True, "first_difference": None}


@pytest.mark.slow
def test_a_corrupted_file_fails_the_run(smoke, tmp_path):
    workdir, proc, _ = smoke
    assert proc.returncode == 0
    for name in ("reference.json", "model.tensorstream.tensors", "model.tensorizer.tensors",
                 "model.safetensors"):
        shutil.copy(workdir / name, tmp_path / name)
    victim = tmp_path / "model.safetensors"
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) - 4096)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    proc, report = _bench(tmp_path, "--reuse", "--runs", "1", "--warmup", "0",
                          "--methods", "safetensors", "copy-4k")
    assert "reusing the files" in proc.stdout
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    loads = {s["method"]: s for s in report["load"]}
    assert loads["safetensors"]["check"] == "FAIL"
    assert "crc32" in loads["safetensors"]["failures"][0]
    assert loads["copy-4k"]["check"] == "pass"


def _model_module():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import _model
    finally:
        sys.path.remove(str(BENCH_DIR))
    return _model


def test_synthetic_model_has_the_requested_size_and_mixed_dtypes():
    _model = _model_module()
    for size in (20 << 20, 2 << 30):
        layout = _model.layout(size)
        total = sum(2 * math.prod(shape) for _, shape, _ in layout)
        assert abs(total - size) / size < 0.01, (size, total)
        assert len(layout) >= 200
        dtypes = [d for *_, d in layout]
        assert dtypes.count("float16") > 50 and dtypes.count("bfloat16") > 50


def test_synthetic_model_is_deterministic_finite_and_distinct():
    import torch

    _model = _model_module()
    a = _model.checksums(_model.generate(4 << 20, seed=7))
    sd = _model.generate(4 << 20, seed=7)
    assert _model.compare(a, _model.checksums(sd)) == []
    assert len({v["crc32"] for v in a.values()}) == len(a)
    other = _model.checksums(_model.generate(4 << 20, seed=8))
    assert len(_model.compare(a, other)) == len(a)
    for t in sd.values():
        assert torch.isfinite(t.float()).all()
        assert t.float().abs().max() < 2
    assert _model.touch_pages(sd.values()) == sum(v["touch"] for v in a.values())
