"""Loading over HTTP: real nginx for correctness, a fault-injecting server for the failure paths."""

from __future__ import annotations

import re
import time

import pytest
import tensorizer
import torch

import tensorstream
from _http_servers import FaultServer, free_port
from _tensors import assert_same, random_tensor, raw_bytes
from tensorstream import TensorDeserializer, TensorSerializer, _core


@pytest.fixture(autouse=True)
def _http_settings(monkeypatch):
    """Bounds every test: no request waits long, no load runs away (tests may override)."""
    if getattr(_core, "HttpSource", None) is None:
        pytest.skip("the core was built without the HTTP source (libcurl)")
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "5")
    monkeypatch.setenv("TENSORSTREAM_HTTP_DEADLINE", "20")
    for name in ("TENSORSTREAM_HTTP_CONNECTIONS", "TENSORSTREAM_HTTP_RETRIES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def _fault_server():
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture
def faults(_fault_server):
    _fault_server.reset()
    yield _fault_server
    _fault_server.reset()


def _mixed_state_dict():
    """About 20 MB over several dtypes and shapes, so a load spans several 8 MiB ranges."""
    specs = {
        "embed.weight": ((1024, 2048), torch.float32),
        "layers.0.weight": ((1024, 1024), torch.bfloat16),
        "layers.0.bias": ((1024,), torch.float16),
        "layers.1.weight": ((1024, 1536), torch.float32),
        "layers.1.index": ((1000,), torch.int64),
        "head.weight": ((512, 1024), torch.float64),
        "head.mask": ((7,), torch.bool),
        "scale": ((), torch.float32),
        "empty": ((0, 3), torch.float32),
    }
    return {name: random_tensor(shape, dtype, seed) for seed, (name, (shape, dtype)) in enumerate(specs.items())}


@pytest.fixture(scope="module")
def served_model(nginx):
    """(local path, URL, tensors) of a ~20 MB file that nginx serves."""
    tensors = _mixed_state_dict()
    path = nginx.root / "model.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_state_dict(tensors)
    return path, nginx.url(path.name), tensors


def _small_file(tmp_path, count=6, numel=32 * 1024):
    """Bytes of a file with ``count`` float32 tensors t0..tN of ``numel`` elements (128 KiB each)."""
    tensors = {f"t{i}": random_tensor((numel,), torch.float32, 100 + i) for i in range(count)}
    path = tmp_path / "small.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_state_dict(tensors)
    return path.read_bytes(), tensors


def _core_load(source, index=None, chunk_bytes=0, verify_hash=False):
    """Loads every tensor's raw bytes through ``_core`` with a chosen range size: {name: bytes}."""
    index = index if index is not None else _core.read_index(source)
    loader = _core.Loader(source, chunk_bytes=chunk_bytes)
    buffers, requests = {}, []
    for pos, entry in enumerate(index.entries):
        if entry.data_length == 0:
            requests.append((pos, 0, 0))
            continue
        buffers[entry.name] = torch.empty(entry.data_length, dtype=torch.uint8)
        requests.append((pos, buffers[entry.name].data_ptr(), entry.data_length))
    loader.load(index, requests, verify_hash)
    return loader, {name: buf.numpy().tobytes() for name, buf in buffers.items()}


def _expected_bytes(raw: bytes):
    index = _core.read_index(_core.MemorySource(raw))
    return {e.name: raw[e.data_offset:e.data_offset + e.data_length] for e in index.entries if e.data_length}


def _open_and_arm(faults, name, raw, kind, **params):
    """An HttpSource and its index, read cleanly; then ``kind`` is armed for the data ranges."""
    source = _core.HttpSource(faults.put(name, raw))
    index = _core.read_index(source)
    faults.fault(name, kind, **params)
    faults.forget(name)
    return source, index


ANY = object()


def _check_error(err: pytest.ExceptionInfo, url: str, status=ANY, attempts=None):
    """The NetworkError names the URL (as given, less credentials), the status and the attempts."""
    exc = err.value
    assert isinstance(exc, tensorstream.NetworkError)
    message = str(exc)
    assert exc.url == url and url in message, message
    if status is not ANY:
        assert exc.status == status, message
    if isinstance(exc.status, int) and exc.status >= 300:  # an error status is the reason: say it
        assert str(exc.status) in message, message
    if attempts is not None:
        assert exc.attempts == attempts, message
        assert re.search(rf"(?<![\w.:/-]){attempts}(?![\w.:/-])", message), message  # not in "127.0.0.1"


# ------------------------------------------------------------------------------- real nginx


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
@pytest.mark.parametrize("verify_hash", [False, True], ids=["plain", "verify"])
def test_nginx_load_matches_local(served_model, lazy, verify_hash):
    path, url, tensors = served_model
    with TensorDeserializer(path, lazy_load=lazy, verify_hash=verify_hash) as local, TensorDeserializer(
        url, lazy_load=lazy, verify_hash=verify_hash
    ) as remote:
        assert remote.io_backend == "http"
        assert list(remote) == list(local) == list(tensors)
        for name in reversed(list(tensors)):  # lazy: out of file order
            assert_same(remote[name], local[name])
            assert_same(remote[name], tensors[name])
        assert remote.total_tensor_bytes == local.total_tensor_bytes


def test_nginx_filter_and_short_form(served_model):
    path, url, tensors = served_model
    keep = lambda name: name.startswith("layers.")  # noqa: E731
    with TensorDeserializer(url, filter_func=keep) as remote:
        assert list(remote) == [n for n in tensors if keep(n)]
        for name in remote:
            assert_same(remote[name], tensors[name])
    with TensorDeserializer(url, lazy_load=True) as remote:
        chosen = [n for _, _, n, _ in remote.read_tensors(filter_func=lambda n: n.startswith("head."))]
    assert chosen == ["head.weight", "head.mask"]
    loaded, local = tensorstream.load(url, verify_hash=True), tensorstream.load(path)
    assert list(loaded) == list(local)
    for name in local:
        assert_same(loaded[name], local[name])


def test_nginx_small_ranges_through_core(served_model, nginx):
    path, url, _ = served_model
    chunk = 256 << 10
    before = nginx.access_log.read_text().count(f"/{path.name} ")
    source = _core.HttpSource(url)
    assert source.size == path.stat().st_size
    assert "127.0.0.1" in source.name
    loader, got = _core_load(source, chunk_bytes=chunk, verify_hash=True)
    assert loader.backend == "http"
    assert got == _expected_bytes(path.read_bytes())
    requests = nginx.access_log.read_text().count(f"/{path.name} ") - before
    assert requests >= path.stat().st_size // chunk, "the data was not fetched in chunk_bytes ranges"


def test_nginx_tensorizer_written_file(nginx):
    tensors = {"a": random_tensor((300, 200), torch.float32, 7), "b": random_tensor((4096,), torch.int16, 8)}
    path = nginx.root / "tensorizer.tensors"
    serializer = tensorizer.TensorSerializer(str(path))
    serializer.write_state_dict(tensors)
    serializer.close()
    with TensorDeserializer(nginx.url(path.name), verify_hash=True) as remote:
        assert list(remote) == ["a", "b"]
        for name, tensor in tensors.items():
            assert_same(remote[name], tensor)


def test_nginx_module_round_trip(nginx):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.LayerNorm(128), torch.nn.Linear(128, 10))
    path = nginx.root / "module.tensors"
    with TensorSerializer(path) as serializer:
        serializer.write_module(model)
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.LayerNorm(128), torch.nn.Linear(128, 10))
    with TensorDeserializer(nginx.url(path.name)) as remote:
        remote.load_into_module(fresh)
    for (name, got), want in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(got, want), name


