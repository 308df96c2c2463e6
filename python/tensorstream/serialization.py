"""``TensorSerializer`` and ``TensorDeserializer``: tensorizer's API over the tensorstream core."""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy
import torch

from . import _assign, _cache, _checkpoint, _coop_plan, _cooperative, _device, _dtypes, _group, _loading, _mapped
from . import _names, _native, _progress, _ring, _s3, _shards, _slice_reads, _slices, _sources, _staging, _stats
from . import encryption as _encryption
from . import errors as _errors
from .encryption import DecryptionParams, EncryptionParams
from .errors import RankFailedError

__all__ = ["TensorType", "TensorSerializer", "TensorDeserializer", "EncryptionParams", "DecryptionParams"]

logger = logging.getLogger("tensorstream")

FilterFunc = Callable[[str | Sequence[str | int]], bool]

# Tensors that need a host copy before writing (GPU, non-contiguous) are staged in batches of
# about this many bytes, so that saving never holds a second copy of the whole model; GPU tensors
# go through one pinned buffer of this size (see _staging).
_STAGING_BYTES = 512 << 20


class TensorType(enum.IntEnum):
    """What a tensor was in its module (stored in the file)."""

    PARAM = 0
    BUFFER = 1
    STATE_DICT = 2


# --------------------------------------------------------------------------------------------
# Writing


class TensorSerializer:
    """Writes tensors to a ``.tensors`` file that tensorizer can read.

    ``path_or_file``: a local path (created or truncated), a binary file open for reading and
    writing (``"wb+"``; written through its descriptor from offset 0 and left open), or an object
    without a descriptor such as ``io.BytesIO`` (written to a temporary file, copied into the
    object by :meth:`close`). ``compress_tensors`` is accepted and ignored, as in tensorizer;
    ``limit_cpu_concurrency`` caps the core's hashing/writing threads. ``progress=True`` shows a
    bar on a terminal (None: the ``TENSORSTREAM_PROGRESS`` setting; see ``_progress``).
    """

    def __init__(
        self,
        path_or_file: Any,
        compress_tensors: bool = False,
        *,
        encryption: Any = None,
        limit_cpu_concurrency: int | None = None,
        progress: bool | None = None,
    ) -> None:
        encryption = _encryption.writing_params(encryption)
        self._progress = _progress.wanted(progress)
        self._target: _sources.WriteTarget | None = None
        self._target = _sources.WriteTarget(path_or_file)
        try:
            self._writer = self._target.make_writer(limit_cpu_concurrency or 0)
            _encryption.apply_to_writer(self._writer, encryption)
        except BaseException:
            self._target.abandon()
            self._target = None
            raise
        self._names = _names.Registry()

    @property
    def total_tensor_bytes(self) -> int:
        """Bytes of tensor data written so far."""
        return self._writer.tensor_size

    def write_tensor(self, idx: int, name: Any, tensor_type: int, tensor: Any) -> None:
        """Write one tensor (a torch tensor or numpy array) under ``name``."""
        self._write([(idx, name, tensor_type, tensor, None)])

    def write_module(
        self, m: torch.nn.Module, remove_tensors: bool = False, *, include_non_persistent_buffers: bool = True
    ) -> None:
        """Write every parameter and buffer of ``m``, module by module, as tensorizer does."""
        specs = []
        for idx, (prefix, module) in enumerate(m.named_modules()):
            skip = set() if include_non_persistent_buffers else module._non_persistent_buffers_set
            owned = itertools.chain(
                ((n, t, TensorType.PARAM) for n, t in module.named_parameters(recurse=False)),
                ((n, t, TensorType.BUFFER) for n, t in module.named_buffers(recurse=False) if n not in skip),
            )
            for attr, tensor, kind in owned:
                drop = _Remover(module, attr) if remove_tensors else None
                specs.append((idx, f"{prefix}.{attr}", kind, tensor, drop))
        self._write(specs)

    def write_state_dict(self, state_dict: Any) -> None:
        """Write a (possibly nested) dict / list of tensors; nested keys become structured names."""
        specs = [(0, path, TensorType.STATE_DICT, t, None) for path, t in _names.flatten(state_dict)]
        self._write(specs)

    def close(self) -> None:
        """Finish the file (valid even with no tensors) and release it."""
        if self._target is None:
            return
        target, self._target = self._target, None
        try:
            if self._writer.tensor_count == 0:
                self._writer.write([])
            self._writer.close()
        finally:
            target.finish()

    def __enter__(self) -> TensorSerializer:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is not None and self._target is not None and self._target.streamed:
            self._abandon()  # an object store keeps nothing half-written
            return
        self.close()

    def __del__(self) -> None:
        self._abandon()

    def _abandon(self) -> None:
        target, self._target = getattr(self, "_target", None), None
        if target is None:
            return
        writer = getattr(self, "_writer", None)
        if writer is not None and target.streamed:
            writer.abort()
        target.abandon()

    # Internals -----------------------------------------------------------------------------

    def _write(self, specs: Sequence[tuple[int, Any, int, Any, Callable[[], None] | None]]) -> None:
        """Write ``(module_idx, name, tensor_type, tensor, after_write)`` specs, in order."""
        if self._target is None:
            raise ValueError("the serializer is closed")
        pending = [_pending(*spec) for spec in specs]  # validates everything before writing
        self._register([p.path for p in pending])
        batch: list[tuple[_Pending, torch.Tensor]] = []
        staged = 0
        on_gpu = sum(p.nbytes for p in pending if p.copy and p.tensor.device.type == "cuda")
        stager = _staging.Stager(min(_STAGING_BYTES, on_gpu))  # pinned, reused batch after batch
        for p in pending:
            if p.copy and staged and staged + p.nbytes > _STAGING_BYTES:
                stager.ready()
                self._flush(batch)
                stager.reset()
                staged = 0
            batch.append((p, stager.copy(p.tensor) if p.copy else p.tensor))
            staged += p.nbytes if p.copy else 0
        stager.ready()
        self._flush(batch)

    def _flush(self, batch: list[tuple[_Pending, torch.Tensor]]) -> None:
        """One core call for the batch (hashed and written in parallel), then the callbacks."""
        if batch:
            start = time.perf_counter()
            nbytes = sum(p.nbytes for p, _ in batch)
            with _progress.Bar(nbytes, "saving", self._progress) as bar:
                for part in _progress.parts(batch, lambda item: item[0].nbytes, bar):
                    self._writer.write([p.record(tensor) for p, tensor in part])
            seconds = time.perf_counter() - start
            logger.info(
                "wrote %d tensors, %.1f MB in %.3f s (%.2f GB/s)",
                len(batch), nbytes / 1e6, seconds, nbytes / max(seconds, 1e-9) / 1e9,
            )
        for p, _ in batch:
            if p.done is not None:
                p.done()
        batch.clear()

    def _register(self, paths: list[_names.Path]) -> None:
        """Add the names of one write call, all or none."""
        if len(paths) == 1:
            self._names.add(paths[0])  # checks before adding
            return
        trial = _names.Registry()
        trial.root = _copy_tree(self._names.root)
        for path in paths:
            trial.add(path)
        self._names = trial


