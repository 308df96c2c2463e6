"""Helpers for the hostile-file tests, and a fuzz worker run in a subprocess.

``python _hostile_lib.py SEED COUNT DIR`` applies COUNT seeded mutations to the header, index and
per-tensor headers of a small valid file, loads each one through the public API and through the
core, and prints one JSON line: the outcome counts, the cases that broke a rule, and peak RSS.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
from typing import Callable, Dict, List, Optional, Tuple

import numpy
import torch

import tensorstream
from tensorstream import _core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # when run as a script
import _layout  # noqa: E402

ALLOWED = (tensorstream.FormatError, tensorstream.HashMismatchError, tensorstream.KeyRequiredError)


def sample_tensors(long_dim: bool = False) -> Dict[str, torch.Tensor]:
    """A few small tensors; with ``long_dim`` also a dimension >= 2**32 and a meta tensor (v5).

    The long tensor has no elements, so loading it costs nothing."""
    gen = torch.Generator().manual_seed(1234)
    tensors = {
        "alpha": torch.randn(3, 4, generator=gen),
        "beta": torch.arange(5, dtype=torch.int16),
        "gamma": torch.randn(2, 2, generator=gen, dtype=torch.float64),
    }
    if long_dim:
        tensors["long"] = torch.empty(2**32 + 1, 0, dtype=torch.uint8)
        tensors["meta"] = torch.empty(3, 2, dtype=torch.float16, device="meta")
        tensors["delta"] = torch.randn(2, generator=gen).to(torch.bfloat16)
    return tensors


def sample_bytes(tmp_dir: str, long_dim: bool = False) -> bytes:
    path = os.path.join(tmp_dir, f"sample{'_v5' if long_dim else ''}.tensors")
    tensorstream.save(sample_tensors(long_dim), path)
    with open(path, "rb") as f:
        return f.read()


def api_load(data: bytes, verify_hash: bool, lazy: bool = False, source: Optional[str] = None) -> Dict:
    """Every tensor of ``data`` through the public API (in memory, or from ``source`` if a path)."""
    where = source if source is not None else bytearray(data)
    with tensorstream.TensorDeserializer(where, verify_hash=verify_hash, lazy_load=lazy) as deserializer:
        return {name: deserializer[name] for name in list(deserializer)}


def core_load(data: bytes, verify_hash: bool, backend: str = "posix", path: Optional[str] = None) -> List[bytes]:
    """Every tensor's data bytes through ``_core`` alone (index, loader, requests)."""
    source = _core.FileSource(path) if path else _core.MemorySource(bytearray(data))
    index = _core.read_index(source)
    buffers = [numpy.empty(e.data_length, dtype=numpy.uint8) for e in index.entries]
    requests = [(i, b.ctypes.data if b.size else 0, b.size) for i, b in enumerate(buffers)]
    _core.Loader(source, backend=backend).load(index, requests, verify_hash)
    return [b.tobytes() for b in buffers]


