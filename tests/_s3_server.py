"""A moto S3 server for the S3 tests, with SigV4 signature checking on.

``MotoS3Server`` runs ``python -m moto.server`` as a child process on a free loopback port. moto
checks signatures only after a set number of actions have run unauthenticated
(``INITIAL_NO_AUTH_ACTION_COUNT``). It counts one action per IAM/STS/S3 API request that reaches its
authorization step (requests to ``/moto-api/`` are not counted), so the count is set to exactly the
number of bootstrap requests: those create an IAM user with an access key and a role it may assume,
and every later request must carry a valid signature. Start-up ends by proving it: a request signed
with a wrong secret has to be refused.

The user's key (``access_key``, ``secret_key``) may do anything in S3; ``session_credentials()``
assumes the role and returns temporary credentials with a session token, also allowed all of S3.

Anonymous (unsigned) requests cannot be tested on this server: once checking is on, moto fails
every unsigned object request, whatever the bucket's ACL or policy says (an unsigned GET answers
500 or 403). ``MotoS3Server(auth=False)`` checks nothing; there, ``create_public_bucket()`` makes a
bucket whose objects anyone may read unsigned.

``moto_s3`` and ``moto_s3_anonymous`` are session fixtures for ``conftest.py``; they skip the test
when moto or boto3 is missing.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import pytest

from _http_servers import LOOPBACK, free_port

REGION = "us-east-1"
_USER, _ROLE, _POLICY = "tensorstream-tests", "tensorstream-tests-role", "s3-all"
_ALLOW_S3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
_ALLOW_ASSUME = {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}

# The requests _bootstrap() sends before moto starts checking signatures, one action each (with
# retries off, so that a failed try cannot be repeated and counted twice).
BOOTSTRAP_ACTIONS = 5


_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _policy(*statements: Dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _end_with_parent() -> None:
    """In the child, before exec: have Linux send SIGTERM when the test process dies."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def missing_requirement() -> Optional[str]:
    """Why no moto server can run here (a module is missing), or None."""
    for module in ("moto.server", "boto3"):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        except ImportError:  # its parent package is missing
            return f"{module} is not installed"
    return None


