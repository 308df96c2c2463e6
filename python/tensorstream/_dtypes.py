"""Tensor dtypes -> the dtype strings of tensorizer files (reading them is the core parser's:
``names.hpp``; ``by_name`` maps the torch name it gives to the torch dtype).

A dtype is stored as numpy's ``dtype.str`` (``"<f2"``, ``"|b1"``) when numpy can express it.
Torch types numpy lacks are *opaque*: ``"<V2\\x00torch.bfloat16"`` is two raw bytes per
element (``V`` in place of the same-width int's ``i``) followed by NUL and the torch name.
"""

from __future__ import annotations

import torch

from .errors import FormatError

__all__ = ["encode", "by_name", "itemsize", "SAFETENSORS", "safetensors_name"]

# numpy kind + width -> torch dtype, for every type both libraries have.
_NUMPY_KINDS = {
    ("b", 1): torch.bool,
    ("u", 1): torch.uint8,
    ("i", 1): torch.int8,
    ("i", 2): torch.int16,
    ("i", 4): torch.int32,
    ("i", 8): torch.int64,
    ("u", 2): torch.uint16,
    ("u", 4): torch.uint32,
    ("u", 8): torch.uint64,
    ("f", 2): torch.float16,
    ("f", 4): torch.float32,
    ("f", 8): torch.float64,
    ("c", 8): torch.complex64,
    ("c", 16): torch.complex128,
}
_NUMPY_STRINGS = {dt: ("|" if width == 1 else "<") + kind + str(width) for (kind, width), dt in _NUMPY_KINDS.items()}
# Quantized types need scale/zero-point metadata the format cannot carry.
_QUANTIZED = {
    getattr(torch, n)
    for n in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")
    if isinstance(getattr(torch, n, None), torch.dtype)
}


# torch dtype -> the dtype name a safetensors header gives it (what ``get_dtype()`` of a slice says).
SAFETENSORS = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.uint16: "U16", torch.int16: "I16",
    torch.float16: "F16", torch.bfloat16: "BF16", torch.uint32: "U32", torch.int32: "I32", torch.float32: "F32",
    torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.complex64: "C64",
}
for _torch_name, _name in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
                           ("float8_e4m3fnuz", "F8_E4M3FNUZ"), ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
                           ("float8_e8m0fnu", "F8_E8M0")):
    if isinstance(getattr(torch, _torch_name, None), torch.dtype):
        SAFETENSORS[getattr(torch, _torch_name)] = _name


def safetensors_name(dtype: torch.dtype) -> str:
    """The safetensors name of ``dtype`` (``"BF16"``); torch's name for types safetensors lacks."""
    return SAFETENSORS.get(dtype, str(dtype))


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return dtype.itemsize


def encode(dtype: torch.dtype) -> str:
    """The dtype string tensorizer writes for ``dtype``; ValueError if it cannot be stored."""
    known = _NUMPY_STRINGS.get(dtype)
    if known is not None:
        return known
    if dtype in _QUANTIZED or not isinstance(dtype, torch.dtype):
        raise ValueError(f"tensors of dtype {dtype} cannot be serialized")
    width = dtype.itemsize
    if width not in (1, 2, 4, 8):
        raise ValueError(f"tensors of dtype {dtype} ({width}-byte elements) cannot be serialized")
    order = "|" if width == 1 else "<"
    return f"{order}V{width}\x00{dtype}"


def by_name(name: str, tensor: str | None = None) -> torch.dtype:
    """The torch dtype the core's parser named (``"float32"``, ``"bfloat16"``); FormatError naming
    ``tensor`` when this torch has no such type."""
    dtype = getattr(torch, name, None) if name.isidentifier() else None
    if not isinstance(dtype, torch.dtype):
        raise FormatError(f"tensor {tensor!r}: torch {torch.__version__} has no dtype torch.{name}", tensor=tensor,
                          field="dtype")
    return dtype
