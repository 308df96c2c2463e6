"""S3: where credentials come from, SigV4 against AWS's own signer, and loading / saving against a
moto server that checks every signature."""

from __future__ import annotations

import calendar
import http.server
import io
import threading
import time

import pytest
import torch

import tensorstream
from _http_servers import LOOPBACK, free_port
from _tensors import assert_same, random_tensor
from tensorstream import TensorDeserializer, TensorSerializer, _core, _s3, stream_io

SECRET = "s3cr3t/Value+That=Must-Never-Leak"

pytestmark = pytest.mark.skipif(getattr(_core, "SigV4Signer", None) is None, reason="built without libcurl")


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    """No user's ~/.s3cfg, ~/.aws or AWS_* variables leak into a test; every request is bounded."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(__import__("os").environ):
        if name.startswith("AWS_") or name.startswith("TENSORSTREAM_S3_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "5")
    monkeypatch.setenv("TENSORSTREAM_HTTP_DEADLINE", "30")
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "2")
    return home


def _token_of(location):
    if location.signer is None:
        return None
    headers = dict(location.signer.sign("GET", location.url, [], "UNSIGNED-PAYLOAD", 0)["headers"])
    return headers.get("x-amz-security-token")


# ------------------------------------------------------------------------------ credentials


def test_explicit_arguments_win(_isolated_config, monkeypatch):
    (_isolated_config / ".s3cfg").write_text("[default]\naccess_key = CFGKEY\nsecret_key = cfgsecret\nhost_base = cfg.example\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    loc = _s3.resolve("s3://bkt/a/b.tensors", "ARGKEY", SECRET, "http://127.0.0.1:9000")
    assert loc.signer.access_key_id == "ARGKEY"
    assert loc.url == "http://127.0.0.1:9000/bkt/a/b.tensors"
    assert loc.credentials_from == "arguments"


def test_explicit_keys_read_no_credential_file(_isolated_config, monkeypatch):
    aws = _isolated_config / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = f\n"
                                     "aws_session_token = FILETOKEN\n")
    (aws / "config").write_text("[default]\nregion = eu-north-1\n")
    (_isolated_config / ".s3cfg").write_text("[default]\naccess_key = CFGKEY\nsecret_key = c\naccess_token = CFGTOKEN\n")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "ENVTOKEN")
    monkeypatch.setenv("AWS_PROFILE", "absent")  # a profile that exists nowhere is no error: it is not needed
    real_open, opened = open, []

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    loc = _s3.resolve("s3://bkt/k", "ARGKEY", SECRET)
    assert loc.signer.access_key_id == "ARGKEY" and loc.credentials_from == "arguments"
    assert _token_of(loc) is None  # no token from the files or the environment with explicit keys
    assert not [p for p in opened if p.endswith(("credentials", ".s3cfg"))], opened
    assert _token_of(_s3.resolve("s3://bkt/k", "ARGKEY", SECRET, s3_session_token="ARGTOKEN")) == "ARGTOKEN"


@pytest.mark.parametrize("given", ["key_id", "secret"])
def test_an_explicit_key_is_never_paired_with_one_from_a_file(_isolated_config, monkeypatch, given):
    (_isolated_config / ".s3cfg").write_text("[default]\naccess_key = CFGKEY\nsecret_key = cfgsecret\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    kwargs = {"s3_access_key_id": "ARGKEY"} if given == "key_id" else {"s3_secret_access_key": SECRET}
    with pytest.raises(ValueError, match="never paired") as err:
        _s3.resolve("s3://bkt/k", **kwargs)
    assert "ARGKEY" not in str(err.value) and SECRET not in str(err.value)


def test_s3cfg_is_read_before_the_aws_chain(_isolated_config, monkeypatch):
    (_isolated_config / ".s3cfg").write_text(
        "[default]\naccess_key = CFGKEY\nsecret_key = cfgsecret\nhost_base = objects.example:8080\n"
        "use_https = False\naccess_token = CFGTOKEN\nbucket_location = eu-central-1\n"
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    loc = _s3.resolve("s3://bkt/m.tensors")
    assert loc.signer.access_key_id == "CFGKEY"
    assert loc.url == "http://objects.example:8080/bkt/m.tensors"
    assert loc.region == "eu-central-1"
    assert _token_of(loc) == "CFGTOKEN"


def test_explicit_config_path_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="s3_config_path"):
        _s3.resolve("s3://bkt/k", s3_config_path=tmp_path / "nope.cfg")
    cfg = tmp_path / "other.cfg"
    cfg.write_text("[default]\naccess_key = K2\nsecret_key = S2\n")
    assert _s3.resolve("s3://bkt/k", s3_config_path=cfg).signer.access_key_id == "K2"
    cfg.write_text("[other]\naccess_key = K2\n")
    with pytest.raises(ValueError, match="default"):
        _s3.resolve("s3://bkt/k", s3_config_path=cfg)


def test_environment_credentials_with_session_token(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "ENVTOKEN")
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.internal.example")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://ignored.example")
    loc = _s3.resolve("s3://bkt/k")
    assert (loc.signer.access_key_id, loc.region, _token_of(loc)) == ("ENVKEY", "ap-south-1", "ENVTOKEN")
    assert loc.url == "https://s3.internal.example/bkt/k"
    assert loc.credentials_from == "environment"


def test_profile_files(_isolated_config, monkeypatch):
    aws = _isolated_config / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = DEFKEY\naws_secret_access_key = d\n"
        "[work]\naws_access_key_id = WORKKEY\naws_secret_access_key = w\naws_session_token = WORKTOKEN\n"
    )
    (aws / "config").write_text(
        "[default]\nregion = us-west-2\n"
        "[profile work]\nregion = eu-west-3\nendpoint_url = http://minio.local:9000\n"
        "s3 =\n  addressing_style = virtual\n"
    )
    loc = _s3.resolve("s3://bkt/k")
    assert (loc.signer.access_key_id, loc.region) == ("DEFKEY", "us-west-2")
    assert loc.url == "https://bkt.s3.us-west-2.amazonaws.com/k"  # AWS itself: virtual-hosted
    monkeypatch.setenv("AWS_PROFILE", "work")
    loc = _s3.resolve("s3://bkt/k")
    assert (loc.signer.access_key_id, loc.region, _token_of(loc)) == ("WORKKEY", "eu-west-3", "WORKTOKEN")
    assert loc.url == "http://bkt.minio.local:9000/k"
    monkeypatch.setenv("AWS_PROFILE", "missing")
    with pytest.raises(ValueError, match="missing"):
        _s3.resolve("s3://bkt/k")


def test_no_credentials_means_unsigned_requests():
    loc = _s3.resolve("s3://public-bucket/model.tensors")
    assert loc.signer is None and "unsigned" in loc.credentials_from
    assert _s3.resolve("s3://bkt/k", "", "", "http://h:1").signer is None  # tensorizer's "" convention


def test_incomplete_credentials_are_refused_without_echoing_them():
    with pytest.raises(ValueError, match="s3_secret_access_key") as err:
        _s3.resolve("s3://bkt/k", s3_access_key_id="ONLYKEY")
    assert "ONLYKEY" not in str(err.value)
    with pytest.raises(ValueError, match="s3_access_key_id") as err:
        _s3.resolve("s3://bkt/k", s3_secret_access_key=SECRET)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    "uri, endpoint, style, url",
    [
        ("s3://bkt/dir/a b+c.tensors", None, None, "https://bkt.s3.us-east-1.amazonaws.com/dir/a%20b%2Bc.tensors"),
        ("s3://my.dotted.bucket/k", None, None, "https://s3.us-east-1.amazonaws.com/my.dotted.bucket/k"),
        ("s3://bkt/k", "objects.example", None, "https://objects.example/bkt/k"),
        ("s3://bkt/k", "http://127.0.0.1:9000/", "virtual", "http://bkt.127.0.0.1:9000/k"),
        ("s3://bkt/k", None, "path", "https://s3.us-east-1.amazonaws.com/bkt/k"),
    ],
)
def test_addressing(monkeypatch, uri, endpoint, style, url):
    if style:
        monkeypatch.setenv("TENSORSTREAM_S3_ADDRESSING", style)
    assert _s3.resolve(uri, "K", SECRET, endpoint).url == url


@pytest.mark.parametrize("bad", ["s3://", "s3://bucket", "s3://bucket/", "http://x/y"])
def test_malformed_uris(bad):
    with pytest.raises(ValueError):
        _s3.resolve(bad)


def test_secrets_stay_out_of_reprs(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "TOKEN-SECRET-VALUE")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "KEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    loc = _s3.resolve("s3://bkt/k")
    for text in (repr(loc), str(loc), repr(loc.signer), repr(stream_io.S3WriteStream(loc))):
        assert SECRET not in text and "TOKEN-SECRET-VALUE" not in text, text
    assert "KEYID" in repr(loc)


# ----------------------------------------------------------------------------------- SigV4


@pytest.mark.parametrize(
    "method, url, token, payload",
    [
        ("GET", "https://bkt.s3.eu-west-1.amazonaws.com/dir/a%20b%2Bc.tensors", None, "UNSIGNED-PAYLOAD"),
        ("GET", "http://127.0.0.1:9000/bkt/k", "SESSION/TOKEN+x=", "UNSIGNED-PAYLOAD"),
        ("PUT", "http://127.0.0.1:9000/bkt/k?partNumber=12&uploadId=a%2Bb", None, "UNSIGNED-PAYLOAD"),
        ("POST", "https://objects.example/bkt/k?uploads", "T", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("DELETE", "https://objects.example:8443/bkt/k%7E1?uploadId=xyz", None, "UNSIGNED-PAYLOAD"),
    ],
)
def test_signatures_match_botocore(method, url, token, payload):
    auth = pytest.importorskip("botocore.auth")
    awsrequest = pytest.importorskip("botocore.awsrequest")
    credentials = pytest.importorskip("botocore.credentials")
    request = awsrequest.AWSRequest(method=method, url=url, headers={"x-amz-content-sha256": payload})
    auth.S3SigV4Auth(credentials.Credentials("AKIDEXAMPLE", SECRET, token), "s3", "eu-west-1").add_auth(request)
    stamp = request.headers["X-Amz-Date"]
    when = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    payload = request.headers["X-Amz-Content-SHA256"]  # botocore may hash the (empty) body itself
    ours = _core.SigV4Signer("AKIDEXAMPLE", SECRET, token or "", "eu-west-1").sign(method, url, [], payload, when)
    assert dict(ours["headers"])["authorization"] == request.headers["Authorization"]


# ------------------------------------------------------------------------- moto: reading


def _state_dict():
    return {
        "embed.weight": random_tensor((256, 1024), torch.float16, 1),
        "layers.0.weight": random_tensor((512, 512), torch.bfloat16, 2),
        "layers.0.bias": random_tensor((512,), torch.float32, 3),
        "head.index": random_tensor((100,), torch.int64, 4),
        "empty": random_tensor((0, 3), torch.float32, 5),
    }


def _file_bytes(tensors) -> bytes:
    buf = io.BytesIO()
    with TensorSerializer(buf) as serializer:
        serializer.write_state_dict(tensors)
    return buf.getvalue()


@pytest.fixture(scope="module")
def stored(moto_s3):
    """(bucket, key, tensors, file bytes) of a ~1.3 MB model uploaded to moto."""
    tensors = _state_dict()
    raw = _file_bytes(tensors)
    bucket = moto_s3.create_bucket()
    moto_s3.put_object(bucket, "models/m.tensors", raw)
    return bucket, "models/m.tensors", tensors, raw


@pytest.fixture
def aws_env(moto_s3, monkeypatch):
    """The moto user's credentials and endpoint in the AWS variables, as a pod would have them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    monkeypatch.setenv("AWS_REGION", moto_s3.region)
    return moto_s3


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_load_from_s3_uri(aws_env, stored, lazy):
    bucket, key, tensors, _ = stored
    with TensorDeserializer(f"s3://{bucket}/{key}", lazy_load=lazy, verify_hash=True) as d:
        assert d.io_backend == "http"
        assert list(d) == list(tensors)
        for name, tensor in tensors.items():
            assert_same(d[name], tensor)


