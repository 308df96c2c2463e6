"""Temporary S3 credentials that expire under a long-lived lazy deserializer: the store refuses the
old session token, tensorstream looks the credentials up again where it found them (here the
environment, as an agent that renews them would rewrite it) and repeats the request once."""

from __future__ import annotations

import http.server
import threading

import pytest
import torch

import tensorstream
from _tensors import assert_same, random_tensor
from tensorstream import NetworkError, TensorDeserializer, _s3, stream_io

EXPIRED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ExpiredToken</Code>'
           b"<Message>The provided token has expired.</Message></Error>")


class TokenStore:
    """One object on loopback, served only to requests that carry a valid session token."""

    def __init__(self, data: bytes) -> None:
        self.data, self.valid, self.seen = data, {"token-1"}, []
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                token = self.headers.get("x-amz-security-token", "")
                store.seen.append(token)
                if token not in store.valid:
                    self.send_response(400)
                    self.send_header("Content-Length", str(len(EXPIRED)))
                    self.end_headers()
                    self.wfile.write(EXPIRED)
                    return
                first, last = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
                last = min(last, len(store.data) - 1)
                body = store.data[first:last + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(store.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def store(tmp_path, monkeypatch):
    sd = {f"w{i}": random_tensor((64, 33), torch.float32, i) for i in range(6)}
    tensorstream.save(sd, tmp_path / "model.tensors")
    s = TokenStore((tmp_path / "model.tensors").read_bytes())
    monkeypatch.setenv("HOME", str(tmp_path))  # no credential files but the environment
    for var in ("AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEMPORARY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-1")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "0")
    yield s, sd
    s.close()


@pytest.mark.parametrize("opened", ["uri", "open_stream"])
def test_a_lazy_deserializer_renews_expired_temporary_credentials_once(store, monkeypatch, opened):
    server, sd = store
    uri = "s3://bucket/model.tensors"
    # a URI, or tensorizer's way: a stream from stream_io.open_stream handed to the deserializer
    what = uri if opened == "uri" else stream_io.open_stream(uri, "rb")
    with TensorDeserializer(what, device="cpu", lazy_load=True) as d:
        assert_same(d["w0"], sd["w0"])
        # The token expires; the agent puts new temporary credentials in the environment.
        server.valid = {"token-2"}
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-2")
        monkeypatch.setenv("AWS_SESSION_TOKEN", "token-2")
        server.seen.clear()
        assert_same(d["w1"], sd["w1"])
        assert server.seen[0] == "token-1" and set(server.seen[1:]) == {"token-2"}  # refused once, then renewed
        assert_same(d["w2"], sd["w2"])  # later accesses sign with the new ones from the start
        assert "token-1" not in server.seen[1:]
        # Expired again, and nothing new to be found: the error, after one look, no loop.
        server.valid = {"token-3"}
        server.seen.clear()
        with pytest.raises(NetworkError, match="ExpiredToken") as caught:
            d["w3"]
        assert _s3.expired(caught.value) and caught.value.status == 400
        assert server.seen == ["token-2"]
        monkeypatch.setenv("AWS_SESSION_TOKEN", "token-3")
        assert_same(d["w3"], sd["w3"])  # renewed by the next access


def test_explicit_keys_are_never_looked_up_again(store):
    server, sd = store
    loc = _s3.resolve("s3://bucket/model.tensors", s3_access_key_id="AKIDTEMPORARY", s3_secret_access_key="secret-1",
                      s3_session_token="token-1")
    assert loc.credentials_from == "arguments" and not _s3.refresh(loc)


def test_other_refusals_are_not_taken_for_expiry():
    assert not _s3.expired(NetworkError("GET x: HTTP 403 (AccessDenied: Access Denied) after 1 attempt", "x", 403))
    assert not _s3.expired(NetworkError("GET x: HTTP 500 (ExpiredToken: odd) after 1 attempt", "x", 500))
    assert _s3.expired(NetworkError("GET x: HTTP 400 (ExpiredToken: The provided token has expired.)", "x", 400))
    assert not _s3.expired(ValueError("(ExpiredToken"))
