"""The local cache of remote files (``cache_dir=``, ``TENSORSTREAM_CACHE_*``), against a real nginx
of each test's own (so that a test may stop it) and the moto S3 server. What nginx sent is
counted from its access log; every load is compared with the tensors saved."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

import tensorstream
from _http_servers import Nginx, nginx_binary
from _tensors import assert_same, random_tensor
from tensorstream import TensorDeserializer, _cache, _core

pytestmark = pytest.mark.skipif(getattr(_core, "HttpSource", None) is None, reason="built without libcurl")

_LOG_LINE = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" (\d+) (\d+)')


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("TENSORSTREAM_CACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "0")  # an unreachable server fails at once


@pytest.fixture
def server(tmp_path):
    """An nginx of this test's own (stopping it touches no other test); 8 MB/s on ``capped_port``."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (Debian package 'nginx')")
    nginx = Nginx(binary, tmp_path / "www", tmp_path / "nginx", limit_rate=8 << 20)
    nginx.start()
    yield nginx
    nginx.stop()


def _tensors(seed: int = 0, rows: int = 256) -> dict[str, torch.Tensor]:
    return {f"layer{i}.weight": random_tensor((rows, 512), torch.float32, seed=seed + i) for i in range(4)}


def _publish(server: Nginx, name: str, tensors: dict[str, torch.Tensor]) -> str:
    tensorstream.save(tensors, server.root / name)
    return server.url(name)


def _sent(server: Nginx, name: str) -> list[int]:
    """Body bytes of each GET nginx answered for ``/name``, in order."""
    out = []
    for line in server.access_log.read_text().splitlines():
        m = _LOG_LINE.search(line)
        if m and m.group(1) == "GET" and m.group(2).split("?")[0] == f"/{name}":
            out.append(int(m.group(4)))
    return out


def _data_bytes(server: Nginx, name: str) -> int:
    """Bytes nginx sent for ``/name``, size probes (one byte each) left out."""
    return sum(n for n in _sent(server, name) if n > 1)


def _check(got, want: dict[str, torch.Tensor]) -> None:
    assert sorted(got.keys()) == sorted(want)
    for name, tensor in want.items():
        assert_same(got[name], tensor)


def _entry_files(cache: Path, suffix: str) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name.endswith(suffix))


# ------------------------------------------------------------------------------ hits and misses


def test_second_load_is_served_from_disk(server, tmp_path, caplog):
    want = _tensors()
    url = _publish(server, "m.tensors", want)
    size = (server.root / "m.tensors").stat().st_size
    cache = tmp_path / "cache"
    _check(tensorstream.load(url, device="cpu", cache_dir=cache), want)
    assert _data_bytes(server, "m.tensors") == size  # fetched once, whole
    [data] = _entry_files(cache, ".data")
    assert data.read_bytes() == (server.root / "m.tensors").read_bytes()

    before = len(_sent(server, "m.tensors"))
    with TensorDeserializer(url, device="cpu", cache_dir=cache, verify_hash=True) as d:
        assert d.io_backend == "mmap"  # the entry used where it lies, not copied
        _check(d, want)
    assert _sent(server, "m.tensors")[before:] == [1]  # one request: the size probe

    server.stop()
    with caplog.at_level(logging.WARNING, logger="tensorstream"):
        _check(tensorstream.load(url, device="cpu", cache_dir=cache), want)
    assert "unreachable" in caplog.text and "cached copy" in caplog.text