def test_nginx_corrupted_data_fails_hash(served_model, nginx):
    path, _, tensors = served_model
    raw = bytearray(path.read_bytes())
    entry = _core.read_index(_core.MemorySource(bytes(raw))).entries[3]
    raw[entry.data_offset + entry.data_length // 2] ^= 0x10
    bad = nginx.root / "corrupt.tensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(tensorstream.HashMismatchError):
        TensorDeserializer(nginx.url(bad.name), verify_hash=True)
    with TensorDeserializer(nginx.url(bad.name)) as remote:  # without the check, the flipped bit shows
        assert raw_bytes(remote[entry.name.decode()]) != raw_bytes(tensors[entry.name.decode()])


def test_nginx_missing_file(nginx):
    url = nginx.url("no-such.tensors")
    with pytest.raises(tensorstream.NotFoundError) as err:
        TensorDeserializer(url)
    _check_error(err, url, 404, attempts=1)
    assert isinstance(err.value, FileNotFoundError)


def test_network_error_types_and_read_only_http(tmp_path):
    assert issubclass(tensorstream.NetworkError, tensorstream.TensorstreamError)
    assert issubclass(tensorstream.NetworkError, OSError)
    assert issubclass(tensorstream.AuthenticationError, (tensorstream.NetworkError, PermissionError))
    assert issubclass(tensorstream.NotFoundError, (tensorstream.NetworkError, FileNotFoundError))
    with pytest.raises(ValueError, match="read-only"):
        TensorSerializer("http://127.0.0.1:9/model.tensors")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- fault injection


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_failures_at_open(faults, tmp_path, status):
    raw, tensors = _small_file(tmp_path)
    url = faults.put("busy.tensors", raw)
    faults.fault("busy.tensors", "fail", count=2, status=status)
    with TensorDeserializer(url) as remote:
        for name, tensor in tensors.items():
            assert_same(remote[name], tensor)
    statuses = [hit.status for hit in faults.hits("busy.tensors")]
    assert statuses[:2] == [status, status] and 206 in statuses[2:], statuses


def test_retry_failures_in_data_ranges(faults, tmp_path):
    raw, _ = _small_file(tmp_path)
    source, index = _open_and_arm(faults, "flaky.tensors", raw, "fail", count=3, status=503)
    _, got = _core_load(source, index, chunk_bytes=64 << 10, verify_hash=True)
    assert got == _expected_bytes(raw)
    assert [h.status for h in faults.hits("flaky.tensors")].count(503) == 3


def test_broken_range_resumes_where_it_stopped(faults, tmp_path):
    raw, _ = _small_file(tmp_path)
    after = 10_000
    source, index = _open_and_arm(faults, "drop.tensors", raw, "drop", count=1, after=after)
    _, got = _core_load(source, index, chunk_bytes=128 << 10)
    assert got == _expected_bytes(raw)
    hits = faults.hits("drop.tensors")
    dropped = [h for h in hits if h.fault == "drop"]
    assert len(dropped) == 1 and dropped[0].sent == after, hits
    first = dropped[0]
    later = hits[hits.index(first) + 1:]
    assert (first.start + after, first.end) in [(h.start, h.end) for h in later], (
        f"no request resumed {first.range} at byte {first.start + after}: {[h.range for h in later]}"
    )
    assert first.start not in [h.start for h in later], "the broken range was fetched again from its start"


@pytest.mark.parametrize("when", ["open", "data"])
def test_server_ignoring_range_is_refused(faults, tmp_path, when):
    raw, _ = _small_file(tmp_path)
    name = "norange.tensors"
    url = faults.url(name)
    with pytest.raises(tensorstream.NetworkError) as err:
        if when == "open":
            faults.put(name, raw)
            faults.fault(name, "ignore_range")
            TensorDeserializer(url)
        else:  # a whole-file body must never be written into a range's destination
            source, index = _open_and_arm(faults, name, raw, "ignore_range")
            _core_load(source, index, chunk_bytes=64 << 10)
    assert "Range" in str(err.value), str(err.value)
    assert err.value.url == url and url in str(err.value)


@pytest.mark.parametrize("kind", ["short", "long"])
@pytest.mark.parametrize("when", ["open", "data"])
def test_wrong_body_length_fails_after_retries(faults, tmp_path, monkeypatch, kind, when):
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "2")
    raw, _ = _small_file(tmp_path)
    name = f"{kind}.tensors"
    url = faults.url(name)
    with pytest.raises(tensorstream.NetworkError) as err:
        if when == "open":
            faults.put(name, raw)
            faults.fault(name, kind)
            TensorDeserializer(url)
        else:
            source, index = _open_and_arm(faults, name, raw, kind)
            _core_load(source, index, chunk_bytes=64 << 10)
    _check_error(err, url, attempts=3)
    assert len([h for h in faults.hits(name) if h.fault == kind]) >= 3


