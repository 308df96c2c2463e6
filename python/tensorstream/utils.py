"""Helpers compatible with ``tensorizer.utils``."""

from __future__ import annotations

import contextlib
import contextvars
import os
import resource
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import torch

__all__ = [
    "convert_bytes",
    "get_device",
    "GlobalGPUMemoryUsage",
    "TorchGPUMemoryUsage",
    "CPUMemoryUsage",
    "MemoryUsage",
    "get_mem_usage",
    "get_gpu_name",
    "no_init_or_tensor",
]

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


def get_device() -> torch.device:
    """CUDA when torch can use it, else the CPU (tensorizer's ``utils.get_device``)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _available_memory() -> int:
    """Bytes of RAM available to new allocations (``MemAvailable``; free pages where absent)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


class GlobalGPUMemoryUsage(NamedTuple):
    """Memory of one GPU across all processes, in bytes."""

    total: int
    free: int
    used: int

    @classmethod
    def now(cls, device: Any = None) -> GlobalGPUMemoryUsage | None:
        """The GPU's memory now (``device``: torch's current one if None); None without CUDA."""
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(device)
        return cls(total, free, total - free)

    def __str__(self) -> str:
        return f"GPU: (U: {self.used >> 20:,}MiB F: {self.free >> 20:,}MiB T: {self.total >> 20:,}MiB)"


class TorchGPUMemoryUsage(NamedTuple):
    """What torch's allocator holds on one GPU (reserved) and hands out (used), now and at peak."""

    reserved: int
    reserved_max: int
    used: int
    used_max: int

    @classmethod
    def now(cls, device: Any = None) -> TorchGPUMemoryUsage | None:
        """torch's allocator statistics for ``device`` now; None without CUDA."""
        if not torch.cuda.is_available():
            return None
        stats = torch.cuda.memory.memory_stats(device)
        return cls(
            stats.get("reserved_bytes.all.current", 0),
            stats.get("reserved_bytes.all.peak", 0),
            stats.get("allocated_bytes.all.current", 0),
            stats.get("allocated_bytes.all.peak", 0),
        )

    def __str__(self) -> str:
        return (
            f"TORCH: (R: {self.reserved >> 20:,}MiB/{self.reserved_max >> 20:,}MiB, "
            f"A: {self.used >> 20:,}MiB/{self.used_max >> 20:,}MiB)"
        )


class CPUMemoryUsage(NamedTuple):
    """Peak resident memory of this process and its waited-for children, and RAM available, in bytes."""

    maxrss: int
    free: int

    @classmethod
    def now(cls) -> CPUMemoryUsage:
        """Now (``getrusage``'s peak, counted in KiB by the kernel, so a multiple of 1024)."""
        peak_kib = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        )
        return cls(peak_kib << 10, _available_memory())

    def __str__(self) -> str:
        return f"CPU: (maxrss: {self.maxrss >> 20:,}MiB F: {self.free >> 20:,}MiB)"


class MemoryUsage(NamedTuple):
    """CPU, whole-GPU and torch-allocator memory together; the GPU parts are None without CUDA."""

    cpu: CPUMemoryUsage
    gpu: GlobalGPUMemoryUsage | None
    torch: TorchGPUMemoryUsage | None

    @classmethod
    def now(cls, device: Any = None) -> MemoryUsage:
        return cls(CPUMemoryUsage.now(), GlobalGPUMemoryUsage.now(device), TorchGPUMemoryUsage.now(device))

    def __str__(self) -> str:
        return " ".join(str(part) for part in self if part)


def get_mem_usage() -> str:
    """``str(MemoryUsage.now())``: CPU, and with CUDA the GPU's and torch's memory."""
    return str(MemoryUsage.now())


def get_gpu_name() -> str:
    """The current CUDA device's name, or ``"N/A"`` without CUDA."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "N/A"