def test_environment_variable_and_features(server, tmp_path, monkeypatch):
    want = _tensors()
    url = _publish(server, "env.tensors", want)
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("TENSORSTREAM_CACHE_DIR", str(cache))
    monkeypatch.setenv("TENSORSTREAM_CACHE_MAX_GB", "2.5")
    assert tensorstream.features()["cache"] == {"cache_dir": str(cache), "cache_max_gb": 2.5,
                                                "cache_offline": False, "cache_lock_timeout": 1800.0}
    size = (server.root / "env.tensors").stat().st_size
    _check(tensorstream.load(url, device="cpu"), want)
    assert len(_entry_files(cache, ".data")) == 1 and _data_bytes(server, "env.tensors") == size
    _check(tensorstream.load(url, device="cpu", cache_dir=False), want)  # turned off for one call
    assert _data_bytes(server, "env.tensors") - size >= size - 1024  # fetched again (bar bytes no load reads)


@pytest.mark.parametrize("name, value", [("TENSORSTREAM_CACHE_MAX_GB", "lots"), ("TENSORSTREAM_CACHE_MAX_GB", "-1"),
                                         ("TENSORSTREAM_CACHE_OFFLINE", "maybe"),
                                         ("TENSORSTREAM_CACHE_LOCK_TIMEOUT", "0")])
def test_bad_variables_are_value_errors(server, tmp_path, monkeypatch, name, value):
    url = _publish(server, "bad.tensors", _tensors())
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        TensorDeserializer(url, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=name):
        tensorstream.features()
    with pytest.raises(ValueError, match="cache_dir"):
        TensorDeserializer(url, cache_dir=3)


def test_load_module_and_zero_copy_through_the_cache(server, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
    tensorstream.save(model, server.root / "mod.tensors")
    url = server.url("mod.tensors")
    cache = tmp_path / "cache"
    loaded = tensorstream.load_module(url, lambda: torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8)),
                                      device="cpu", cache_dir=cache)
    _check(loaded.state_dict(), model.state_dict())
    with TensorDeserializer(url, device="cpu", cache_dir=cache, zero_copy=True, lazy_load=True) as d:
        assert d.io_backend == "mmap"
        assert_same(d["0.weight"], model[0].weight.detach())
    with pytest.raises(ValueError, match="cache"):
        TensorDeserializer(url, device="cpu", zero_copy=True)  # no cache: refused, as before


# ------------------------------------------------------------------------------ concurrency

_CHILD = textwrap.dedent("""
    import os, sys, time, torch, tensorstream
    url, cache, reference, ready, go = sys.argv[1:6]
    want = tensorstream.load(reference, device="cpu")
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    got = tensorstream.load(url, device="cpu", cache_dir=cache)
    same = lambda a, b: a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    assert sorted(got) == sorted(want) and all(same(got[k], want[k]) for k in want), "tensors differ"
    print("ok")
""")


def test_processes_loading_at_once_fetch_it_once(server, tmp_path):
    want = _tensors(rows=1024)  # 8 MiB at 8 MB/s: the fetch takes about a second, the others wait
    tensorstream.save(want, server.root / "big.tensors")
    url = server.url("big.tensors", capped=True)
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = dict(os.environ)  # the children import the same tensorstream as this process
    procs, readies = [], []
    for i in range(3):
        ready = tmp_path / f"ready{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, url, str(cache), str(server.root / "big.tensors"),
                                       str(ready), str(go)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and out.strip() == b"ok", err.decode()[-2000:]
    assert _data_bytes(server, "big.tensors") == (server.root / "big.tensors").stat().st_size
    assert len(_entry_files(cache, ".data")) == 1 and not _entry_files(cache, ".part")