def test_open_stream_with_explicit_credentials(moto_s3, stored):
    bucket, key, tensors, raw = stored
    kwargs = dict(s3_access_key_id=moto_s3.access_key, s3_secret_access_key=moto_s3.secret_key,
                  s3_endpoint=moto_s3.endpoint)
    with stream_io.open_stream(f"s3://{bucket}/{key}", "rb", **kwargs) as stream:
        assert stream.name == f"s3://{bucket}/{key}"
        assert stream.read(5) == b"|TZR|"
        stream.seek(-8, io.SEEK_END)
        assert stream.read() == raw[-8:]
        stream.seek(0)
        with TensorDeserializer(stream) as d:
            for name, tensor in tensors.items():
                assert_same(d[name], tensor)
    with stream_io.open_stream(f"s3://{bucket}/{key}", begin=100, end=200, **kwargs) as part:
        assert part.read() == raw[100:200]


def test_session_token_credentials(moto_s3, stored, monkeypatch):
    bucket, key, tensors, _ = stored
    key_id, secret, token = moto_s3.session_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint)
    with TensorDeserializer(f"s3://{bucket}/{key}") as d:
        assert_same(d["layers.0.weight"], tensors["layers.0.weight"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", token[:-4] + "AAAA")
    with pytest.raises(tensorstream.NetworkError) as err:
        TensorDeserializer(f"s3://{bucket}/{key}")
    assert err.value.status in (400, 403)
    assert token not in str(err.value) and secret not in str(err.value)


def test_wrong_secret_is_an_authentication_error(moto_s3, stored):
    bucket, key, _, _ = stored
    with pytest.raises(tensorstream.AuthenticationError) as err:
        stream_io.open_stream(f"s3://{bucket}/{key}", s3_access_key_id=moto_s3.access_key,
                              s3_secret_access_key=SECRET, s3_endpoint=moto_s3.endpoint)
    exc = err.value
    assert isinstance(exc, PermissionError)
    assert exc.status == 403 and exc.attempts == 1
    assert exc.url == f"s3://{bucket}/{key}" and exc.url in str(exc)
    assert "SignatureDoesNotMatch" in str(exc)
    assert SECRET not in str(exc) and moto_s3.secret_key not in str(exc)


def test_missing_object_is_not_found(aws_env, stored):
    bucket, _, _, _ = stored
    with pytest.raises(tensorstream.NotFoundError) as err:
        TensorDeserializer(f"s3://{bucket}/no/such.tensors")
    assert isinstance(err.value, FileNotFoundError)
    assert err.value.status == 404 and "NoSuchKey" in str(err.value)


def test_virtual_hosted_addressing(aws_env, stored, monkeypatch):
    bucket, key, tensors, _ = stored
    port = aws_env.endpoint.rsplit(":", 1)[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://localhost:{port}")  # libcurl: *.localhost is loopback
    monkeypatch.setenv("TENSORSTREAM_S3_ADDRESSING", "virtual")
    assert _s3.resolve(f"s3://{bucket}/{key}").url == f"http://{bucket}.localhost:{port}/{key}"
    with TensorDeserializer(f"s3://{bucket}/{key}") as d:
        assert_same(d["embed.weight"], tensors["embed.weight"])


def test_unsigned_requests_reach_a_public_bucket(moto_s3_anonymous):
    tensors = _state_dict()
    bucket = moto_s3_anonymous.create_public_bucket()
    moto_s3_anonymous.put_object(bucket, "pub.tensors", _file_bytes(tensors))
    stream = stream_io.open_stream(f"s3://{bucket}/pub.tensors", s3_access_key_id="", s3_secret_access_key="",
                                   s3_endpoint=moto_s3_anonymous.endpoint)
    with stream, TensorDeserializer(stream) as d:
        assert_same(d["head.index"], tensors["head.index"])


# ------------------------------------------------------------------------- moto: writing


def _model_tensors(megabytes: int):
    n = megabytes * (1 << 20) // 4 // 8
    return {f"w{i}": random_tensor((n,), torch.float32, 50 + i) for i in range(8)}


def test_save_streams_a_multipart_upload(aws_env, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_S3_PART_MB", "5")
    monkeypatch.setenv("TENSORSTREAM_S3_UPLOAD_CONCURRENCY", "3")
    tensors = _model_tensors(13)  # three parts: the first (with the header) sent last
    bucket = aws_env.create_bucket()
    with TensorSerializer(f"s3://{bucket}/out/model.tensors") as serializer:
        serializer.write_state_dict({k: v for k, v in list(tensors.items())[:5]})
        serializer.write_state_dict({k: v for k, v in list(tensors.items())[5:]})
    stored = aws_env.get_object(bucket, "out/model.tensors")
    local = io.BytesIO()
    with TensorSerializer(local) as serializer:
        serializer.write_state_dict({k: v for k, v in list(tensors.items())[:5]})
        serializer.write_state_dict({k: v for k, v in list(tensors.items())[5:]})
    assert stored == local.getvalue()  # byte for byte what a local (tensorizer-identical) file holds
    assert aws_env.list_multipart_uploads(bucket) == []
    with TensorDeserializer(f"s3://{bucket}/out/model.tensors", verify_hash=True) as d:
        for name, tensor in tensors.items():
            assert_same(d[name], tensor)


def test_save_module_through_open_stream(moto_s3):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    bucket = moto_s3.create_bucket()
    uri = f"s3://{bucket}/seq.tensors"
    kwargs = dict(s3_access_key_id=moto_s3.access_key, s3_secret_access_key=moto_s3.secret_key,
                  s3_endpoint=moto_s3.endpoint)
    with stream_io.open_stream(uri, "wb", **kwargs) as stream:
        serializer = TensorSerializer(stream)
        serializer.write_module(model)
        serializer.close()
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    with stream_io.open_stream(uri, "rb", **kwargs) as stream, TensorDeserializer(stream) as d:
        d.load_into_module(fresh)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_plain_writes_to_an_s3_stream(moto_s3, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_S3_PART_MB", "5")
    bucket = moto_s3.create_bucket()
    kwargs = dict(s3_access_key_id=moto_s3.access_key, s3_secret_access_key=moto_s3.secret_key,
                  s3_endpoint=moto_s3.endpoint)
    payload = bytes(range(256)) * (45 * 1024)  # 11.25 MiB: three parts
    with stream_io.open_stream(f"s3://{bucket}/blob", "wb", **kwargs) as out:
        for at in range(0, len(payload), 1 << 20):
            out.write(payload[at:at + (1 << 20)])
    assert moto_s3.get_object(bucket, "blob") == payload
    with stream_io.open_stream(f"s3://{bucket}/empty", "wb", **kwargs):
        pass
    assert moto_s3.get_object(bucket, "empty") == b""


def test_exception_while_saving_leaves_nothing_behind(aws_env, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_S3_PART_MB", "5")
    bucket = aws_env.create_bucket()
    with pytest.raises(RuntimeError, match="user code"):
        with TensorSerializer(f"s3://{bucket}/partial.tensors") as serializer:
            serializer.write_state_dict(_model_tensors(12))  # parts are already on their way
            raise RuntimeError("user code failed")
    assert aws_env.list_multipart_uploads(bucket) == []
    with pytest.raises(tensorstream.NotFoundError):
        TensorDeserializer(f"s3://{bucket}/partial.tensors")


def test_wrong_credentials_when_saving(moto_s3, monkeypatch):
    bucket = moto_s3.create_bucket()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    with pytest.raises(tensorstream.AuthenticationError) as err:
        TensorSerializer(f"s3://{bucket}/denied.tensors")
    assert SECRET not in str(err.value) and f"s3://{bucket}/denied.tensors" in str(err.value)


class _BrokenUploads(http.server.ThreadingHTTPServer):
    """Starts multipart uploads, then fails every part with 500; records the abort."""

    daemon_threads = True

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _drain(self):
                length = int(self.headers.get("Content-Length") or 0)
                while length:
                    length -= len(self.rfile.read(min(length, 1 << 20)))

            def do_POST(self):
                self._drain()
                outer.requests.append(("POST", self.path))
                body = b"<InitiateMultipartUploadResult><UploadId>up1</UploadId></InitiateMultipartUploadResult>"
                self._reply(200, body)

            def do_PUT(self):
                self._drain()
                outer.requests.append(("PUT", self.path))
                self._reply(500, b"<Error><Code>InternalError</Code><Message>disk on fire</Message></Error>")

            def do_DELETE(self):
                outer.requests.append(("DELETE", self.path))
                self._reply(204)

        super().__init__((LOOPBACK, free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_failed_parts_abort_the_upload(monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_S3_PART_MB", "5")
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "1")
    server = _BrokenUploads()
    try:
        endpoint = f"http://{LOOPBACK}:{server.server_address[1]}"
        serializer = TensorSerializer(stream_io.open_stream("s3://bkt/x.tensors", "wb", s3_access_key_id="K",
                                                            s3_secret_access_key=SECRET, s3_endpoint=endpoint))
        with pytest.raises(tensorstream.NetworkError) as err:
            serializer.write_state_dict(_model_tensors(24))
            serializer.close()
        assert err.value.status == 500 and "InternalError" in str(err.value)
        assert ("DELETE", "/bkt/x.tensors?uploadId=up1") in server.requests
        puts = [path for method, path in server.requests if method == "PUT"]
        assert puts and all("uploadId=up1" in p for p in puts)
        seen = len(server.requests)
        try:
            serializer.close()  # a failed upload is over: closing again sends nothing
        except RuntimeError as exc:
            assert "abandoned" in str(exc)
        assert len(server.requests) == seen
    finally:
        server.shutdown()
        server.server_close()
