"""Loading to a GPU through the core's pinned ring (``_core.DeviceLoader``).

Destinations are allocated by torch on the device, one per tensor (so each owns its storage); their addresses go to the core, which reads the file through a small ring of
pinned host slots and copies each full slot to the device. Host memory stays at the ring's size
whatever the model's size.

``TENSORSTREAM_DEVICE_STANDIN`` (for tests and dry runs without a GPU) sends CPU loads through the
same pipeline with the core's host stand-in for the device copy: ``host``, optionally followed
by comma-separated ``key=value`` knobs of the stand-in (``delay_us``, ``fail_copy_at``,
``background``), e.g. ``host,delay_us=200``.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from typing import Any

import torch

from . import _loading, _native, _settings
from .errors import CudaUnavailableError

STANDIN_ENV = "TENSORSTREAM_DEVICE_STANDIN"
_KNOBS = {"delay_us": "copy_delay_us", "fail_copy_at": "fail_copy_at", "background": "background"}


def standin() -> dict[str, Any] | None:
    """The host stand-in's options from the environment, or None when it is not asked for."""
    raw = _settings.get("device_standin").strip()
    if not raw:
        return None
    kind, *knobs = [part.strip() for part in raw.split(",")]
    if kind != "host":
        raise ValueError(f"{STANDIN_ENV} must start with 'host', not {kind!r}")
    options: dict[str, Any] = {}
    for knob in knobs:
        key, sep, value = knob.partition("=")
        if not sep or key not in _KNOBS or not value.isdigit():
            raise ValueError(f"{STANDIN_ENV}: bad option {knob!r} (known: {', '.join(_KNOBS)}, integer values)")
        options[_KNOBS[key]] = bool(int(value)) if key == "background" else int(value)
    return options


def wanted(device: torch.device) -> bool:
    """Whether loads to ``device`` go through the ring (always for CUDA; CPU only for the stand-in)."""
    return device.type == "cuda" or standin() is not None


class RingLoader(_native.CoreWrapper):
    """A ``_core.DeviceLoader`` for one device; ``load`` below fills it."""

    def __init__(
        self, source: Any, device: torch.device, *, threads: int = 0, ring_bytes: int | None = None, **core: Any
    ):
        """``core``: further ``_core.DeviceLoader`` settings (slots, lanes, the stand-in's knobs)."""
        if ring_bytes is not None and (not isinstance(ring_bytes, int) or ring_bytes <= 0):
            raise ValueError(f"ring_bytes must be a positive int or None, not {ring_bytes!r}")
        self.device = device
        core.update(threads=threads, ring_bytes=ring_bytes or 0)
        if device.type == "cuda":
            self.core = _native.DeviceLoader(source, device=device.index or 0, copier="cuda", **core)
            _check_torch(device)
        else:
            self.core = _native.DeviceLoader(source, copier="host", **{**(standin() or {}), **core})

    @property
    def backend(self) -> str:
        return self.core.backend

    def set_decryption(self, **kwargs: Any) -> None:
        self.core.set_decryption(**kwargs)



def _check_torch(device: torch.device) -> None:
    """The driver works; torch must see the device too, since it allocates the destinations."""
    if not torch.backends.cuda.is_built():
        raise CudaUnavailableError(
            f"torch {torch.__version__} is built without CUDA: it cannot hold tensors on {device}"
        )
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        raise CudaUnavailableError(f"torch sees {count} CUDA device(s): there is no {device}")


def check_room(device: torch.device, records: Sequence[_loading.Record]) -> None:
    """MemoryError, before anything is allocated or read, when ``records`` (their data, and the
    zeros of meta tensors) cannot fit in what the device has free now (torch's cached, unused
    blocks included)."""
    need = sum(r.nbytes + (math.prod(r.shape) * r.dtype.itemsize if r.is_meta else 0) for r in records)
    if not need:
        return
    free, total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if need > free:
        raise MemoryError(
            f"loading {len(records)} tensors onto {device} needs {need / 2**30:.2f} GiB, but it has "
            f"{free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB: nothing was allocated or read"
        )


def load(
    loader: RingLoader, index: Any, records: Sequence[_loading.Record], verify_hash: bool, *, pooled: bool
) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """As :func:`_loading.load`, onto ``loader.device``: ``{pos: tensor}`` and ``{pos: module_idx}``."""
    device = loader.device
    with_data = [r for r in records if r.nbytes]
    if device.type == "cuda":
        check_room(device, records)
    # One allocation per tensor, eager or lazy: each owns its storage, and its memory goes back
    # to torch's allocator when it is dropped.
    raws = [torch.empty(r.nbytes, dtype=torch.uint8, device=device) for r in with_data]
    if device.type == "cuda":
        # The allocator may hand out memory that kernels queued on torch's stream still use;
        # the core copies on its own streams, so let those finish first.
        torch.cuda.current_stream(device).synchronize()
    requests = _loading.plan(records, with_data, raws)
    try:
        module_idx = loader.core.load(index, requests, verify_hash)
    except BaseException:
        raws = loader = None  # as in _loading.load: a kept traceback holds neither
        raise
    return _loading.results(records, with_data, raws, requests, module_idx, device)