def test_a_held_entry_times_out_with_a_clear_error(server, tmp_path, monkeypatch):
    url = _publish(server, "held.tensors", _tensors())
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TENSORSTREAM_CACHE_LOCK_TIMEOUT", "0.3")
    with open(cache / f"{_cache.entry_key(url)}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(TimeoutError, match="TENSORSTREAM_CACHE_LOCK_TIMEOUT"):
            TensorDeserializer(url, cache_dir=cache)
    _check(tensorstream.load(url, device="cpu", cache_dir=cache), _tensors())  # released: it goes on


# ------------------------------------------------------------------------------ integrity


def test_truncated_entry_is_refetched(server, tmp_path, caplog):
    want = _tensors()
    url = _publish(server, "t.tensors", want)
    size = (server.root / "t.tensors").stat().st_size
    cache = tmp_path / "cache"
    tensorstream.load(url, device="cpu", cache_dir=cache)
    [data] = _entry_files(cache, ".data")
    os.truncate(data, size // 2)
    with caplog.at_level(logging.WARNING, logger="tensorstream"):
        _check(tensorstream.load(url, device="cpu", cache_dir=cache), want)
    assert "fetching it again" in caplog.text
    assert _data_bytes(server, "t.tensors") == 2 * size
    assert data.stat().st_size == size


def test_corrupt_entry_fails_its_hashes_and_is_refetched(server, tmp_path):
    want = _tensors()
    url = _publish(server, "c.tensors", want)
    size = (server.root / "c.tensors").stat().st_size
    cache = tmp_path / "cache"
    tensorstream.load(url, device="cpu", cache_dir=cache)
    [data] = _entry_files(cache, ".data")
    at = _core.read_index(_core.FileSource(str(data))).entries[2].data_offset + 100
    with open(data, "r+b") as f:  # same size, one byte flipped
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))
    _check(tensorstream.load(url, device="cpu", cache_dir=cache, verify_hash=True), want)
    assert _data_bytes(server, "c.tensors") == 2 * size
    with TensorDeserializer(url, device="cpu", cache_dir=cache, verify_hash=True) as d:  # the new copy is good
        _check(d, want)
    assert _data_bytes(server, "c.tensors") == 2 * size


def test_object_changed_on_the_server_is_refetched(server, tmp_path):
    url = _publish(server, "v.tensors", _tensors(seed=0))
    cache = tmp_path / "cache"
    tensorstream.load(url, device="cpu", cache_dir=cache)
    newer = _tensors(seed=100, rows=300)  # another size
    _publish(server, "v.tensors", newer)
    _check(tensorstream.load(url, device="cpu", cache_dir=cache), newer)
    assert len(_entry_files(cache, ".data")) == 1
    lazy_url = _publish(server, "lazy-v.tensors", _tensors(seed=0))
    with TensorDeserializer(lazy_url, device="cpu", cache_dir=cache, lazy_load=True) as d:
        assert_same(d["layer1.weight"], _tensors(seed=0)["layer1.weight"])  # a partial entry now
    _publish(server, "lazy-v.tensors", newer)
    with TensorDeserializer(lazy_url, device="cpu", cache_dir=cache, lazy_load=True) as d:
        _check(d, newer)


def test_lazy_load_of_a_corrupt_entry_raises_and_drops_it(server, tmp_path):
    want = _tensors()
    url = _publish(server, "lc.tensors", want)
    cache = tmp_path / "cache"
    tensorstream.load(url, device="cpu", cache_dir=cache)
    [data] = _entry_files(cache, ".data")
    at = _core.read_index(_core.FileSource(str(data))).entries[1].data_offset
    with open(data, "r+b") as f:  # same size, two bytes inverted
        f.seek(at)
        flipped = bytes(b ^ 0xFF for b in f.read(2))
        f.seek(at)
        f.write(flipped)
    with TensorDeserializer(url, device="cpu", cache_dir=cache, lazy_load=True, verify_hash=True) as d:
        assert_same(d["layer0.weight"], want["layer0.weight"])
        with pytest.raises(tensorstream.HashMismatchError):
            d["layer1.weight"]  # never handed out
    assert not data.exists()
    _check(tensorstream.load(url, device="cpu", cache_dir=cache, verify_hash=True), want)