def test_not_found_is_not_retried(faults, tmp_path):
    raw, _ = _small_file(tmp_path)
    url = faults.put("gone.tensors", raw)
    faults.fault("gone.tensors", "missing")
    with pytest.raises(tensorstream.NetworkError) as err:
        TensorDeserializer(url)
    _check_error(err, url, 404, attempts=1)
    assert len(faults.hits("gone.tensors")) == 1


@pytest.mark.parametrize("when", ["open", "data"])
def test_stalled_transfer_times_out(faults, tmp_path, monkeypatch, when):
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "1")
    raw, _ = _small_file(tmp_path)
    name = "stall.tensors"
    url = faults.url(name)
    start = time.monotonic()
    with pytest.raises(tensorstream.NetworkError) as err:
        if when == "open":
            faults.put(name, raw)
            faults.fault(name, "stall", seconds=8)
            TensorDeserializer(url)
        else:
            source, index = _open_and_arm(faults, name, raw, "stall", seconds=8)
            start = time.monotonic()
            _core_load(source, index, chunk_bytes=64 << 10)
    elapsed = time.monotonic() - start
    assert 1.5 <= elapsed < 7, f"gave up after {elapsed:.1f} s (timeout 1 s, 2 attempts)"
    _check_error(err, url, attempts=2)


