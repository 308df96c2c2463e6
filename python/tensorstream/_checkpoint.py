"""Opening a checkpoint by content: one file (tensorizer or safetensors, told apart by the core
from its first bytes), a ``*.safetensors.index.json`` naming shards, or a folder / URL prefix /
``s3://`` prefix holding either.

A prefix (a local folder, or a URI that ends with ``/`` or names nothing) is looked up in this
order: ``model.safetensors.index.json``, ``model.safetensors``, ``model.tensors``; a local folder
without them may hold exactly one ``*.safetensors.index.json``, else its ``*.safetensors`` files
are the shards. Shard names in an index are plain relative names: a name that climbs out of the
checkpoint (``..``), is absolute or carries a scheme is a FormatError.

With a cache (``_cache``), every remote file (index.json and shards alike) is opened through it:
the shard's source is then the local entry.
"""

from __future__ import annotations

import json
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import _cache, _mapped, _native, _settings, _sources
from .errors import FormatError

INDEX_SUFFIX = ".safetensors.index.json"
_PREFIX_NAMES = ("model.safetensors.index.json", "model.safetensors", "model.tensors")
_MAX_INDEX_JSON = 64 << 20  # an index.json names shards; a bigger one is not an index
_OPEN_AT_ONCE = 16  # remote shards opened side by side


@dataclass
class Shard:
    source: Any
    index: Any
    region: Any = None  # the file's private mapping, with zero_copy or a complete cache entry
    cached: Any = None  # the _cache_store.CachedFile of a remote file opened through the cache


@dataclass(frozen=True)
class _How:
    """How files are opened: mapped (zero_copy), through a cache, for a lazy load."""

    zero_copy: bool = False
    cache: Any = None  # a _cache.Config
    lazy: bool = False


@dataclass
class Opened:
    """What a URI opened to: one shard for a single file, several for a sharded checkpoint."""

    name: str
    shards: list[Shard]


def open_checkpoint(obj: Any, *, zero_copy: bool = False, cache: Any = None, lazy: bool = False) -> Opened:
    """The shards of ``obj`` opened, each with its parsed index (FormatError, OSError as the core gives).

    ``cache`` (a ``_cache.Config``) opens remote files through the local cache; ``lazy`` lets it
    keep a partial entry that fills as tensors are read.
    """
    return _open(obj, _How(zero_copy, cache, lazy))


def _open(obj: Any, how: _How) -> Opened:
    path = _as_location(obj)
    if path is None:  # a file object, a descriptor or bytes: one file
        return _single(obj, how)
    if _is_prefix(path):
        return _open_prefix(path, how)
    try:
        return _open_named(path, how)
    except FileNotFoundError as missing:
        if not _sources.is_remote(path):
            raise
        try:
            return _open_prefix(path + "/", how)  # a remote "folder" is no object of its own
        except FileNotFoundError:
            raise missing from None


def _open_named(path: str, how: _How) -> Opened:
    """A file that exists as named: a tensor file or an index.json."""
    shard = _open_file(path, how)
    try:  # a tensor file, most often: its index is read with no other request first
        return Opened(path, [_indexed(shard)])
    except FormatError:
        raw = _read_head(shard, shard.source.size) if shard.source.size <= _MAX_INDEX_JSON else b""
        if raw.lstrip(b" \t\r\n")[:1] != b"{":  # neither a tensor file nor an index.json
            raise
    return _open_index_json(path, raw, how)


def _as_location(obj: Any) -> str | None:
    if isinstance(obj, (str, os.PathLike)) or (isinstance(obj, bytes) and _sources._looks_like_path(obj)):
        return os.fsdecode(obj)
    return None


def _is_prefix(path: str) -> bool:
    if _sources.is_remote(path):
        return path.endswith("/")
    return os.path.isdir(path)


def _single(obj: Any, how: _How) -> Opened:
    shard = _indexed(_open_file(obj, how))
    return Opened(shard.source.name, [shard])


