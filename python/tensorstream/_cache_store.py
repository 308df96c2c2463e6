"""The cache's entries on disk, their locks, and eviction.

Per entry (``<key>`` from ``_cache.entry_key``), in the cache folder:

- ``<key>.data``: the complete object, published by renaming the partial file once filled;
- ``<key>.part``: the partial file (sparse, the remote's size), filled by ranges;
- ``<key>.json``: the sidecar: the object's identity (URI without credentials, size, ETag,
  Last-Modified), whether it is complete, the ranges of the partial file written so far, and the
  end of the file's header and index once known. Written atomically (temporary file, fsync,
  rename); its modification time is the entry's last use (for LRU eviction);
- ``<key>.lock``: held (``flock``) by whoever checks, fills, publishes or removes the entry, so
  processes loading the same object at once fetch it once and never see half of it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import mmap
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _cache_fill, _native
from ._cache_fill import Span, covers, merge, missing

logger = logging.getLogger("tensorstream")

_SUFFIXES = (".data", ".part", ".json", ".lock")
_LOCK_TIMEOUT_VARIABLE = "TENSORSTREAM_CACHE_LOCK_TIMEOUT"
_OFFLINE_VARIABLE = "TENSORSTREAM_CACHE_OFFLINE"


@dataclass(frozen=True)
class Identity:
    """What the remote said about the object when it was opened."""

    size: int
    etag: str
    last_modified: str


@dataclass
class Sidecar:
    identity: Identity
    complete: bool
    ranges: list[Span] = field(default_factory=list)
    head: int | None = None  # where the file's header and index end, once known


@dataclass
class CachedFile:
    """A remote file opened through the cache: a local source (and, for a complete entry, a
    private mapping of it); ``filler`` is set while the entry is partial (lazy loads)."""

    source: Any
    region: mmap.mmap | None
    filler: Filler | None
    entry: Entry


class Entry:
    """One object's files in the cache."""

    def __init__(self, config: Any, key: str, shown: str) -> None:
        self.config = config
        self.key = key
        self.shown = shown  # the URI as errors and logs name it (no credentials)
        base = os.path.join(config.root, key)
        self.data_path, self.part_path, self.side_path, self.lock_path = (base + s for s in _SUFFIXES)

    # Opening --------------------------------------------------------------------------------

    def open(self, remote: Any, identity: Identity, *, lazy: bool) -> CachedFile:
        """The entry for ``remote`` as it is now: used if it matches ``identity``, else refetched."""
        os.makedirs(self.config.root, exist_ok=True)
        with self.locked():
            side = self._sidecar()
            filler = None
            if side is not None and side.identity == identity:
                if side.complete:
                    found = self._complete_locked(side)
                    if found is not None:
                        return found
                else:
                    filler = self._partial_locked(side, remote)
            if filler is None:
                self._remove_locked()
                filler = self._new_partial_locked(identity, remote)
            if lazy and not filler.complete:
                return CachedFile(filler.source, None, filler, self)
            try:
                filler.fill_locked([(0, identity.size)])
                return self._as_complete(filler.fd, identity.size)
            finally:
                filler.close()

    def open_complete(self) -> CachedFile | None:
        """The complete entry as it is, without asking the remote; None if there is none."""
        if not os.path.isdir(self.config.root):
            return None
        with self.locked():
            side = self._sidecar()
            return self._complete_locked(side) if side is not None and side.complete else None

    def open_offline(self, *, lazy: bool) -> CachedFile:
        """For ``TENSORSTREAM_CACHE_OFFLINE=1``: the complete entry, or with ``lazy`` a partial one
        whose index is cached (reading a range it lacks is then an error); FileNotFoundError else."""
        if os.path.isdir(self.config.root):
            with self.locked():
                side = self._sidecar()
                if side is not None and side.complete:
                    found = self._complete_locked(side)
                    if found is not None:
                        return found
                elif side is not None and lazy and side.head is not None:
                    filler = self._partial_locked(side, None)
                    if filler is not None:
                        return CachedFile(filler.source, None, filler, self)
        raise FileNotFoundError(errno.ENOENT, f"{self.shown} is not in the cache {self.config.root} "
                                f"({_OFFLINE_VARIABLE}=1 forbids fetching it)")

    def discard(self) -> None:
        """Removes the entry (a corrupt one: the next load fetches it again)."""
        with self.locked():
            self._remove_locked()

    # Locked steps ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        lock = _Lock(self.lock_path)
        if not lock.acquire(self.config.lock_timeout):
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"{self.shown}: waited {self.config.lock_timeout:g} s for another process that holds its cache entry "
                f"(fetching it); set {_LOCK_TIMEOUT_VARIABLE} to wait longer",
                self.lock_path,
            )
        try:
            yield
        finally:
            lock.release()

    def _sidecar(self) -> Sidecar | None:
        try:
            with open(self.side_path, "rb") as f:
                doc = json.loads(f.read())
            ident = Identity(int(doc["size"]), str(doc["etag"]), str(doc["last_modified"]))
            ranges = merge((int(a), int(b)) for a, b in doc.get("ranges", []))
            head = doc.get("head")
            return Sidecar(ident, bool(doc["complete"]), ranges, None if head is None else int(head))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("cache entry %s has an unreadable sidecar: fetching it again", self.side_path)
            return None

    def write_sidecar(self, side: Sidecar) -> None:
        doc = {"uri": self.shown, "size": side.identity.size, "etag": side.identity.etag,
               "last_modified": side.identity.last_modified, "complete": side.complete,
               "ranges": [] if side.complete else [list(r) for r in side.ranges], "head": side.head}
        _write_atomically(self.side_path, json.dumps(doc).encode())
        _mark_used(self.side_path)

    def _complete_locked(self, side: Sidecar) -> CachedFile | None:
        """The published file, if its size is the sidecar's (else it is removed: None)."""
        try:
            fd = os.open(self.data_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size != side.identity.size:
                logger.warning("cache entry %s has %d bytes, not %d: fetching it again", self.data_path, size,
                               side.identity.size)
                self._remove_locked()
                return None
            with contextlib.suppress(OSError):
                _mark_used(self.side_path)
            return self._as_complete(fd, size)
        finally:
            os.close(fd)

    def _as_complete(self, fd: int, size: int) -> CachedFile:
        region = None
        if size:
            region = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return CachedFile(_native.FileSource.from_fd(fd), region, None, self)

    def _partial_locked(self, side: Sidecar, remote: Any) -> Filler | None:
        try:
            fd = os.open(self.part_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if os.fstat(fd).st_size != side.identity.size:
            os.close(fd)
            return None
        return Filler(self, fd, remote, side)

    def _new_partial_locked(self, identity: Identity, remote: Any) -> Filler:
        fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, identity.size)
            side = Sidecar(identity, False)
            self.write_sidecar(side)
        except BaseException:
            os.close(fd)
            raise
        return Filler(self, fd, remote, side)

    def _remove_locked(self) -> None:
        for path in (self.data_path, self.part_path, self.side_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def publish_locked(self, filler: Filler) -> None:
        """The filled partial file becomes the entry (fsync, rename, sidecar, folder fsync)."""
        os.fsync(filler.fd)
        os.rename(self.part_path, self.data_path)
        self.write_sidecar(Sidecar(filler.identity, True, [], filler.head))
        evict(self.config, keep=self.key)

    def remove_if_idle(self) -> bool:
        """Removes the entry unless another process holds it now (True if removed)."""
        lock = _Lock(self.lock_path)
        if not lock.acquire(0):
            return False
        try:
            self._remove_locked()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)  # waiters notice (_Lock checks the file) and lock a new one
            return True
        finally:
            lock.release()


class Filler:
    """Fills a partial entry by ranges, on demand (lazy loads) or all at once (eager ones)."""

    def __init__(self, entry: Entry, fd: int, remote: Any, side: Sidecar) -> None:
        self.entry = entry
        self.fd = fd
        self.remote = remote  # None offline: a missing range is then an error
        self.identity = side.identity
        self.ranges = list(side.ranges)
        self.head = side.head
        self.source = _native.FileSource.from_fd(fd)

    @property
    def complete(self) -> bool:
        return covers(self.ranges, self.identity.size)

    def ensure(self, spans: Sequence[tuple[int, int]]) -> None:
        """Makes the ``(offset, length)`` spans of the file present in the local file."""
        wanted = [(off, off + n) for off, n in spans if n > 0]
        if not missing(self.ranges, wanted):
            return
        if self.remote is None:
            gap = missing(self.ranges, wanted)[0]
            raise FileNotFoundError(errno.ENOENT, f"{self.entry.shown}: bytes {gap[0]}-{gap[1] - 1} are not in the "
                                    f"cache ({_OFFLINE_VARIABLE}=1 forbids fetching them)")
        with self.entry.locked():
            self.fill_locked(wanted)

    def fill_locked(self, wanted: Sequence[Span]) -> None:
        """Fetches what ``wanted`` lacks and records it; the caller holds the entry's lock."""
        ours = self._refresh_locked()
        gaps = missing(self.ranges, wanted)
        _cache_fill.fetch_into(self.fd, self.identity.size, self.remote, gaps)
        self.ranges = merge([*self.ranges, *gaps])
        if not ours:
            return  # the entry was replaced or removed meanwhile: this file serves this load only
        if self.complete:
            self.entry.publish_locked(self)
        elif gaps:
            self.entry.write_sidecar(Sidecar(self.identity, False, self.ranges, self.head))
            evict(self.entry.config, keep=self.entry.key)

    def _refresh_locked(self) -> bool:
        """Whether this file is still the entry's partial file; takes in the ranges others wrote."""
        mine = os.fstat(self.fd)
        if _same_file(self.entry.data_path, mine):  # another process completed and published it
            self.ranges = [(0, self.identity.size)]
            return False
        if not _same_file(self.entry.part_path, mine):
            return False
        side = self.entry._sidecar()
        if side is not None and not side.complete and side.identity == self.identity:
            self.ranges = merge([*self.ranges, *side.ranges])
            self.head = self.head if self.head is not None else side.head
        return True

    def read_index(self) -> Any:
        """The file's index, read from the local file once its header and index are cached (the
        first time, from the remote, to learn where they end)."""
        if self.head is None:
            if self.remote is None:
                raise FileNotFoundError(errno.ENOENT, f"{self.entry.shown}: its index is not in the cache")
            index = _native.read_index(self.remote)
            self.head = _head_of(index)
            self.ensure([(0, self.head)])
            return index
        self.ensure([(0, self.head)])
        return _native.read_index(self.source)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


def _head_of(index: Any) -> int:
    """Where the header and index end: the first tensor header or data (the whole file if none)."""
    starts = [min(e.header_offset, e.data_offset) for e in index.entries]
    return min(starts) if starts else int(index.file_size)


class _Lock:
    """An exclusive ``flock`` on a lock file, waited for up to a timeout. A lock file removed by
    eviction while waited on is noticed (its inode is no longer the path's) and the new one taken."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                locked = _flock_until(fd, deadline)
                if locked and _same_file(self.path, os.fstat(fd)):
                    self.fd, fd = fd, -1
                    return True
                if not locked:
                    return False
            finally:
                if fd >= 0:
                    os.close(fd)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _flock_until(fd: int, deadline: float) -> bool:
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _same_file(path: str, st: os.stat_result) -> bool:
    try:
        other = os.stat(path)
    except FileNotFoundError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _sync_folder(os.path.dirname(path))


def _sync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Eviction -----------------------------------------------------------------------------------


def usage(root: str) -> dict[str, tuple[int, float]]:
    """Per entry key: bytes on disk (data and partial files) and last use (sidecar mtime)."""
    found: dict[str, list[float]] = {}
    with os.scandir(root) as it:
        for item in it:
            stem, dot, suffix = item.name.rpartition(".")
            if not dot or f".{suffix}" not in (".data", ".part", ".json"):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = item.stat(follow_symlinks=False)
                slot = found.setdefault(stem, [0, 0.0])
                if suffix == "json":
                    slot[1] = st.st_mtime_ns
                else:
                    slot[0] += st.st_blocks * 512
                    slot[1] = slot[1] or st.st_mtime_ns
    return {k: (int(v[0]), v[1]) for k, v in found.items()}


def evict(config: Any, *, keep: str) -> None:
    """Removes least recently used entries (not ``keep``, nor one in use) while the cache holds
    more than its bound."""
    if config.max_bytes is None:
        return
    entries = usage(config.root)
    total = sum(n for n, _ in entries.values())
    for key, (nbytes, _) in sorted(entries.items(), key=lambda kv: kv[1][1]):
        if total <= config.max_bytes:
            break
        if key != keep and nbytes and Entry(config, key, key).remove_if_idle():
            logger.info("cache: evicted %s (%d bytes)", key, nbytes)
            total -= nbytes
    if total > config.max_bytes:
        logger.warning("cache %s holds %d bytes, over its bound of %d: the entries left are in use",
                       config.root, total, config.max_bytes)


def _mark_used(path: str) -> None:
    """Records a last use in the sidecar's mtime, from the fine clock (file systems stamp files
    from a coarse one, so two uses a few ms apart would otherwise tie)."""
    now = time.time_ns()
    with contextlib.suppress(OSError):
        os.utime(path, ns=(now, now))