def test_overall_deadline(faults, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "30")
    monkeypatch.setenv("TENSORSTREAM_HTTP_DEADLINE", "1")
    raw, _ = _small_file(tmp_path)
    source, index = _open_and_arm(faults, "slow.tensors", raw, "stall", seconds=8)
    start = time.monotonic()
    with pytest.raises(tensorstream.NetworkError) as err:
        _core_load(source, index, chunk_bytes=64 << 10)
    elapsed = time.monotonic() - start
    assert elapsed < 4, f"the 1 s deadline ended the load after {elapsed:.1f} s"
    assert faults.url("slow.tensors") in str(err.value)


def test_connection_refused(monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "1")
    url = f"http://127.0.0.1:{free_port()}/model.tensors"
    with pytest.raises(tensorstream.NetworkError) as err:
        TensorDeserializer(url)
    _check_error(err, url, None, attempts=2)


def test_error_names_url_without_credentials(faults):
    bare = faults.url("private.tensors")
    secret_url = bare.replace("http://", "http://alice:hunter2@") + "?X-Amz-Signature=c0ffee5ecret"
    with pytest.raises(tensorstream.NetworkError) as err:
        TensorDeserializer(secret_url)
    _check_error(err, bare, 404, attempts=1)
    for text in (str(err.value), repr(err.value), err.value.url, "".join(map(str, err.value.args))):
        assert "hunter2" not in text and "c0ffee5ecret" not in text, text


