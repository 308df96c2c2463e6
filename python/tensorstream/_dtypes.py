"""Tensor dtypes <-> the dtype strings of tensorizer files.

A dtype is stored as numpy's ``dtype.str`` (``"<f2"``, ``"|b1"``) when numpy can express it.
Torch types numpy lacks are *opaque*: ``"<V2\\x00torch.bfloat16"`` is two raw bytes per
element (``V`` in place of the same-width int's ``i``) followed by NUL and the torch name.
"""

from __future__ import annotations

import functools
import re
import sys

import torch

from .errors import FormatError

__all__ = ["encode", "decode", "itemsize", "SAFETENSORS", "safetensors_name"]

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
_NUMPY_RE = re.compile(r"([<>=|])([a-zA-Z])(\d{1,2})")
_NATIVE_LITTLE = sys.byteorder == "little"


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


@functools.lru_cache(maxsize=256)
def _decode(text: str) -> torch.dtype:
    """Parse a dtype string; raises ValueError with the reason (no tensor context)."""
    numpy_part, sep, torch_part = text.partition("\x00")
    match = _NUMPY_RE.fullmatch(numpy_part)
    if match is None:
        raise ValueError(f"unknown dtype {text!r}")
    order, kind, width = match.group(1), match.group(2), int(match.group(3))
    if width > 1 and (order == ">" or (order == "=" and not _NATIVE_LITTLE)):
        raise ValueError(f"big-endian dtype {text!r} is not supported")
    if width > 1 and order == "|":
        raise ValueError(f"dtype {text!r} lacks a byte order")
    if sep:
        return _decode_opaque(text, kind, width, torch_part)
    dtype = _NUMPY_KINDS.get((kind, width))
    if dtype is None:
        raise ValueError(f"unknown dtype {text!r}")
    return dtype


def _decode_opaque(text: str, kind: str, width: int, torch_part: str) -> torch.dtype:
    if kind != "V":
        raise ValueError(f"dtype {text!r} names a torch type but is not opaque ('V')")
    module, _, name = torch_part.partition(".")
    dtype = getattr(torch, name, None) if module == "torch" and name.isidentifier() else None
    if not isinstance(dtype, torch.dtype) or dtype in _QUANTIZED:
        raise ValueError(f"unknown or unsupported torch dtype in {text!r}")
    if dtype.itemsize != width:
        raise ValueError(f"dtype {text!r}: {dtype} has {dtype.itemsize}-byte elements, not {width}")
    return dtype


def decode(text: str, tensor: str | None = None) -> torch.dtype:
    """The torch dtype of a file's dtype string; FormatError naming ``tensor`` if unknown."""
    try:
        return _decode(text)
    except ValueError as exc:
        raise FormatError(f"tensor {tensor!r}: {exc}", tensor=tensor, field="dtype") from None
