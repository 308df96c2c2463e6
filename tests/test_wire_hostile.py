"""Hostile servers, URLs and credentials: each case is a typed error within a bound, with nothing
sent to a host or scheme it was not meant for, and no thread or descriptor left behind.

Every request goes to a ``WireServer`` on loopback (see ``_wire_server.py``); ``elsewhere`` is a
second one that stands for any other host: a request reaching it is a leak.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import gc
import io
import os
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest
import torch

import tensorstream
from _http_servers import self_signed_certificate
from _wire_server import WireServer, open_fds, os_threads
from tensorstream import HashMismatchError, NetworkError, TensorDeserializer, _core, _native, _s3, stream_io

pytestmark = pytest.mark.skipif(getattr(_core, "HttpSource", None) is None, reason="built without libcurl")

TOKEN = "session-token-for-the-wire-server"
CREDS = {"s3_access_key_id": "AKIDWIRE", "s3_secret_access_key": "wire-secret"}


@pytest.fixture(scope="module")
def wire():
    server = WireServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def elsewhere():
    server = WireServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    buf = io.BytesIO()
    tensorstream.save({"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(3)}, buf)
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _guard(wire, elsewhere, monkeypatch):
    """Short timeouts; afterwards: nothing reached ``elsewhere``, no thread or descriptor is left."""
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "1")
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "2")
    monkeypatch.setenv("TENSORSTREAM_HTTP_OPEN_TIMEOUT", "5")
    monkeypatch.delenv("TENSORSTREAM_HTTP_DEADLINE", raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("HOME", "/nonexistent")
    faulthandler.dump_traceback_later(60, exit=True)
    wire.reset()
    elsewhere.reset()
    _native.close_idle_connections()  # connections kept for later loads are not leaks
    fds, threads, tasks = open_fds(), threading.active_count(), os_threads()
    yield
    faulthandler.cancel_dump_traceback_later()
    assert elsewhere.connections == 0, f"requests reached another host: {elsewhere.requests}"
    _native.close_idle_connections()
    end = time.monotonic() + 3
    while (open_fds(), threading.active_count(), os_threads()) > (fds, threads, tasks) and time.monotonic() < end:
        time.sleep(0.05)  # the servers' connection threads end once the client hangs up
    assert open_fds() <= fds and threading.active_count() <= threads and os_threads() <= tasks


@contextlib.contextmanager
def within(seconds: float):
    start = time.monotonic()
    yield
    took = time.monotonic() - start
    assert took < seconds, f"took {took:.1f} s, more than {seconds} s"


def s3_uri_on(wire: WireServer, key: str, bucket: str = "bkt") -> tuple[str, dict]:
    return f"s3://{bucket}/{key}", {"s3_endpoint": wire.base, **CREDS}


# ------------------------------------------------------------------------------------ redirects


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_redirect_to_another_protocol_is_refused(wire, elsewhere, scheme):
    wire.route("/bkt/m.tensors", "redirect", location=f"ftp://127.0.0.1:{elsewhere.port}/m.tensors")
    with within(3), pytest.raises(NetworkError, match="refused a redirect to ftp://"):
        if scheme == "http":
            TensorDeserializer(wire.url("/bkt/m.tensors"))
        else:
            stream_io.open_stream("s3://bkt/m.tensors", s3_endpoint=wire.base, s3_access_key_id="",
                                  s3_secret_access_key="")


def test_redirect_loop_ends_after_a_few_hops(wire):
    wire.route("/loop", "loop")
    with within(3), pytest.raises(NetworkError, match="more than 5 redirects"):
        TensorDeserializer(wire.url("/loop"))
    assert len(wire.hits("/loop")) <= 6 * 2  # five hops, at most two attempts


def test_a_few_redirects_are_followed(wire, model_bytes):
    wire.route("/m.tensors", "file", data=model_bytes)
    wire.route("/hop2", "redirect", location="/m.tensors")
    wire.route("/hop1", "redirect", location=wire.url("/hop2"), status=307)
    with within(5), TensorDeserializer(wire.url("/hop1")) as d:
        assert torch.equal(d["w"], torch.arange(64, dtype=torch.float32))


def test_user_info_is_not_sent_where_a_redirect_leads(wire, elsewhere):
    wire.route("/secret", "redirect", location=elsewhere.url("/x"))
    url = wire.url("/secret").replace("://", "://user:hunter2@")
    with pytest.raises(NetworkError):
        TensorDeserializer(url)
    assert wire.hits("/secret")[0].headers.get("authorization")
    assert all("authorization" not in r.headers for r in elsewhere.requests)
    elsewhere.reset()  # unsigned redirects may go to another host; they carry no credentials


def test_https_never_redirects_to_http(tmp_path, elsewhere):
    made = self_signed_certificate(tmp_path)
    if made is None:
        pytest.skip("the openssl command is not installed")
    cert, key, _ = made
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    secure = WireServer(tls=context)
    try:
        secure.route("/m.tensors", "redirect", location=elsewhere.url("/m.tensors"))
        cainfo = stream_io.CAInfo(cacert=str(cert))
        with within(3), pytest.raises(NetworkError, match="never https to http"):
            stream_io.open_stream(secure.url("/m.tensors"), certificate_handling=cainfo)
        assert len(secure.hits("/m.tensors")) == 1
    finally:
        secure.close()


@pytest.mark.parametrize("status", [301, 307])
def test_signed_requests_never_follow_a_redirect(wire, elsewhere, monkeypatch, status):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDS["s3_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDS["s3_secret_access_key"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    wire.route("/bkt/m.tensors", "s3_moved", status=status, region="eu-west-3",
               endpoint="bkt.s3.eu-west-3.amazonaws.com", location=elsewhere.url("/bkt/m.tensors"))
    with within(3), pytest.raises(NetworkError, match="region eu-west-3, endpoint bkt.s3.eu-west-3") as info:
        stream_io.open_stream("s3://bkt/m.tensors", s3_endpoint=wire.base)
    assert info.value.status == status
    (only,) = wire.hits("/bkt/m.tensors")  # not retried, not followed
    assert only.headers["x-amz-security-token"] == TOKEN  # sent to the host it was signed for only


# ------------------------------------------------------------------------------- dot segments


@pytest.mark.parametrize("key", ["../good/x.tensors", "a/../b.tensors", "./c.tensors", "d/./e.tensors"])
def test_dot_segments_are_sent_as_they_are(wire, model_bytes, key):
    wire.route(f"/public/{key}", "file", data=model_bytes)
    wire.route("/good/x.tensors", "file", data=b"another object")
    stream = stream_io.open_stream(f"s3://public/{key}", s3_endpoint=wire.base, s3_access_key_id="",
                                   s3_secret_access_key="")
    with TensorDeserializer(stream) as d:
        assert d["b"].tolist() == [1.0, 1.0, 1.0]
    assert {r.target for r in wire.requests} == {f"/public/{key}"}


@pytest.mark.parametrize("key", ["a/../b.tensors", "./c.tensors", "d/./e.tensors"])
def test_dot_segment_keys_round_trip_with_signatures(moto_s3, key):
    bucket = moto_s3.create_bucket()
    kwargs = {"s3_endpoint": moto_s3.endpoint, "s3_access_key_id": moto_s3.access_key,
              "s3_secret_access_key": moto_s3.secret_key}
    tensors = {"t": torch.arange(10, dtype=torch.int64)}
    with stream_io.open_stream(f"s3://{bucket}/{key}", "wb", **kwargs) as f:
        tensorstream.save(tensors, f)
    keys = [o["Key"] for o in moto_s3.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [key]
    with TensorDeserializer(stream_io.open_stream(f"s3://{bucket}/{key}", **kwargs)) as d:
        assert torch.equal(d["t"], tensors["t"])


# ------------------------------------------------------------------------- NUL and control bytes


@pytest.mark.parametrize("where", ["path", "http", "s3"])
def test_a_nul_byte_in_a_path_or_url_is_refused(wire, tmp_path, model_bytes, where):
    good = tmp_path / "model.tensors"
    good.write_bytes(model_bytes)
    wire.route("/model.tensors", "file", data=model_bytes)
    name = {"path": str(good), "http": wire.url("/model.tensors"), "s3": "s3://bkt/model.tensors"}[where]
    hostile = name + "\x00.evil"
    for attempt in (lambda: tensorstream.load(hostile), lambda: TensorDeserializer(hostile),
                    lambda: stream_io.open_stream(hostile, s3_endpoint=wire.base, s3_access_key_id="",
                                                  s3_secret_access_key=""),
                    lambda: tensorstream.save({"x": torch.ones(1)}, hostile)):
        with pytest.raises(ValueError):
            attempt()
    assert wire.requests == []


@pytest.mark.parametrize("field", ["s3_access_key_id", "s3_secret_access_key", "s3_region_name", "s3_endpoint",
                                   "session_token"])
@pytest.mark.parametrize("bad", ["\r\nX-Injected: yes", "\x00", "\x7f", "\t"])
def test_control_characters_in_credentials_are_refused(wire, monkeypatch, field, bad):
    uri, kwargs = s3_uri_on(wire, "m.tensors")
    value = f"{kwargs.get(field, 'v')}{bad}"
    if field == "session_token" and "\x00" in bad:
        pytest.skip("an environment variable cannot hold a NUL byte")
    if field == "session_token":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDWIRE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wire-secret")
        monkeypatch.setenv("AWS_SESSION_TOKEN", value)
        kwargs = {"s3_endpoint": wire.base}
    else:
        kwargs[field] = value
    with pytest.raises(ValueError) as info:
        stream_io.open_stream(uri, **kwargs)
    assert value not in str(info.value) and "X-Injected" not in str(info.value)
    assert wire.requests == []


# ---------------------------------------------------------------------------- slow and endless


def test_opening_a_trickling_server_is_bounded(wire, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_HTTP_OPEN_TIMEOUT", "2")
    wire.route("/slow", "trickle")
    with within(4), pytest.raises(NetworkError, match="time allowed for opening"):
        TensorDeserializer(wire.url("/slow"))


def test_ctrl_c_interrupts_opening(wire):
    wire.route("/slow", "trickle")
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    with within(2), pytest.raises(KeyboardInterrupt):
        timer.start()
        try:
            TensorDeserializer(wire.url("/slow"))
        finally:
            timer.join()


@pytest.mark.parametrize("where", ["index", "stream"])
def test_ctrl_c_interrupts_reads_after_opening(wire, model_bytes, where):
    """The size probe answers; the index read (or a stream's read) then stalls mid-body."""
    wire.route("/later", "stall_later", data=model_bytes, served=1)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    with within(2), pytest.raises(KeyboardInterrupt):
        timer.start()
        try:
            if where == "index":
                TensorDeserializer(wire.url("/later"))
            else:
                with stream_io.open_stream(wire.url("/later"), "rb") as stream:
                    stream.read(1 << 20)
        finally:
            timer.join()


def test_an_endless_error_body_is_not_read(wire):
    wire.route("/gone", "endless_error", status=404)
    with within(3), pytest.raises(tensorstream.NotFoundError, match="HTTP 404"):
        TensorDeserializer(wire.url("/gone"))


def test_a_stall_in_the_headers_is_a_timeout_and_is_retried(wire, model_bytes, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "1")
    wire.route("/half", "stall_headers", data=model_bytes, count=1)
    with within(8), TensorDeserializer(wire.url("/half")) as d:
        assert d["b"].tolist() == [1.0, 1.0, 1.0]
    assert len(wire.hits("/half")) >= 2
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "0")
    wire.route("/half", "stall_headers", data=model_bytes, count=5)
    with within(5), pytest.raises(NetworkError, match="[Tt]imeout"):
        TensorDeserializer(wire.url("/half"))