class _Remover:
    """Callback for ``remove_tensors``: replace a module's tensor with None once written."""

    def __init__(self, module: torch.nn.Module, attr: str) -> None:
        self.module, self.attr = module, attr

    def __call__(self) -> None:
        setattr(self.module, self.attr, None)


class _Pending(NamedTuple):
    """A validated tensor waiting to be written."""

    path: _names.Path
    raw_name: bytes
    tensor_type: int
    module_idx: int
    dtype: str
    tensor: torch.Tensor
    nbytes: int
    copy: bool  # needs a contiguous host copy first (GPU, strided, conjugate/negative view)
    done: Callable[[], None] | None

    def record(self, tensor: torch.Tensor) -> tuple:
        """The core's record tuple, with ``tensor`` (this one or its host copy) as the data."""
        address = tensor.data_ptr() if self.nbytes else 0
        shape = tuple(tensor.shape)
        meta = tensor.is_meta
        return (self.raw_name, self.tensor_type, self.module_idx, self.dtype, shape, address, self.nbytes, meta)


def _pending(idx: int, name: Any, tensor_type: int, tensor: Any, done: Callable[[], None] | None) -> _Pending:
    """Check one tensor and its name; ValueError / TypeError before anything is written."""
    path = _names.as_path(name)
    raw_name = _names.encode(path)
    tensor_type = int(tensor_type)
    if tensor_type not in (0, 1, 2):
        raise ValueError(f"tensor {name!r}: tensor_type must be 0, 1 or 2, not {tensor_type}")
    if not _names.is_plain(path) and tensor_type != TensorType.STATE_DICT:
        raise ValueError(f"tensor {name!r}: structured names are only allowed for STATE_DICT tensors")
    if not 0 <= int(idx) <= 0xFFFF:
        raise ValueError(f"tensor {name!r}: module index {idx} does not fit in 16 bits")
    tensor = _as_tensor(tensor, name)
    if tensor.is_meta and tensor.dim() == 0:
        # A 0-dim tensor cannot be told apart from a meta one in the file: store a real zero.
        tensor = torch.zeros((), dtype=tensor.dtype, device="cpu")
    dtype = _dtypes.encode(tensor.dtype)
    meta = tensor.is_meta
    nbytes = 0 if meta else tensor.numel() * tensor.element_size()
    copy = not meta and (
        tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.is_conj() or tensor.is_neg()
    )
    return _Pending(path, raw_name, tensor_type, int(idx), dtype, tensor, nbytes, copy, done)


def _as_tensor(obj: Any, name: Any) -> torch.Tensor:
    if isinstance(obj, numpy.ndarray):
        obj = torch.from_numpy(numpy.ascontiguousarray(obj))
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"tensor {name!r}: expected a torch.Tensor, got {type(obj).__name__}")
    if obj.layout != torch.strided:
        raise ValueError(f"tensor {name!r}: only dense tensors can be serialized, not {obj.layout}")
    return obj.detach()


def _copy_tree(tree: dict[Any, Any]) -> dict[Any, Any]:
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}


# --------------------------------------------------------------------------------------------
# Reading