@pytest.mark.skipif(not hasattr(getattr(_core, "HttpSource", object), "etag"), reason="the core reports no ETag yet")
def test_same_size_change_is_told_by_its_etag(server, tmp_path):
    url = _publish(server, "e.tensors", _tensors(seed=0))
    cache = tmp_path / "cache"
    tensorstream.load(url, device="cpu", cache_dir=cache)
    sidecar = json.loads(_entry_files(cache, ".json")[0].read_text())
    assert sidecar["etag"] and sidecar["last_modified"]
    newer = _tensors(seed=7)  # the same size, other bytes; nginx's ETag holds the mtime
    _publish(server, "e.tensors", newer)
    os.utime(server.root / "e.tensors", (time.time() + 10, time.time() + 10))
    _check(tensorstream.load(url, device="cpu", cache_dir=cache), newer)


# ------------------------------------------------------------------------------ eviction, offline


def test_least_recently_used_entries_are_evicted(server, tmp_path, monkeypatch):
    names = ["a.tensors", "b.tensors", "c.tensors"]
    sets = {n: _tensors(seed=10 * i, rows=256) for i, n in enumerate(names)}  # about 2.3 MiB each on disk
    urls = {n: _publish(server, n, t) for n, t in sets.items()}
    entry_bytes = (server.root / "a.tensors").stat().st_size
    cache = tmp_path / "cache"
    monkeypatch.setenv("TENSORSTREAM_CACHE_MAX_GB", str(2.5 * entry_bytes / (1 << 30)))  # room for two
    tensorstream.load(urls["a.tensors"], device="cpu", cache_dir=cache)
    tensorstream.load(urls["b.tensors"], device="cpu", cache_dir=cache)
    _check(tensorstream.load(urls["a.tensors"], device="cpu", cache_dir=cache), sets["a.tensors"])  # a: used last
    tensorstream.load(urls["c.tensors"], device="cpu", cache_dir=cache)
    kept = {p.name.split("-", 1)[1] for p in _entry_files(cache, ".data")}
    assert kept == {"a.tensors.data", "c.tensors.data"}
    assert not [p for p in cache.iterdir() if "-b.tensors" in p.name]
    assert sum(p.stat().st_blocks * 512 for p in _entry_files(cache, ".data")) <= 2.5 * entry_bytes
    _check(tensorstream.load(urls["b.tensors"], device="cpu", cache_dir=cache), sets["b.tensors"])
    assert _data_bytes(server, "b.tensors") == 2 * entry_bytes


def test_offline_mode_uses_entries_without_asking(server, tmp_path, monkeypatch):
    want = _tensors()
    url = _publish(server, "o.tensors", want)
    cache = tmp_path / "cache"
    tensorstream.load(url, device="cpu", cache_dir=cache)
    requests = len(_sent(server, "o.tensors"))
    monkeypatch.setenv("TENSORSTREAM_CACHE_OFFLINE", "1")
    _check(tensorstream.load(url, device="cpu", cache_dir=cache), want)
    assert len(_sent(server, "o.tensors")) == requests  # not one request
    _publish(server, "other.tensors", want)
    with pytest.raises(FileNotFoundError, match="TENSORSTREAM_CACHE_OFFLINE"):
        TensorDeserializer(server.url("other.tensors"), cache_dir=cache)
    assert _sent(server, "other.tensors") == []


