"""Connections kept per host for the process, the per-host budget of requests in flight, ranges
read in one run (``Source.read_many``) and what the size probe tells of a resource."""

from __future__ import annotations

import multiprocessing
import os
import threading

import numpy as np
import pytest
import torch

import tensorstream
from _http_servers import FaultServer
from _places import evict
from _tensors import assert_same, random_tensor
from tensorstream import FormatError, TensorDeserializer, TensorSerializer, _core, _native


@pytest.fixture(autouse=True)
def _http_settings(monkeypatch):
    if getattr(_core, "HttpSource", None) is None:
        pytest.skip("the core was built without the HTTP source (libcurl)")
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "5")
    monkeypatch.setenv("TENSORSTREAM_HTTP_DEADLINE", "30")
    monkeypatch.delenv("TENSORSTREAM_HTTP_CONNECTIONS", raising=False)
    _native.close_idle_connections()  # each test starts with no kept connection
    yield
    _native.close_idle_connections()


@pytest.fixture(scope="module")
def server():
    s = FaultServer()
    yield s
    s.close()


def _file(tmp_path, count: int, numel: int) -> tuple[bytes, dict[str, torch.Tensor]]:
    tensors = {f"t{i}": random_tensor((numel,), torch.float32, 7 + i) for i in range(count)}
    path = tmp_path / "many.tensors"
    with TensorSerializer(path) as s:
        s.write_state_dict(tensors)
    return path.read_bytes(), tensors


def _connections(server: FaultServer, name: str) -> int:
    return len({h.client for h in server.hits(name)})


def test_lazy_accesses_reuse_the_connection_of_the_open(server, tmp_path):
    raw, tensors = _file(tmp_path, count=60, numel=256)
    url = server.put("lazy.tensors", raw)
    with TensorDeserializer(url, lazy_load=True) as d:
        for i in range(0, 60, 3):  # 20 tensors, one by one
            assert_same(d[f"t{i}"], tensors[f"t{i}"])
    requests = len(server.hits("lazy.tensors"))
    assert requests >= 21  # the probe, the index, then the tensors (at least one request each)
    assert _connections(server, "lazy.tensors") == 1, [h.client for h in server.hits("lazy.tensors")]


def test_later_deserializers_reuse_kept_connections(server, tmp_path):
    raw, tensors = _file(tmp_path, count=8, numel=64 << 10)  # 2 MiB
    url = server.put("again.tensors", raw)
    with tensorstream.configured(chunk_mb=1, http_connections=4):  # auto may still be ramping up
        for _ in range(3):
            with TensorDeserializer(url) as d:
                for name, t in tensors.items():
                    assert_same(d[name], t)
            if _ == 0:
                first = _connections(server, "again.tensors")
    # A load uses at most 4 connections for its ranges and the probe's lane one more. Loads 2 and
    # 3 reuse the kept ones; they may open one the first load had no use for (a lane whose worker
    # was busy then), never a set of their own (that would be 3 x `first`).
    assert first <= 5 and _connections(server, "again.tensors") <= 5


def test_a_fixed_setting_bounds_requests_across_loads_side_by_side(server, tmp_path):
    raw, tensors = _file(tmp_path, count=16, numel=64 << 10)  # 4 MiB: 64 ranges of 64 KiB
    url = server.put("side.tensors", raw)
    server.fault("side.tensors", "delay", seconds=0.02)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with TensorDeserializer(url) as d:
                for name, t in tensors.items():
                    assert_same(d[name], t)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with tensorstream.configured(http_connections=3, chunk_mb=1):
        server.forget("side.tensors")
        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert server.max_in_flight("side.tensors") <= 3
    host = [h for h in _native.host_concurrency() if str(server.port) in h["host"]]
    assert host and host[0]["fixed"] and host[0]["connections"] == 3


def test_auto_reports_the_host_and_its_level(server, tmp_path):
    raw, tensors = _file(tmp_path, count=4, numel=1 << 18)
    url = server.put("auto.tensors", raw)
    with TensorDeserializer(url) as d:
        assert_same(d["t3"], tensors["t3"])
    (host,) = [h for h in _native.host_concurrency() if str(server.port) in h["host"]]
    assert not host["fixed"] and 1 <= host["connections"] <= 64
    assert "@" not in host["host"] and "/" not in host["host"].split("://", 1)[1]
    assert tensorstream.features()["settings"]["http_connections"] == 0


