"""A local disk cache for ``http(s)://`` and ``s3://`` loads: its settings, its keys, and opening
a remote file through it.

Settings come from the ``cache_dir=`` argument or ``TENSORSTREAM_CACHE_DIR``, with
``TENSORSTREAM_CACHE_MAX_GB`` (a size bound), ``TENSORSTREAM_CACHE_OFFLINE`` (use complete
entries without contacting the remote) and ``TENSORSTREAM_CACHE_LOCK_TIMEOUT`` (how long a load
waits for another process that fetches the same object). This module is the only place they are
read; a malformed value is a ValueError naming the variable.

An entry is validated with the size probe that opening a URL makes anyway (size, ETag,
Last-Modified). Entries live in ``_cache_store``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import _cache_store, _native, _s3
from .errors import AuthenticationError, NetworkError, NotFoundError

logger = logging.getLogger("tensorstream")

ENV_DIR = "TENSORSTREAM_CACHE_DIR"
ENV_MAX_GB = "TENSORSTREAM_CACHE_MAX_GB"
ENV_OFFLINE = "TENSORSTREAM_CACHE_OFFLINE"
ENV_LOCK_TIMEOUT = "TENSORSTREAM_CACHE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 1800.0

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")
# Query parameters that sign or authorise a URL (S3, GCS and Azure presigned URLs, tokens): not
# part of an object's identity, and never written into the cache.
_SECRET_PARAMS = {"signature", "expires", "awsaccesskeyid", "sig", "se", "st", "sp", "sv", "sr", "spr", "skoid",
                  "sktid", "skt", "ske", "sks", "skv", "token", "access_token", "key-pair-id", "policy"}
_SECRET_PREFIXES = ("x-amz-", "x-goog-")


@dataclass(frozen=True)
class Config:
    """Where the cache lives and how it behaves."""

    root: str
    max_bytes: int | None  # None: unbounded
    offline: bool
    lock_timeout: float


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None  # an empty variable counts as unset


def _positive(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}={text!r} must be a positive number")
    return value


def _flag(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"{name}={text!r} must be 0 or 1")


def from_env() -> dict[str, Any]:
    """The four variables, validated: ``cache_dir``, ``cache_max_gb``, ``cache_offline``,
    ``cache_lock_timeout`` (what ``tensorstream.features()`` shows)."""
    max_gb = _env(ENV_MAX_GB)
    offline = _env(ENV_OFFLINE)
    timeout = _env(ENV_LOCK_TIMEOUT)
    return {
        "cache_dir": _env(ENV_DIR),
        "cache_max_gb": _positive(ENV_MAX_GB, max_gb) if max_gb else None,
        "cache_offline": _flag(ENV_OFFLINE, offline) if offline else False,
        "cache_lock_timeout": _positive(ENV_LOCK_TIMEOUT, timeout) if timeout else DEFAULT_LOCK_TIMEOUT,
    }


def resolve(cache_dir: Any = None) -> Config | None:
    """The cache a load uses: ``cache_dir`` (a folder), else ``TENSORSTREAM_CACHE_DIR``; None for
    none (``cache_dir=False`` turns it off whatever the environment says)."""
    if cache_dir is False:
        return None
    if cache_dir is not None and (isinstance(cache_dir, bool) or not isinstance(cache_dir, (str, os.PathLike))):
        raise ValueError(f"cache_dir must be a folder path, False or None, not {cache_dir!r}")
    env = from_env()
    root = os.fsdecode(cache_dir) if cache_dir is not None else env["cache_dir"]
    if root is None:
        return None
    if not root or "\0" in root:
        raise ValueError(f"cache_dir {root!r} is not a usable folder path")
    max_gb = env["cache_max_gb"]
    max_bytes = None if max_gb is None else max(1, int(max_gb * (1 << 30)))
    return Config(os.path.abspath(root), max_bytes, env["cache_offline"], env["cache_lock_timeout"])


def identity_url(url: str) -> str:
    """``url`` without user info, fragment, or the query parameters that sign it (kept: the
    others, which may name a version of the object)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_secret(k)]
    return urlunsplit((parts.scheme.lower(), netloc.lower(), parts.path, urlencode(query), ""))


def _is_secret(param: str) -> bool:
    name = param.lower()
    return name in _SECRET_PARAMS or name.startswith(_SECRET_PREFIXES)


def entry_key(url: str) -> str:
    """The entry's file-name stem: a hash of :func:`identity_url`, then the object's base name."""
    ident = identity_url(url)
    digest = hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", urlsplit(ident).path.rsplit("/", 1)[-1])[-64:].lstrip(".")
    return f"{digest}-{base}" if base else digest


def _remote(uri: str) -> tuple[str, dict[str, Any], str]:
    """(HTTP URL, HttpSource keyword arguments, name to show) of a remote URI."""
    if uri.lower().startswith("s3://"):
        loc = _s3.resolve(uri)
        return loc.url, loc.http_kwargs(), uri.split("?")[0]
    return uri, {}, identity_url(uri)


def _unreachable(exc: NetworkError) -> bool:
    """A failure to reach the server at all (connection refused, DNS, timeout): no HTTP reply."""
    return exc.status is None and not isinstance(exc, (AuthenticationError, NotFoundError))


def open_remote(config: Config, uri: str, *, lazy: bool) -> _cache_store.CachedFile:
    """A remote file through the cache: a complete local entry (fetched now if missing or stale),
    or, with ``lazy``, a partial one that fills as tensors are read."""
    if _native.HttpSource is None:
        raise NotImplementedError("this build of tensorstream has no HTTP(S)/S3 support (built without libcurl)")
    url, kwargs, shown = _remote(uri)
    entry = _cache_store.Entry(config, entry_key(url), shown)
    if config.offline:
        return entry.open_offline(lazy=lazy)
    try:
        remote = _native.HttpSource(url, **kwargs)
    except NetworkError as exc:
        if not _unreachable(exc):
            raise
        found = entry.open_complete()
        if found is None:
            raise
        logger.warning("%s is unreachable (%s): loading the cached copy %s", shown, exc, entry.data_path)
        return found
    identity = _cache_store.Identity(remote.size, getattr(remote, "etag", ""), getattr(remote, "last_modified", ""))
    return entry.open(remote, identity, lazy=lazy)
