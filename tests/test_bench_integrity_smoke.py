"""The integrity benchmark runs end to end at a tiny size, and every row catches damaged files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_integrity.py"
ALL_METHODS = ["ceiling-decrypt", "ceiling-decrypt-fresh", "ts-encrypted", "ts-encrypted-verify",
               "tensorizer-encrypted", "ceiling-hash", "ceiling-hash-fresh", "ts-plain", "ts-verify",
               "tensorizer-verify"]
FILES = ["integrity-reference.json", "model.encrypted.key", "model.plain.tensors",
         "model.encrypted.tensors"]


def _bench(workdir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = workdir / "result.json"
    cmd = [sys.executable, str(BENCH), "--size-gib", "0.02", "--runs", "1", "--warmup", "0", "--settle", "0",
           "--workdir", str(workdir), "--json", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench-integrity")
    proc, report = _bench(workdir)
    return workdir, proc, report


@pytest.mark.slow
def test_every_row_loads_correct_tensors(smoke):
    _, proc, report = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert report["ok"] is True
    rows = {s["method"]: s for s in report["load"]}
    assert list(rows) == ALL_METHODS
    for name, s in rows.items():
        assert s["check"] == "pass", (name, s)
        assert s["median_s"] > 0 and s["gbps"] > 0, (name, s)
        assert s["peak_rss_mib"] > s["bytes"] / 2**20, (name, s)
    assert "chunks of 2 MiB" in rows["ceiling-decrypt"]["engine"]
    assert rows["ceiling-hash"]["engine"].endswith("threads")
    assert re.search(r"ceiling-hash .* threads \(\d+\.\d\dx one thread\)  pass", proc.stdout)
    assert "into fresh memory" in rows["ceiling-hash-fresh"]["engine"]
    assert "chunks of 2 MiB" in rows["ceiling-decrypt-fresh"]["engine"]
    assert [s["format"] for s in report["save"]] == ["plain", "encrypted"]
    assert all(s["check"] == "pass" for s in report["save"]), report["save"]
    verdicts = {t["target"]: t["verdict"] for t in report["targets"]}
    assert len(verdicts) == 4 and set(verdicts.values()) <= {"PASS", "FAIL"}, verdicts
    assert "compat   tensorizer reads tensorstream's encrypted file" in proc.stdout
    assert "vs ceiling" in proc.stdout and "target " in proc.stdout


@pytest.mark.slow
def test_encrypted_file_is_encrypted(smoke):
    workdir, proc, _ = smoke
    assert proc.returncode == 0
    plain = (workdir / "model.plain.tensors").read_bytes()
    encrypted = (workdir / "model.encrypted.tensors").read_bytes()
    sample = plain[-(1 << 20):-4096]  # inside the last tensor's data
    assert sample in plain and sample not in encrypted


def _flip(path: Path, back: int) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - back)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.slow
def test_damaged_files_fail_every_row(smoke, tmp_path):
    workdir, proc, _ = smoke
    assert proc.returncode == 0
    for name in FILES:
        shutil.copy(workdir / name, tmp_path / name)
    _flip(tmp_path / "model.plain.tensors", 4096)  # a data byte of the last tensor
    _flip(tmp_path / "model.encrypted.tensors", 4096)
    proc, report = _bench(tmp_path, "--reuse")
    assert "reusing the files" in proc.stdout
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {s["method"]: s for s in report["load"]}
    assert list(rows) == ALL_METHODS
    for name, s in rows.items():
        assert s["check"] == "FAIL" and s["failures"], (name, s)
        assert f"FAILED {name}: " in proc.stdout
    assert "did not open" in rows["ceiling-decrypt"]["failures"][0]
    assert "stored hashes" in rows["ceiling-hash"]["failures"][0]
    assert "did not open" in rows["ceiling-decrypt-fresh"]["failures"][0]
    assert "stored hashes" in rows["ceiling-hash-fresh"]["failures"][0]
    assert "crc32" in rows["ts-plain"]["failures"][0]
    assert "CryptographyError" in rows["ts-encrypted"]["failures"][0]
    assert "HashMismatchError" in rows["ts-verify"]["failures"][0]
    assert report["ok"] is False
    assert all(t["verdict"] == "SKIP" for t in report["targets"]), report["targets"]
