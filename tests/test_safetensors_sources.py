"""safetensors checkpoints over every medium (local file, HTTP through nginx, S3 through moto
with signatures checked): one file, an index.json with shards, and a prefix; lazily, eagerly,
through the ring's host stand-in, and with safe_open slices. Tensors are compared with what
``safetensors.torch.load_file`` reads from the same bytes."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

import tensorstream
from _http_servers import Nginx, nginx_binary
from _tensors import assert_same, checkpoint_tensors, random_tensor
from test_contract import medium  # noqa: F401 - the contract suite's fixture over media
from tensorstream import TensorDeserializer, _native


def _tensors():
    return checkpoint_tensors(with_empty=False)


def _publish_checkpoint(medium, tmp_path):
    """Two shards and an index.json under ``ck/``; returns (index URI, prefix URI, tensors)."""
    tensors = _tensors()
    names = list(tensors)
    weight_map = {}
    for i, part in enumerate([names[:3], names[3:]]):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        local = tmp_path / shard
        safetensors.torch.save_file({n: tensors[n] for n in part}, str(local))
        medium.publish(f"ck/{shard}", local.read_bytes())
        weight_map.update((n, shard) for n in part)
    index = medium.publish("ck/model.safetensors.index.json", json.dumps({"weight_map": weight_map}).encode())
    return index, index.rsplit("/", 1)[0] + "/", tensors


def test_single_file(medium, tmp_path):
    tensors = _tensors()
    local = tmp_path / "m.safetensors"
    safetensors.torch.save_file(tensors, str(local), metadata={"format": "pt"})
    where = medium.publish("m.safetensors", local.read_bytes())
    want = safetensors.torch.load_file(str(local))
    for lazy in (False, True):
        with TensorDeserializer(where, lazy_load=lazy) as d:
            assert d.format == "safetensors" and d.metadata == {"format": "pt"}
            for name, tensor in want.items():
                assert_same(d[name], tensor)
    got = tensorstream.safetensors.load_file(where)
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("standin", [False, True], ids=["cpu", "ring"])
def test_sharded_by_index_and_prefix(medium, tmp_path, monkeypatch, standin):
    if standin:
        monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    index, prefix, tensors = _publish_checkpoint(medium, tmp_path)
    for where in (index, prefix):
        got = tensorstream.load(where)
        assert sorted(got) == sorted(tensors)
        for name, tensor in tensors.items():
            assert_same(got[name], tensor)
    with TensorDeserializer(prefix, lazy_load=True, filter_func=lambda n: n.startswith("attn.")) as d:
        assert sorted(d.keys()) == ["attn.bias", "attn.weight"]
        assert_same(d["attn.weight"], tensors["attn.weight"])


def test_safe_open_slices(medium, tmp_path):
    tensors = _tensors()
    local = tmp_path / "m.safetensors"
    safetensors.torch.save_file(tensors, str(local))
    where = medium.publish("m.safetensors", local.read_bytes())
    with safetensors.safe_open(str(local), framework="pt") as want, tensorstream.safe_open(where) as got:
        assert got.keys() == list(want.keys())
        for index in [(slice(10, 20),), (slice(None), slice(3, 9)), (5,), (slice(None, None, 7), slice(1, None, 2))]:
            assert_same(got.get_slice("embed.weight")[index], want.get_slice("embed.weight")[index])
        assert_same(got.get_tensor("q8"), want.get_tensor("q8"))


def test_missing_checkpoint(medium):
    missing = medium.missing().rsplit("/", 1)[0] + "/no-such-checkpoint/"
    with pytest.raises(FileNotFoundError):
        TensorDeserializer(missing)


def test_the_shards_of_a_checkpoint_share_one_run_and_its_connections(tmp_path, monkeypatch):
    """Every shard is read in one engine run: with two connections allowed, an eager load of five
    shards over HTTP opens two in all (one run per shard would open two each), and every tensor
    arrives as safetensors reads it."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (Debian package 'nginx')")
    server = Nginx(binary, tmp_path / "www", tmp_path / "nginx", log_connections=True)
    server.start()
    try:
        want, weight_map = {}, {}
        for k in range(5):
            shard = f"model-{k + 1:05d}-of-00005.safetensors"
            part = {f"layer.{k}.{w}": random_tensor((512, 256), torch.float32, 10 * k + j)
                    for j, w in enumerate(("q", "k", "v"))}
            safetensors.torch.save_file(part, str(server.root / shard))
            want.update(part)
            weight_map.update((n, shard) for n in part)
        (server.root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        monkeypatch.setenv("TENSORSTREAM_HTTP_CONNECTIONS", "2")
        _native.close_idle_connections()
        start = server.access_log.stat().st_size if server.access_log.exists() else 0
        with TensorDeserializer(server.url("")) as d:
            assert d.format == "safetensors" and len(d) == 15
            for name, tensor in want.items():
                assert_same(d[name], tensor)
        connections, requests = server.connections_and_requests(start)
        assert connections <= 2, (connections, requests)
    finally:
        server.stop()
        _native.close_idle_connections()
