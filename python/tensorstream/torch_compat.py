"""``torch.save`` / ``torch.load`` that keep tensor data in a ``.tensors`` sidecar file.

Inside :func:`tensorizer_saving`, ``torch.save(obj, "model.pt")`` writes the pickled structure to
``model.pt`` as usual, but every storage with data goes to ``model.pt.tensors`` (written by
:class:`~tensorstream.TensorSerializer`); :func:`tensorizer_loading` reads them back with
:class:`~tensorstream.TensorDeserializer`. Both files are laid out as tensorizer's
``torch_compat`` lays them out (the ``.pt`` names each storage by the persistent id
``("TensorizerPickler", 0, "storage", index, dtype)``, the sidecar holds the storages as a list
of uint8 tensors), so files written by either library load in the other.

Only the calling thread / asyncio task is affected; other code calling ``torch.save`` meanwhile
is not.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import io
import logging
import os
import pickle
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .serialization import TensorDeserializer, TensorSerializer

__all__ = ["tensorizer_saving", "tensorizer_loading"]

logger = logging.getLogger("tensorstream")

_TAG = "TensorizerPickler"
_VERSION = 0

SaveFunc = Callable[[Any, Iterable[torch.Tensor], dict], Any]
LoadFunc = Callable[[Any, dict], Iterable[torch.Tensor]]


@dataclass
class _Context:
    """One active ``tensorizer_saving`` / ``tensorizer_loading`` block."""

    file_obj: Any  # None: "<f>.tensors"; a callable of f; or the sidecar itself
    func: Callable[..., Any] | None
    kwargs: dict = field(default_factory=dict)
    suppress_weights_only: bool = False

    def sidecar(self, f: Any) -> Any:
        """Where the tensors of the ``torch.save`` / ``torch.load`` of ``f`` go (None: not here)."""
        if self.file_obj is None:
            return _default_sidecar(f)
        return self.file_obj(f) if callable(self.file_obj) else self.file_obj


_saving: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("tensorstream_saving", default=None)
_loading: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("tensorstream_loading", default=None)
# The sidecar of the torch.save / torch.load running in this context (read by the (un)pickler).
_sidecar: contextvars.ContextVar[Any] = contextvars.ContextVar("tensorstream_sidecar", default=None)


def _default_sidecar(f: Any) -> str | None:
    if isinstance(f, io.BytesIO):
        logger.warning("cannot name a .tensors file after an io.BytesIO; give file_obj= to choose one")
        return None
    try:
        return os.fsdecode(f) + ".tensors"
    except TypeError:
        if hasattr(f, "name"):
            return os.fsdecode(f.name) + ".tensors"
        raise


# --------------------------------------------------------------------------------------------
# Pickling


def _has_data(storage: Any) -> bool:
    untyped = getattr(storage, "_untyped_storage", storage)
    return untyped.device.type != "meta" and untyped.data_ptr() != 0


def _as_bytes(storage: Any) -> torch.Tensor:
    """A uint8 tensor over all of ``storage``'s bytes (no copy)."""
    if not isinstance(storage, torch.UntypedStorage):
        storage = getattr(storage, "_untyped_storage", None) or storage.untyped()
    return torch.empty((0,), dtype=torch.uint8, device=storage.device).set_(storage)


class _Pickler(pickle.Pickler):
    """Sends storages with data to the sidecar; everything else to torch's own ``persistent_id``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tensorstream_sidecar = _sidecar.get()
        self._tensorstream_storages: list[torch.Tensor] = []
        self._tensorstream_index: dict[tuple, int] = {}
        if _is_slot(type(self), "persistent_id"):  # no subclass method: ours alone
            super().__setattr__("persistent_id", self._tensorstream_id)

    def _tensorstream_id(self, obj: Any) -> tuple | None:
        if self._tensorstream_sidecar is None or not torch.is_storage(obj) or not _has_data(obj):
            return None
        data = _as_bytes(obj)
        key = (data.device, data.data_ptr(), data.numel())
        idx = self._tensorstream_index.setdefault(key, len(self._tensorstream_storages))
        if idx == len(self._tensorstream_storages):
            self._tensorstream_storages.append(data)
        return _TAG, _VERSION, "storage", idx, getattr(obj, "dtype", None)

    def dump(self, obj: Any) -> None:
        super().dump(obj)
        storages, self._tensorstream_storages = self._tensorstream_storages, []
        self._tensorstream_index.clear()
        if not storages or self._tensorstream_sidecar is None:
            return
        context = _saving.get()
        kwargs = dict(context.kwargs) if context else {}
        if context is not None and context.func is not None:
            context.func(self._tensorstream_sidecar, storages, kwargs)
            return
        serializer = TensorSerializer(self._tensorstream_sidecar, **kwargs)
        serializer.write_state_dict(storages)
        serializer.close()

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "persistent_id":  # torch (or a caller) sets its own: ours is asked first
            value = _chain(self._tensorstream_id, value)
        super().__setattr__(key, value)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        method = cls.__dict__.get("persistent_id")
        if method is not None:  # torch's PyTorchPickler defines one: ours is asked first

            def persistent_id(self: _Pickler, obj: Any, _theirs: Callable = method) -> Any:
                pid = self._tensorstream_id(obj)
                return pid if pid is not None else _theirs(self, obj)

            cls.persistent_id = persistent_id


def _chain(ours: Callable[[Any], Any], theirs: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def persistent_id(obj: Any) -> Any:
        pid = ours(obj)
        return pid if pid is not None else theirs(obj)

    return persistent_id


def _is_slot(cls: type, name: str) -> bool:
    """Whether ``cls.<name>`` is still the C pickler's own attribute (no Python method over it)."""
    return inspect.isgetsetdescriptor(inspect.getattr_static(cls, name, None))