class TensorDeserializer(collections.abc.Mapping, contextlib.AbstractContextManager):
    """Reads a ``.tensors`` file or a safetensors checkpoint; a read-only mapping of names to tensors.

    The format is picked from the bytes, not the name: a tensorizer file, a ``.safetensors``
    file, a ``*.safetensors.index.json`` naming shards, or a folder / URL prefix / ``s3://``
    prefix holding a checkpoint (see ``_checkpoint``). Shards load together as one mapping;
    safetensors stores no hashes, so ``verify_hash=True`` is a ValueError for it.

    Plain names are ``str`` keys. Files with structured names (nested dicts / lists written by
    ``write_state_dict``) map their first components to nested read-only mappings; ``tree()``
    rebuilds the original dicts and lists. ``filter_func`` receives the ``str`` name, or the
    path tuple of a structured name. ``dtype`` casts floating-point tensors only.

    Eager loading (the default) reads every selected tensor with one core call into one
    memory region, then releases the file; ``lazy_load=True`` reads each tensor on first access.
    ``plaid_mode`` and ``plaid_mode_buffers`` are accepted for compatibility and ignored;
    ``num_readers`` sets the number of reading threads.

    A deserializer may be shared by threads (loads run one at a time). :meth:`close` from another
    thread stops a running load, which then raises :class:`~tensorstream.errors.LoadCancelled`;
    Ctrl-C stops a load run from the main thread. Either way no tensor of that load is handed out.

    ``zero_copy=True`` (local, unencrypted files, CPU only) uses the tensors where they lie in
    the page cache, through a private copy-on-write mapping of the file: nothing is copied and
    processes loading the same file share its memory (see ``_mapped`` for what a later change
    to the file does). Headers are checked and ``verify_hash`` hashes the mapped bytes.

    ``device="cuda"`` (``"cuda:N"``, a ``torch.device``) loads straight to the GPU through a
    ring of pinned host memory (``TENSORSTREAM_RING_MB``, default 256 MiB): host memory stays
    at the ring's size whatever the model's size. ``dtype`` casts run on the GPU.

    ``progress=True`` shows a bar (bytes, GB/s, ETA) on a terminal while tensors load (None: the
    ``TENSORSTREAM_PROGRESS`` setting). ``stats`` (a ``LoadStats``) sums bytes and seconds per
    stage over this deserializer's loads.

    ``slices=plan`` loads part of each tensor, as a tensor-parallel rank needs:
    ``plan(name, shape)`` returns None (the whole tensor) or an index (ints, slices with positive
    steps, ``...``, ``None``), and the tensor under ``name`` is that part, contiguous and owning
    its storage (``shard_plan`` makes the usual even split). All selected tensors of a load are
    read in one engine run that fetches only the ranges the parts need (see :meth:`get_slice`
    for encrypted files and ``verify_hash``). ``zero_copy=True`` cannot be combined with it.

    ``cache_dir`` (a folder; None: ``TENSORSTREAM_CACHE_DIR``; False: no cache) keeps a local copy
    of ``http(s)://`` and ``s3://`` files, checked against the remote's size, ETag and
    Last-Modified at each open (see ``_cache``). A complete entry loaded to the CPU unencrypted is
    used in place, as with ``zero_copy``; a lazy load caches the ranges it reads.

    ``process_group`` loads together with the other ranks of a ``torch.distributed`` group:
    ``True`` or ``"default"`` for the default group, or a ``ProcessGroup``; None (the default) or
    False loads alone. Every rank of the group must make the same call (same file, filter_func,
    verify_hash; device and dtype may differ). Each rank reads about ``1/world`` of the tensor
    bytes (runs of consecutive tensors), checks hashes and decrypts what it read, and the ranks
    broadcast their shares to each other (see ``_cooperative``); every rank ends with the tensors
    of a plain load. An error on any rank raises :class:`~tensorstream.errors.RankFailedError` on
    every rank, naming it. Loads are eager: ``lazy_load`` and ``zero_copy`` are refused with it.
    ``total_bytes_read`` counts what this rank read, and ``verify_module`` knows the hashes of
    those tensors only. The group is neither made nor destroyed here.
    """

    def __init__(
        self,
        path_or_file: Any,
        device: _device.DeviceLike = None,
        filter_func: FilterFunc | None = None,
        dtype: torch.dtype | None = None,
        *,
        lazy_load: bool = False,
        plaid_mode: bool | None = None,
        plaid_mode_buffers: int | None = None,
        num_readers: int | None = None,
        verify_hash: bool = False,
        encryption: Any = None,
        zero_copy: bool = False,
        progress: bool | None = None,
        slices: _slice_reads.Plan | None = None,
        cache_dir: Any = None,
        process_group: Any = None,
    ) -> None:
        encryption = _encryption.reading_params(encryption)
        cache = _cache.resolve(cache_dir)
        self._progress = _progress.wanted(progress)
        self.stats = _stats.LoadStats()
        self._device = _device.resolve(device)
        if zero_copy and (self._device.type != "cpu" or _ring.wanted(self._device)):
            raise ValueError(f"zero_copy=True maps the file into CPU memory; it cannot load to {self._device}")
        if zero_copy and slices is not None:
            raise ValueError("zero_copy=True maps whole tensors; it cannot be combined with slices=")
        if num_readers is not None and (not isinstance(num_readers, int) or num_readers < 1):
            raise ValueError(f"num_readers must be a positive int or None, not {num_readers!r}")
        self._dtype = dtype
        self._verify_hash = bool(verify_hash)
        # Held for each load, so close() can wait for it to stop; reentrant, so a close() from a
        # signal handler on a thread that holds it does not deadlock.
        self._lock = threading.RLock()
        self._loading_thread: int | None = None  # the thread running a load, while one runs
        self._closed = False
        self._loader: Any = None
        self._cache: dict[_names.Path, torch.Tensor] = {}
        self._module_idx: dict[int, int] = {}  # index position -> module_idx, known once loaded
        self._digests: dict[int, Any] = {}  # index position -> _core.HeaderDigest, for verify_module
        self._last_read = -1  # position in self._records of the last tensor read_tensors yielded
        self.total_bytes_read = 0
        self._team = _group.resolve(process_group, self._device)
        if self._team is not None and (lazy_load or zero_copy or slices is not None):
            what = "lazy_load=True" if lazy_load else "zero_copy=True" if zero_copy else "slices="
            raise ValueError(f"process_group loads every tensor at once across the ranks: it cannot be combined with {what}")
        self._fillers: list[Any] = []  # per shard: what fills its partial cache entry (lazy), else None
        self._cached: list[tuple[Any, Any]] = []  # (cache entry, index) of the shards read from the cache
        for attempt in (1, 2):  # a cached copy that fails its hashes is fetched again, once (alone only)
            opened = self._open_checkpoint(path_or_file, zero_copy, cache, lazy_load)
            try:
                self._open(opened, filter_func, num_readers or 0, encryption, zero_copy, lazy_load, slices)
                return
            except _errors.HashMismatchError as exc:
                if attempt == 2 or self._team is not None or not _discard(_cached_entries(opened.shards), exc):
                    opened = None  # a traceback the caller keeps holds this frame, not the files
                    self.close()
                    raise
                logger.warning("%s: the cached copy failed its hash check (%s); fetching it again", opened.name, exc)
                opened = None
                self._release()
            except BaseException:
                opened = None
                self.close()
                raise

    def _open_checkpoint(self, path_or_file: Any, zero_copy: bool, cache: Any, lazy: bool) -> _checkpoint.Opened:
        """Opens the checkpoint; with a team, a failure here is heard by every rank."""
        try:
            return _checkpoint.open_checkpoint(path_or_file, zero_copy=zero_copy, cache=cache, lazy=lazy)
        except BaseException as exc:
            if self._team is not None:
                self._team.agree(exc, "opening")
            raise

    def _open(self, opened: _checkpoint.Opened, filter_func: FilterFunc | None, threads: int, encryption: Any,
              zero_copy: bool, lazy_load: bool, slices: _slice_reads.Plan | None) -> None:
        """Reads the opened checkpoint's index and, for an eager load, every selected tensor (with a
        team, once every rank has opened the same thing)."""
        agreed = False  # with a team: whether the ranks agreed on what they open
        try:
            self._source, self._index = _source_and_index(opened)
            self._label: str = self._source.name
            self._opened_sources = [s.source for s in opened.shards]  # whose S3 credentials may expire
            self._fillers = [_checkpoint.filler_of(s) for s in opened.shards]
            self._cached = _cached_entries(opened.shards)
            self._entries = [s.index.entries for s in opened.shards] if any(self._fillers) else []
            if self._verify_hash and self._index.format != "tensorizer":
                raise ValueError(f"{self._source.name} is safetensors, which stores no hashes: verify_hash=True "
                                 "cannot check it (load it without verify_hash)")
            _encryption.check_file(self._index.encrypted, encryption, self._source.name)
            if zero_copy and self._index.encrypted:
                raise ValueError(f"{self._source.name} is encrypted: zero_copy=True needs an unencrypted file")
            self._records = _select(self._index, filter_func)
            self._by_path = {r.path: r for r in self._records}
            self._tree = _names.registry_of([r.path for r in self._records])
            self._planned = _slice_reads.planned(slices, self._records)  # path -> Selection
            self.total_tensor_bytes = sum(r.nbytes for r in self._records)
            self._loader, self._load = self._make_loader(opened.shards, threads, zero_copy)
            _encryption.apply_to_loader(self._loader, encryption)
            self._backend: str = self._loader.backend
            if self._team is not None:
                facts = (self._index.format, self._index.file_size, self._verify_hash, self._loader.facts())
                self._team.agree(None, "opening", _coop_plan.fingerprint(self._records, *facts))
                agreed = True
            if not lazy_load:
                with self._lock:
                    self._fetch(self._records, self._verify_hash, pooled=True)
                    self._release()
        except BaseException as exc:
            opened = None  # a traceback the caller keeps holds this frame, not the files
            if self._team is not None and not agreed and not isinstance(exc, RankFailedError):
                self._team.agree(exc, "opening")  # this rank failed: every rank raises, none waits
            raise

    def _make_loader(self, shards: list[_checkpoint.Shard], threads: int, zero_copy: bool) -> tuple[Any, Callable]:
        """The loader of the file, or of every shard of a checkpoint at once, and its load function.

        The shards of a checkpoint lie side by side (one folder, one host), so the core lays them
        end to end as one source and joins their indexes: a load is one engine run over all of
        them (one set of workers, one connection pool, one ring whatever the number of shards).
        """
        ring = _ring.wanted(self._device)
        if len(shards) == 1:
            source, index = shards[0].source, shards[0].index
        else:
            source = _native.ShardSource([s.source for s in shards], self._label)
            index = _native.join_indexes([s.index for s in shards], source)
        loader, load = self._loader_for(source, index, [s.region for s in shards], threads, zero_copy, ring)
        if len(shards) > 1:
            loader, load = _shards.ShardedLoader(loader, load, index), _shards.load
        if self._team is not None:
            return _cooperative.CoopLoader(loader, self._team, self._device), _cooperative.load
        return loader, load

    def _loader_for(self, source: Any, index: Any, regions: list[Any], threads: int, zero_copy: bool,
                    ring: bool) -> tuple[Any, Callable]:
        """The loader of ``source`` (one file, or a ShardSource) and the function that loads records
        through it (``ring``: through the device ring). With zero_copy, and for complete cache
        entries loaded to the CPU unencrypted, tensors are slices of each file's mapping
        (``regions``, one per file)."""
        on_cpu = self._device.type == "cpu" and not ring
        if zero_copy or (on_cpu and not index.encrypted and all(r is not None for r in regions)):
            return _mapped.MappedLoader(source, regions, threads=threads), _mapped.load
        if ring:
            return _ring.RingLoader(source, self._device, threads=threads), _ring.load
        return _native.Loader(source, threads=threads), _loading.load

    # Properties ----------------------------------------------------------------------------

    @property
    def format(self) -> str:
        """The format of the file (or shards) read: ``"tensorizer"`` or ``"safetensors"``."""
        return self._index.format

    @property
    def metadata(self) -> dict[str, str]:
        """A safetensors file's ``__metadata__`` (merged over shards); empty for tensorizer files."""
        return dict(self._index.metadata)

    @property
    def io_backend(self) -> str:
        """The engine that reads the file: ``"io_uring"``, ``"posix"`` or ``"memory"``."""
        return self._backend

    @property
    def device(self) -> torch.device:
        return self._device

    # Mapping -------------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        try:
            node = self._tree.root[key]
        except (KeyError, TypeError):
            raise KeyError(key) from None
        if not isinstance(node, dict):
            return self._tensors([node])[node]
        return self._subtree((key,), node, proxies=True)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._tree.root)

    def __len__(self) -> int:
        return len(self._tree.root)

    def __contains__(self, key: Any) -> bool:
        try:
            return key in self._tree.root
        except TypeError:
            return False

    def keys(self) -> collections.abc.KeysView:
        return self._tree.root.keys()

    def get_slice(self, name: Any) -> _slice_reads.TensorSlice:
        """A view of the stored tensor ``name`` (a str, or the path tuple of a structured name)
        with ``get_shape()``, ``get_dtype()`` and indexing, as safetensors' ``get_slice``.

        ``get_slice(name)[index]`` reads only the bytes ``index`` selects (whole rows for a slice
        of the first dimension, one range per contiguous run otherwise) and returns them on this
        deserializer's device, cast by ``dtype=``, contiguous and owning its storage; KeyError for
        a name the file lacks. The slice is of the stored tensor, whatever ``slices=`` plan the
        deserializer has. Encrypted files (decrypted per tensor) and ``verify_hash=True`` (the
        hashes cover whole tensors) read the whole tensor, check it, then slice it. A tensor an
        eager load already holds whole is sliced in memory; otherwise the file must be open.
        """
        path = name if isinstance(name, tuple) else (name,)
        if path not in self._by_path:
            raise KeyError(f"no tensor named {name!r} in {self._label}")
        return _slice_reads.TensorSlice(self, path)

    # tensorizer's methods -------------------------------------------------------------------

    def tree(
        self, prefix: Sequence[Any] | None = None, *, default: Any = None, filter_func: FilterFunc | None = None
    ) -> Any:
        """The (sub)tree under ``prefix`` as nested dicts and lists (a tensor for a leaf)."""
        if isinstance(prefix, (str, int)):
            raise TypeError("prefix must be a sequence of keys; for one key use a one-element tuple")
        prefix = tuple(prefix or ())
        try:
            node = self._tree.node(prefix)
        except (KeyError, TypeError):
            return default
        if not isinstance(node, dict):
            keep = filter_func is None or filter_func(_names.public(node))
            return self._tensors([node])[node] if keep else default
        result = self._subtree(prefix, node, proxies=False, filter_func=filter_func)
        return result if result else default

    def read_tensors(
        self, filter_func: FilterFunc | None = None, num_tensors: int = -1, verify_hash: bool | None = None
    ) -> Iterator[tuple[int, int, Any, torch.Tensor]]:
        """Yield ``(module_idx, tensor_type, name, tensor)`` in file order.

        Like tensorizer, successive calls continue after the last tensor yielded.
        """
        return self._yield_records(self._choose(filter_func, num_tensors), verify_hash)

    def _choose(self, filter_func: FilterFunc | None, num_tensors: int) -> list[tuple[int, Any]]:
        """``(position, record)`` after the last one yielded that ``filter_func`` keeps, at most ``num_tensors``."""
        if num_tensors < -1:
            raise ValueError("num_tensors must be -1 or non-negative")
        candidates = itertools.islice(enumerate(self._records), self._last_read + 1, None)
        chosen = [(i, r) for i, r in candidates if filter_func is None or filter_func(r.name)]
        return chosen if num_tensors == -1 else chosen[:num_tensors]

    def _yield_records(self, chosen: list[tuple[int, Any]], verify_hash: bool | None) -> Iterator[tuple]:
        tensors = self._tensors([r.path for _, r in chosen], verify_hash)
        for i, rec in chosen:
            self._last_read = i
            # Tensors read through a slices plan skip their per-tensor headers: module index 0.
            yield self._module_idx.get(rec.pos, 0), rec.tensor_type, rec.name, tensors[rec.path]

    def load_into_module(
        self,
        m: torch.nn.Module,
        filter_func: FilterFunc | None = None,
        verify_hash: bool | None = None,
        *,
        strict: bool = False,
    ) -> int:
        """Put the file's tensors into ``m``'s parameters and buffers; returns how many.

        Names are matched as tensorizer's ``write_module`` writes them (``"layer.0.weight"``,
        ``".weight"`` for the root) or as in ``state_dict()``. As in tensorizer, every selected
        tensor goes into ``m``: an existing parameter or buffer takes the file's tensor (its shape
        and dtype too), a name ``m`` lacks is registered as a parameter or buffer by the file's
        tensor type, and what the file lacks stays as it is. A name whose submodule does not
        exist, or that is some other attribute, is a RuntimeError naming it (nothing changed).

        ``strict=True`` instead requires the file and ``m`` to hold the same parameters and
        persistent buffers (all of them without ``filter_func``; the selected ones with it), with
        the same shapes, and raises RuntimeError naming every difference before changing anything.
        Parameters keep their ``requires_grad`` flag; weights tied in ``m`` stay tied.
        """
        records = [self._as_planned(r) for r in self._records if filter_func is None or filter_func(r.name)]
        slots = _assign.plan(m, records, strict=strict, check_missing=filter_func is None)
        tensors = self._tensors([s.record.path for s in slots], verify_hash)
        _assign.apply(m, slots, tensors)
        return len(slots)

    def read_numpy_arrays(
        self,
        filter_func: FilterFunc | None = None,
        num_tensors: int = -1,
        allow_raw_data: bool = False,
        verify_hash: bool | None = None,
    ) -> Iterator[tuple[int, int, Any, numpy.ndarray, bool, str | None]]:
        """Yield ``(module_idx, tensor_type, name, array, is_opaque, torch_dtype)`` in file order.

        As tensorizer's: the arrays share memory with the loaded tensors; a dtype numpy lacks
        (bfloat16, float8, complex32...) is *opaque*: with ``allow_raw_data=True`` its bytes come
        as a same-width signed int array, ``is_opaque`` is True and ``torch_dtype`` names the real
        type (``"torch.bfloat16"``); without it, ValueError. Continues after the last tensor
        :meth:`read_tensors` or this method yielded. RuntimeError unless loading to the CPU.
        """
        if self._device.type != "cpu":
            raise RuntimeError("read_numpy_arrays is only valid when deserializing to the CPU")
        chosen = self._choose(filter_func, num_tensors)
        for module_idx, tensor_type, name, tensor in self._yield_records(chosen, verify_hash):
            arr, torch_dtype = _as_numpy(tensor)
            if torch_dtype is not None and not allow_raw_data:
                raise ValueError(
                    f"{name} has an opaque datatype: (Torch: {torch_dtype}, Numpy: {arr.dtype.str}). "
                    f"Set `allow_raw_data=True` to return as a numpy array with a datatype of {arr.dtype.str}"
                )
            yield module_idx, tensor_type, name, arr, torch_dtype is not None, torch_dtype

    def verify_module(self, m: torch.nn.Module) -> tuple[bool, list[tuple[Any, bool]]]:
        """Check ``m``'s tensors against the hashes stored in the file: ``(all_ok, [(name, ok)])``.

        As tensorizer's: a name of the file that ``m`` (its ``state_dict()`` and buffers) lacks is
        reported failed, twice, as tensorizer reports it. A tensor whose dtype or shape differs
        fails; a file tensor with no stored hash passes. Unlike tensorizer, a lazy deserializer
        need not have loaded the tensors first: the hashes of those not yet loaded are read from
        their headers (a small read each). RuntimeError if they are needed after :meth:`close`.
        """
        if self._index.format != "tensorizer":
            raise ValueError(f"{self._source.name} is safetensors, which stores no hashes to verify a module against")
        tensors: dict[str, torch.Tensor] = dict(m.state_dict())
        tensors.update(m.named_buffers())  # non-persistent buffers are in the file too
        checked = [r for r in self._records if r.name in tensors]
        digests = self._digests_of(checked)
        results = [(r.name, r.name in tensors and _matches(digests[r.pos], r, tensors[r.name])) for r in self._records]
        results += [(name, False) for name in self.keys() if name not in tensors]
        return all(ok for _, ok in results), results

    def _digests_of(self, records: Sequence[_loading.Record]) -> dict[int, Any]:
        """The hash digests of ``records`` by index position: kept from loads, else read now."""
        with self._lock:
            todo = [r for r in records if r.pos not in self._digests]
            missing = [r.pos for r in todo]
            if missing:
                if self._source is None:
                    raise RuntimeError(
                        "the hashes of tensors not loaded before the deserializer was closed are not known; "
                        "call verify_module before close(), or load the tensors first"
                    )
                self._fill(todo, data=False)
                self._digests.update((d.entry, d) for d in _native.read_digests(self._source, self._index, missing))
            return {r.pos: self._digests[r.pos] for r in records}

    def close(self) -> None:
        """Release the file. Tensors already loaded stay valid.

        Called from another thread while a load runs, it cancels that load and returns once the
        core has stopped writing and the load's memory is freed; the loading call raises
        :class:`~tensorstream.errors.LoadCancelled` and caches nothing.
        """
        self._closed = True
        loader = self._loader
        if loader is not None:
            loader.cancel()
        if self._loading_thread == threading.get_ident():
            return  # a signal handler on the loading thread: the load ends, then releases
        with self._lock:
            self._release()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # Internals -----------------------------------------------------------------------------

    def _take(self, path: _names.Path) -> torch.Tensor:
        """The tensor at ``path``, freshly read and not kept (a new tensor on each call)."""
        with self._lock:
            cached = path in self._cache
            tensor = self._tensors([path])[path]
            if not cached:
                del self._cache[path]
            return tensor if not cached else tensor.clone()

    def _data_location(self, path: _names.Path) -> tuple[Any, int, _loading.Record]:
        """The source holding a tensor's bytes, their offset in it, and its record."""
        if self._source is None or self._closed:
            raise ValueError("the deserializer is closed; open a new one to read more tensors")
        rec = self._by_path[path]
        if isinstance(self._index, _shards.ShardedIndex):
            shard, local = self._index.locate(rec.pos)
            return self._source.sources[shard], self._index.parts[shard].entries[local].data_offset, rec
        return self._source, self._index.entries[rec.pos].data_offset, rec

    def _release(self) -> None:
        self._loader = None
        self._source = None
        self._fillers = []
        self._cached = []

    def _fill(self, records: Sequence[_loading.Record], *, data: bool) -> None:
        """Brings the headers (and with ``data``, the bytes) of ``records`` into the partial cache
        entries they lie in: one fetch per entry for what it lacks. Nothing for other files."""
        if not any(self._fillers):
            return
        sharded = isinstance(self._index, _shards.ShardedIndex)
        spans: dict[int, list[tuple[int, int]]] = {}
        for rec in records:
            shard, local = self._index.locate(rec.pos) if sharded else (0, rec.pos)
            if self._fillers[shard] is None:
                continue
            e = self._entries[shard][local]
            end = e.data_offset + e.data_length if data else e.data_offset
            spans.setdefault(shard, []).append((e.header_offset, end - e.header_offset))
        for shard, wanted in spans.items():
            self._fillers[shard].ensure(wanted)

    def _subtree(self, prefix: tuple, node: dict, *, proxies: bool, filter_func: FilterFunc | None = None) -> Any:
        leaves = [p for p in _leaves(node) if filter_func is None or filter_func(_names.public(p))]
        tensors = self._tensors(leaves)
        return _names.rebuild({p: tensors[p] for p in leaves}, strip=len(prefix), proxies=proxies)

    def _tensors(
        self, paths: Sequence[_names.Path], verify_hash: bool | None = None
    ) -> dict[_names.Path, torch.Tensor]:
        """The tensors at ``paths``, loading the ones not yet cached with one core call."""
        with self._lock:
            missing = [self._by_path[p] for p in paths if p not in self._cache]
            if missing:
                verify = self._verify_hash if verify_hash is None else bool(verify_hash)
                self._fetch(missing, verify, pooled=False)
            return {p: self._cache[p] for p in paths}

    def _again_if_expired(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(...)``, repeated once when an object store refused expired temporary credentials
        and looking them up again (where they were found) gave new ones: a long-lived lazy
        deserializer outlives a session token that an agent renews in the environment or files."""
        try:
            return fn(*args, **kwargs)
        except _errors.NetworkError as exc:
            if not (_s3.expired(exc) and _s3.refresh_sources(self._opened_sources)):
                raise
            logger.info("%s: the S3 credentials had expired; using the ones found now", self._label)
        return fn(*args, **kwargs)

    def _fetch(self, records: Sequence[_loading.Record], verify_hash: bool, *, pooled: bool) -> None:
        """Loads ``records`` into the cache (once more after new credentials: _again_if_expired);
        the caller holds ``self._lock``."""
        self._again_if_expired(self._fetch_once, records, verify_hash, pooled=pooled)

    def _fetch_once(self, records: Sequence[_loading.Record], verify_hash: bool, *, pooled: bool) -> None:
        if self._loader is None or self._closed:
            raise ValueError("the deserializer is closed; open a new one to load more tensors")
        if any(r.path in self._planned for r in records):
            self._fetch_planned(records, verify_hash, pooled=pooled)
            return
        loaded = self._load_whole(records, verify_hash, pooled=pooled)
        for rec in records:
            self._cache[rec.path] = self._finish(loaded[rec.pos])

    def _fetch_planned(self, records: Sequence[_loading.Record], verify_hash: bool, *, pooled: bool) -> None:
        """Loads the parts of ``records`` the ``slices`` plan names (the others whole) into the cache."""
        if verify_hash or self._index.encrypted:  # checks and decryption see whole tensors
            loaded = self._load_whole(records, verify_hash, pooled=False)
            for rec in records:
                sel = self._planned.get(rec.path)
                tensor = loaded.pop(rec.pos)
                self._cache[rec.path] = self._finish(sel.apply(tensor) if sel is not None else tensor)
            return
        sels = {r.path: self._planned[r.path] if r.path in self._planned else _slice_reads.whole(r) for r in records}
        self._cache.update(self._read_ranges(records, sels, pooled=pooled))

    def _read_slice(self, path: _names.Path, index: Any) -> torch.Tensor:
        """``get_slice(...)[index]`` of the tensor at ``path``."""
        rec = self._by_path[path]
        sel = _slices.select(index, rec.shape)
        with self._lock:
            if path in self._cache and path not in self._planned:  # held whole already
                return sel.apply(self._cache[path])
            if self._verify_hash or self._index.encrypted:  # the whole stored tensor, checked
                if self._loader is None or self._closed:
                    raise ValueError("the deserializer is closed; open a new one to read more tensors")
                whole = self._load_whole([rec], self._verify_hash, pooled=False)[rec.pos]
                return self._finish(sel.apply(whole))
            return self._read_ranges([rec], {path: sel}, pooled=False)[path]

    def _read_ranges(
        self, records: Sequence[_loading.Record], sels: dict[_names.Path, _slices.Selection], *, pooled: bool
    ) -> dict[_names.Path, torch.Tensor]:
        """The selections of ``records``, read with one engine run per source, on the device."""
        return self._again_if_expired(self._read_ranges_once, records, sels, pooled=pooled)

    def _read_ranges_once(
        self, records: Sequence[_loading.Record], sels: dict[_names.Path, _slices.Selection], *, pooled: bool
    ) -> dict[_names.Path, torch.Tensor]:
        if self._source is None or self._closed:
            raise ValueError("the deserializer is closed; open a new one to read more tensors")
        self._fill(records, data=True)  # a partial cache entry: one fetch for all of them
        items = [_slice_reads.Item(r.path, *self._data_location(r.path)[:2], r, sels[r.path]) for r in records]
        host, fetched = _slice_reads.read(items, pooled=pooled and self._device.type == "cpu")
        self.total_bytes_read += fetched.bytes
        self.stats.add(_stats.LoadStats(loads=1, tensors=len(items), bytes=fetched.bytes, seconds=fetched.seconds,
                                        read_seconds=fetched.seconds, reads=fetched.ranges))
        logger.info("read %d tensor slices, %.1f MB in %d ranges from %s in %.3f s",
                    len(items), fetched.bytes / 1e6, fetched.ranges, self._label, fetched.seconds)
        out = {}
        for path in list(host):
            tensor = host.pop(path)
            if self._device.type == "cuda":
                tensor = tensor.to(self._device)
            out[path] = self._finish(tensor)
        return out

    def _as_planned(self, rec: _loading.Record) -> _loading.Record:
        """``rec`` with the shape the ``slices`` plan gives it."""
        sel = self._planned.get(rec.path)
        return rec if sel is None else dataclasses.replace(rec, shape=sel.shape)

    def _load_whole(
        self, records: Sequence[_loading.Record], verify_hash: bool, *, pooled: bool
    ) -> dict[int, torch.Tensor]:
        """``{pos: tensor}`` of ``records``, whole, with one core load; the caller holds ``self._lock``."""
        start = time.perf_counter()
        name = self._source.name
        self._loading_thread = threading.get_ident()
        bar = _progress.Bar(sum(r.nbytes for r in records), f"loading {name}", self._progress)
        try:  # no local holds the loader: a traceback the caller keeps must not keep it alive
            self._fill(records, data=True)
            with bar, _progress.Poller(bar, _progress.bytes_read(self._loader)):
                loaded, module_idx = self._load(self._loader, self._index, records, verify_hash, pooled=pooled)
            stats = self._loader.stats()
            digests = self._loader.digests()
        except _errors.HashMismatchError as exc:
            if not pooled:  # lazy: a cached entry goes; the next load fetches it again
                _discard(self._cached, exc)
            raise
        finally:
            self._loading_thread = None
            if self._closed:  # close() came while loading (a LoadCancelled, unless too late)
                self._release()
        self._module_idx.update(module_idx)
        self._digests.update((d.entry, d) for d in digests)
        nbytes = int(stats.get("bytes", sum(r.nbytes for r in records)))
        self.total_bytes_read += nbytes
        seconds = time.perf_counter() - start
        load = _stats.LoadStats.of_load(stats, tensors=len(records), seconds=seconds, verified=verify_hash,
                                        encrypted=self._index.encrypted, on_device=_ring.wanted(self._device))
        self.stats.add(load)
        if logger.isEnabledFor(logging.INFO):  # lazy accesses load often: no summary nobody reads
            logger.info(
                "loaded %d tensors, %.1f MB in %.3f s (%.2f GB/s) from %s with %s%s (%s)",
                len(records), nbytes / 1e6, seconds, nbytes / max(seconds, 1e-9) / 1e9,
                name, self._backend, ", hashes verified" if verify_hash else "", load.summary(),
            )
        return loaded

    def _finish(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._dtype is not None and tensor.is_floating_point() and tensor.dtype != self._dtype:
            tensor = tensor.to(self._dtype)
        return tensor


class _Checkpoint:
    """Stands for the source of a sharded checkpoint: its name, and each shard's source."""

    def __init__(self, name: str, sources: list[Any]) -> None:
        self.name = name
        self.sources = sources


def _source_and_index(opened: _checkpoint.Opened) -> tuple[Any, Any]:
    if len(opened.shards) == 1:
        return opened.shards[0].source, opened.shards[0].index
    names = [s.source.name for s in opened.shards]
    sources = [s.source for s in opened.shards]
    return _Checkpoint(opened.name, sources), _shards.ShardedIndex([s.index for s in opened.shards], names)


def _cached_entries(shards: Sequence[_checkpoint.Shard]) -> list[tuple[Any, Any]]:
    """``(cache entry, index)`` of the shards opened through the cache."""
    return [(s.cached.entry, s.index) for s in shards if s.cached is not None]


def _discard(cached: Sequence[tuple[Any, Any]], exc: _errors.HashMismatchError) -> bool:
    """Removes the cache entries that hold the tensor ``exc`` names (all of them when it names
    none); False when no file came from the cache."""
    named = [entry for entry, index in cached if exc.tensor is not None and any(
        str(_names.public(tuple(e.path))) == exc.tensor for e in index.entries)]
    for entry in named or [entry for entry, _ in cached]:
        entry.discard()
    return bool(cached)


def _select(index: Any, filter_func: FilterFunc | None) -> list[_loading.Record]:
    """The file's records (all names checked) that ``filter_func`` keeps, in file order."""
    records = _loading.describe(index.entries, index.file_size)  # names checked by the core's parser
    return records if filter_func is None else [r for r in records if filter_func(r.name)]


def _leaves(node: dict) -> Iterator[_names.Path]:
    for value in node.values():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield value


def _as_numpy(tensor: torch.Tensor) -> tuple[numpy.ndarray, str | None]:
    """The array of a CPU tensor, and for a dtype numpy lacks, its torch name (the array then
    holds the raw bytes as a same-width signed int, as tensorizer gives them)."""
    if "\x00" not in _dtypes.encode(tensor.dtype):
        return tensor.numpy(), None
    raw = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.view(raw).numpy(), str(tensor.dtype)


def _matches(digest: Any, rec: _loading.Record, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds the bytes whose hashes ``digest`` stores for ``rec``."""
    if rec.nbytes == 0:  # meta or empty in the file: the hashes cover no data
        return digest.matches(0, 0)
    if tensor.is_meta or tensor.dtype != rec.dtype or tuple(tensor.shape) != rec.shape:
        return False
    host = tensor.detach().resolve_conj().resolve_neg().cpu().contiguous()
    return digest.matches(host.data_ptr(), rec.nbytes)
