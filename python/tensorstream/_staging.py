"""Host copies of tensors before writing: GPU tensors go through one pinned buffer, batch by batch.

A serializer's write call copies the GPU tensors of a batch into a buffer of page-locked memory from
the CUDA driver (asynchronous copies, one wait per batch), writes the batch from there, then reuses
the buffer for the next batch: host memory stays at one batch whatever the model's size. Tensors
that do not fit in the buffer, CPU tensors that need a copy (strided, conjugate or negative views),
and every copy where the driver is unavailable take an ordinary host copy instead.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _native
from .errors import CudaError

ALIGN = 64


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy with conjugate / negative views resolved."""
    return tensor.resolve_conj().resolve_neg().to("cpu").contiguous()


class Stager:
    """Copies for one write call; ``capacity`` bytes of pinned memory at most, taken on first use."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buffer: torch.Tensor | None = None
        self._device: torch.device | None = None
        self._used = 0
        self._pending: set[torch.device] = set()
        self.pinned_copies = 0  # tensors staged through pinned memory, for tests and logs

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor with ``tensor``'s values; valid after :meth:`ready`, until :meth:`reset`."""
        nbytes = tensor.numel() * tensor.element_size()
        start = -(-self._used // ALIGN) * ALIGN
        fits = 0 < nbytes and start + nbytes <= self.capacity
        if tensor.device.type != "cuda" or not fits or not self._pinned(tensor.device):
            return host_copy(tensor)
        assert self._buffer is not None
        out = self._buffer[start : start + nbytes].view(tensor.dtype).view(tensor.shape)
        out.copy_(tensor, non_blocking=True)  # resolves conjugate / negative views and strides
        self._used = start + nbytes
        self._pending.add(tensor.device)
        self.pinned_copies += 1
        return out

    def ready(self) -> None:
        """Waits for the copies queued since the last call."""
        for device in self._pending:
            torch.cuda.current_stream(device).synchronize()
        self._pending.clear()

    def reset(self) -> None:
        """The batch was written: its memory can be reused."""
        self.ready()
        self._used = 0

    def _pinned(self, device: torch.device) -> bool:
        if self._buffer is not None:
            return True
        if self._device is not None:  # tried before and failed
            return False
        self._device = device
        try:
            raw: Any = _native.PinnedBuffer(self.capacity, device.index or 0)
        except CudaError:
            return False
        self._buffer = torch.frombuffer(raw, dtype=torch.uint8) if self.capacity else None
        return self._buffer is not None
