"""tensorstream.convert: safetensors (one file, shards) <-> .tensors and state dicts -> .tensors,
between media (local, nginx, moto S3 with signatures checked), with encryption; tensors compared
byte for byte with what the safetensors package reads; memory bounded by the batch size."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import safetensors
import safetensors.torch
import torch

import tensorstream
from _tensors import assert_same, checkpoint_tensors, random_tensor
from test_contract import medium  # noqa: F401 - the contract suite's fixture over media
from tensorstream import EncryptionParams, TensorDeserializer


def _tensors():
    return checkpoint_tensors(with_empty=True)


def _same_dict(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        assert_same(got[name], want[name])


def _metadata(path):
    with safetensors.safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_round_trip_is_byte_exact(tmp_path):
    want = _tensors()
    src = tmp_path / "m.safetensors"
    safetensors.torch.save_file(want, str(src), metadata={"format": "pt", "note": "kept"})
    done = tensorstream.convert(src, tmp_path / "m.tensors", batch_bytes=4096)
    assert (done.src_format, done.dst_format, done.tensors) == ("safetensors", "tensors", len(want))
    _same_dict(tensorstream.load(tmp_path / "m.tensors"), want)
    back = tensorstream.convert(tmp_path / "m.tensors", tmp_path / "back.safetensors")
    assert back.files == [str(tmp_path / "back.safetensors")]
    _same_dict(safetensors.torch.load_file(str(tmp_path / "back.safetensors")), want)
    # safetensors -> safetensors keeps __metadata__; a .tensors file has no place for it.
    tensorstream.convert(src, tmp_path / "again.safetensors")
    assert _metadata(tmp_path / "again.safetensors") == {"format": "pt", "note": "kept"}
    assert _metadata(tmp_path / "back.safetensors") == {"format": "pt"}


def test_sharded_output_and_input(tmp_path):
    want = _tensors()
    safetensors.torch.save_file(want, str(tmp_path / "m.safetensors"))
    out = tmp_path / "sharded"
    out.mkdir()
    done = tensorstream.convert(tmp_path / "m.safetensors", out, to="safetensors", max_shard_bytes=20_000)
    shards = [f for f in done.files if f.endswith(".safetensors")]
    assert len(shards) == 3 and done.files[-1].endswith("model.safetensors.index.json")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in want.values())
    got = {}
    for shard in shards:
        part = safetensors.torch.load_file(shard)
        assert sum(t.numel() * t.element_size() for t in part.values()) <= 20_000 or len(part) == 1
        got.update(part)
    _same_dict(got, want)
    tensorstream.convert(out, tmp_path / "whole.tensors")  # a folder holding shards, read as one
    _same_dict(tensorstream.load(tmp_path / "whole.tensors"), want)


def test_state_dict_to_tensors(tmp_path):
    want = _tensors()
    torch.save(want, tmp_path / "m.pt")
    done = tensorstream.convert(tmp_path / "m.pt", tmp_path / "m.tensors", batch_bytes=1000)
    assert done.src_format == "torch"
    _same_dict(tensorstream.load(tmp_path / "m.tensors"), want)
    legacy = {n: want[n] for n in ("embed.weight", "attn.bias", "scalar")}  # dtypes the old format stores
    torch.save(legacy, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)  # cannot be mapped
    tensorstream.convert(tmp_path / "legacy.bin", tmp_path / "legacy.tensors")
    _same_dict(tensorstream.load(tmp_path / "legacy.tensors"), legacy)


def test_between_media_with_encryption(medium, moto_s3, tmp_path, monkeypatch):
    want = _tensors()
    names = list(want)
    weight_map = {}
    for i, part in enumerate([names[:3], names[3:]]):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        safetensors.torch.save_file({n: want[n] for n in part}, str(tmp_path / shard))
        medium.publish(f"ck/{shard}", (tmp_path / shard).read_bytes())
        weight_map.update((n, shard) for n in part)
    index = medium.publish("ck/model.safetensors.index.json", json.dumps({"weight_map": weight_map}).encode())
    bucket = moto_s3.create_bucket()
    for name in [n for n in __import__("os").environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    key = EncryptionParams.random()
    enc = f"s3://{bucket}/out/model.tensors"
    tensorstream.convert(index, enc, encryption=key, batch_bytes=8192)
    with TensorDeserializer(enc, encryption=tensorstream.DecryptionParams.from_key(key.key)) as d:
        _same_dict(dict(d), want)
    back = tensorstream.convert(enc, f"s3://{bucket}/st/", to="safetensors", max_shard_bytes=45_000,
                                decryption=tensorstream.DecryptionParams.from_key(key.key))
    assert len(back.files) == 3  # two shards and the index
    _same_dict(tensorstream.safetensors.load_file(f"s3://{bucket}/st/"), want)
    raw = moto_s3.get_object(bucket, "st/model-00001-of-00002.safetensors")
    local = tmp_path / "from-s3.safetensors"
    local.write_bytes(raw)
    first = safetensors.torch.load_file(str(local))
    assert first and all(torch.equal(first[n].view(torch.uint8), want[n].view(torch.uint8)) for n in first)


def test_bad_arguments(tmp_path):
    safetensors.torch.save_file(_tensors(), str(tmp_path / "m.safetensors"))
    src = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="only .tensors files can be encrypted"):
        tensorstream.convert(src, tmp_path / "x.safetensors", encryption=EncryptionParams.random())
    with pytest.raises(ValueError, match="cannot tell the format"):
        tensorstream.convert(src, tmp_path / "x.weird")
    with pytest.raises(ValueError, match="only safetensors output is sharded"):
        tensorstream.convert(src, tmp_path / "x.tensors", max_shard_bytes=10)
    with pytest.raises(ValueError, match="not tensors"):
        tensorstream.convert(src, tmp_path / "x.safetensors", src_format="tensors")
    with pytest.raises(ValueError, match="read-only|local path or s3"):
        tensorstream.convert(src, "http://127.0.0.1:9/x.safetensors")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "x.tensors").exists()


_MEMORY_CHILD = textwrap.dedent("""
    import sys, tensorstream
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    before = hwm()
    src, mid, out = sys.argv[1:4]
    tensorstream.convert(src, mid, batch_bytes=32 << 20)
    tensorstream.convert(mid, out, to="safetensors", batch_bytes=32 << 20, max_shard_bytes=64 << 20)
    print(hwm() - before)
""")


def test_memory_stays_near_the_batch_size(tmp_path):
    size = 200 << 20
    parts = {f"layer.{i}.weight": random_tensor((size // 10 // 4,), torch.float32, i) for i in range(10)}
    src = tmp_path / "big.safetensors"
    safetensors.torch.save_file(parts, str(src))
    del parts
    env_path = ":".join(sys.path)
    result = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(src), str(tmp_path / "big.tensors"),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.strip())
    assert growth < 100 << 20, f"peak RSS grew by {growth / 2**20:.0f} MiB converting a 200 MiB file"
    got = safetensors.torch.load_file(str(tmp_path / "out" / "model-00001-of-00004.safetensors"))
    assert_same(got["layer.0.weight"], random_tensor((size // 10 // 4,), torch.float32, 0))
