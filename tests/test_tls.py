"""HTTPS certificate handling: the system store by default, tensorizer's CAInfo (a CA file, a CA
directory, or no checks) when asked."""

from __future__ import annotations

import io
import ssl

import pytest
import torch

import tensorstream
from _http_servers import FaultServer, self_signed_certificate
from _tensors import assert_same, random_tensor
from tensorstream import TensorDeserializer, TensorSerializer, _core, stream_io
from tensorstream.stream_io import CAInfo

pytestmark = pytest.mark.skipif(getattr(_core, "HttpSource", None) is None, reason="built without libcurl")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (cert file, key file, hashed CA directory)."""
    made = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    if made is None:
        pytest.skip("the openssl command is not installed")
    return made


@pytest.fixture(scope="module")
def https_server(certificate):
    cert, key, _ = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = FaultServer(tls=context)
    yield server
    server.close()


@pytest.fixture(scope="module")
def https(https_server):
    tensors = {"w": random_tensor((64, 64), torch.float32, 1), "b": random_tensor((64,), torch.bfloat16, 2)}
    buf = io.BytesIO()
    with TensorSerializer(buf) as serializer:
        serializer.write_state_dict(tensors)
    url = https_server.put("m.tensors", buf.getvalue())
    yield url, tensors


@pytest.fixture(autouse=True)
def _bounded(monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "1")
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "5")


def test_untrusted_certificate_is_refused_by_default(https):
    url, _ = https
    assert url.startswith("https://")
    with pytest.raises(tensorstream.NetworkError) as err:
        TensorDeserializer(url)
    assert "certificate" in str(err.value).lower() and err.value.url == url


@pytest.mark.parametrize("how", ["cacert", "capath", "allow_untrusted"])
def test_ca_info(https, certificate, how):
    url, tensors = https
    cert, _, cadir = certificate
    info = {"cacert": lambda: CAInfo(cacert=str(cert)), "capath": lambda: CAInfo(capath=str(cadir)),
            "allow_untrusted": lambda: CAInfo(allow_untrusted=True)}[how]()
    with stream_io.open_stream(url, certificate_handling=info) as stream, TensorDeserializer(stream) as d:
        for name, tensor in tensors.items():
            assert_same(d[name], tensor)


def test_new_connections_resume_the_tls_session(https, https_server, certificate):
    url, tensors = https
    cert, _, _ = certificate
    for _ in range(2):
        with stream_io.open_stream(url, certificate_handling=CAInfo(cacert=str(cert))) as stream:
            with TensorDeserializer(stream) as d:
                assert_same(d["w"], tensors["w"])
        tensorstream.close_idle_connections()  # the next load opens new connections
    hits = https_server.hits("m.tensors")
    first, last = hits[0], hits[-1]
    assert first.client != last.client and not first.resumed
    assert last.resumed  # the process's TLS session cache outlived the closed connections


def test_ca_info_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError):
        CAInfo()
    with pytest.raises(ValueError):
        CAInfo(cacert=str(tmp_path / "none.pem"))
    with pytest.raises(ValueError):
        CAInfo(capath=str(tmp_path), allow_untrusted=True)
    with pytest.raises(TypeError):
        stream_io.open_stream("https://example.invalid/x", certificate_handling="insecure")
    assert CAInfo(allow_untrusted=True) == CAInfo(allow_untrusted=True)
    assert "allow_untrusted" in repr(CAInfo(allow_untrusted=True))
