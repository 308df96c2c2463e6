"""Test data and comparison helpers shared by the test modules."""

from __future__ import annotations

from typing import List, Sequence

import torch

FLOAT8 = [getattr(torch, n) for n in sorted(dir(torch)) if n.startswith("float8_")]
FLOAT8 = [dt for dt in FLOAT8 if isinstance(dt, torch.dtype)]
FLOATS = [torch.float16, torch.float32, torch.float64, torch.bfloat16, *FLOAT8]
COMPLEX = [torch.complex64, torch.complex128, torch.complex32]
INTS = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64]
ALL_DTYPES: List[torch.dtype] = [*FLOATS, *COMPLEX, *INTS, torch.bool]
# Types numpy has no name for: stored as "<Vn\0torch.x" and need data version 2.
OPAQUE = {torch.bfloat16, torch.complex32, *FLOAT8}


def random_tensor(shape: Sequence[int], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Deterministic tensor whose bytes are random (every bit pattern, NaNs included; bool is 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    numel = 1
    for d in shape:
        numel *= d
    raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        return (raw % 2).bool().reshape(tuple(shape))
    return raw.view(dtype).reshape(tuple(shape))


def raw_bytes(t: torch.Tensor) -> bytes:
    """The bytes of a tensor's elements in row-major order (any dtype, bit-exact)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype, shape and bytes; a meta ``want`` must have loaded as zeros on the CPU."""
    assert isinstance(got, torch.Tensor), type(got)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert tuple(got.shape) == tuple(want.shape), (tuple(got.shape), tuple(want.shape))
    assert got.device.type == "cpu"
    if want.is_meta:
        assert raw_bytes(got) == bytes(got.numel() * got.element_size()), "a meta tensor must load as zeros"
    else:
        assert raw_bytes(got) == raw_bytes(want)


def assert_same_tree(got, want) -> None:
    """Nested dicts / lists of tensors, compared structurally."""
    if isinstance(want, torch.Tensor):
        assert_same(got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict), type(got)
        assert list(got) == list(want)
        for key in want:
            assert_same_tree(got[key], want[key])
    else:
        assert isinstance(got, list), type(got)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_tree(g, w)


def checkpoint_tensors(with_empty: bool = True) -> dict:
    """A small mixed-dtype state dict that both checkpoint formats can hold (safetensors has no
    complex32 or meta tensors)."""
    out = {
        "embed.weight": random_tensor((300, 70), torch.float16, 1),
        "attn.weight": random_tensor((64, 48), torch.bfloat16, 2),
        "attn.bias": random_tensor((48,), torch.float32, 3),
        "q8": random_tensor((16, 8), torch.float32, 8).to(torch.float8_e4m3fn),
        "mask": random_tensor((9, 9), torch.bool, 6),
        "scalar": random_tensor((), torch.float64, 7),
    }
    if with_empty:
        out["empty"] = random_tensor((0, 4), torch.int64, 9)
    return out
