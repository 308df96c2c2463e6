"""Where loaded tensors go. Every device decision of the package is made here."""

from __future__ import annotations

import torch

DeviceLike = str | int | torch.device | None

_LOADABLE = ("cpu", "cuda")


def resolve(device: DeviceLike) -> torch.device:
    """The target device for loading: the CPU, or a CUDA device with its index.

    ``None`` follows, as tensorizer does, the device of an enclosing ``with torch.device(...)``
    or of ``torch.set_default_device(...)`` when that is the CPU or a GPU, else a GPU when torch
    can use CUDA, else the CPU. A ``"meta"`` (or other) default is passed over: code that builds a
    module under ``torch.device("meta")`` and loads its weights in the same block wants real
    tensors. ``"cuda"`` without an index means the context's GPU when it names one, else torch's
    current device (device 0 where torch has no CUDA: the loader then says why CUDA cannot be
    used). An int ``N`` means ``cuda:N``, as in torch.
    """
    if device is None:
        target = _default()
    elif isinstance(device, int) and not isinstance(device, bool):
        target = torch.device("cuda", device)  # torch.device(N) fails where torch has no CUDA
    else:
        target = torch.device(device)
    if target.type == "cpu":
        return target
    if target.type == "cuda":
        return target if target.index is not None else torch.device("cuda", _cuda_index())
    raise ValueError(f"cannot load tensors to device {target}")


def context_device() -> torch.device | None:
    """The device of the innermost ``torch.device`` context or ``set_default_device``, if any."""
    try:
        from torch.utils._device import DeviceContext

        stack = torch.overrides._get_current_function_mode_stack()
    except (ImportError, AttributeError):  # a torch without these internals: no context known
        return None
    for mode in reversed(stack):
        if isinstance(mode, DeviceContext):
            return torch.device(mode.device)
    return None


def _default() -> torch.device:
    context = context_device()
    if context is not None and context.type in _LOADABLE:
        return context
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cuda_index() -> int:
    context = context_device()
    if context is not None and context.type == "cuda" and context.index is not None:
        return context.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0
