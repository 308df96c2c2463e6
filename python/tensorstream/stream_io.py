"""``open_stream``: a file object for a local path, an ``http(s)://`` URL or an ``s3://`` URI,
as tensorizer's.

vLLM and existing scripts open a stream and hand it to ``TensorDeserializer`` or
``TensorSerializer``; a stream from this module is recognised there and read through the core's
parallel engine (or written as a streamed multipart upload), not through ``read()``/``write()``.
"""

from __future__ import annotations

import io
import os
from typing import Any

from . import _native, _s3

__all__ = ["open_stream", "HttpStreamFile", "S3WriteStream", "CAInfo"]

_READAHEAD = 1 << 20


class CAInfo:
    """How HTTPS certificates are checked, as tensorizer's ``CAInfo``: exactly one of ``cacert``
    (a PEM bundle file), ``capath`` (a directory of certificates) or ``allow_untrusted=True`` (no
    checks; for testing only). Pass ``certificate_handling=None`` for the system's CA store.
    """

    __slots__ = ("_tls",)

    def __init__(self, *, cacert: str | None = None, capath: str | None = None, allow_untrusted: bool = False):
        if (cacert is not None) + (capath is not None) + bool(allow_untrusted) != 1:
            raise ValueError("give exactly one of cacert, capath or allow_untrusted=True (None: the system store)")
        if cacert is not None and not os.path.isfile(cacert):
            raise ValueError(f"cacert is not a file: {cacert}")
        if capath is not None and not os.path.isdir(capath):
            raise ValueError(f"capath is not a directory: {capath}")
        self._tls = _s3.TlsOptions(ca_bundle=os.fspath(cacert or ""), ca_path=os.fspath(capath or ""),
                                   insecure=bool(allow_untrusted))

    @property
    def tls(self) -> _s3.TlsOptions:
        return self._tls

    def __repr__(self) -> str:
        t = self._tls
        what = f"cacert={t.ca_bundle!r}" if t.ca_bundle else f"capath={t.ca_path!r}" if t.ca_path else "allow_untrusted=True"
        return f"CAInfo({what})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CAInfo) and other._tls == self._tls

    def __hash__(self) -> int:
        return hash(self._tls)


def _tls(certificate_handling: Any) -> _s3.TlsOptions | None:
    if certificate_handling is None:
        return None
    if not isinstance(certificate_handling, CAInfo):
        raise TypeError(f"certificate_handling must be None or a CAInfo, not {type(certificate_handling).__name__}")
    return certificate_handling.tls


def _need_network() -> None:
    if _native.HttpSource is None:
        raise NotImplementedError("this build of tensorstream has no HTTP(S)/S3 support (built without libcurl)")


class HttpStreamFile(io.RawIOBase):
    """A read-only, seekable file over an ``http(s)://`` URL or an S3 object (range requests
    through the core).

    ``begin`` / ``end`` restrict it to a byte range of the resource, as in tensorizer. Plain
    ``read()`` calls fetch at least 1 MiB at a time and keep it, so small sequential reads do not
    each cost a request.
    """

    def __init__(
        self,
        url: str,
        begin: int | None = None,
        end: int | None = None,
        *,
        certificate_handling: CAInfo | None = None,
        _source: Any = None,
    ) -> None:
        super().__init__()
        if _source is None:
            _need_network()
            tls = _tls(certificate_handling)
            _source = _native.HttpSource(url, **(tls.kwargs() if tls else {}))
        self._source = _source
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


