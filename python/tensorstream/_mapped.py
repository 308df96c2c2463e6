"""Zero-copy loads (``TensorDeserializer(..., zero_copy=True)``): CPU tensors of a local,
unencrypted file used where they lie in the page cache.

The file is mapped once, private and writable (copy-on-write): a tensor's pages are the page
cache's own until the tensor is written to, when the written pages become private copies. No
data is copied and no fresh memory is filled, and every process that maps the same file shares
its pages. The core still reads and checks every per-tensor header against the index and, with
``verify_hash``, hashes each tensor where it lies. Each tensor owns a storage of its own bytes
(a slice of the mapping, see ``_arena``).

What the file does afterwards shows through: bytes changed in place by another writer appear in
tensors not yet written to, and a file truncated under the mapping makes touching the lost pages
fail with SIGBUS. Replacing the file (a new file renamed over it) is safe: the mapping keeps the
old one.
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import stat
from collections.abc import Sequence
from typing import Any

import torch

from . import _arena, _loading, _native, _sources

MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14: map page-cache pages


def open_local(obj: Any) -> tuple[Any, mmap.mmap | None]:
    """A core source and a private mapping of the same open file, for a local path or a file
    object with a descriptor; ValueError for anything else (a URL, bytes, a stream)."""
    if isinstance(obj, bytes) and not _sources._looks_like_path(obj):
        raise ValueError("zero_copy=True needs a local file, not file contents in memory")
    if isinstance(obj, (str, bytes, os.PathLike)):
        path = os.fsdecode(obj)
        if _sources.is_remote(path):
            raise ValueError("zero_copy=True needs a local file; remote files are copied unless a cache holds "
                             "them (cache_dir= or TENSORSTREAM_CACHE_DIR)")
        if "\0" in path:
            raise ValueError("embedded NUL byte in the path")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    else:
        theirs = _sources._fileno(obj) if not isinstance(obj, int) else obj
        if theirs is None or isinstance(obj, bool):
            raise ValueError(f"zero_copy=True needs a local file, not a {type(obj).__name__}")
        fd = os.dup(theirs)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (zero_copy=True maps the file)", getattr(obj, "name", obj))
        source = _native.FileSource.from_fd(fd)
        region = None
        if info.st_size:
            region = mmap.mmap(fd, info.st_size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return source, region
    finally:
        os.close(fd)


class MappedLoader(_native.CoreWrapper):
    """The loader of a zero-copy deserializer: a core Loader for the headers and hashes, and the
    mapping of each file that tensors are sliced from (the shards of a checkpoint, laid end to
    end in ``source``, a ShardSource, each with its own mapping)."""

    backend = "mmap"

    def __init__(self, source: Any, regions: Sequence[mmap.mmap | None], *, threads: int = 0) -> None:
        self.core = _native.Loader(source, threads=threads)
        self.regions = list(regions)
        self.starts = list(source.starts) if len(self.regions) > 1 else [0, source.size]
        if len(self.starts) != len(self.regions) + 1:
            raise ValueError(f"{len(self.regions)} mappings for the {len(self.starts) - 1} files of {source.name}")

    def set_decryption(self, **_: Any) -> None:
        raise ValueError("zero_copy=True cannot decrypt: encrypted tensors are always copied")

    def slices(self, spans: Sequence[tuple[int, int]], *, populate: bool) -> list[torch.Tensor]:
        """One uint8 tensor per ``(offset, nbytes)`` (offsets in the source, each span within one
        file), each owning a storage over its file's mapping; ``populate`` maps the pages up front
        where the page cache lacks some (see ``_populate``)."""
        by_file: dict[int, list[tuple[int, int, int]]] = {}
        for k, (offset, nbytes) in enumerate(spans):
            i = bisect.bisect_right(self.starts, offset) - 1
            by_file.setdefault(i, []).append((k, offset - self.starts[i], nbytes))
        out: list[Any] = [None] * len(spans)
        for i, items in by_file.items():
            local = [(offset, nbytes) for _, offset, nbytes in items]
            if populate:
                _populate(self.regions[i], local)
            for (k, _, _), raw in zip(items, _arena.slices_of(self.regions[i], 0, local), strict=True):
                out[k] = raw
        return out


def _populate(region: mmap.mmap | None, spans: Sequence[tuple[int, int]]) -> None:
    """Reads the pages holding ``spans`` into the page cache and maps them, in one call, when the
    cache lacks some of them (a sample of pages tells). A cached file is left to be mapped as it
    is touched: the kernel then maps 16 neighbouring cached pages per fault, which costs less
    than mapping them all up front (measured: 2 GiB, about 1.5 ms of faults against 6 ms). Best
    effort on older kernels."""
    if region is None or not spans:
        return
    lo = min(off for off, _ in spans) // mmap.PAGESIZE * mmap.PAGESIZE
    hi = max(off + n for off, n in spans)
    start = torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr()
    if _native.resident_share(start + lo, hi - lo) >= 1.0:
        return
    try:
        region.madvise(MADV_POPULATE_READ, lo, hi - lo)
    except (OSError, ValueError):
        pass  # pages are then read and mapped on first touch


def load(
    loader: MappedLoader, index: Any, records: Sequence[_loading.Record], verify_hash: bool, *, pooled: bool
) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """As :func:`_loading.load`, with each tensor a slice of the mapping instead of a copy.

    ``pooled`` (an eager load) maps all the tensors' pages up front when the cache lacks some.
    """
    with_data = [r for r in records if r.nbytes]
    spans = [(index.entries[r.pos].data_offset, r.nbytes) for r in with_data]
    raws = loader.slices(spans, populate=pooled)
    requests = _loading.plan(records, with_data, raws)
    try:
        module_idx = loader.core.check_in_place(index, requests, verify_hash)
    except BaseException:
        raws = loader = None  # as in _loading.load: a kept traceback holds neither
        raise
    return _loading.results(records, with_data, raws, requests, module_idx)