def test_lazy_load_fetches_only_requested_ranges(faults, tmp_path):
    raw, tensors = _small_file(tmp_path, count=8, numel=128 * 1024)  # 8 x 512 KiB
    entries = {e.name.decode(): e for e in _core.read_index(_core.MemorySource(raw)).entries}
    first_header = min(e.header_offset for e in entries.values())
    url = faults.put("lazy.tensors", raw)
    with TensorDeserializer(url, lazy_load=True) as remote:
        served = sum(h.sent for h in faults.hits("lazy.tensors"))
        # The opening read may guess past the index, but not load the file.
        assert served <= first_header + (1 << 20), f"opening read {served} bytes; the index ends at {first_header}"
        for name in ("t3", "t1"):
            faults.forget("lazy.tensors")
            assert_same(remote[name], tensors[name])
            begin, end = entries[name].header_offset, entries[name].data_offset + entries[name].data_length
            hits = faults.hits("lazy.tensors")
            outside = [h.range for h in hits if h.start is None or h.start < begin or h.end >= end]
            assert not outside, f"{name} is bytes {begin}-{end - 1}, but these ranges were fetched: {outside}"
            assert sum(h.sent for h in hits) <= end - begin
            served += sum(h.sent for h in hits)
    assert served < len(raw) // 2


def test_eager_load_fetches_each_byte_once(faults, tmp_path):
    raw, tensors = _small_file(tmp_path)
    url = faults.put("once.tensors", raw)
    with TensorDeserializer(url) as remote:
        for name, tensor in tensors.items():
            assert_same(remote[name], tensor)
    served = sum(h.sent for h in faults.hits("once.tensors"))
    assert len(raw) - 64 <= served <= len(raw) + (64 << 10), (served, len(raw))


@pytest.mark.parametrize("connections", [1, 4])
def test_parallel_ranges_respect_connection_limit(faults, tmp_path, monkeypatch, connections):
    monkeypatch.setenv("TENSORSTREAM_HTTP_CONNECTIONS", str(connections))
    raw, _ = _small_file(tmp_path, count=4)  # 512 KiB: 16 ranges of 32 KiB
    source, index = _open_and_arm(faults, "par.tensors", raw, "delay", seconds=0.05)
    _, got = _core_load(source, index, chunk_bytes=32 << 10)
    assert got == _expected_bytes(raw)
    hits = faults.hits("par.tensors")
    assert len(hits) >= 16
    peak = faults.max_in_flight("par.tensors")
    assert peak <= connections, f"{peak} requests in flight with TENSORSTREAM_HTTP_CONNECTIONS={connections}"
    if connections > 1:
        assert peak > 1, "range requests were not issued in parallel"
    data = [h for h in hits if h.end - h.start + 1 == 32 << 10]
    assert len(data) >= 14
    assert len({h.client for h in data}) <= connections, "data ranges did not reuse kept-alive connections"


# --- stream_io.open_stream ----------------------------------------------------------------------


def test_open_stream_reads_like_the_local_file(served_model):
    from tensorstream import stream_io

    path, url, _ = served_model
    local = path.read_bytes()
    with stream_io.open_stream(url, "rb") as stream:
        assert stream.read(5) == b"|TZR|"
        assert stream.tell() == 5
        stream.seek(-100, 2)
        assert stream.read() == local[-100:]
        stream.seek(12345)
        pieces = [stream.read(777) for _ in range(50)]  # small reads, served from the read-ahead
        assert b"".join(pieces) == local[12345 : 12345 + 777 * 50]
    with stream_io.open_stream(url, begin=10, end=30) as part:
        assert part.read() == local[10:30]


def test_deserializer_takes_an_open_stream(served_model):
    from tensorstream import stream_io

    path, url, tensors = served_model
    with stream_io.open_stream(url) as stream, tensorstream.TensorDeserializer(stream) as d:
        assert d.io_backend == "http"
        for name, tensor in tensors.items():
            assert_same(d[name], tensor)
    with stream_io.open_stream(str(path)) as f, tensorstream.TensorDeserializer(f) as d:
        assert d.io_backend in ("io_uring", "posix")
        assert set(d.keys()) == set(tensors)


def test_open_stream_refusals(served_model):
    from tensorstream import stream_io

    _, url, _ = served_model
    with pytest.raises(ValueError, match="read-only"):
        stream_io.open_stream(url, "wb")
    with stream_io.open_stream(url, begin=8) as part, pytest.raises(ValueError, match="start"):
        tensorstream.TensorDeserializer(part)
