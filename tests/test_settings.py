"""The settings object: one place for every TENSORSTREAM_* variable, overridable from code."""

import pytest
import torch

import tensorstream
from tensorstream import _core, _s3


@pytest.fixture(autouse=True)
def _no_overrides():
    _core.configure({}, replace=True)
    yield
    _core.configure({}, replace=True)


def _settings():
    return tensorstream.features()["settings"]


def test_defaults_environment_and_code_in_that_order(monkeypatch):
    monkeypatch.delenv("TENSORSTREAM_HTTP_CONNECTIONS", raising=False)
    assert _settings()["http_connections"] == 0  # auto: ramped per host
    assert tensorstream.features()["settings_origin"]["http_connections"] == "default"
    monkeypatch.setenv("TENSORSTREAM_HTTP_CONNECTIONS", "7")
    assert _settings()["http_connections"] == 7
    assert tensorstream.features()["settings_origin"]["http_connections"] == "environment"
    tensorstream.configure(http_connections=3)
    assert _settings()["http_connections"] == 3
    assert tensorstream.features()["settings_origin"]["http_connections"] == "configure"
    tensorstream.configure(http_connections=None)
    assert _settings()["http_connections"] == 7


def test_every_variable_is_listed_with_its_name():
    listed = {s["env"] for s in _core.describe_settings()}
    for name in ("TENSORSTREAM_IO_BACKEND", "TENSORSTREAM_THREADS", "TENSORSTREAM_HTTP_TIMEOUT",
                 "TENSORSTREAM_RING_MB", "TENSORSTREAM_HUGE_PAGES", "TENSORSTREAM_DEVICE_STANDIN",
                 "TENSORSTREAM_S3_PART_MB", "TENSORSTREAM_CUDA_LIBRARY", "TENSORSTREAM_PROGRESS"):
        assert name in listed


def test_configured_restores_what_was_there():
    tensorstream.configure(http_retries=2)
    with tensorstream.configured(http_retries=9, huge_pages=True):
        assert _settings()["http_retries"] == 9 and _settings()["huge_pages"] is True
    assert _settings()["http_retries"] == 2 and _settings()["huge_pages"] is False


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TENSORSTREAM_HTTP_CONNECTIONS", "-3"), ("TENSORSTREAM_HTTP_TIMEOUT", "-1"), ("TENSORSTREAM_RING_MB", "lots"),
     ("TENSORSTREAM_IO_BACKEND", "carrier-pigeon"), ("TENSORSTREAM_S3_PART_MB", "4"), ("TENSORSTREAM_THREADS", "1.5")],
)
def test_a_bad_environment_value_is_named(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        tensorstream.features()


def test_a_bad_keyword_or_value_changes_nothing():
    with pytest.raises(ValueError, match="http_connections"):
        tensorstream.configure(http_retries=1, http_connections=-1)
    with pytest.raises(ValueError, match="no_such_thing"):
        tensorstream.configure(no_such_thing=1)
    with pytest.raises(ValueError, match="io_backend"):
        tensorstream.configure(io_backend=["posix"])
    assert _settings()["http_retries"] == 5
    assert tensorstream.features()["settings_origin"]["http_retries"] == "default"


def test_loads_follow_the_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORSTREAM_IO_BACKEND", raising=False)
    sd = {"a": torch.arange(1000, dtype=torch.float32)}
    path = tmp_path / "m.tensors"
    tensorstream.save(sd, path)
    with tensorstream.configured(io_backend="posix"):
        assert tensorstream.features()["default_backend"] == "posix"
        assert _core.Loader(_core.FileSource(str(path))).backend == "posix"
        assert torch.equal(tensorstream.load(path)["a"], sd["a"])
    with tensorstream.configured(s3_part_mb=32, s3_upload_concurrency=3):
        assert _s3.part_bytes() == 32 << 20 and _s3.upload_concurrency() == 3


def test_text_values_are_checked_when_configured():
    with pytest.raises(ValueError, match="huge_pages"):
        tensorstream.configure(huge_pages="maybe")
