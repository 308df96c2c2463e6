"""``open_stream``: a file object for a local path or an ``http(s)://`` URL, as tensorizer's.

vLLM and existing scripts open a stream and hand it to ``TensorDeserializer``; a stream from this
module is recognised there and read through the core's parallel engine, not through ``read()``.
"""

from __future__ import annotations

import io
import os
from typing import Any

from . import _native

__all__ = ["open_stream", "HttpStreamFile"]

_READAHEAD = 1 << 20


class HttpStreamFile(io.RawIOBase):
    """A read-only, seekable file over an ``http(s)://`` URL (range requests through the core).

    ``begin`` / ``end`` restrict it to a byte range of the resource, as in tensorizer. Plain
    ``read()`` calls fetch at least 1 MiB at a time and keep it, so small sequential reads do not
    each cost a request.
    """

    def __init__(self, url: str, begin: int | None = None, end: int | None = None) -> None:
        super().__init__()
        if _native.HttpSource is None:
            raise NotImplementedError("this build of tensorstream has no HTTP support (built without libcurl)")
        self._source = _native.HttpSource(url)
        size = self._source.size
        self._begin = max(0, begin or 0)
        self._end = size if end is None else min(end, size)
        if self._begin > self._end:
            raise ValueError(f"begin ({begin}) is past end ({self._end})")
        self._pos = self._begin
        self._buf = b""
        self._buf_at = 0

    @property
    def name(self) -> str:
        return self._source.name

    @property
    def begin(self) -> int:
        """Where this stream starts in the resource."""
        return self._begin

    @property
    def source(self) -> Any:
        """The core byte source (used by ``TensorDeserializer``)."""
        return self._source

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos - self._begin

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._begin, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        target = base + offset
        if target < self._begin:
            raise ValueError("negative seek position")
        self._pos = target
        return self.tell()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._end - self._pos))
        if n == 0:
            return 0
        start = self._pos - self._buf_at
        if not (0 <= start and start + n <= len(self._buf)):
            if n >= _READAHEAD:  # large reads go straight into the caller's buffer
                self._source.read_into(self._pos, view[:n])
                self._pos += n
                return n
            want = min(max(n, _READAHEAD), self._end - self._pos)
            chunk = bytearray(want)
            self._source.read_into(self._pos, chunk)
            self._buf, self._buf_at, start = bytes(chunk), self._pos, 0
        view[:n] = self._buf[start : start + n]
        self._pos += n
        return n


def open_stream(
    path_uri: str | os.PathLike,
    mode: str = "rb",
    s3_access_key_id: str | None = None,
    s3_secret_access_key: str | None = None,
    s3_endpoint: str | None = None,
    s3_config_path: Any = None,
    buffer_size: int | None = None,
    force_http: bool | None = None,
    *,
    begin: int | None = None,
    end: int | None = None,
    s3_region_name: str | None = None,
    s3_signature_version: str | None = None,
    certificate_handling: Any = None,
) -> Any:
    """Open a local path (``open(path, mode)``) or an ``http(s)://`` URL (read-only).

    ``s3://`` URIs and the S3 arguments are accepted by name, as in tensorizer, but S3 is not
    available yet and raises NotImplementedError; so do custom certificate settings.
    """
    uri = os.fspath(path_uri)
    if isinstance(uri, bytes):
        uri = os.fsdecode(uri)
    lower = uri.lower()
    if lower.startswith("s3://"):
        raise NotImplementedError("s3:// URIs are not supported yet (a later feature of tensorstream)")
    if certificate_handling is not None:
        raise NotImplementedError("custom certificate handling is not supported yet")
    if lower.startswith(("http://", "https://")):
        if mode != "rb":
            raise ValueError(f"http(s):// streams are read-only; mode must be 'rb', not {mode!r}")
        return HttpStreamFile(uri, begin=begin, end=end)
    if begin is not None or end is not None:
        raise ValueError("begin and end apply to http(s):// URLs only")
    return open(uri, mode)