# --------------------------------------------------------------------------------------------
# Unpickling


class _Unpickler(pickle.Unpickler):
    """Answers the sidecar's persistent ids; hands every other one to torch's ``persistent_load``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tensorstream_sidecar = _sidecar.get()
        self._tensorstream_tensors: list[torch.Tensor] | None = None
        super().__setattr__("persistent_load", _chain_load(self._tensorstream_load, _unknown))

    def _tensorstream_load(self, pid: Any) -> Any:
        """The storage for one of our ids; ``_NOT_OURS`` for any other id."""
        if self._tensorstream_sidecar is None or not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == _TAG):
            return _NOT_OURS
        if pid[1] > _VERSION:
            raise pickle.UnpicklingError(f"unsupported {_TAG} data version ({pid[1]})")
        if pid[2] != "storage" or len(pid) != 5:
            raise pickle.UnpicklingError(f"unsupported {_TAG} object type ({pid[2]!r})")
        idx, dtype = pid[3], pid[4]
        tensors = self._tensorstream_all()
        if not isinstance(idx, int) or not 0 <= idx < len(tensors):
            raise pickle.UnpicklingError(f"storage #{idx!r} is not in the .tensors file ({len(tensors)} storages)")
        storage = _own_storage(tensors[idx])
        return torch.TypedStorage(wrap_storage=storage, dtype=dtype or torch.uint8, _internal=True)

    def _tensorstream_all(self) -> list[torch.Tensor]:
        """Every storage of the sidecar, read at the first id that needs one."""
        if self._tensorstream_tensors is None:
            context = _loading.get()
            kwargs = dict(context.kwargs) if context else {}
            if context is not None and context.func is not None:
                self._tensorstream_tensors = list(context.func(self._tensorstream_sidecar, kwargs))
            else:
                kwargs.setdefault("lazy_load", True)  # tree() then reads all at once, each in its own memory
                with TensorDeserializer(self._tensorstream_sidecar, **kwargs) as deserializer:
                    tree = deserializer.tree(default=[])
                if not isinstance(tree, list):
                    raise pickle.UnpicklingError("the .tensors file does not hold a list of storages")
                self._tensorstream_tensors = tree
        return self._tensorstream_tensors

    def load(self) -> Any:
        try:
            return super().load()
        finally:
            self._tensorstream_tensors = None

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "persistent_load":  # torch sets its own: ours is asked first
            value = _chain_load(self._tensorstream_load, value)
        super().__setattr__(key, value)


_NOT_OURS = object()


def _chain_load(ours: Callable[[Any], Any], theirs: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def persistent_load(pid: Any) -> Any:
        obj = ours(pid)
        return obj if obj is not _NOT_OURS else theirs(pid)

    return persistent_load


def _unknown(pid: Any) -> Any:
    raise pickle.UnpicklingError("unsupported persistent id encountered")


def _own_storage(tensor: torch.Tensor) -> torch.UntypedStorage:
    """The storage of exactly ``tensor``'s bytes (a copy only where it shares a larger one)."""
    storage = tensor.untyped_storage()
    if tensor.storage_offset() == 0 and storage.nbytes() == tensor.numel() * tensor.element_size():
        return storage
    return tensor.clone().untyped_storage()


