"""Where bytes come from (reading) and go to (writing).

Reading: a path, an ``http(s)://`` URL, an ``s3://`` URI, an open file (through its descriptor),
a stream from :func:`tensorstream.stream_io.open_stream`, or bytes in memory. Writing: a path
(opened read/write, truncated), an ``s3://`` URI or S3 stream (a multipart upload, streamed), an
open file's descriptor, or, for objects without one (``io.BytesIO``), a temporary file copied
into the object on close.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
from typing import Any

from . import _native, _s3, stream_io


REMOTE_SCHEMES = ("http://", "https://", "s3://")


def is_remote(location: str) -> bool:
    """Whether a location names a URL or an S3 object rather than a local path."""
    return location.lower().startswith(REMOTE_SCHEMES)

MAGIC = b"|TZR|"
_HTTP_PREFIXES = ("http://", "https://")
_S3_PREFIX = "s3://"


def _need_network() -> None:
    if _native.HttpSource is None:
        raise NotImplementedError("this build of tensorstream has no HTTP(S)/S3 support (built without libcurl)")


def _fileno(obj: Any) -> int | None:
    """``obj.fileno()`` if it has a real descriptor, else None."""
    try:
        return obj.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return None


def _looks_like_path(raw: bytes) -> bool:
    return not raw.startswith(MAGIC) and b"\0" not in raw and len(raw) <= 4096


def open_source(obj: Any) -> Any:
    """A core byte source for a path, descriptor, file object or buffer.

    ``bytes`` are file contents when they start with the file magic, hold a NUL byte or are longer
    than any path; otherwise they are a path (as in tensorizer). Open files are read through a
    duplicate of their descriptor, from offset 0. Streams with neither a descriptor nor
    ``getbuffer()`` are read into memory.
    """
    if isinstance(obj, (bytearray, memoryview)) or (isinstance(obj, bytes) and not _looks_like_path(obj)):
        return _native.MemorySource(obj)
    if isinstance(obj, (str, bytes, os.PathLike)):
        path = os.fsdecode(obj)
        lower = path.lower()
        if lower.startswith(_HTTP_PREFIXES):
            _need_network()
            return _native.HttpSource(path)
        if lower.startswith(_S3_PREFIX):
            _need_network()
            loc = _s3.resolve(path)
            return _s3.opened(_native.HttpSource(**_s3_source_args(loc)), loc)
        return _native.FileSource(path)
    if isinstance(obj, int) and not isinstance(obj, bool):
        return _native.FileSource.from_fd(obj)
    if isinstance(obj, stream_io.HttpStreamFile):
        if obj.begin != 0 or obj.tell() != 0:
            raise ValueError("tensors are read from the start of a remote stream: open it without begin, seek(0)")
        return obj.source
    if isinstance(obj, stream_io.S3WriteStream):
        raise ValueError(f"{obj.name} was opened for writing; open it with mode 'rb' to read it")
    fd = _fileno(obj)
    if fd is not None:
        return _native.FileSource.from_fd(fd)
    if hasattr(obj, "getbuffer"):
        return _native.MemorySource(obj.getbuffer())
    if hasattr(obj, "read"):
        return _native.MemorySource(obj.read())
    raise TypeError(f"cannot read tensors from a {type(obj).__name__}")


def _s3_source_args(loc: _s3.S3Location) -> dict[str, Any]:
    return {"url": loc.url, **loc.http_kwargs()}


class WriteTarget:
    """Where a file is written (a descriptor, or an S3 object), and what to do with it when done."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj
        self._owned = False  # we opened fd and must close it
        self._spool: Any | None = None  # temporary file for objects without a descriptor
        self.s3: _s3.S3Location | None = None  # set for S3 objects (streamed, no descriptor)
        self.path: str | None = None  # set for a path we opened (and may remove if writing fails)
        self._removed = False
        self.fd = self._open(obj)

    @property
    def streamed(self) -> bool:
        """True when the file is sent in order and cannot be patched afterwards (S3)."""
        return self.s3 is not None

    def make_writer(self, threads: int) -> Any:
        """The core writer for this target (errors from a local file name it)."""
        if self.s3 is None:
            return _NamedWriter(_native.Writer(self.fd, threads=threads), self)
        return _native.multipart_writer(
            **_s3_source_args(self.s3), part_bytes=_s3.part_bytes(), parallel=_s3.upload_concurrency(), threads=threads
        )

    def _open(self, obj: Any) -> int:
        if isinstance(obj, stream_io.S3WriteStream):
            self.s3 = obj.claim()
            return -1
        if isinstance(obj, stream_io.HttpStreamFile):
            raise ValueError(f"{obj.name} is open for reading only; open an s3:// URI with mode 'wb' to write it")
        if isinstance(obj, (str, bytes, os.PathLike)):
            path = os.fsdecode(obj)
            lower = path.lower()
            if lower.startswith(_S3_PREFIX):
                _need_network()
                self.s3 = _s3.resolve(path)
                return -1
            if lower.startswith(_HTTP_PREFIXES):
                raise ValueError(f"cannot write to {path.split('?')[0]}: http(s):// URLs are read-only (use s3://)")
            self._owned = True
            self.path = path
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        if isinstance(obj, int) and not isinstance(obj, bool):
            return obj
        if isinstance(obj, io.TextIOBase):
            raise ValueError("tensors must be written to a binary file (mode 'wb+'), not a text file")
        fd = _fileno(obj)
        if fd is not None:
            _check_writable(obj)
            obj.flush()
            return fd
        if not hasattr(obj, "write"):
            raise TypeError(f"cannot write tensors to a {type(obj).__name__}")
        self._spool = tempfile.TemporaryFile()
        return self._spool.fileno()

    def finish(self) -> None:
        """Hand the written bytes over (copy / reposition) and release what we opened."""
        if self.fd < 0:  # closed already, or an S3 object (complete once the writer is closed)
            return
        if self._owned:
            os.close(self.fd)
        elif self._spool is not None:
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, self._obj, 8 << 20)
            self._spool.close()
        elif hasattr(self._obj, "seek"):
            self._obj.seek(0, io.SEEK_END)
        self.fd = -1

    def abandon(self) -> None:
        """Release resources without finishing (used when the serializer is garbage collected)."""
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        if self._spool is not None:
            self._spool.close()
        self.fd = -1


    def failed(self, exc: OSError) -> None:
        """Names the file in a write error; a partial regular file that we created is removed."""
        name = self.path if self.path is not None else getattr(self._obj, "name", None)
        if exc.filename is None and isinstance(name, str):
            exc.filename = name
        if self.path is not None and self.fd >= 0:
            try:
                regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
                os.close(self.fd)
                self.fd = -1
                if regular:
                    os.unlink(self.path)
                    self._removed = True
            except OSError:
                pass
        if self._removed and exc.strerror and "partial file" not in exc.strerror:
            exc.strerror = f"{exc.strerror} (the partial file was removed)"


class _NamedWriter:
    """A core writer whose I/O errors name the file written (see :meth:`WriteTarget.failed`)."""

    def __init__(self, writer: Any, target: WriteTarget) -> None:
        self._writer = writer
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def write(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._writer.write(*args, **kwargs)
        except OSError as exc:
            self._target.failed(exc)
            raise

    def close(self) -> None:
        try:
            self._writer.close()
        except OSError as exc:
            self._target.failed(exc)
            raise


def _check_writable(obj: Any) -> None:
    try:
        ok = obj.writable() and obj.readable()
    except (AttributeError, ValueError):
        return
    if not ok:
        mode = getattr(obj, "mode", "?")
        raise ValueError(f"the file must be open for reading and writing in binary mode ('wb+'), not {mode!r}")
