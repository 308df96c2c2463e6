"""Shared fixtures: the file engine under test (io_uring and the pread fallback), nginx and the moto S3
server."""

from __future__ import annotations

import pytest

import tensorstream
from tensorstream import _core
from _http_servers import Nginx, nginx_binary
from _s3_server import moto_s3, moto_s3_anonymous  # noqa: E402,F401 - session fixtures

# Engine name as reported by TensorDeserializer.io_backend -> value of TENSORSTREAM_IO_BACKEND.
ENGINES = {"io_uring": "uring", "posix": "posix"}


def _has_io_uring() -> bool:
    return bool(_core.features()["io_uring"])


@pytest.fixture(params=sorted(ENGINES))
def engine(request, monkeypatch) -> str:
    """Forces one file engine through the environment; the value is the name it must report."""
    name = request.param
    if name == "io_uring" and not _has_io_uring():
        pytest.skip(f"io_uring unavailable here: {_core.features()['io_uring_error']}")
    monkeypatch.setenv("TENSORSTREAM_IO_BACKEND", ENGINES[name])
    return name


@pytest.fixture
def check_engine(engine):
    """``check_engine(deserializer)`` asserts that the forced engine is the one that ran."""

    def check(deserializer: tensorstream.TensorDeserializer) -> None:
        assert deserializer.io_backend == engine

    return check


@pytest.fixture
def open_file(check_engine):
    """``open_file(path, **kwargs)``: a TensorDeserializer that must have used the forced engine."""

    def opener(path, **kwargs) -> tensorstream.TensorDeserializer:
        deserializer = tensorstream.TensorDeserializer(path, **kwargs)
        check_engine(deserializer)
        return deserializer

    return opener


def pytest_configure(config):
    # torch warns whenever a complex32 tensor is made; the tests make them on purpose.
    config.addinivalue_line("filterwarnings", "ignore:ComplexHalf support is experimental")


@pytest.fixture(scope="session")
def nginx(tmp_path_factory):
    """A real nginx serving a temporary folder on a free loopback port (``nginx.root``)."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (Debian package 'nginx')")
    base = tmp_path_factory.mktemp("nginx")
    server = Nginx(binary, base / "www", base / "work")
    server.start()
    yield server
    server.stop()