def test_unreachable_server_without_an_entry_is_an_error(server, tmp_path):
    url = _publish(server, "u.tensors", _tensors())
    server.stop()
    with pytest.raises(tensorstream.NetworkError):
        TensorDeserializer(url, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------ credentials


def test_credentials_stay_out_of_the_cache(server, tmp_path):
    want = _tensors()
    _publish(server, "s.tensors", want)
    base = server.url("s.tensors").replace("http://", "http://alice:pa55word-SECRET@")
    signed = base + "?X-Amz-Signature=SIGSECRET1&X-Amz-Credential=CREDSECRET&v=2"
    cache = tmp_path / "cache"
    _check(tensorstream.load(signed, device="cpu", cache_dir=cache), want)
    again = base + "?X-Amz-Signature=SIGSECRET2&X-Amz-Credential=CREDSECRET&v=2"  # re-signed: the same object
    _check(tensorstream.load(again, device="cpu", cache_dir=cache), want)
    assert _data_bytes(server, "s.tensors") == (server.root / "s.tensors").stat().st_size
    for path in cache.iterdir():
        for secret in ("alice", "pa55word", "SECRET", "CREDSECRET"):
            assert secret not in path.name
            if path.suffix == ".json":
                assert secret not in path.read_text()
    sidecar = json.loads(_entry_files(cache, ".json")[0].read_text())
    assert sidecar["uri"] == server.url("s.tensors") + "?v=2"


def test_s3_objects_are_cached_without_their_secret(moto_s3, tmp_path, monkeypatch):
    want = _tensors()
    local = tmp_path / "m.tensors"
    tensorstream.save(want, local)
    bucket = moto_s3.create_bucket()
    moto_s3.put_object(bucket, "models/m.tensors", local.read_bytes())
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    monkeypatch.setenv("AWS_REGION", moto_s3.region)
    uri, cache = f"s3://{bucket}/models/m.tensors", tmp_path / "cache"
    _check(tensorstream.load(uri, device="cpu", cache_dir=cache), want)
    with TensorDeserializer(uri, device="cpu", cache_dir=cache) as d:
        assert d.io_backend == "mmap"
        _check(d, want)
    [data] = _entry_files(cache, ".data")
    assert data.read_bytes() == local.read_bytes()
    for path in cache.iterdir():
        assert moto_s3.secret_key not in path.name and moto_s3.access_key not in path.name
        if path.suffix == ".json":
            assert moto_s3.secret_key not in path.read_text()
    monkeypatch.setenv("TENSORSTREAM_CACHE_OFFLINE", "1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")  # offline: never signed, never sent
    _check(tensorstream.load(uri, device="cpu", cache_dir=cache), want)


# ------------------------------------------------------------------------------ lazy loads


def test_lazy_loads_cache_the_ranges_they_read(server, tmp_path):
    want = _tensors(rows=512)
    url = _publish(server, "lazy.tensors", want)
    path = server.root / "lazy.tensors"
    entries = _core.read_index(_core.FileSource(str(path))).entries
    span = entries[1].data_offset + entries[1].data_length - entries[1].header_offset
    cache = tmp_path / "cache"
    with TensorDeserializer(url, device="cpu", cache_dir=cache, lazy_load=True, verify_hash=True) as d:
        assert_same(d["layer1.weight"], want["layer1.weight"])
    first = _data_bytes(server, "lazy.tensors")
    assert first < path.stat().st_size // 2  # the index and one tensor, not the file
    [part] = _entry_files(cache, ".part")
    assert part.stat().st_blocks * 512 < path.stat().st_size // 2  # sparse

    before = len(_sent(server, "lazy.tensors"))
    with TensorDeserializer(url, device="cpu", cache_dir=cache, lazy_load=True, verify_hash=True) as d:
        assert_same(d["layer1.weight"], want["layer1.weight"])  # from disk: only the probe went out
        assert _sent(server, "lazy.tensors")[before:] == [1]
        assert_same(d["layer3.weight"], want["layer3.weight"])  # this one is fetched, alone
        assert _sent(server, "lazy.tensors")[before + 1:] == [span]
        module = torch.nn.Module()
        module.layer0 = torch.nn.Module()
        module.layer0.weight = torch.nn.Parameter(want["layer0.weight"].clone())
        assert dict(d.verify_module(module)[1])["layer0.weight"] is True  # its header fetched, not its data
    _check(tensorstream.load(url, device="cpu", cache_dir=cache), want)  # eager: only the gaps, then published
    head = entries[0].header_offset  # read once from the server to learn where the index ends, then cached
    assert _data_bytes(server, "lazy.tensors") == path.stat().st_size + head
    assert not _entry_files(cache, ".part") and len(_entry_files(cache, ".data")) == 1


def test_sharded_safetensors_prefix_and_safe_open(server, tmp_path, monkeypatch):
    want = _tensors()
    names = list(want)
    weight_map = {}
    for i, part in enumerate([names[:2], names[2:]]):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        (server.root / "ck").mkdir(exist_ok=True)
        safetensors.torch.save_file({n: want[n] for n in part}, str(server.root / "ck" / shard))
        weight_map.update((n, shard) for n in part)
    (server.root / "ck" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    prefix, cache = server.url("ck/"), tmp_path / "cache"
    with tensorstream.safe_open(prefix, cache_dir=cache) as f:
        assert_same(f.get_slice("layer3.weight")[10:20, 5:9], want["layer3.weight"][10:20, 5:9])
    _check(tensorstream.safetensors.load_file(prefix, cache_dir=cache), want)
    assert len(_entry_files(cache, ".data")) == 3  # the index and both shards, complete
    monkeypatch.setenv("TENSORSTREAM_CACHE_OFFLINE", "1")
    server.stop()
    _check(tensorstream.load(prefix, device="cpu", cache_dir=cache), want)


def test_sharded_checkpoint_read_lazily_then_through_the_ring_from_the_cache(server, tmp_path, monkeypatch):
    """The shards' cache entries are the parts of one source: partial entries filled tensor by
    tensor on lazy access, then complete entries read through the ring's host stand-in."""
    want = _tensors()
    names = list(want)
    weight_map = {}
    (server.root / "sh").mkdir()
    for i, part in enumerate([names[:1], names[1:3], names[3:]]):
        shard = f"model-0000{i + 1}-of-00003.safetensors"
        safetensors.torch.save_file({n: want[n] for n in part}, str(server.root / "sh" / shard))
        weight_map.update((n, shard) for n in part)
    (server.root / "sh" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    prefix, cache = server.url("sh/"), tmp_path / "cache"
    with TensorDeserializer(prefix, device="cpu", lazy_load=True, cache_dir=cache) as d:
        for name in reversed(names):
            assert_same(d[name], want[name])
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    monkeypatch.setenv("TENSORSTREAM_CACHE_OFFLINE", "1")
    server.stop()  # every byte comes from the entries now
    _check(tensorstream.load(prefix, device="cpu", cache_dir=cache), want)


# ------------------------------------------------------------------------------ other loaders


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_encrypted_files_are_cached_as_their_encrypted_bytes(server, tmp_path, lazy):
    want = _tensors()
    params = tensorstream.EncryptionParams.random()
    with tensorstream.TensorSerializer(server.root / "enc.tensors", encryption=params) as s:
        s.write_state_dict(want)
    url, cache = server.url("enc.tensors"), tmp_path / "cache"
    key = tensorstream.DecryptionParams.from_key(params.key)
    for _ in range(2):
        with TensorDeserializer(url, device="cpu", cache_dir=cache, encryption=key, lazy_load=lazy,
                                verify_hash=True) as d:
            assert d.io_backend != "mmap"  # decrypted into memory, not used in place
            _check(d, want)
    size = (server.root / "enc.tensors").stat().st_size
    if not lazy:
        [data] = _entry_files(cache, ".data")
        assert data.read_bytes() == (server.root / "enc.tensors").read_bytes()
        assert _data_bytes(server, "enc.tensors") == size
    else:
        assert _data_bytes(server, "enc.tensors") < 1.5 * size  # the second lazy pass read from disk


def test_ring_loads_read_the_entry(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")  # the GPU pipeline, with a host-memory stand-in
    want = _tensors()
    url, cache = _publish(server, "ring.tensors", want), tmp_path / "cache"
    for _ in range(2):
        with TensorDeserializer(url, device="cpu", cache_dir=cache, verify_hash=True) as d:
            _check(d, want)
    assert _data_bytes(server, "ring.tensors") == (server.root / "ring.tensors").stat().st_size
