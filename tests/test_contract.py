"""One contract, three media: the same cases over a local file, HTTP (nginx) and S3 (moto with
signature checking). A medium may be slower; it may never load different tensors or fail
differently."""

from __future__ import annotations

import io
import os

import pytest
import tensorizer
import torch

import tensorstream
from _tensors import assert_same, random_tensor
from tensorstream import TensorDeserializer, TensorSerializer, _core, stream_io

MEDIA = ["file", "http", "s3"]


class Medium:
    """Publishes bytes under a name and says how to open them."""

    def __init__(self, kind: str, request, tmp_path, monkeypatch):
        self.kind = kind
        if kind == "file":
            self.root = tmp_path
        elif kind == "http":
            self.nginx = request.getfixturevalue("nginx")
            self.prefix = f"contract-{os.getpid()}-{request.node.name}".replace("[", "-").replace("]", "")
        else:
            s3 = request.getfixturevalue("moto_s3")
            self.s3 = s3
            self.bucket = s3.create_bucket()
            for name in list(os.environ):
                if name.startswith("AWS_"):
                    monkeypatch.delenv(name)
            monkeypatch.setenv("HOME", str(tmp_path))
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)

    def publish(self, name: str, raw: bytes) -> str:
        if self.kind == "file":
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(raw)
            return str(path)
        if self.kind == "http":
            path = self.nginx.root / f"{self.prefix}-{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(raw)
            return self.nginx.url(str(path.relative_to(self.nginx.root)))
        self.s3.put_object(self.bucket, name, raw)
        return f"s3://{self.bucket}/{name}"

    def missing(self) -> str:
        if self.kind == "file":
            return str(self.root / "missing.tensors")
        if self.kind == "http":
            return self.nginx.url("missing-contract.tensors")
        return f"s3://{self.bucket}/missing.tensors"


@pytest.fixture(params=MEDIA)
def medium(request, tmp_path, monkeypatch):
    if request.param != "file" and getattr(_core, "HttpSource", None) is None:
        pytest.skip("the core was built without libcurl")
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "5")
    monkeypatch.setenv("TENSORSTREAM_HTTP_DEADLINE", "30")
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "1")
    return Medium(request.param, request, tmp_path, monkeypatch)


def _tensors():
    return {
        "embed.weight": random_tensor((300, 700), torch.float16, 1),
        "blocks.0.attn.weight": random_tensor((256, 256), torch.bfloat16, 2),
        "blocks.0.attn.bias": random_tensor((256,), torch.float32, 3),
        "blocks.1.mlp.weight": random_tensor((512, 300), torch.float32, 4),
        "positions": random_tensor((77,), torch.int64, 5),
        "mask": random_tensor((9, 9), torch.bool, 6),
        "scalar": random_tensor((), torch.float64, 7),
    }


def _raw(tensors) -> bytes:
    buf = io.BytesIO()
    with TensorSerializer(buf) as serializer:
        serializer.write_state_dict(tensors)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model():
    tensors = _tensors()
    return tensors, _raw(tensors)


@pytest.mark.parametrize("verify_hash", [False, True], ids=["plain", "verified"])
def test_eager_load(medium, model, verify_hash):
    tensors, raw = model
    with TensorDeserializer(medium.publish("m.tensors", raw), verify_hash=verify_hash) as d:
        assert list(d) == list(tensors)
        for name, tensor in tensors.items():
            assert_same(d[name], tensor)
        assert d.total_tensor_bytes == sum(t.numel() * t.element_size() for t in tensors.values())


def test_lazy_load_and_filter(medium, model):
    tensors, raw = model
    where = medium.publish("m.tensors", raw)
    with TensorDeserializer(where, lazy_load=True) as d:
        assert_same(d["blocks.1.mlp.weight"], tensors["blocks.1.mlp.weight"])
        assert d.total_bytes_read < len(raw) // 2
    keep = [n for n in tensors if n.startswith("blocks.")]
    with TensorDeserializer(where, filter_func=lambda n: n in keep) as d:
        assert list(d) == keep