_pickle_module = types.ModuleType("tensorstream_pickle")
_pickle_module.__getattr__ = lambda name: getattr(pickle, name)  # type: ignore[method-assign]
_pickle_module.Pickler = _Pickler  # type: ignore[attr-defined]
_pickle_module.Unpickler = _Unpickler  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# torch.save / torch.load while a block is active

_torch_save = torch.save
_torch_load = torch.load


def _check_pickle_module(pickle_module: Any) -> None:
    if pickle_module is not None and pickle_module is not pickle:
        raise ValueError("saving tensors to a .tensors file cannot be combined with another pickle_module")


def _save(obj: object, f: Any, pickle_module: Any = pickle, *args: Any, **kwargs: Any) -> Any:
    context = _saving.get()
    if context is None:
        return _torch_save(obj, f, pickle_module, *args, **kwargs)
    _check_pickle_module(pickle_module)
    token = _sidecar.set(context.sidecar(f))
    try:
        return _torch_save(obj, f, *args, pickle_module=_pickle_module, **kwargs)
    finally:
        _sidecar.reset(token)


def _load(f: Any, map_location: Any = None, pickle_module: Any = None, *args: Any, weights_only: bool | None = None,
          **kwargs: Any) -> Any:
    context = _loading.get()
    if context is None:
        return _torch_load(f, map_location, pickle_module, *args, weights_only=weights_only, **kwargs)
    _check_pickle_module(pickle_module)
    if context.suppress_weights_only:
        weights_only = False
    token = _sidecar.set(context.sidecar(f))
    try:
        return _torch_load(f, map_location, *args, pickle_module=_pickle_module, weights_only=weights_only, **kwargs)
    finally:
        _sidecar.reset(token)


class _Patch:
    """Installs a wrapper over a torch function while any block in any thread needs it."""

    def __init__(self, name: str, wrapper: Callable[..., Any]) -> None:
        self.name, self.wrapper = name, wrapper
        self.users = 0
        self.lock = threading.Lock()
        self.original: Callable[..., Any] | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self.lock:
            self.users += 1
            if self.users == 1:
                self.original = getattr(torch, self.name)
                setattr(torch, self.name, self.wrapper)
        try:
            yield
        finally:
            with self.lock:
                self.users -= 1
                if self.users == 0:
                    setattr(torch, self.name, self.original)
                    self.original = None


_save_patch = _Patch("save", _save)
_load_patch = _Patch("load", _load)


@contextlib.contextmanager
def _active(var: contextvars.ContextVar, context: _Context, patch: _Patch) -> Iterator[None]:
    token = var.set(context)
    try:
        with patch.held():
            yield
    finally:
        var.reset(token)


def tensorizer_saving(file_obj: Any = None, *, save_func: SaveFunc | None = None, **kwargs: Any):
    """Within the block, ``torch.save(obj, f)`` writes the tensors' storages to a ``.tensors`` file.

    ``file_obj``: where (anything :class:`~tensorstream.TensorSerializer` takes: a path, an
    ``s3://`` URI, a binary file), or a callable given ``torch.save``'s ``f`` that returns it (or
    None: plain ``torch.save``). Default: ``f`` + ``".tensors"`` (a file object's ``name``; an
    ``io.BytesIO`` gets plain ``torch.save``, with a warning). ``save_func(file_obj, tensors,
    kwargs)`` replaces the writing (e.g. to write in the background). ``kwargs`` go to the
    ``TensorSerializer``. Affects only the calling thread / asyncio task.
    """
    return _active(_saving, _Context(file_obj, save_func, kwargs), _save_patch)


def tensorizer_loading(
    file_obj: Any = None, *, load_func: LoadFunc | None = None, suppress_weights_only: bool = False, **kwargs: Any
):
    """Within the block, ``torch.load(f)`` reads storages from the ``.tensors`` file written beside it.

    ``file_obj``: the sidecar (anything :class:`~tensorstream.TensorDeserializer` takes), or a
    callable given ``torch.load``'s ``f`` that returns it; default ``f`` + ``".tensors"``.
    ``load_func(file_obj, kwargs)`` replaces the reading and returns the storages' tensors in
    order. ``suppress_weights_only=True`` turns ``weights_only=True`` into ``False`` (torch
    refuses a custom unpickler under ``weights_only``). ``kwargs`` go to the
    ``TensorDeserializer`` (``device``, ``verify_hash``, ``encryption``...). Affects only the
    calling thread / asyncio task.
    """
    return _active(_loading, _Context(file_obj, load_func, kwargs, suppress_weights_only), _load_patch)
