"""Where loaded tensors go. Every device decision of the package is made here."""

from __future__ import annotations

import torch

DeviceLike = str | int | torch.device | None


def resolve(device: DeviceLike) -> torch.device:
    """The target device for loading; only the CPU is available for now."""
    target = torch.device("cpu") if device is None else torch.device(device)
    if target.type == "cpu":
        return target
    if target.type == "cuda":
        raise NotImplementedError(
            f"loading straight to {target} is not available yet; "
            "load with device='cpu' and move the tensors with .to()"
        )
    raise ValueError(f"cannot load tensors to device {target}")