# ------------------------------------------------------------------------------- Content-Range


@pytest.mark.parametrize("total", ["-1", "*", "18446744073709551615", "999999999999999999", "1e9", ""])
def test_an_absurd_content_range_total_is_refused(wire, model_bytes, total):
    wire.route("/m", "file", data=model_bytes, totals=[total])
    with within(3), pytest.raises(NetworkError, match="no usable size"):
        TensorDeserializer(wire.url("/m"))


def test_a_resource_that_changes_size_is_refused(wire, model_bytes):
    wire.route("/m", "file", data=model_bytes, totals=[len(model_bytes), len(model_bytes) + 1])
    with within(3), pytest.raises(NetworkError, match="changed size"):
        TensorDeserializer(wire.url("/m"))


# -------------------------------------------------------------------------------- clear errors


def test_hash_mismatch_names_the_url(wire, model_bytes):
    damaged = bytearray(model_bytes)
    damaged[model_bytes.rindex(b"\x00\x00\x80?") + 3] ^= 0x01  # in the data of "b" (ones)
    wire.route("/bad.tensors", "file", data=bytes(damaged))
    with pytest.raises(HashMismatchError, match=r"/bad\.tensors.*mismatch.*tensor"):
        tensorstream.load(wire.url("/bad.tensors"), verify_hash=True)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/urandom", "/proc/self/status"])
