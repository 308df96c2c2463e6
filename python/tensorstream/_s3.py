"""Where an ``s3://bucket/key`` URI points and how requests to it are signed.

Credentials are looked up in tensorizer's order, then in the AWS chain:

1. explicit arguments (``s3_access_key_id``, ``s3_secret_access_key``, ``s3_endpoint``);
2. an s3cmd config file (``s3_config_path``, else ``~/.s3cfg``): ``access_key``, ``secret_key``,
   ``access_token``, ``host_base``, ``use_https``, ``bucket_location``;
3. ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``;
4. the profile ``AWS_PROFILE`` (else ``default``) in ``~/.aws/credentials`` and ``~/.aws/config``
   (or ``AWS_SHARED_CREDENTIALS_FILE`` / ``AWS_CONFIG_FILE``).

Explicit keys stand alone: given both, no credential file is read (the s3cmd file only when
``s3_config_path`` names it, for its endpoint; ``~/.aws/credentials`` never; ``~/.aws/config`` for
the region and endpoint only) and no token is taken from anywhere but ``s3_session_token``; given
one without the other, nothing is looked up to complete the pair (tensorizer completes it from the
s3cmd file, pairing a key ID with a secret it was not given with): a ValueError.

With no credentials anywhere (or with both keys given as ``""``, as in tensorizer) requests are
sent unsigned, which public buckets accept. The endpoint comes from the arguments, the s3cmd
file, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the profile's ``endpoint_url``, else AWS
itself (``s3://tensorized/...``, tensorizer's public models, goes unsigned to CoreWeave's
public endpoint when neither an endpoint nor credentials are configured); the region from ``s3_region_name``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile,
the s3cmd file, else ``us-east-1``. ``TENSORSTREAM_S3_ADDRESSING`` (``auto``, ``path`` or
``virtual``) overrides how the bucket is addressed; ``auto`` uses virtual-hosted names on AWS and
paths everywhere else.
"""

from __future__ import annotations

import configparser
import os
import re
import urllib.parse
import weakref
from dataclasses import dataclass, field
from typing import Any

from . import _native, _settings

__all__ = ["S3Location", "resolve", "parse_uri", "TlsOptions", "expired", "refresh", "opened", "refresh_sources"]

_BUCKET_DNS = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
# tensorizer's public pre-tensorized models: this bucket, with no endpoint and no credentials
# configured, is read unsigned from CoreWeave's public endpoint, as tensorizer reads it.
PUBLIC_BUCKET = "tensorized"
PUBLIC_ENDPOINT = "https://accel-object.ord1.coreweave.com"


@dataclass(frozen=True)
class TlsOptions:
    """Certificate checking for HTTPS: a CA bundle file, a CA directory, or none at all."""

    ca_bundle: str = ""
    ca_path: str = ""
    insecure: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {"ca_bundle": self.ca_bundle, "ca_path": self.ca_path, "insecure": self.insecure}


@dataclass(frozen=True)
class S3Location:
    """One object: its URL, its ``s3://`` name and the signer for its requests (None: unsigned)."""

    bucket: str
    key: str
    url: str
    region: str
    signer: Any = field(default=None, repr=False)
    tls: TlsOptions = field(default_factory=TlsOptions)
    credentials_from: str = "none"  # where the credentials were found, for messages
    # How it was resolved (for refresh()) and the credentials it signs with now.
    resolved_with: dict = field(default_factory=dict, repr=False, compare=False)
    credentials: list = field(default_factory=list, repr=False, compare=False)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def http_kwargs(self) -> dict[str, Any]:
        return {"signer": self.signer, "display": self.uri, **self.tls.kwargs()}

    def __repr__(self) -> str:
        key_id = self.signer.access_key_id if self.signer is not None else None
        return (
            f"S3Location({self.uri!r}, url={redact_password(self.url)!r}, region={self.region!r}, "
            f"access_key_id={key_id!r}, credentials_from={self.credentials_from!r})"
        )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def refuse_control(what: str, value: str | None) -> None:
    """ValueError when ``value`` holds a control character (CR/LF would start a new header); the
    message names ``what`` only, never the value."""
    if value and _CONTROL.search(value):
        raise ValueError(f"{what} holds a control character (CR, LF, NUL...)")


def redact_password(url: str) -> str:
    """``url`` with the password of its user info (``user:password@host``) replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); ValueError for anything else."""
    if "\0" in uri:
        raise ValueError("an S3 URI may not hold a NUL byte")
    if not uri.lower().startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise ValueError(f"an S3 URI needs a bucket and a key (s3://bucket/key), not {uri!r}")
    return bucket, key


@dataclass
class _Found:
    key_id: str | None = None
    secret: str | None = None
    token: str | None = None
    endpoint: str | None = None
    region: str | None = None
    use_https: bool | None = None
    addressing: str | None = None
    source: str = "none"


