"""A synthetic transformer-like state dict: its layout, its contents and its checksums.

The layout is a decoder-only transformer (embeddings, per-layer attention and MLP projections,
norms, an output head) scaled so that the tensors add up to a requested number of bytes. Contents
are deterministic for a seed, differ from tensor to tensor and from chunk to chunk, and are finite
numbers of modest size (no NaN or Inf), generated with numpy straight into the tensors' memory.
Tensors are bf16 and fp16; with ``fp32=True`` the norms and the output head are float32 as well.
"""

from __future__ import annotations

import math
import zlib
from concurrent.futures import ThreadPoolExecutor

LAYERS = 24
_MASK64 = (1 << 64) - 1
_POOL_WORDS = 1 << 18  # 2 MiB of random 64-bit words, transformed per chunk
_CHUNK_WORDS = 1 << 17  # 1 MiB chunks

# dtype name -> (mantissa bits kept, exponent shift, lowest biased exponent)
# Exponents span 8 values, so magnitudes fall in [2**-7, 2): finite, normal, small.
_DTYPE_BITS = {
    "float16": (0x03FF, 10, 15 - 7),
    "bfloat16": (0x007F, 7, 127 - 7),
}


ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}


def _shapes_for(hidden: int, vocab: int, fp32: bool = False) -> list[tuple[str, tuple[int, ...], str]]:
    kv = max(8, hidden // 4)
    inter = max(8, int(round(hidden * 8 / 3 / 8)) * 8)
    out = [("model.embed_tokens.weight", (vocab, hidden), "bfloat16")]
    for i in range(LAYERS):
        p, dt = f"model.layers.{i}.", ("bfloat16" if i % 2 == 0 else "float16")
        norm = "float32" if fp32 else dt
        out += [
            (p + "input_layernorm.weight", (hidden,), norm),
            (p + "self_attn.q_proj.weight", (hidden, hidden), dt),
            (p + "self_attn.k_proj.weight", (kv, hidden), dt),
            (p + "self_attn.v_proj.weight", (kv, hidden), dt),
            (p + "self_attn.o_proj.weight", (hidden, hidden), dt),
            (p + "mlp.gate_proj.weight", (inter, hidden), dt),
            (p + "mlp.up_proj.weight", (inter, hidden), dt),
            (p + "mlp.down_proj.weight", (hidden, inter), dt),
            (p + "post_attention_layernorm.weight", (hidden,), norm),
        ]
    out += [("model.norm.weight", (hidden,), "float32" if fp32 else "float16"),
            ("lm_head.weight", (vocab, hidden), "float32" if fp32 else "float16")]
    return out


def layout(total_bytes: int, fp32: bool = False) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype name) for a model of about `total_bytes` bytes.

    fp32: the norms and the output head are float32 (the rest stays bf16 / fp16).
    """
    elems = max(total_bytes // 2, 1 << 16)
    # Per layer about 10.5 h^2 elements; embeddings + head about 16 h^2 with vocab ~ 8 h.
    hidden = math.sqrt(elems / (LAYERS * 10.5 + 16))
    quantum = 64 if hidden >= 512 else 8
    hidden = max(quantum, int(hidden) // quantum * quantum)
    body = sum(math.prod(s) * ITEMSIZE[d] for n, s, d in _shapes_for(hidden, 0, fp32))
    # embeddings (2 bytes) + head (2 or 4 bytes) per vocab row of `hidden` elements
    per_vocab = hidden * (2 + (4 if fp32 else 2))
    vocab = max(1, (2 * elems - body) // per_vocab)
    return _shapes_for(hidden, vocab, fp32)


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _fill(dst, dtype: str, seed: int, index: int, pool, tmp, exp) -> None:
    """Fill a flat uint16 numpy array with finite pseudo-random values of `dtype`.

    `tmp` (uint64) and `exp` (uint16) are scratch arrays of _CHUNK_WORDS words, reused.
    """
    import numpy as np

    keep_mant, shift, base = _DTYPE_BITS[dtype]
    keep = np.uint16(0x8000 | keep_mant)
    step = _CHUNK_WORDS * 4
    for c, start in enumerate(range(0, dst.size, step)):
        part = dst[start:start + step]
        words = (part.size + 3) // 4
        key = _splitmix(seed * 1_000_003 + index * 65_537 + c)
        off = key % (_POOL_WORDS - _CHUNK_WORDS)
        w64 = tmp[:words]
        np.multiply(pool[off:off + words], np.uint64(key | 1), out=w64)
        np.add(w64, np.uint64(_splitmix(key)), out=w64)
        w = tmp.view(np.uint16)[:part.size]
        e = exp[:part.size]
        np.right_shift(w, shift, out=e)
        np.bitwise_and(e, 7, out=e)
        np.add(e, base, out=e)
        np.left_shift(e, shift, out=e)
        np.bitwise_and(w, keep, out=part)
        np.bitwise_or(part, e, out=part)


def generate(total_bytes: int, seed: int, fp32: bool = False) -> dict:
    """The state dict (name -> torch tensor) for a size and seed; same inputs, same bytes.

    A float32 tensor is filled as bf16 values over its 16-bit halves: each upper half is a finite
    bf16, so every float32 is finite and of the same modest size.
    """
    import numpy as np
    import torch

    rng = np.random.Generator(np.random.SFC64(seed))
    pool = rng.integers(0, 1 << 64, size=_POOL_WORDS, dtype=np.uint64)
    tmp = np.empty(_CHUNK_WORDS, dtype=np.uint64)
    exp = np.empty(_CHUNK_WORDS * 4, dtype=np.uint16)
    sd = {}
    for i, (name, shape, dtype) in enumerate(layout(total_bytes, fp32)):
        t = torch.empty(shape, dtype=getattr(torch, dtype))
        halves = t.view(-1).view(torch.int16).numpy().view(np.uint16)
        _fill(halves, "bfloat16" if dtype == "float32" else dtype, seed, i, pool, tmp, exp)
        sd[name] = t
    return sd


def tensor_bytes(t):
    """A zero-copy flat uint8 numpy view of a contiguous CPU tensor's bytes."""
    import torch

    if not t.is_contiguous():
        raise ValueError("tensor is not contiguous")
    return t.reshape(-1).view(torch.uint8).numpy()


def _touch(a) -> int:
    return int(a[::4096].sum()) + int(a[-1]) if a.size else 0


def touch_pages(tensors) -> int:
    """Read one byte of every 4 KiB page of every tensor (and its last byte); returns their sum.

    Comparing the sum with the reference's shows whether the data was in place when touched.
    """
    return sum(_touch(tensor_bytes(t)) for t in tensors)


def _describe(item) -> tuple[str, dict]:
    name, t = item
    data = tensor_bytes(t)
    return name, {
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "nbytes": t.numel() * t.element_size(),
        "crc32": zlib.crc32(data),
        "touch": _touch(data),
    }


def checksums(sd: dict, threads: int = 2) -> dict:
    """name -> {dtype, shape, nbytes, crc32, touch}; zlib releases the GIL, so threads help."""
    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(_describe, sd.items()))


def compare(expected: dict, actual: dict) -> list[str]:
    """Differences between two checksums() results, as readable lines (empty: equal)."""
    problems = [f"missing tensor {n}" for n in expected if n not in actual]
    problems += [f"unexpected tensor {n}" for n in actual if n not in expected]
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            continue
        for field in ("dtype", "shape", "nbytes", "crc32"):
            if got[field] != want[field]:
                problems.append(f"{name}: {field} {got[field]!r} != expected {want[field]!r}")
    return problems