class MotoS3Server:
    """moto's server on a free loopback port, bootstrapped with credentials; a context manager.

    ``auth``: check signatures (the default). Without it, any request passes, signed or not, and
    there are no credentials: the helpers sign with a dummy key. ``min_part_size``: the smallest size
    moto lets a multipart upload's parts but the last have (its default is S3's 5 MiB).
    """

    def __init__(self, auth: bool = True, min_part_size: Optional[int] = None,
                 start_timeout: float = 60.0) -> None:
        self.auth = auth
        self.min_part_size = min_part_size
        self.start_timeout = start_timeout
        self.port = 0
        self.region = REGION
        self.access_key = self.secret_key = "unchecked"
        self.role_arn = ""
        self._proc: Optional[subprocess.Popen] = None
        self._log = None  # the server's stderr (moto logs each request there)
        self._s3 = None
        self._names = itertools.count()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url(self, bucket: str, key: str = "") -> str:
        """Path-style URL of an object (or of the bucket, without a key)."""
        return f"{self.endpoint}/{bucket}/{quote(key, safe='/~')}" if key else f"{self.endpoint}/{bucket}"

    # ------------------------------------------------------------------------------- process

    def __enter__(self) -> "MotoS3Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, tries: int = 3) -> None:
        """Starts the server, bootstraps the credentials and checks that signatures are checked."""
        problem = missing_requirement()
        if problem:
            raise RuntimeError(f"cannot start moto: {problem}")
        for _ in range(tries):
            self._spawn()
            problem = self._wait_ready()
            if not problem:
                break
            self.stop()
            if "in use" not in problem:  # else the port was taken in the meantime: try another
                break
        if problem:
            raise RuntimeError(f"moto server did not start: {problem}")
        try:
            if self.auth:
                self._bootstrap()
                self._check_signatures_checked()
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(BOOTSTRAP_ACTIONS)
        if self.min_part_size is not None:
            env["S3_UPLOAD_PART_MIN_SIZE"] = str(self.min_part_size)
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_end_with_parent if sys.platform.startswith("linux") else None,
        )

    def _wait_ready(self) -> str:
        """'' once the server answers HTTP, else what went wrong (with the end of its output)."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return f"exited with status {self._proc.returncode}: {self.log_tail()}"
            try:  # not counted as an action
                with _direct.open(f"{self.endpoint}/moto-api/config", timeout=1):
                    return ""
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        return f"no answer on port {self.port} within {self.start_timeout:.0f} s: {self.log_tail()}"

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's output (its request log and errors)."""
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(self._log.tell() - size, 0))
        return self._log.read().decode(errors="replace").strip()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._s3 = None

    # ----------------------------------------------------------------------------- credentials

    def _boto(self, service: str, key: str, secret: str, token: Optional[str] = None, **overrides):
        import boto3
        from botocore.config import Config

        args = dict(
            endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=key,
            aws_secret_access_key=secret, aws_session_token=token,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3}),
        )
        args.update(overrides)
        return boto3.client(service, **args)

    def _bootstrap(self) -> None:
        """The BOOTSTRAP_ACTIONS requests that run before signatures are checked (any key passes)."""
        from botocore.config import Config

        iam = self._boto("iam", "bootstrap", "bootstrap", config=Config(retries={"total_max_attempts": 1}))
        user_arn = iam.create_user(UserName=_USER)["User"]["Arn"]
        iam.put_user_policy(UserName=_USER, PolicyName=_POLICY, PolicyDocument=_policy(_ALLOW_S3, _ALLOW_ASSUME))
        key = iam.create_access_key(UserName=_USER)["AccessKey"]
        trust = {"Effect": "Allow", "Principal": {"AWS": user_arn}, "Action": "sts:AssumeRole"}
        self.role_arn = iam.create_role(RoleName=_ROLE, AssumeRolePolicyDocument=_policy(trust))["Role"]["Arn"]
        iam.put_role_policy(RoleName=_ROLE, PolicyName=_POLICY, PolicyDocument=_policy(_ALLOW_S3))
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def _check_signatures_checked(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client(aws_secret_access_key="not-" + self.secret_key).list_buckets()
        except ClientError as error:
            if error.response["Error"]["Code"] == "SignatureDoesNotMatch":
                return
            raise
        raise RuntimeError("moto accepted a request signed with a wrong secret: signature checking is off")

    def session_credentials(self, duration: int = 3600) -> Tuple[str, str, str]:
        """(key, secret, session token) of a fresh assumption of the role, signed with the user's key."""
        if not self.auth:
            raise RuntimeError("a server without signature checking has no role to assume")
        sts = self._boto("sts", self.access_key, self.secret_key)
        creds = sts.assume_role(RoleArn=self.role_arn, RoleSessionName="tests", DurationSeconds=duration)
        creds = creds["Credentials"]
        return creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]

    # --------------------------------------------------------------------------------- S3 helpers

    def client(self, **overrides):
        """A boto3 S3 client (path-style) signing with the user's key; ``overrides`` go to boto3.client."""
        return self._boto("s3", self.access_key, self.secret_key, **overrides)

    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = self.client()
        return self._s3

    def create_bucket(self, name: Optional[str] = None) -> str:
        """Creates a bucket (a fresh name when none is given); returns its name."""
        if name is None:
            name = f"bucket-{os.getpid()}-{next(self._names)}"
        self.s3.create_bucket(Bucket=name)
        return name

    def create_public_bucket(self, name: Optional[str] = None) -> str:
        """A bucket whose policy lets anyone get its objects; only on a server without checking."""
        if self.auth:
            raise RuntimeError("moto refuses unsigned requests while it checks signatures: use auth=False")
        name = self.create_bucket(name)
        read = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}
        self.s3.put_bucket_policy(Bucket=name, Policy=_policy(dict(read, Resource=f"arn:aws:s3:::{name}/*")))
        return name

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    def get_object(self, bucket: str, key: str) -> bytes:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def list_multipart_uploads(self, bucket: str) -> List[Dict[str, str]]:
        """The bucket's unfinished multipart uploads, as {"Key", "UploadId"} dicts."""
        uploads = []
        for page in self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            uploads += [{"Key": u["Key"], "UploadId": u["UploadId"]} for u in page.get("Uploads", [])]
        return uploads


def _session_server(auth: bool):
    problem = missing_requirement()
    if problem:
        pytest.skip(f"no moto S3 server: {problem}")
    with MotoS3Server(auth=auth) as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3():
    """One moto S3 server with signature checking, for the whole test session."""
    yield from _session_server(auth=True)


@pytest.fixture(scope="session")
def moto_s3_anonymous():
    """One moto S3 server that checks no signatures (for unsigned requests), for the whole session."""
    yield from _session_server(auth=False)
