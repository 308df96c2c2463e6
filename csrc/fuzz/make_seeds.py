"""Writes the seed corpora of the fuzz targets from real files, written by tensorstream and by
tensorizer: several dtypes, each data version's feature (opaque dtypes, meta tensors, dimensions of
2**32 or more), safetensors files written by the safetensors package, and encryption with the fuzz targets' key and passphrase (at the lowest Argon2id
cost, so the load target can derive the key per input).

    python csrc/fuzz/make_seeds.py [CORPUS_DIR]    (default: csrc/fuzz/corpus)

Writers reserve 256 KiB for the index; each file is rewritten with an index of its exact size (the
records move up, their bytes unchanged), so seeds stay a few KiB and mutations land on the parts
that matter. Existing seeds are kept: files are named by their content's hash.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import tempfile

import torch

import tensorstream
import tensorizer
from tensorizer import serialization as tz_serialization

KEY = b"tensorstream-fuzz-key-0123456789"  # fuzz_util.hpp
PASSPHRASE = "tensorstream fuzz passphrase"
SALT = b"tensorstream-fz!"
CHEAP = {"opslimit": 1, "memlimit": 8192}  # Argon2id's minimum cost
HEADER = 73
VERSIONED = 2
ENCRYPTED = 1


def tensor_sets():
    gen = torch.Generator().manual_seed(5)
    yield "basic", {
        "w": torch.randn(3, 4, generator=gen),
        "b": torch.arange(5, dtype=torch.int16),
        "d": torch.randn(2, 2, generator=gen, dtype=torch.float64),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0, 3),
    }
    yield "opaque", {  # data version 2
        "bf": torch.randn(4, generator=gen).to(torch.bfloat16),
        "c32": torch.zeros(2, dtype=torch.complex32),
        "f8": torch.zeros(3, dtype=torch.float8_e4m3fn),
        "c64": torch.randn(2, generator=gen, dtype=torch.complex64),
    }
    yield "meta", {  # data version 4
        "m": torch.empty(3, 2, dtype=torch.float16, device="meta"),
        "u8": torch.arange(6, dtype=torch.uint8).reshape(2, 3),
    }
    yield "long", {  # data version 5
        "long": torch.empty(2**32 + 1, 0, dtype=torch.uint8),
        "i8": torch.arange(-3, 3, dtype=torch.int8),
    }
    yield "chunks", {  # several 1 KiB encryption chunks when written by tensorizer below
        "big": torch.randn(700, generator=gen),
        "small": torch.randn(3, generator=gen),
    }


def write_tensorstream(path, tensors, encryption=None):
    with tensorstream.TensorSerializer(path, encryption=encryption) as s:
        s.write_state_dict(tensors)


def write_tensorizer(path, tensors, encryption=None):
    s = tz_serialization.TensorSerializer(path, encryption=encryption)
    if encryption is not None:
        s._crypt_chunk_size = 1024  # the smallest legal chunk, to get several per tensor
        tensors = {k: t for k, t in tensors.items() if t.numel()}  # tensorizer cannot encrypt empty ones
    s.write_state_dict(tensors)
    s.close()


def files(tmp):
    ts_key = tensorstream.EncryptionParams(KEY)
    ts_phrase = tensorstream.EncryptionParams.from_string(PASSPHRASE, salt=SALT, **CHEAP)
    tz_key = tensorizer.EncryptionParams(KEY)
    tz_phrase = tensorizer.EncryptionParams.from_string(PASSPHRASE, salt=SALT, **CHEAP)
    for name, tensors in tensor_sets():
        plain_cases = [("ts", write_tensorstream, None)]
        if name not in ("meta", "long"):  # tensorizer writes these from real modules only
            plain_cases.append(("tz", write_tensorizer, None))
        cases = plain_cases + [
            ("ts-key", write_tensorstream, ts_key),
            ("ts-phrase", write_tensorstream, ts_phrase),
        ]
        if name in ("basic", "chunks"):
            cases += [("tz-key", write_tensorizer, tz_key), ("tz-phrase", write_tensorizer, tz_phrase)]
        for label, write, enc in cases:
            path = os.path.join(tmp, f"{name}-{label}.tensors")
            write(path, tensors, enc)
            with open(path, "rb") as f:
                yield f"{name}-{label}", compact(f.read())


# Layout -------------------------------------------------------------------------------------


def parse_index(data):
    """(version, flags, metadata_len, entries); each entry: dict with its fields and byte span."""
    version, flags = struct.unpack_from("<IQ", data, 5)
    count, metadata_len = struct.unpack_from("<QQ", data, 57)
    at, entries = HEADER, []
    for _ in range(count):
        start = at
        entry_version = 1
        if flags & VERSIONED:
            (entry_version,) = struct.unpack_from("<I", data, at)
            at += 4
        (name_len,) = struct.unpack_from("<H", data, at)
        at += 2 + name_len + 1
        dtype_len = data[at]
        at += 1 + dtype_len
        ndim = data[at]
        at += 1 + ndim * (8 if entry_version >= 5 else 4)
        header_offset, data_offset, data_length = struct.unpack_from("<QQQ", data, at)
        entries.append({"start": start, "offsets_at": at, "header": header_offset, "data": data_offset,
                        "length": data_length, "long": entry_version >= 5})
        at += 24
    return version, flags, metadata_len, entries, at - HEADER


def compact(data):
    """The same file with an index area of exactly the index's size."""
    _, _, metadata_len, entries, used = parse_index(data)
    shift = metadata_len - used
    out = bytearray(data[:HEADER + used])
    struct.pack_into("<Q", out, 65, used)
    for e in entries:
        struct.pack_into("<QQ", out, e["offsets_at"], e["header"] - shift, e["data"] - shift)
    return bytes(out) + data[HEADER + metadata_len:]