@pytest.mark.parametrize("where", ["file", "memory", "http"])
def test_read_many_fills_every_range_in_one_call(server, tmp_path, where):
    data = np.random.default_rng(3).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    source = {"file": lambda: _core.FileSource(str(path)), "memory": lambda: _core.MemorySource(data),
              "http": lambda: _core.HttpSource(server.put("blob.bin", data))}[where]()
    spans = [(0, 10), (5, 1 << 20), ((3 << 20) - 7, 7), (1234567, 1 << 20), (99, 0)]
    bufs = [bytearray(n) for _, n in spans]
    source.read_many([(off, buf) for (off, _), buf in zip(spans, bufs)])
    for (off, n), buf in zip(spans, bufs):
        assert bytes(buf) == data[off:off + n]
    with pytest.raises(FormatError, match="ends before"):
        source.read_many([(0, bytearray(4)), ((3 << 20) - 2, bytearray(4))])


def test_the_probe_reports_etag_and_last_modified(nginx):
    (nginx.root / "tagged.bin").write_bytes(b"x" * 1000)
    src = _core.HttpSource(nginx.url("tagged.bin"))
    assert src.size == 1000
    assert src.etag.startswith('"') and src.etag.endswith('"')
    assert "GMT" in src.last_modified


def _child_load(url: str, q) -> None:
    with TensorDeserializer(url) as d:
        q.put(d["t1"].numpy().tobytes())


def test_a_forked_child_opens_its_own_connections(server, tmp_path):
    raw, tensors = _file(tmp_path, count=4, numel=1 << 16)
    url = server.put("fork.tensors", raw)
    with TensorDeserializer(url) as d:  # the parent keeps connections to the host
        assert_same(d["t0"], tensors["t0"])
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_child_load, args=(url, q))
    child.start()
    got = q.get(timeout=60)  # before join: the child's queue flushes only while it is read
    child.join(60)
    assert child.exitcode == 0
    assert got == tensors["t1"].numpy().tobytes()
    with TensorDeserializer(url) as d:  # and the parent's still work
        assert_same(d["t2"], tensors["t2"])


def test_the_medium_of_a_local_file_picks_the_queue_depth(tmp_path):
    path = tmp_path / "medium.bin"
    path.write_bytes(b"\x01" * (8 << 20))
    src = _core.FileSource(str(path))
    warm = _core.medium(src)
    assert warm["kind"] == "cached" and warm["resident"] > 0.9 and warm["queue_depth"] == 2
    evict(path)
    cold = _core.medium(src)
    if cold["resident"] > 0.5:
        pytest.skip("this file system keeps the file cached (tmpfs?)")
    assert cold["kind"] in ("flash", "spinning", "unknown")
    assert cold["queue_depth"] == (4 if cold["kind"] == "spinning" else 16)
    with pytest.raises(ValueError, match="local file"):
        _core.medium(_core.MemorySource(b"abc"))
    assert tensorstream.features()["settings"]["queue_depth"] == 0


def test_kept_connections_are_not_inherited_by_programs_the_process_starts(server, tmp_path):
    import fcntl
    import socket
    import stat

    raw, tensors = _file(tmp_path, count=4, numel=1024)
    url = server.put("exec.tensors", raw)
    before = {fd for fd in map(int, os.listdir("/proc/self/fd"))}
    with TensorDeserializer(url, lazy_load=True) as d:
        assert_same(d["t1"], tensors["t1"])
        opened = []
        for fd in map(int, os.listdir("/proc/self/fd")):
            if fd in before:
                continue
            try:
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    continue
                with socket.socket(fileno=os.dup(fd)) as sock:
                    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getpeername()[1] == server.port:
                        opened.append(fd)  # a connection to the server (not libcurl's own wake-up pair)
            except OSError:
                continue
        assert opened, "the kept connection is a socket of this process"
        for fd in opened:
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fd
    _native.close_idle_connections()
