"""Helpers compatible with ``tensorizer.utils``."""

from __future__ import annotations

import contextlib
import contextvars
import resource
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

__all__ = ["no_init_or_tensor", "convert_bytes", "get_mem_usage"]

T = TypeVar("T")

_active = contextvars.ContextVar("tensorstream_no_init", default=False)
_patch_lock = threading.Lock()
_patch_users = 0
_real_empty = torch.empty


def _empty_on_meta(*args: Any, **kwargs: Any) -> torch.Tensor:
    """``torch.empty`` that allocates on the meta device inside ``no_init_or_tensor``."""
    if _active.get():
        kwargs["device"] = "meta"
    return _real_empty(*args, **kwargs)


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    global _patch_users
    if _active.get():  # nested: already patched for this context
        yield
        return
    with _patch_lock:
        _patch_users += 1
        if _patch_users == 1:
            torch.empty = _empty_on_meta
    token = _active.set(True)
    try:
        yield
    finally:
        _active.reset(token)
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                torch.empty = _real_empty


def no_init_or_tensor(loading_code: Callable[[], T] | None = None) -> T | contextlib.AbstractContextManager:
    """Build modules without allocating or initialising their weights.

    Inside, ``torch.empty`` (which ``nn.Linear``, ``nn.Embedding`` etc. use for their weights)
    allocates on the meta device, so initialisation costs nothing and no memory. Fill the
    module afterwards, e.g. with ``TensorDeserializer.load_into_module``. Use as a context
    manager, or pass a callable to run inside it and get its result back. Other threads and
    asyncio tasks are not affected.
    """
    if loading_code is None:
        return _no_init()
    if not callable(loading_code):
        raise TypeError(f"no_init_or_tensor() expects a callable or None, not {type(loading_code).__name__}")
    with _no_init():
        return loading_code()


def convert_bytes(num: float, decimal: bool = True) -> str:
    """``num`` bytes as text with one decimal, e.g. ``"123.4 MB"`` (``"MiB"`` if not decimal)."""
    step = 1000.0 if decimal else 1024.0
    units = ("bytes", "KB", "MB", "GB", "TB", "PB") if decimal else ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")
    value = float(num)
    for unit in units[:-1]:
        if value < step:
            return f"{value:3.1f} {unit}"
        value /= step
    return f"{value:3.1f} {units[-1]}"


def get_mem_usage() -> str:
    """Current and peak resident memory of this process, as text."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return f"CPU: (peak RSS {convert_bytes(peak)})"
    return f"CPU: (RSS {convert_bytes(current)}, peak {convert_bytes(peak)})"