def tensor_headers(data):
    """(mode byte of fuzz_tensor_header, header bytes, data_length) per tensor."""
    version, flags, _, entries, _ = parse_index(data)
    mode = (version - 1) | (0x08 if flags & ENCRYPTED else 0) | (0x10 if flags & VERSIONED else 0)
    for e in entries:
        yield mode | (0x20 if e["long"] else 0), data[e["header"]:e["data"]], e["length"]


def crypt_block(header, long_shape):
    """The contents of a per-tensor header's crypt-info block."""
    at = 8 + 2 + 1
    (name_len,) = struct.unpack_from("<H", header, at)
    at += 2 + name_len
    at += 1 + header[at]
    at += 1 + header[at] * (8 if long_shape else 4)
    (hash_len,) = struct.unpack_from("<H", header, at)
    at += 2 + hash_len
    (block_len,) = struct.unpack_from("<Q", header, at)
    return header[at + 8:at + 8 + block_len]


# Corpora ------------------------------------------------------------------------------------

HTTP_TEXT = [
    b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>The key does not exist</Message></Error>",
    b"<Error><Code>SlowDown</Code></Error>",
    b"https://user:secret@example.com:8443/bucket/model.tensors?X-Amz-Signature=abc#frag",
    b"s3://bucket/key",
]


def safetensors_files(tmp):
    """Files written by the safetensors package: several dtypes, metadata, empty and scalar tensors."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(7)
    sets = {
        "mixed": {
            "w": torch.randn(3, 4, generator=gen),
            "h": torch.randn(5, generator=gen).to(torch.bfloat16),
            "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
            "m": torch.tensor([True, False, True]),
            "q": torch.randn(4, generator=gen).to(torch.float8_e4m3fn),
        },
        "edges": {"empty": torch.empty(0, 3), "scalar": torch.tensor(2.5, dtype=torch.float64)},
        "none": {},
    }
    for label, tensors in sets.items():
        path = os.path.join(tmp, f"{label}.safetensors")
        save_file(tensors, path, metadata={"format": "pt", "note": "caf\u00e9"} if label == "mixed" else None)
        with open(path, "rb") as f:
            yield f.read()


def save(directory, content):
    os.makedirs(directory, exist_ok=True)
    name = hashlib.sha1(content).hexdigest()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(content)


def main(corpus):
    with tempfile.TemporaryDirectory() as tmp:
        made = list(files(tmp))
    for label, data in made:
        encrypted = b"-key" in label.encode() or b"-phrase" in label.encode()
        save(os.path.join(corpus, "fuzz_index"), data)
        for opts in (0x00, 0x01, 0x01 | 0x02, 0x01 | 0x08 | 0x80, 0x40 | 0x18):
            if opts & 0x02 and "phrase" not in label:
                continue
            save(os.path.join(corpus, "fuzz_load"), bytes([opts]) + data)
        for mode, header, length in tensor_headers(data):
            save(os.path.join(corpus, "fuzz_tensor_header"), bytes([mode]) + header)
            if encrypted:
                block = crypt_block(header, bool(mode & 0x20))
                save(os.path.join(corpus, "fuzz_crypt_info"), struct.pack("<Q", length) + block)
    with tempfile.TemporaryDirectory() as tmp:
        for data in safetensors_files(tmp):
            save(os.path.join(corpus, "fuzz_safetensors"), data)
    for text in HTTP_TEXT:
        save(os.path.join(corpus, "fuzz_http_text"), text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus"))
