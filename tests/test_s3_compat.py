"""S3 as tensorizer users call it: explicit temporary credentials (s3_session_token) against moto
with its signature checks on, and tensorizer's public bucket going unsigned to CoreWeave."""

from __future__ import annotations

import pytest

import tensorstream
from _tensors import assert_same
from tensorstream import TensorDeserializer, _s3, stream_io
from test_s3 import _isolated_config, _token_of, stored  # noqa: F401 - fixtures and helper shared with test_s3

PUBLIC = "s3://tensorized/EleutherAI/gpt-j-6B/fp16/model.tensors"
PUBLIC_URL = "https://accel-object.ord1.coreweave.com/tensorized/EleutherAI/gpt-j-6B/fp16/model.tensors"


# ------------------------------------------------------------------------------ s3_session_token


def test_session_token_argument_is_signed(moto_s3, stored):  # noqa: F811
    bucket, key, tensors, _ = stored
    key_id, secret, token = moto_s3.session_credentials()
    args = dict(s3_access_key_id=key_id, s3_secret_access_key=secret, s3_endpoint=moto_s3.endpoint)
    loc = _s3.resolve(f"s3://{bucket}/{key}", **args, s3_session_token=token)
    assert _token_of(loc) == token and loc.credentials_from == "arguments"
    with stream_io.open_stream(f"s3://{bucket}/{key}", "rb", **args, s3_session_token=token) as stream:
        with TensorDeserializer(stream, verify_hash=True) as d:
            for name, tensor in tensors.items():
                assert_same(d[name], tensor)


@pytest.mark.parametrize("token", [None, "forged"], ids=["missing", "wrong"])
def test_temporary_credentials_need_their_token(moto_s3, stored, token):  # noqa: F811
    bucket, key, _, _ = stored
    key_id, secret, real = moto_s3.session_credentials()
    if token == "forged":
        token = real[:-4] + "AAAA"
    with pytest.raises(tensorstream.NetworkError) as err:
        stream_io.open_stream(f"s3://{bucket}/{key}", s3_access_key_id=key_id, s3_secret_access_key=secret,
                              s3_endpoint=moto_s3.endpoint, s3_session_token=token)
    assert err.value.status in (400, 403)
    assert secret not in str(err.value) and real not in str(err.value)


# ------------------------------------------------------------------------------ tensorizer's public bucket


def test_public_bucket_goes_unsigned_to_coreweave():
    loc = _s3.resolve(PUBLIC)
    assert loc.url == PUBLIC_URL and loc.signer is None


def test_public_bucket_with_empty_keys_as_tensorizer_passes_them():
    loc = _s3.resolve(PUBLIC, s3_access_key_id="", s3_secret_access_key="")
    assert loc.url == PUBLIC_URL and loc.signer is None


def test_open_stream_reaches_the_public_endpoint_unsigned(monkeypatch):
    opened = {}

    class Recorder:
        size = 1024
        name = PUBLIC

        def __init__(self, url, **kwargs):
            opened.update(kwargs, url=url)

    monkeypatch.setattr(stream_io._native, "HttpSource", Recorder)
    with stream_io.open_stream(PUBLIC, "rb"):
        pass
    assert opened["url"] == PUBLIC_URL and opened["signer"] is None and opened["display"] == PUBLIC


def test_configured_credentials_win(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    loc = _s3.resolve(PUBLIC)
    assert loc.signer is not None and loc.signer.access_key_id == "ENVKEY"
    assert "coreweave" not in loc.url and loc.url.startswith("https://tensorized.s3.us-east-1.amazonaws.com/")


@pytest.mark.parametrize("where", ["argument", "environment", "s3cfg"])
def test_a_configured_endpoint_wins(_isolated_config, monkeypatch, where):  # noqa: F811
    kwargs = {}
    if where == "argument":
        kwargs["s3_endpoint"] = "http://127.0.0.1:9000"
    elif where == "environment":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    else:
        (_isolated_config / ".s3cfg").write_text("[default]\nhost_base = 127.0.0.1:9000\nuse_https = False\n")
    loc = _s3.resolve(PUBLIC, **kwargs)
    assert loc.url == "http://127.0.0.1:9000/tensorized/EleutherAI/gpt-j-6B/fp16/model.tensors"
    assert loc.signer is None


def test_other_buckets_keep_the_aws_default():
    loc = _s3.resolve("s3://tensorized-not/model.tensors")
    assert loc.url == "https://tensorized-not.s3.us-east-1.amazonaws.com/model.tensors"
