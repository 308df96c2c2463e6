"""The moto S3 fixture itself: signatures are checked, and both kinds of credentials work."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest

import _s3_server
from _s3_server import MotoS3Server

exceptions = pytest.importorskip("botocore.exceptions")


def error_of(call) -> tuple:
    with pytest.raises(exceptions.ClientError) as caught:
        call()
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


@pytest.fixture(scope="module")
def bucket(moto_s3):
    name = moto_s3.create_bucket()
    moto_s3.put_object(name, "dir/blob", bytes(range(256)) * 4)
    return name


def test_user_key_reads_and_writes(moto_s3, bucket):
    assert moto_s3.get_object(bucket, "dir/blob") == bytes(range(256)) * 4
    part = moto_s3.client().get_object(Bucket=bucket, Key="dir/blob", Range="bytes=10-19")
    assert part["ContentRange"] == "bytes 10-19/1024"
    assert part["Body"].read() == bytes(range(10, 20))


def test_wrong_secret_is_refused(moto_s3, bucket):
    bad = moto_s3.client(aws_secret_access_key="x" + moto_s3.secret_key)
    assert error_of(lambda: bad.get_object(Bucket=bucket, Key="dir/blob")) == (403, "SignatureDoesNotMatch")
    put = lambda: bad.put_object(Bucket=bucket, Key="other", Body=b"1")  # noqa: E731
    assert error_of(put) == (403, "SignatureDoesNotMatch")
    unknown = moto_s3.client(aws_access_key_id="AKIAIOSFODNN7EXAMPLE")
    assert error_of(lambda: unknown.list_objects_v2(Bucket=bucket)) == (403, "InvalidAccessKeyId")


def test_session_credentials_need_their_token(moto_s3, bucket):
    key, secret, token = moto_s3.session_credentials()
    assert key != moto_s3.access_key and token
    good = moto_s3.client(aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token)
    assert good.get_object(Bucket=bucket, Key="dir/blob", Range="bytes=0-3")["Body"].read() == b"\0\1\2\3"
    tampered = moto_s3.client(aws_access_key_id=key, aws_secret_access_key=secret,
                              aws_session_token=token + "x")
    assert error_of(lambda: tampered.get_object(Bucket=bucket, Key="dir/blob")) == (400, "InvalidToken")
    without = moto_s3.client(aws_access_key_id=key, aws_secret_access_key=secret)
    assert error_of(lambda: without.get_object(Bucket=bucket, Key="dir/blob")) == (403, "InvalidAccessKeyId")


def test_aborted_upload_leaves_nothing(moto_s3, bucket):
    s3 = moto_s3.client()
    upload = s3.create_multipart_upload(Bucket=bucket, Key="upload")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="upload", UploadId=upload, PartNumber=1, Body=os.urandom(1000))
    assert {"Key": "upload", "UploadId": upload} in moto_s3.list_multipart_uploads(bucket)
    s3.abort_multipart_upload(Bucket=bucket, Key="upload", UploadId=upload)
    assert all(u["UploadId"] != upload for u in moto_s3.list_multipart_uploads(bucket))
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="upload"))[0] == 404


def unsigned_get(url: str, header_range: str) -> tuple:
    request = urllib.request.Request(url, headers={"Range": header_range})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def test_anonymous_server_serves_public_buckets_unsigned(moto_s3_anonymous):
    server = moto_s3_anonymous
    public, private = server.create_public_bucket(), server.create_bucket()
    for name in (public, private):
        server.put_object(name, "blob", b"0123456789")
    assert unsigned_get(server.url(public, "blob"), "bytes=2-4") == (206, b"234")
    assert unsigned_get(server.url(private, "blob"), "bytes=2-4") == (403, b"")


def test_one_more_unchecked_action_is_caught(monkeypatch):
    """A count one too high would leave the first real request unchecked: start-up must notice."""
    if _s3_server.missing_requirement():
        pytest.skip(_s3_server.missing_requirement())
    monkeypatch.setattr(_s3_server, "BOOTSTRAP_ACTIONS", _s3_server.BOOTSTRAP_ACTIONS + 1)
    server = MotoS3Server()
    try:
        with pytest.raises(RuntimeError, match="signature checking is off"):
            server.start()
        assert server._proc is None  # start() stopped it
    finally:
        server.stop()