def peak_rss_mib() -> float:
    """This process's peak resident memory. Not ``ru_maxrss``: Linux carries the parent's peak over
    into a child started with vfork/exec (as subprocess does), so that reports the test runner's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Mutations -----------------------------------------------------------------------------------

INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0xFFFF, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]

Mutation = Tuple[str, Callable[[bytes], bytes]]


def _mutations(data: bytes, rng: random.Random) -> Callable[[], Mutation]:
    fields = [f for f in _layout.layout(data) if f.name not in ("data", "index_fill")]
    fill = [f for f in _layout.layout(data) if f.name == "index_fill"]

    def one() -> Mutation:
        kind = rng.choice(["bit", "byte", "field", "field", "field", "wide", "fill"])
        if kind == "fill" and fill:
            at = rng.randrange(fill[0].start, min(fill[0].end, fill[0].start + 4096))
            value = rng.randrange(1, 256)
            return f"fill[{at}]={value}", lambda d: d[:at] + bytes([value]) + d[at + 1 :]
        field = rng.choice(fields)
        if kind == "bit":
            at, bit = rng.randrange(field.start, field.end), rng.randrange(8)
            return f"bit {bit} of {at} ({field.name}#{field.tensor})", lambda d: _xor(d, at, 1 << bit)
        if kind == "byte":
            at, value = rng.randrange(field.start, field.end), rng.randrange(256)
            return f"byte {at}={value} ({field.name}#{field.tensor})", lambda d: d[:at] + bytes([value]) + d[at + 1 :]
        if kind == "wide":  # an 8-byte value anywhere in the structure, across field borders
            at = rng.randrange(field.start, field.end)
            value = rng.choice(INTERESTING + [len(data), len(data) + 1, rng.getrandbits(64)])
            raw = value.to_bytes(8, "little")
            return f"u64 {at}={value}", lambda d: (d[:at] + raw + d[at + 8 :])[: len(d)]
        width = min(field.width, 8)
        value = rng.choice(INTERESTING + [len(data) - 1, len(data), rng.getrandbits(64)]) % (1 << (8 * width))
        target = _layout.Field(field.name, field.start, field.start + width, field.tensor)
        return f"{field.name}#{field.tensor}={value}", lambda d: _layout.patched(d, target, value)

    return one


def _xor(data: bytes, at: int, mask: int) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


def _outcome(fn: Callable[[], object]) -> Tuple[str, object]:
    try:
        return "ok", fn()
    except ALLOWED as exc:
        return type(exc).__name__, exc
    except Exception as exc:  # anything else breaks the contract
        return "bad", exc


def _subset(got: Dict, want: Dict) -> bool:
    if list(got) != list(want)[: len(got)]:
        return False
    for name, tensor in got.items():
        ref = want[name]
        if tensor.dtype != ref.dtype or tensor.shape != ref.shape:
            return False
        if ref.numel() and not torch.equal(tensor.reshape(-1).view(torch.uint8), ref.reshape(-1).view(torch.uint8)):
            return False
    return True


def fuzz(seed: int, count: int, tmp_dir: str) -> Dict:
    rng = random.Random(seed)
    originals = {}
    results: Dict[str, int] = {}
    bad: List[str] = []
    path = os.path.join(tmp_dir, "mutant.tensors")
    for long_dim in (False, True):
        data = sample_bytes(tmp_dir, long_dim)
        want = {k: v for k, v in api_load(data, True).items()}
        next_mutation = _mutations(data, rng)
        for n in range(count // 2):
            label, mutate = next_mutation()
            mutant = mutate(data)
            assert len(mutant) == len(data)
            verify = n % 4 != 3
            attempts = [("api-memory", lambda: api_load(mutant, verify)),
                        ("core-memory", lambda: core_load(mutant, verify))]
            if n % 5 == 0:
                with open(path, "wb") as f:
                    f.write(mutant)
                backend = "uring" if n % 10 == 0 and _core.features()["io_uring"] else "posix"
                attempts.append((f"core-{backend}", lambda: core_load(mutant, verify, backend, path)))
                attempts.append(("api-file-lazy", lambda: api_load(mutant, verify, lazy=True, source=path)))
            for how, attempt in attempts:
                kind, value = _outcome(attempt)
                results[kind] = results.get(kind, 0) + 1
                if kind == "bad":
                    bad.append(f"{label} via {how}: {type(value).__name__}: {str(value)[:200]}")
                elif kind == "ok" and verify and how.startswith("api") and not _subset(value, want):
                    # With hashes checked, whatever loads must be what was saved (a lowered
                    # tensor_count legitimately drops the last tensors).
                    bad.append(f"{label} via {how}: loaded different tensors with verify_hash=True")
    originals["peak_rss_mib"] = peak_rss_mib()
    return {"results": results, "bad": bad, **originals}


if __name__ == "__main__":
    seed_arg, count_arg, dir_arg = sys.argv[1:4]
    print(json.dumps(fuzz(int(seed_arg), int(count_arg), dir_arg)))