class S3WriteStream(io.RawIOBase):
    """A write-only stream into an S3 object, sent as a multipart upload while it is written.

    Handed to ``TensorSerializer``, the serializer streams the file itself (parts in parallel, the
    header last). Plain ``write()`` calls are uploaded in order. ``close()`` completes the object;
    a stream that is garbage collected unclosed, or closed through ``__exit__`` with an exception,
    aborts the upload, so no partial object is left behind.
    """

    def __init__(self, location: _s3.S3Location) -> None:
        super().__init__()
        self._location = location
        self._upload: Any = None
        self._claimed = False
        self._written = 0

    @property
    def name(self) -> str:
        return self._location.uri

    @property
    def location(self) -> _s3.S3Location:
        return self._location

    def writable(self) -> bool:
        return True

    def claim(self) -> _s3.S3Location:
        """Hand the object over to a ``TensorSerializer`` (before anything was written)."""
        if self.closed:
            raise ValueError(f"{self.name}: the stream is closed")
        if self._upload is not None or self._claimed:
            raise ValueError(f"{self.name}: bytes were already written through this stream")
        self._claimed = True
        return self._location

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed stream")
        if self._claimed:
            raise ValueError(f"{self.name} is being written by a TensorSerializer")
        view = memoryview(data).cast("B")
        if self._upload is None:
            self._upload = _native.MultipartUpload(
                **{"url": self._location.url, **self._location.http_kwargs()},
                part_bytes=_s3.part_bytes(),
                parallel=_s3.upload_concurrency(),
            )
        self._upload.append(view)
        self._written += len(view)
        return len(view)

    def tell(self) -> int:
        return self._written

    def abort(self) -> None:
        """Drop the upload: nothing is stored."""
        if self._upload is not None:
            self._upload.abort()
            self._upload = None
        super().close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._claimed:
                if self._upload is None:  # nothing written: an empty object
                    self._upload = _native.MultipartUpload(
                        **{"url": self._location.url, **self._location.http_kwargs()}, parallel=1
                    )
                self._upload.finish()
        finally:
            self._upload = None
            super().close()

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        if not self.closed:
            self.abort()


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
    certificate_handling: CAInfo | None = None,
    s3_session_token: str | None = None,
) -> Any:
    """Open a local path (``open(path, mode)``), an ``http(s)://`` URL (read-only) or an
    ``s3://bucket/key`` URI (``"rb"`` to read, ``"wb"`` / ``"wb+"`` to write).

    S3 credentials, endpoint and region are found as described in :mod:`tensorstream._s3`
    (arguments, ``~/.s3cfg``, then the AWS variables and profile files); ``""`` for both keys sends
    unsigned requests (public buckets); ``s3_session_token`` goes with explicit temporary
    credentials (sent and signed as ``x-amz-security-token``). ``force_http=True`` uses
    ``http://`` for an endpoint given without a scheme. ``buffer_size`` is accepted and ignored; only SigV4 signing is available
    (``s3_signature_version`` must be None or ``"s3v4"``/``"v4"``).
    """
    uri = os.fspath(path_uri)
    if isinstance(uri, bytes):
        uri = os.fsdecode(uri)
    lower = uri.lower()
    tls = _tls(certificate_handling)
    if lower.startswith("s3://"):
        if s3_signature_version not in (None, "s3v4", "v4"):
            raise ValueError(f"only SigV4 signing is supported, not s3_signature_version={s3_signature_version!r}")
        _need_network()
        endpoint = s3_endpoint
        if force_http and endpoint and "://" not in endpoint:
            endpoint = "http://" + endpoint
        location = _s3.resolve(
            uri,
            s3_access_key_id=s3_access_key_id,
            s3_secret_access_key=s3_secret_access_key,
            s3_endpoint=endpoint,
            s3_config_path=s3_config_path,
            s3_region_name=s3_region_name,
            s3_session_token=s3_session_token,
            tls=tls,
        )
        if mode in ("wb", "wb+", "w+b"):
            if begin is not None or end is not None:
                raise ValueError("begin and end apply to reading only")
            return S3WriteStream(location)
        if mode != "rb":
            raise ValueError(f"s3:// streams open with mode 'rb' or 'wb', not {mode!r}")
        source = _s3.opened(_native.HttpSource(location.url, **location.http_kwargs()), location)
        return HttpStreamFile(location.uri, begin=begin, end=end, _source=source)
    if lower.startswith(("http://", "https://")):
        if mode != "rb":
            raise ValueError(f"http(s):// streams are read-only; mode must be 'rb', not {mode!r}")
        return HttpStreamFile(uri, begin=begin, end=end, certificate_handling=certificate_handling)
    if begin is not None or end is not None:
        raise ValueError("begin and end apply to remote streams only")
    return open(uri, mode)
