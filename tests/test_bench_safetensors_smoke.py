"""The safetensors benchmark runs end to end at a tiny size, and its checks catch wrong data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
BENCH = BENCH_DIR / "bench_safetensors.py"
LOCAL = ["ts-st", "ts-st-zc", "ts-tensors", "safetensors", "safetensors-lazy", "runai", "cat"]
REMOTE = ["ts-http-st", "ts-http-tensors", "ts-s3-st", "runai-c4", "runai-c8", "curl-4r"]
# A few MB in 2 MiB shards, one run, no settling, two Run:ai concurrencies, a cap high enough to
# finish in moments.
SMOKE = ["--size-gib", "0.01", "--shard-mib", "2", "--runs", "1", "--settle", "0",
         "--runai-concurrency", "4", "8", "--curl-ranges", "4", "--cap-mbps", "400"]


def _bench(workdir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    if not any(p and os.access(p, os.X_OK) for p in (shutil.which("nginx"), "/usr/sbin/nginx")):
        pytest.skip("nginx is not installed (Debian package 'nginx')")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = workdir / "results"
    cmd = [sys.executable, str(BENCH), "--workdir", str(workdir), "--out-dir", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    path = out / "bench_safetensors.json"
    return proc, json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench-st")
    proc, report = _bench(workdir, *SMOKE)
    return workdir, proc, report


def _by_name(report: dict, part: str) -> dict:
    return {s["method"]: s for s in report["load"][part]}


@pytest.mark.slow
def test_every_part_loads_correct_tensors(smoke):
    workdir, proc, report = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert report["ok"] is True
    assert list(report["load"]) == ["local-warm", "local-cold", "http", "capped"]
    for part in report["load"]:
        loads = _by_name(report, part)
        assert sorted(loads) == sorted(LOCAL if part.startswith("local") else REMOTE), part
        for name, s in loads.items():
            assert s["check"] == ("n/a" if name == "cat" else "pass"), (part, name, s)
            assert s["median_s"] > 0 and s["gbps"] > 0, (part, name, s)
            if name not in ("cat", "curl-4r"):
                assert s["peak_rss_mib"] > s["bytes"] / 2**20, (part, name, s)
    local = _by_name(report, "local-warm")
    assert local["ts-st"]["engine"] in ("io_uring", "posix")
    assert local["ts-st-zc"]["engine"] == "mmap"  # zero_copy applies to safetensors shards
    remote = _by_name(report, "http")
    assert remote["ts-http-st"]["engine"].startswith("http, auto (")
    assert remote["ts-s3-st"]["engine"].startswith("http, auto (")
    assert remote["runai-c4"]["engine"] == "concurrency 4"


@pytest.mark.slow
def test_the_checkpoint_is_sharded_with_mixed_dtypes_and_an_index(smoke):
    workdir, _, report = smoke
    model = report["model"]
    assert len(model["shards"]) > 1
    assert model["dtypes"] == ["bfloat16", "float16", "float32"]
    index = json.loads((workdir / "ckpt" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == model["shards"]
    assert len(index["weight_map"]) == model["tensors"]
    assert index["metadata"]["total_size"] == model["bytes"]
    for shard in model["shards"]:
        size = (workdir / "ckpt" / shard).stat().st_size
        assert size < (2 << 20) + (64 << 10), shard  # 2 MiB of tensors and a header at most


@pytest.mark.slow
def test_cold_runs_start_from_an_evicted_page_cache(smoke):
    _, proc, report = smoke
    evicted = report["page_cache"]["local-cold"]["resident_after_eviction"]
    assert len(evicted) == len(LOCAL)  # checked before every cold run
    if max(evicted) > 0.01:
        assert "eviction is not effective on this machine" in proc.stdout
    else:
        assert "eviction is not effective" not in proc.stdout
    assert report["page_cache"]["local-warm"]["resident_before"] >= 0.99
    assert "eviction: at most" in proc.stdout and "cold cat" in proc.stdout


@pytest.mark.slow
def test_ratios_targets_and_the_markdown_are_reported(smoke):
    workdir, proc, report = smoke
    targets = {t["target"]: t for t in report["targets"]}
    for part, st, tn in (("local-warm", "ts-st", "ts-tensors"), ("local-cold", "ts-st", "ts-tensors"),
                         ("http", "ts-http-st", "ts-http-tensors"),
                         ("capped", "ts-http-st", "ts-http-tensors")):
        line = targets[f"{part}: {st} >= 95% of {tn} (same tensors)"]
        loads = _by_name(report, part)
        assert line["ratio"] == pytest.approx(loads[st]["gbps"] / loads[tn]["gbps"])
        assert line["verdict"] in ("PASS", "FAIL")
    cold = targets["local-cold: ts-st >= 1.5x safetensors (mmap + touch)"]
    loads = _by_name(report, "local-cold")
    assert cold["ratio"] == pytest.approx(loads["ts-st"]["gbps"] / loads["safetensors"]["gbps"])
    assert targets["local-warm: ts-st-zc >= 1x safetensors (mmap + touch)"]["verdict"] != "SKIP"
    for part in ("http", "capped"):
        loads = _by_name(report, part)
        best = max(("runai-c4", "runai-c8"), key=lambda n: loads[n]["gbps"])
        line = targets[f"{part}: ts-s3-st >= 2x Run:ai at its best concurrency"]
        assert line["ratio"] == pytest.approx(loads["ts-s3-st"]["gbps"] / loads[best]["gbps"])
        assert report["page_cache"][part]["best_runai"] in ("runai-c4", "runai-c8")
        assert loads["curl-4r"]["of_ceiling"] == pytest.approx(1.0)
    assert targets["ts-st peak RSS <= model + 250 MiB"]["verdict"] in ("PASS", "FAIL")
    assert "SKIP" not in {t["verdict"] for t in report["targets"]}
    text = (workdir / "results" / "bench_safetensors.md").read_text()
    assert "| ts-st | " in text and "## Targets" in text and "| ts-s3-st | " in text
    assert "target " in proc.stdout and "% of ceiling" in proc.stdout


@pytest.mark.slow
def test_a_corrupted_shard_fails_the_run(smoke, tmp_path):
    workdir, proc, report = smoke
    assert proc.returncode == 0
    shutil.copytree(workdir / "ckpt", tmp_path / "ckpt")
    for name in ("reference.json", "model.tensorstream.tensors"):
        shutil.copy(workdir / name, tmp_path / name)
    victim = tmp_path / "ckpt" / report["model"]["shards"][-1]
    with open(victim, "r+b") as f:  # one bit of the last tensor's data
        f.seek(os.path.getsize(victim) - 4096)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    proc, report = _bench(tmp_path, "--reuse", "--only", "local-warm", *SMOKE)
    assert "reusing the files" in proc.stdout
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert report["ok"] is False and list(report["load"]) == ["local-warm"]
    loads = _by_name(report, "local-warm")
    for name in ("ts-st", "ts-st-zc", "safetensors", "safetensors-lazy", "runai"):
        assert loads[name]["check"] == "FAIL" and "crc32" in loads[name]["failures"][0], name
    assert loads["ts-tensors"]["check"] == "pass"  # the .tensors file is intact
    assert "FAILED local-warm ts-st: " in proc.stdout


def _modules():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import _workers
        import bench_safetensors
    finally:
        sys.path.remove(str(BENCH_DIR))
    return bench_safetensors, _workers


def test_parts_are_chosen_by_name_in_a_fixed_order():
    bench, _ = _modules()
    assert bench.parse_args(["--only", "capped,local-cold"]).only == ["local-cold", "capped"]
    assert bench.parse_args([]).only == list(bench.PARTS)
    for bad in (["--only", "local-warm,disk"], ["--only", ","], ["--runs", "0"],
                ["--runai-concurrency", "0"], ["--only", "capped", "--cap-mbps", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_shards_hold_at_most_the_limit_and_keep_the_order():
    import torch

    _, workers = _modules()
    sd = {f"t{i}": torch.zeros(n, dtype=torch.float16) for i, n in enumerate([100, 300, 50, 600, 10])}
    groups = workers._shard_groups(sd, 800)  # bytes: 200, 600, 100, 1200, 20
    assert groups == [["t0", "t1"], ["t2"], ["t3"], ["t4"]]
    assert [n for g in groups for n in g] == list(sd)


def test_the_mixed_model_has_the_requested_size_and_finite_float32_tensors():
    import math

    import torch

    sys.path.insert(0, str(BENCH_DIR))
    try:
        import _model
    finally:
        sys.path.remove(str(BENCH_DIR))
    for size in (8 << 20, 2 << 30):
        layout = _model.layout(size, fp32=True)
        total = sum(math.prod(shape) * _model.ITEMSIZE[d] for _, shape, d in layout)
        assert abs(total - size) / size < 0.01, (size, total)
    sd = _model.generate(8 << 20, seed=3, fp32=True)
    wide = [t for t in sd.values() if t.dtype == torch.float32]
    assert len(wide) == 2 * _model.LAYERS + 2 and sd["lm_head.weight"].dtype == torch.float32
    for t in wide:
        assert torch.isfinite(t).all() and 0 < t.abs().max() < 2
    assert _model.layout(8 << 20) == _model.layout(8 << 20, fp32=False)  # the default is unchanged