def _read_ini(path: str) -> configparser.ConfigParser | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        return parser if parser.read(path) else None
    except configparser.Error as exc:
        raise ValueError(f"cannot parse {path}: {type(exc).__name__}") from None


def _from_s3cfg(config_path: Any) -> _Found:
    if config_path is not None:
        path = os.fsdecode(config_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"s3_config_path does not exist: {path}")
    else:
        path = os.path.expanduser("~/.s3cfg")
        if not os.path.exists(path):
            return _Found()
    parser = _read_ini(path)
    if parser is None or "default" not in parser:
        raise ValueError(f"{path} has no [default] section")
    sec = parser["default"]
    use_https = {"true": True, "false": False}.get(sec.get("use_https", "").strip().lower())
    region = sec.get("bucket_location") or None
    return _Found(
        key_id=sec.get("access_key") or None,
        secret=sec.get("secret_key") or None,
        token=sec.get("access_token") or None,
        endpoint=sec.get("host_base") or None,
        region=None if region in (None, "US") else region,
        use_https=use_https,
        source=path,
    )


def _profile_section(parser: configparser.ConfigParser | None, name: str, config_file: bool) -> dict[str, str]:
    if parser is None:
        return {}
    wanted = name if (not config_file or name == "default") else f"profile {name}"
    if parser.has_section(wanted):
        return dict(parser[wanted])
    if config_file and parser.has_section(name):
        return dict(parser[name])
    return {}


def _from_aws(env: dict[str, str], secrets: bool = True) -> _Found:
    """The AWS chain's credentials (with ``secrets``), endpoint, region and addressing style."""
    found = _Found()
    if secrets and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        found.key_id = env["AWS_ACCESS_KEY_ID"]
        found.secret = env["AWS_SECRET_ACCESS_KEY"]
        found.token = env.get("AWS_SESSION_TOKEN") or None
        found.source = "environment"
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    cred_path = os.path.expanduser(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials")
    conf_path = os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    creds = (_profile_section(_read_ini(cred_path) if os.path.exists(cred_path) else None, profile, False)
             if secrets else {})
    conf = _profile_section(_read_ini(conf_path) if os.path.exists(conf_path) else None, profile, True)
    if secrets and found.key_id is None:
        for section, path in ((creds, cred_path), (conf, conf_path)):
            if section.get("aws_access_key_id") and section.get("aws_secret_access_key"):
                found.key_id = section["aws_access_key_id"]
                found.secret = section["aws_secret_access_key"]
                found.token = section.get("aws_session_token") or None
                found.source = f"{path} [{profile}]"
                break
    if secrets and env.get("AWS_PROFILE") and not creds and not conf:
        raise ValueError(f"AWS_PROFILE names profile {profile!r}, which is in neither {cred_path} nor {conf_path}")
    found.endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or conf.get("endpoint_url")
    found.region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or conf.get("region")
    nested = conf.get("s3", "")  # "s3 =\n  addressing_style = path"
    match = re.search(r"addressing_style\s*=\s*(\w+)", nested)
    found.addressing = match.group(1) if match else None
    return found


def _endpoint_url(endpoint: str, use_https: bool | None) -> str:
    refuse_control("the S3 endpoint", endpoint)
    endpoint = endpoint.strip().rstrip("/")
    if "://" not in endpoint:
        endpoint = ("http://" if use_https is False else "https://") + endpoint
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"an S3 endpoint must be a host or an http(s) URL, not {redact_password(endpoint)!r}")
    return endpoint


