"""Where loaded tensors go. Every device decision of the package is made here."""

from __future__ import annotations

import torch

DeviceLike = str | int | torch.device | None


def resolve(device: DeviceLike) -> torch.device:
    """The target device for loading: the CPU, or a CUDA device with its index.

    ``"cuda"`` without an index means torch's current device (device 0 where torch has no CUDA:
    the loader then says why CUDA cannot be used). An int ``N`` means ``cuda:N``, as in torch.
    """
    if device is None:
        target = torch.device("cpu")
    elif isinstance(device, int) and not isinstance(device, bool):
        target = torch.device("cuda", device)  # torch.device(N) fails where torch has no CUDA
    else:
        target = torch.device(device)
    if target.type == "cpu":
        return target
    if target.type == "cuda":
        if target.index is None:
            current = torch.cuda.current_device() if torch.cuda.is_available() else 0
            target = torch.device("cuda", current)
        return target
    raise ValueError(f"cannot load tensors to device {target}")
