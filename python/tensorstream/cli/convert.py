"""Convert between .tensors, safetensors (one file or shards) and torch state dicts (.pt, .pth, .bin).

SRC is any checkpoint the library reads (a .tensors or .safetensors file, an index.json, a folder
or prefix; a path, http(s):// or s3://; the format is read from its bytes) or a local state dict.
DST is a path or s3://: a .tensors file, a .safetensors file, an index.json or a folder (with
--to safetensors: shards of at most --max-shard-size and a model.safetensors.index.json; with --to
tensors: model.tensors in it), or a local state dict. Tensors stream through in batches of about
256 MB, so memory stays at about two batches, except when writing a state dict (torch.save needs
every tensor at once). State dicts are read with torch.load(weights_only=True, mmap=True).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..convert import convert, format_of
from ..encryption import KEY_BYTES
from . import _common

CHOICES = ["safetensors", "tensors", "torch"]


def register(sub: Any) -> None:
    p = _common.add_command(sub, "convert", __doc__, run)
    p.add_argument("src", help="the checkpoint to read")
    p.add_argument("dst", help="the file, folder or s3:// prefix to write")
    p.add_argument("--from", dest="src_format", choices=CHOICES, help="format of SRC (default: from its bytes, "
                   "or a state dict for .pt/.pth/.bin)")
    p.add_argument("--to", dest="dst_format", choices=CHOICES, help="format of DST (default: from its name)")
    p.add_argument("--max-shard-size", type=_size, help="safetensors output: shards of at most this many bytes "
                   "(suffixes K, M, G: powers of 1024)")
    _common.add_key(p, "decrypt", "the encrypted source")
    _common.add_key(p, "encrypt", "encrypting the .tensors destination (a missing key file is created "
                                  "with a random key, readable by its owner only)")
    _common.add_json(p)
    _common.add_progress(p)


def run(args: argparse.Namespace) -> int:
    dst_format = args.dst_format or _dst_format(args.dst)
    if args.encrypt_key_file and not os.path.exists(args.encrypt_key_file):
        _new_key(args.encrypt_key_file)
    encrypt = _common.encryption(args, "encrypt")
    decrypt = _common.decryption(args, "decrypt")
    if encrypt is not None and dst_format != "tensors":
        raise _common.UsageError("only .tensors files can be encrypted")
    start = time.perf_counter()
    done = convert(args.src, args.dst, to=dst_format, src_format=args.src_format, encryption=encrypt,
                   decryption=decrypt, max_shard_bytes=args.max_shard_size, progress=_common.progress(args))
    report = {"src": args.src.split("?")[0], "dst": args.dst.split("?")[0], "from": done.src_format,
              "to": done.dst_format, "tensors": done.tensors, "bytes": done.bytes,
              "files": [f.split("?")[0] for f in done.files], "seconds": time.perf_counter() - start,
              "encrypted": done.encrypted}
    _common.emit(args, report, _text)
    return _common.OK


def _dst_format(dst: str) -> str:
    try:
        return format_of(dst)
    except ValueError:
        raise _common.UsageError(f"cannot tell the format of {dst.split('?')[0]} from its name; give --to") from None


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r}")
    return int(digits) * scale


def _new_key(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(KEY_BYTES))


def _text(d: dict[str, Any]) -> str:
    how = ", encrypted" if d["encrypted"] else ""
    files = f" ({len(d['files'])} files)" if len(d["files"]) > 1 else ""
    return (f"converted {d['src']} ({d['from']}) -> {d['dst']} ({d['to']}{how}{files}): {d['tensors']} tensors, "
            f"{_common.size(d['bytes'])} in {d['seconds']:.2f} s")