def resolve(
    uri: str,
    s3_access_key_id: str | None = None,
    s3_secret_access_key: str | None = None,
    s3_endpoint: str | None = None,
    s3_config_path: Any = None,
    s3_region_name: str | None = None,
    s3_session_token: str | None = None,
    tls: TlsOptions | None = None,
    env: dict[str, str] | None = None,
) -> S3Location:
    """Locate and authorise ``uri`` (see the module docstring for the order of the sources)."""
    addressing = env.get("TENSORSTREAM_S3_ADDRESSING") if env is not None else _settings.get("s3_addressing")
    env = dict(os.environ) if env is None else env
    bucket, key = parse_uri(uri)
    explicit = _Found(s3_access_key_id, s3_secret_access_key, s3_session_token, s3_endpoint, s3_region_name)
    explicit.source = "arguments"
    given = s3_access_key_id is not None or s3_secret_access_key is not None
    if given and (s3_access_key_id is None or s3_secret_access_key is None):
        have, missing = (("s3_access_key_id", "s3_secret_access_key") if s3_secret_access_key is None
                         else ("s3_secret_access_key", "s3_access_key_id"))
        raise ValueError(f"S3 credentials are incomplete: {have} was given without {missing} (an explicit key "
                         "is never paired with one from a file or the environment)")
    cfg = _from_s3cfg(s3_config_path) if not given or s3_config_path is not None else _Found()
    aws = _from_aws(env, secrets=not given)

    key_id, secret, token, source = explicit.key_id, explicit.secret, explicit.token, "arguments"
    if not given:  # the first complete pair found (with its token, unless one was given)
        for found in (cfg, aws):
            if found.key_id and found.secret:
                key_id, secret, source = found.key_id, found.secret, found.source
                token = token or found.token
                break
    if (key_id is None) != (secret is None) or (bool(key_id) != bool(secret)):
        missing = "s3_secret_access_key" if secret in (None, "") else "s3_access_key_id"
        raise ValueError(f"S3 credentials are incomplete: {missing} was not given and was not found")
    signed = bool(key_id)

    region = explicit.region or aws.region or cfg.region or "us-east-1"
    for what, value in (("the S3 access key id", key_id), ("the S3 secret access key", secret),
                        ("the S3 session token", token), ("the S3 region", region)):
        refuse_control(what, value)
    endpoint = explicit.endpoint or cfg.endpoint or aws.endpoint
    if endpoint is None and not signed and bucket == PUBLIC_BUCKET:
        endpoint = PUBLIC_ENDPOINT
    use_https = cfg.use_https if (not explicit.endpoint and cfg.endpoint) else None
    aws_default = endpoint is None
    base = _endpoint_url(endpoint or f"s3.{region}.amazonaws.com", use_https)

    style = ((addressing if addressing != "auto" else None) or aws.addressing or "auto").lower()
    if style not in ("auto", "path", "virtual"):
        raise ValueError(f"TENSORSTREAM_S3_ADDRESSING must be auto, path or virtual, not {style!r}")
    if style == "auto":
        on_aws = aws_default or urllib.parse.urlsplit(base).hostname.endswith(".amazonaws.com")
        style = "virtual" if on_aws and _BUCKET_DNS.match(bucket) else "path"
    quoted_key = urllib.parse.quote(key, safe="/")
    if style == "virtual":
        parts = urllib.parse.urlsplit(base)
        url = f"{parts.scheme}://{bucket}.{parts.netloc}{parts.path}/{quoted_key}"
    else:
        url = f"{base}/{urllib.parse.quote(bucket, safe='')}/{quoted_key}"

    if _native.SigV4Signer is None:
        raise NotImplementedError("this build of tensorstream has no S3 support (built without libcurl)")
    signer = _native.SigV4Signer(key_id, secret, token or "", region) if signed else None
    tls = tls or TlsOptions(ca_bundle=env.get("AWS_CA_BUNDLE", ""))
    how = dict(s3_access_key_id=s3_access_key_id, s3_secret_access_key=s3_secret_access_key, s3_endpoint=s3_endpoint,
               s3_config_path=s3_config_path, s3_region_name=s3_region_name, s3_session_token=s3_session_token, tls=tls)
    return S3Location(bucket, key, url, region, signer, tls, source if signed else "none (unsigned requests)",
                      how, [key_id, secret, token or ""] if signed else [])


# S3's codes for temporary credentials that are no longer valid (HTTP 400 or 403).
_EXPIRED = re.compile(r"\((ExpiredToken|TokenRefreshRequired|RequestExpired)\b")


def expired(exc: BaseException) -> bool:
    """Whether ``exc`` is a store refusing credentials because they expired."""
    from .errors import NetworkError

    return isinstance(exc, NetworkError) and exc.status in (400, 403) and bool(_EXPIRED.search(str(exc)))


# The S3 objects opened for reading, by their core source, while the source lives.
_opened: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def opened(source: Any, loc: S3Location) -> Any:
    """Notes that ``source`` reads ``loc`` (for :func:`refresh_sources`); returns ``source``."""
    _opened[source] = loc
    return source


def refresh_sources(sources: Any) -> bool:
    """Re-resolves the credentials of the S3 objects among ``sources`` (:func:`refresh`); True when
    any changed, so that a request refused for expired credentials is worth repeating once."""
    changed = False
    for source in sources:
        loc = _opened.get(source)
        if loc is not None and refresh(loc):
            changed = True
    return changed


def refresh(loc: S3Location) -> bool:
    """Looks ``loc``'s credentials up again, where they were found the first time (an agent may have
    rewritten the credentials file or the environment with new temporary ones). When they changed,
    ``loc``'s signer signs every later request with the new ones: True. Explicit keys never change."""
    if loc.signer is None or loc.credentials_from == "arguments":
        return False
    try:
        again = resolve(loc.uri, **loc.resolved_with)
    except ValueError:  # nothing complete any more: keep what there is
        return False
    if not again.credentials or again.credentials == loc.credentials:
        return False
    loc.signer.set_credentials(*again.credentials)
    loc.credentials[:] = again.credentials
    return True


def part_bytes() -> int:
    """Multipart upload part size: ``TENSORSTREAM_S3_PART_MB`` (MiB, at least 5), default 16."""
    return int(_settings.get("s3_part_mb")) << 20


def upload_concurrency() -> int:
    """Parts sent at once: ``TENSORSTREAM_S3_UPLOAD_CONCURRENCY``, default 8."""
    return int(_settings.get("s3_upload_concurrency"))