def _open_file(path: Any, how: _How) -> Shard:
    """A file opened, its index not read yet."""
    if how.cache is not None and isinstance(path, str) and _sources.is_remote(path):
        cached = _cache.open_remote(how.cache, path, lazy=how.lazy and not how.zero_copy)
        return Shard(cached.source, None, cached.region, cached)
    if how.zero_copy:
        source, region = _mapped.open_local(path)
        return Shard(source, None, region)
    return Shard(_sources.open_source(path), None)


def filler_of(shard: Shard) -> Any:
    """What fills a partial cache entry on demand; None for any other file."""
    return shard.cached.filler if shard.cached is not None else None


def _indexed(shard: Shard) -> Shard:
    filler = filler_of(shard)
    shard.index = filler.read_index() if filler is not None else _native.read_index(shard.source)
    return shard


def _join(prefix: str, name: str) -> str:
    if _sources.is_remote(prefix):
        return prefix.rstrip("/") + "/" + name
    return os.path.join(prefix, name)


def _open_prefix(prefix: str, how: _How) -> Opened:
    if not _sources.is_remote(prefix):
        candidates = [n for n in _PREFIX_NAMES if os.path.isfile(os.path.join(prefix, n))]
        if candidates:
            return _open(os.path.join(prefix, candidates[0]), how)
        return _open_local_folder(prefix, how)
    for name in _PREFIX_NAMES:
        try:
            return _open_named(_join(prefix, name), how)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"{prefix} holds none of {', '.join(_PREFIX_NAMES)}")


def _open_local_folder(folder: str, how: _How) -> Opened:
    names = sorted(os.listdir(folder))
    indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
    if len(indexes) == 1:
        return _open(os.path.join(folder, indexes[0]), how)
    if len(indexes) > 1:
        raise ValueError(f"{folder} holds several checkpoint indexes ({', '.join(indexes)}): name one")
    files = [n for n in names if n.endswith(".safetensors")]
    if not files:
        raise FileNotFoundError(f"{folder} holds no checkpoint ({', '.join(_PREFIX_NAMES)} or *.safetensors)")
    return Opened(folder, [_indexed(_open_file(os.path.join(folder, n), how)) for n in files])


def _read_head(shard: Shard, n: int) -> bytes:
    """The first ``n`` bytes of a file (at most its size)."""
    buf = bytearray(min(shard.source.size, n))
    filler = filler_of(shard)
    if filler is not None:
        filler.ensure([(0, len(buf))])
    shard.source.read_into(0, buf)
    return bytes(buf)


def _open_index_json(path: str, raw: bytes, how: _How) -> Opened:
    """The shards that ``raw``, the index.json at ``path``, names, opened."""
    shard_names = shard_names_of(raw, path)
    remote = _sources.is_remote(path)
    base = posixpath.dirname(path) if remote else os.path.dirname(path)
    paths = [_join(base, n) for n in shard_names]
    if not remote or how.cache is not None or len(paths) == 1:
        return Opened(path, [_indexed(_open_file(p, how)) for p in paths])
    # Each remote shard costs a size probe and a read of its header, a round trip each (and on a
    # slow link, the header's bytes): the shards are opened side by side, not one after another,
    # on no more connections than TENSORSTREAM_HTTP_CONNECTIONS allows when it is set.
    at_once = min(len(paths), int(_settings.get("http_connections")) or _OPEN_AT_ONCE)
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="tensorstream-open") as pool:
        futures = [pool.submit(lambda p: _indexed(_open_file(p, how)), p) for p in paths]
        return Opened(path, [f.result() for f in futures])  # the first shard's error, in shard order


def shard_names_of(raw: bytes, label: str) -> list[str]:
    """The shard files an index.json's ``weight_map`` names, in first-mention order."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{label}: not a JSON checkpoint index ({exc})", field="index") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError(f"{label}: a checkpoint index needs a non-empty 'weight_map' object", field="weight_map")
    names: list[str] = []
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not _plain_relative(shard):
            raise FormatError(f"{label}: tensor {tensor!r} maps to {shard!r}, not a file of the checkpoint",
                              tensor=str(tensor), field="weight_map")
        if shard not in names:
            names.append(shard)
    return names


def _plain_relative(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and "\\" not in name and ":" not in name and "\0" not in name and not name.startswith("/") \
        and all(p not in ("", ".", "..") for p in parts)
