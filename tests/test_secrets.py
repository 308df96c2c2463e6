"""Keys, passphrases and credentials never show up where users and their logs can see them:
exception messages and reprs, log records, object reprs, or files the library writes."""

from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch

import tensorstream
from _tensors import assert_same, random_tensor
from tensorstream import DecryptionParams, EncryptionParams, TensorDeserializer, TensorSerializer, _core, stream_io

PASSPHRASE = "correct horse battery staple 7f3a"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
AWS_TOKEN = "FwoGZXIvYXdzEXAMPLETOKENdGhpcyBpcyBub3QgYSByZWFsIHRva2Vu"


def _forms(secret: bytes | str) -> list[str]:
    """The ways a secret could leak into text: as is, hex, base64, Python's bytes repr."""
    import base64

    raw = secret.encode() if isinstance(secret, str) else secret
    out = [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode(), repr(raw)[2:-1]]
    if isinstance(secret, str):
        out.append(secret)
    return [form for form in out if len(form) >= 8]


class Leaks:
    """Collects every text the library produced during a test and greps it for secrets."""

    def __init__(self, caplog):
        self.caplog = caplog
        self.texts: list[str] = []

    def error(self, call) -> BaseException:
        with pytest.raises(Exception) as caught:
            call()
        exc = caught.value
        self.texts += [str(exc), repr(exc), repr(exc.args), repr(pickle.loads(pickle.dumps(exc)))]
        if exc.__cause__ is not None:
            self.texts += [str(exc.__cause__), repr(exc.__cause__)]
        return exc

    def check(self, secrets: list, files=()) -> None:
        self.texts += [r.getMessage() for r in self.caplog.records]
        blobs = [open(f, "rb").read() for f in files]
        for secret in secrets:
            for form in _forms(secret):
                for text in self.texts:
                    assert form not in text, f"a secret leaked into: {text[:200]}"
            raw = secret.encode() if isinstance(secret, str) else secret
            for name, blob in zip(files, blobs):
                assert raw not in blob, f"a secret was written into {name}"


@pytest.fixture
def leaks(caplog):
    caplog.set_level(logging.DEBUG)
    return Leaks(caplog)


def test_encryption_keys_and_passphrases(tmp_path, leaks):
    tensors = {"w": random_tensor((256, 256), torch.float32, 1)}
    key = EncryptionParams.random()
    by_key, by_pass = tmp_path / "key.tensors", tmp_path / "pass.tensors"
    with TensorSerializer(by_key, encryption=key) as s:
        s.write_state_dict(tensors)
    phrase = EncryptionParams.from_string(PASSPHRASE, opslimit=EncryptionParams.OpsLimit.MIN,
                                          memlimit=EncryptionParams.MemLimit.MIN)
    with TensorSerializer(by_pass, encryption=phrase) as s:
        s.write_state_dict(tensors)
    leaks.texts += [repr(key), str(key), repr(phrase), str(phrase),
                    repr(DecryptionParams.from_key(key.key)), repr(DecryptionParams.from_string(PASSPHRASE))]
    with TensorDeserializer(by_pass, encryption=DecryptionParams.from_string(PASSPHRASE)) as d:
        assert_same(d["w"], tensors["w"])
    wrong = DecryptionParams.from_key(bytes(32))
    leaks.error(lambda: TensorDeserializer(by_key, encryption=wrong)["w"])
    leaks.error(lambda: TensorDeserializer(by_pass, encryption=DecryptionParams.from_string(PASSPHRASE + "x"))["w"])
    leaks.error(lambda: TensorDeserializer(by_key, encryption=DecryptionParams.from_string(PASSPHRASE))["w"])
    leaks.check([key.key, PASSPHRASE], files=[by_key, by_pass])
    names = set(os.listdir(tmp_path))
    assert names == {"key.tensors", "pass.tensors"}, names  # nothing else left on disk


@pytest.mark.skipif(getattr(_core, "SigV4Signer", None) is None, reason="built without libcurl")
def test_s3_credentials(moto_s3, monkeypatch, tmp_path, leaks):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "1")
    bucket = moto_s3.create_bucket()
    path = tmp_path / "m.tensors"
    tensorstream.save({"w": random_tensor((64,), torch.float32, 2)}, path)
    moto_s3.put_object(bucket, "m.tensors", path.read_bytes())
    uri = f"s3://{bucket}/m.tensors"
    bad = dict(s3_access_key_id=moto_s3.access_key, s3_secret_access_key=AWS_SECRET, s3_endpoint=moto_s3.endpoint)
    leaks.error(lambda: stream_io.open_stream(uri, "rb", **bad))
    leaks.error(lambda: stream_io.open_stream(f"s3://{bucket}/missing", "rb", **bad))
    leaks.error(lambda: TensorSerializer(stream_io.open_stream(f"s3://{bucket}/new", "wb", **bad)))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", AWS_TOKEN)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    leaks.error(lambda: TensorDeserializer(uri))
    write_stream = stream_io.open_stream(f"s3://{bucket}/x", "wb")
    leaks.texts += [repr(write_stream), repr(write_stream.location), repr(write_stream.location.signer)]
    write_stream.abort()
    good = dict(s3_access_key_id=moto_s3.access_key, s3_secret_access_key=moto_s3.secret_key,
                s3_endpoint=moto_s3.endpoint)
    with stream_io.open_stream(uri, "rb", **good) as stream, TensorDeserializer(stream) as d:
        leaks.texts += [repr(stream), repr(d)]
        assert d["w"].numel() == 64
    leaks.check([AWS_SECRET, AWS_TOKEN, moto_s3.secret_key])
