"""An independent, test-only map of a ``.tensors`` file: every field with its byte range.

The hostile-file tests use it to cut files at field boundaries and to overwrite single fields.
It follows the format specification directly and shares no code with the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from typing import List, Optional

FILE_HEADER_SIZE = 73


@dataclasses.dataclass(frozen=True)
class Field:
    name: str  # "version", "index.name_len", "header.hash_count", "data", ...
    start: int
    end: int  # exclusive
    tensor: Optional[int] = None  # position in the index, None for file-level fields

    @property
    def width(self) -> int:
        return self.end - self.start


class _Cursor:
    def __init__(self, buf: bytes, pos: int, fields: List[Field], tensor: Optional[int], prefix: str) -> None:
        self.buf, self.pos, self.fields, self.tensor, self.prefix = buf, pos, fields, tensor, prefix

    def take(self, name: str, width: int) -> bytes:
        raw = self.buf[self.pos : self.pos + width]
        assert len(raw) == width, f"{self.prefix}{name} runs past the end"
        self.fields.append(Field(self.prefix + name, self.pos, self.pos + width, self.tensor))
        self.pos += width
        return raw

    def uint(self, name: str, width: int) -> int:
        return int.from_bytes(self.take(name, width), "little")


def layout(buf: bytes) -> List[Field]:
    """All fields of a well-formed, unencrypted file, in file order."""
    fields: List[Field] = []
    top = _Cursor(buf, 0, fields, None, "")
    assert top.take("magic", 5) == b"|TZR|"
    top.uint("version", 4)
    flags = top.uint("feature_flags", 32)
    top.uint("tensor_size", 8)
    top.take("reserved", 8)
    count = top.uint("tensor_count", 8)
    metadata_len = top.uint("metadata_len", 8)
    tagged = bool(flags & 2)
    records = []
    for i in range(count):
        cur = _Cursor(buf, top.pos, fields, i, "index.")
        version = cur.uint("entry_version", 4) if tagged else 1
        cur.take("name", cur.uint("name_len", 2))
        cur.uint("tensor_type", 1)
        cur.take("dtype", cur.uint("dtype_len", 1))
        dim_width = 8 if version >= 5 else 4
        for d in range(cur.uint("ndim", 1)):
            cur.uint(f"dim{d}", dim_width)
        header_offset = cur.uint("header_offset", 8)
        data_offset = cur.uint("data_offset", 8)
        data_length = cur.uint("data_length", 8)
        records.append((header_offset, data_offset, data_length, dim_width))
        top.pos = cur.pos
    index_end = FILE_HEADER_SIZE + metadata_len
    if top.pos < index_end:
        fields.append(Field("index_fill", top.pos, index_end))
    end = index_end
    for i, (header_offset, data_offset, data_length, dim_width) in enumerate(records):
        cur = _Cursor(buf, header_offset, fields, i, "header.")
        cur.uint("header_size", 8)
        cur.uint("module_idx", 2)
        cur.uint("tensor_type", 1)
        cur.take("name", cur.uint("name_len", 2))
        cur.take("dtype", cur.uint("dtype_len", 1))
        for d in range(cur.uint("ndim", 1)):
            cur.uint(f"dim{d}", dim_width)
        cur.uint("hash_section_len", 2)
        for h in range(cur.uint("hash_count", 1)):
            cur.uint(f"hash{h}.type", 1)
            cur.take(f"hash{h}.value", cur.uint(f"hash{h}.len", 1))
        cur.uint("data_length", 8)
        assert cur.pos == data_offset, f"header of tensor {i} does not end at its data_offset"
        if data_length:
            fields.append(Field("data", data_offset, data_offset + data_length, i))
        end = data_offset + data_length
    fields.append(Field("terminator", end, end + 8))
    assert end + 8 == len(buf), "file does not end with the terminator"
    return fields


def find(fields: List[Field], name: str, tensor: Optional[int] = None) -> Field:
    hits = [f for f in fields if f.name == name and f.tensor == tensor]
    assert len(hits) == 1, f"{name!r} (tensor {tensor}) found {len(hits)} times"
    return hits[0]


def read_uint(buf: bytes, field: Field) -> int:
    return int.from_bytes(buf[field.start : field.end], "little")


def patched(buf: bytes, field: Field, value: int, signed: bool = False) -> bytes:
    """``buf`` with ``field`` overwritten by the integer ``value`` in the field's width."""
    raw = value.to_bytes(field.width, "little", signed=signed)
    return buf[: field.start] + raw + buf[field.end :]


def rehash(buf: bytes, tensor: int) -> bytes:
    """``buf`` with tensor ``tensor``'s CRC32 and SHA-256 recomputed over its current bytes.

    Lets a test change a per-tensor header consistently, so that a check other than the hash
    check has to catch the change.
    """
    fields = layout(buf)
    values = [f for f in fields if f.tensor == tensor and f.name.startswith("header.hash") and f.name.endswith("value")]
    start = find(fields, "header.header_size", tensor).start
    end = find(fields, "header.data_length", tensor).end
    data = [f for f in fields if f.name == "data" and f.tensor == tensor]
    header = bytearray(buf[start:end])
    for f in values:
        header[f.start - start : f.end - start] = bytes(f.width)
    payload = bytes(header) + (buf[data[0].start : data[0].end] if data else b"")
    out = bytearray(buf)
    for f in values:
        kind = read_uint(buf, find(fields, f.name.replace(".value", ".type"), tensor))
        digest = zlib.crc32(payload).to_bytes(4, "little") if kind == 0 else hashlib.sha256(payload).digest()
        out[f.start : f.end] = digest
    return bytes(out)


def with_index_length(buf: bytes, metadata_len: int) -> bytes:
    """The same file with its index area resized to ``metadata_len`` bytes (records moved)."""
    fields = layout(buf)
    old_len = read_uint(buf, find(fields, "metadata_len"))
    entries_end = max(f.end for f in fields if f.name.startswith("index."))
    assert metadata_len >= entries_end - FILE_HEADER_SIZE
    delta = metadata_len - old_len
    out = bytearray(buf[:entries_end])
    for f in fields:
        if f.name in ("index.header_offset", "index.data_offset"):
            out[f.start : f.end] = (read_uint(buf, f) + delta).to_bytes(8, "little")
    out[65:73] = metadata_len.to_bytes(8, "little")
    out += bytes(FILE_HEADER_SIZE + metadata_len - entries_end)
    out += buf[FILE_HEADER_SIZE + old_len :]
    return bytes(out)