def test_special_files_are_not_regular_files(tmp_path, special):
    path = special
    if special == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)  # no writer: opening it for reading must not wait for one
    with within(1), pytest.raises(OSError, match="not a regular file"):
        TensorDeserializer(path)


def test_a_full_disk_names_the_file():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with pytest.raises(OSError) as info:
        tensorstream.save({"x": torch.ones(1 << 16)}, "/dev/full")
    code, filename = info.value.errno, info.value.filename
    del info  # its traceback holds the serializer, and so the writer's descriptor
    gc.collect()
    assert code == errno.ENOSPC and filename == "/dev/full"
    assert os.path.exists("/dev/full")  # a device is never removed


def test_a_failed_save_removes_its_partial_file(tmp_path):
    target = tmp_path / "partial.tensors"
    script = (
        "import resource, signal, torch, tensorstream\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
        "try:\n"
        f"    tensorstream.save({{'x': torch.ones(1 << 20)}}, {str(target)!r})\n"
        "except OSError as e:\n"
        "    print(e.errno, e.filename, e.strerror)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.split()[:2] == [str(errno.EFBIG), str(target)], out.stderr
    assert "partial file was removed" in out.stdout
    assert not target.exists()


def test_the_s3_location_repr_hides_endpoint_passwords():
    loc = _s3.resolve("s3://b/k", s3_endpoint="http://user:hunter2@127.0.0.1:9", s3_access_key_id="",
                      s3_secret_access_key="")
    assert "hunter2" not in repr(loc) and "user:***@" in repr(loc)
