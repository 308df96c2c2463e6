"""Convert between .tensors, safetensors and torch state dicts (.pt, .pth, .bin).

The formats come from the file names (--from / --to override them). .tensors files are read
and written tensor by tensor in batches of about 256 MB, so a .tensors -> .tensors conversion
(to encrypt, decrypt or re-key a file) and a safetensors -> .tensors one keep memory at one
batch; writing safetensors or a state dict holds every tensor at once (those writers need the
whole dict). State dicts are read with torch.load(weights_only=True, mmap=True); safetensors
with the `safetensors` package. .tensors may be local, http(s):// (read) or s3://; the other
formats are local files. Sharded safetensors and Hugging Face folders are not handled yet.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from .. import _progress
from ..serialization import TensorSerializer, TensorType
from . import _common, _index

FORMATS = {".tensors": "tensors", ".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch"}


def register(sub: Any) -> None:
    p = _common.add_command(sub, "convert", __doc__, run)
    p.add_argument("src", help="the file to read")
    p.add_argument("dst", help="the file to write")
    p.add_argument("--from", dest="src_format", choices=sorted(set(FORMATS.values())), help="format of SRC")
    p.add_argument("--to", dest="dst_format", choices=sorted(set(FORMATS.values())), help="format of DST")
    _common.add_key(p, "decrypt", "the encrypted source")
    _common.add_key(p, "encrypt", "encrypting the .tensors destination (a missing key file is created "
                                  "with a random key, readable by its owner only)")
    _common.add_json(p)
    _common.add_progress(p)


def run(args: argparse.Namespace) -> int:
    src_format = args.src_format or _format(args.src)
    dst_format = args.dst_format or _format(args.dst)
    if args.encrypt_key_file and not os.path.exists(args.encrypt_key_file):
        _new_key(args.encrypt_key_file)
    encrypt = _common.encryption(args, "encrypt")
    decrypt = _common.decryption(args, "decrypt")
    if encrypt is not None and dst_format != "tensors":
        raise _common.UsageError("only .tensors files can be encrypted")
    if decrypt is not None and src_format != "tensors":
        raise _common.UsageError("only .tensors files can be decrypted")
    start = time.perf_counter()
    source, total = _reader(src_format, args.src, decrypt)
    with _progress.Bar(total, "converting", _common.progress(args)) as bar:
        count, nbytes = _write(dst_format, args.dst, source, encrypt, bar)
    seconds = time.perf_counter() - start
    report = {"src": args.src.split("?")[0], "dst": args.dst.split("?")[0], "from": src_format, "to": dst_format,
              "tensors": count, "bytes": nbytes, "seconds": seconds, "encrypted": encrypt is not None}
    _common.emit(args, report, _text)
    return _common.OK


def _format(path: str) -> str:
    ext = os.path.splitext(path.split("?")[0])[1].lower()
    if ext not in FORMATS:
        raise _common.UsageError(f"cannot tell the format of {path.split('?')[0]} from its name; give --from / --to")
    return FORMATS[ext]


def _new_key(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))


Item = tuple[int, int, Any, torch.Tensor]  # module_idx, tensor_type, name, tensor


def _reader(fmt: str, src: str, decrypt: Any) -> tuple[Iterator[list[Item]], int]:
    """Batches of tensors in the source's order, and their total bytes."""
    if fmt == "tensors":
        _, records, _ = _index.read(src)
        batches = (batch for batch, _ in _index.tensors(src, records, encryption=decrypt))
        return batches, sum(r.nbytes for r in records)
    if fmt == "safetensors":
        return _safetensors_batches(src), os.path.getsize(src)
    state = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    tensors = _flat_tensors(state, src)
    return iter([[(0, TensorType.STATE_DICT, k, t) for k, t in tensors.items()]]), sum(
        t.numel() * t.element_size() for t in tensors.values())


def _safetensors_batches(src: str) -> Iterator[list[Item]]:
    safetensors = _need_safetensors()
    with safetensors.safe_open(src, framework="pt") as f:
        for key in f.keys():
            yield [(0, TensorType.STATE_DICT, key, f.get_tensor(key))]


def _flat_tensors(state: Any, src: str) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{src} holds a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{src}: not a tensor: {', '.join(map(str, bad[:5]))}")
    return {str(k): v for k, v in state.items()}


def _need_safetensors() -> Any:
    try:
        import safetensors
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise ImportError("reading or writing safetensors needs the 'safetensors' package (pip install safetensors)") from None
    return safetensors


def _write(fmt: str, dst: str, batches: Iterator[list[Item]], encrypt: Any, bar: _progress.Bar) -> tuple[int, int]:
    count = nbytes = 0
    if fmt == "tensors":
        with TensorSerializer(dst, encryption=encrypt) as out:
            for batch in batches:
                for idx, kind, name, tensor in batch:
                    out.write_tensor(idx, name, kind, tensor)
                count, nbytes = count + len(batch), nbytes + _bytes(batch)
                bar.update(_bytes(batch))
        return count, nbytes
    everything: dict[str, torch.Tensor] = {}
    for batch in batches:
        for _, _, name, tensor in batch:
            everything[_flat_name(name)] = tensor
        bar.update(_bytes(batch))
    if fmt == "safetensors":
        _need_safetensors().torch.save_file({k: t.contiguous() for k, t in everything.items()}, dst)
    else:
        torch.save(everything, dst)
    return len(everything), sum(t.numel() * t.element_size() for t in everything.values())


def _bytes(batch: list[Item]) -> int:
    return sum(t.numel() * t.element_size() for *_, t in batch)


def _flat_name(name: Any) -> str:
    return ".".join(map(str, name)) if isinstance(name, tuple) else str(name)


def _text(d: dict[str, Any]) -> str:
    how = ", encrypted" if d["encrypted"] else ""
    return (f"converted {d['src']} ({d['from']}) -> {d['dst']} ({d['to']}{how}): {d['tensors']} tensors, "
            f"{_common.size(d['bytes'])} in {d['seconds']:.2f} s")