def test_dtype_and_load_into_module(medium):
    module = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.LayerNorm(30))
    buf = io.BytesIO()
    with TensorSerializer(buf) as serializer:
        serializer.write_module(module)
    where = medium.publish("module.tensors", buf.getvalue())
    fresh = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.LayerNorm(30))
    with TensorDeserializer(where) as d:
        d.load_into_module(fresh)
    for a, b in zip(module.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    with TensorDeserializer(where, dtype=torch.float16) as d:
        assert d["0.weight"].dtype == torch.float16


def test_open_stream_then_deserializer(medium, model):
    tensors, raw = model
    with stream_io.open_stream(medium.publish("m.tensors", raw), "rb") as stream:
        assert stream.read(5) == b"|TZR|"
        stream.seek(0)
        with TensorDeserializer(stream) as d:
            assert_same(d["mask"], tensors["mask"])


def test_file_written_by_tensorizer(medium, model, tmp_path):
    tensors, _ = model
    path = tmp_path / "by-tensorizer.tensors"
    serializer = tensorizer.TensorSerializer(str(path))
    serializer.write_state_dict(tensors)
    serializer.close()
    with TensorDeserializer(medium.publish("tz.tensors", path.read_bytes()), verify_hash=True) as d:
        for name, tensor in tensors.items():
            assert_same(d[name], tensor)


def test_truncated_file_is_a_format_error(medium, model):
    _, raw = model
    where = medium.publish("cut.tensors", raw[: len(raw) - 1000])
    with pytest.raises(tensorstream.FormatError):
        with TensorDeserializer(where) as d:
            list(d.values())


def test_flipped_byte_is_caught_by_verify_hash(medium, model):
    tensors, raw = model
    index = _core.read_index(_core.MemorySource(raw))
    entry = next(e for e in index.entries if e.name == b"blocks.0.attn.weight")
    bad = bytearray(raw)
    bad[entry.data_offset + 17] ^= 0x40
    with pytest.raises(tensorstream.HashMismatchError) as err:
        with TensorDeserializer(medium.publish("flipped.tensors", bytes(bad)), verify_hash=True) as d:
            list(d.values())
    assert err.value.tensor == "blocks.0.attn.weight"


def test_missing_file_is_file_not_found(medium):
    with pytest.raises(FileNotFoundError):
        TensorDeserializer(medium.missing())


# Encryption: the same over every medium -------------------------------------------------------------


def _encrypted_target(medium, name: str):
    """Where to write an encrypted file directly (S3: a streamed upload), or None for HTTP."""
    if medium.kind == "file":
        return str(medium.root / name)
    if medium.kind == "s3":
        return f"s3://{medium.bucket}/{name}"
    return None


def test_encrypted_round_trip(medium, model):
    tensors, _ = model
    params = tensorstream.EncryptionParams.random()
    target = _encrypted_target(medium, "enc.tensors")
    buf = io.BytesIO()
    with TensorSerializer(target or buf, encryption=params) as serializer:
        serializer.write_state_dict(tensors)
    where = target or medium.publish("enc.tensors", buf.getvalue())
    key = tensorstream.DecryptionParams.from_key(params.key)
    with TensorDeserializer(where, encryption=key, verify_hash=True) as d:
        for name, tensor in tensors.items():
            assert_same(d[name], tensor)
    with TensorDeserializer(where, encryption=key, lazy_load=True) as d:
        assert_same(d["positions"], tensors["positions"])
    with pytest.raises(tensorstream.KeyRequiredError):
        TensorDeserializer(where)


def test_encrypted_by_tensorizer_and_tampered(medium, model, tmp_path):
    tensors, _ = model
    params = tensorizer.EncryptionParams.random()
    path = tmp_path / "tz-enc.tensors"
    serializer = tensorizer.TensorSerializer(str(path), encryption=params)
    serializer.write_state_dict(tensors)
    serializer.close()
    raw = path.read_bytes()
    key = tensorstream.DecryptionParams.from_key(params.key)
    with TensorDeserializer(medium.publish("tz-enc.tensors", raw), encryption=key, verify_hash=True) as d:
        for name, tensor in tensors.items():
            assert_same(d[name], tensor)
    entry = next(e for e in _core.read_index(_core.MemorySource(raw)).entries if e.name == b"blocks.0.attn.weight")
    bad = bytearray(raw)
    bad[entry.data_offset + 17] ^= 0x40
    with pytest.raises(tensorstream.CryptographyError) as err:
        TensorDeserializer(medium.publish("tz-enc-bad.tensors", bytes(bad)), encryption=key)
    assert err.value.tensor == "blocks.0.attn.weight"
