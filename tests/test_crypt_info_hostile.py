"""Hostile crypt-info blocks: every broken count or length is a FormatError naming tensor and field.

The files are built from a valid one-tensor encrypted file by replacing its crypt-info block
(test-only parsing below; it shares no code with the package).
"""

from __future__ import annotations

import struct

import pytest
import torch

from _tensors import random_tensor
from tensorstream import (
    CryptographyError,
    DecryptionParams,
    EncryptionParams,
    FormatError,
    TensorDeserializer,
    TensorSerializer,
)

CHUNK = 2 << 20
DATA = random_tensor((CHUNK // 4 * 2 + 100,), torch.float32, seed=5)  # three crypto chunks
FAST = {"opslimit": 1, "memlimit": 8192}


def _encrypted(params: EncryptionParams, tensor: torch.Tensor = DATA) -> bytes:
    import io

    buf = io.BytesIO()
    with TensorSerializer(buf, encryption=params) as serializer:
        serializer.write_tensor(0, "w", 0, tensor)
    return buf.getvalue()


def _entry(data: bytes) -> tuple[int, int, int]:
    """Where the index entry's data_offset lies, and the header's offset and size."""
    pos = 73
    pos += 2 + struct.unpack_from("<H", data, pos)[0] + 1
    pos += 1 + data[pos]
    pos += 1 + 4 * data[pos]
    header_offset, data_offset, _ = struct.unpack_from("<QQQ", data, pos)
    return pos + 8, header_offset, data_offset - header_offset


def _crypt_at(header: bytes) -> int:
    pos = 8 + 2 + 1
    pos += 2 + struct.unpack_from("<H", header, pos)[0]
    pos += 1 + header[pos]
    pos += 1 + 4 * header[pos]
    return pos + 2 + struct.unpack_from("<H", header, pos)[0]


def block_of(data: bytes) -> bytes:
    """The contents of the first tensor's crypt-info block (after its u64 length)."""
    _, offset, size = _entry(data)
    header = data[offset : offset + size]
    at = _crypt_at(header)
    length = struct.unpack_from("<Q", header, at)[0]
    return header[at + 8 : at + 8 + length]


def with_block(data: bytes, contents: bytes, length: int | None = None) -> bytes:
    """``data`` with the first tensor's block replaced (sizes and offsets fixed up)."""
    data_offset_at, offset, size = _entry(data)
    header = data[offset : offset + size]
    at = _crypt_at(header)
    old_len = struct.unpack_from("<Q", header, at)[0]
    new_len = len(contents) if length is None else length
    new = header[:at] + struct.pack("<Q", new_len) + contents + header[at + 8 + old_len :]
    new = struct.pack("<Q", len(new)) + new[8:]
    out = bytearray(data[:offset] + new + data[offset + size :])
    struct.pack_into("<Q", out, data_offset_at, offset + len(new))
    return bytes(out)


def chunk(kind: int, body: bytes, length: int | None = None) -> bytes:
    payload = struct.pack("<H", kind) + body
    return struct.pack("<Q", len(payload) if length is None else length) + payload


def parallel(chunk_size: int, nonce: bytes, macs: list[bytes], num_macs: int | None = None) -> bytes:
    count = len(macs) if num_macs is None else num_macs
    return chunk(2, struct.pack("<Q", chunk_size) + nonce + struct.pack("<Q", count) + b"".join(macs))


def pwhash(opslimit: int = 1, memlimit: int = 8192, alg: int = 2, salt: bytes = bytes(16), method: int = 1) -> bytes:
    body = struct.pack("<HQQiH", method, opslimit, memlimit, alg, len(salt)) + salt
    return chunk(1, body)


def blocks(*chunks: bytes, count: int | None = None) -> bytes:
    return struct.pack("<H", len(chunks) if count is None else count) + b"".join(chunks)


@pytest.fixture(scope="module")
def sample():
    """(file bytes, params, nonce, macs) of a valid file encrypted with an exact key."""
    params = EncryptionParams.random()
    data = _encrypted(params)
    contents = block_of(data)
    # count, chunk_len, type, chunk_size, nonce, num_macs, macs
    nonce = contents[2 + 8 + 2 + 8 : 2 + 8 + 2 + 8 + 24]
    num_macs = struct.unpack_from("<Q", contents, 2 + 8 + 2 + 8 + 24)[0]
    macs_at = 2 + 8 + 2 + 8 + 24 + 8
    macs = [contents[macs_at + 16 * i : macs_at + 16 * (i + 1)] for i in range(num_macs)]
    assert num_macs == 3 and blocks(parallel(CHUNK, nonce, macs)) == contents  # the helpers agree
    return data, params, nonce, macs


def _load(data: bytes, params: EncryptionParams | None = None, passphrase: str | None = None, **kwargs):
    encryption = DecryptionParams.from_string(passphrase) if passphrase else DecryptionParams.from_key(params.key)
    with TensorDeserializer(bytearray(data), encryption=encryption, **kwargs) as loaded:
        return dict(loaded)


def test_sample_loads(sample):
    data, params, _, _ = sample
    assert torch.equal(_load(data, params)["w"].view(torch.int32), DATA.view(torch.int32))


CASES = {
    # name: (block contents from (nonce, macs), declared length or None, field)
    "empty_block_is_truncated": (lambda n, m: b"", None, "num_chunks"),
    "chunk_count_absurd": (lambda n, m: blocks(parallel(CHUNK, n, m), count=0xFFFF), None, "chunk_len"),
    "chunk_len_absurd": (lambda n, m: struct.pack("<HQ", 1, 2**64 - 1) + parallel(CHUNK, n, m)[8:], None, "chunk_len"),
    "chunk_len_too_small": (lambda n, m: struct.pack("<HQ", 1, 1) + b"\x02", None, "chunk_len"),
    "last_mac_cut": (lambda n, m: blocks(parallel(CHUNK, n, m))[:-16], None, "chunk_len"),
    "mac_count_absurd": (lambda n, m: blocks(parallel(CHUNK, n, m, num_macs=2**64 - 1)), None, "num_macs"),
    "mac_count_one_more": (lambda n, m: blocks(parallel(CHUNK, n, m + [m[0]])), None, "num_macs"),
    "mac_count_one_less": (lambda n, m: blocks(parallel(CHUNK, n, m[:2])), None, "num_macs"),
    "chunk_size_not_multiple_of_64": (lambda n, m: blocks(parallel(CHUNK + 1, n, m)), None, "chunk_size"),
    "chunk_size_below_1024": (lambda n, m: blocks(parallel(960, n, m)), None, "chunk_size"),
    "chunk_size_zero": (lambda n, m: blocks(parallel(0, n, m)), None, "chunk_size"),
    "chunk_size_absurd": (lambda n, m: blocks(parallel(2**64 - 64, n, m)), None, "num_macs"),
    "chunk_size_inconsistent_with_macs": (lambda n, m: blocks(parallel(1 << 20, n, m)), None, "num_macs"),
    "nonce_cut": (lambda n, m: blocks(chunk(2, struct.pack("<Q", CHUNK) + n[:10])), None, "nonce"),
    "unknown_chunk_type": (lambda n, m: blocks(chunk(7, b"xyz"), parallel(CHUNK, n, m)), None, "chunk_type"),
    "two_encryption_chunks": (lambda n, m: blocks(parallel(CHUNK, n, m), parallel(CHUNK, n, m)), None, "chunk_type"),
    "bytes_after_chunks": (lambda n, m: blocks(parallel(CHUNK, n, m)) + b"\0", None, "crypt_info_len"),
    "bytes_left_in_chunk": (lambda n, m: blocks(chunk(3, n + m[0] + b"\0")), None, "chunk_len"),
    "salt_length_wrong": (lambda n, m: blocks(pwhash(salt=bytes(17)), parallel(CHUNK, n, m)), None, "salt_len"),
    "unknown_derivation": (lambda n, m: blocks(pwhash(method=9), parallel(CHUNK, n, m)), None, "derivation_method"),
    "two_derivation_chunks": (lambda n, m: blocks(pwhash(), pwhash(), parallel(CHUNK, n, m)), None, "chunk_type"),
    "block_length_absurd": (lambda n, m: blocks(parallel(CHUNK, n, m)), 2**64 - 1, "crypt_info_len"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("verify", [False, True], ids=["plain", "verify"])
def test_hostile_block(sample, case, verify):
    data, params, nonce, macs = sample
    build, length, field = CASES[case]
    hostile = with_block(data, build(nonce, macs), length)
    with pytest.raises(FormatError) as info:
        _load(hostile, params, verify_hash=verify)
    assert info.value.field == field, str(info.value)
    assert info.value.tensor == "w"
    with TensorDeserializer(bytearray(hostile), encryption=DecryptionParams.from_key(params.key), lazy_load=True) as lazy:
        with pytest.raises(FormatError):
            lazy["w"]


def test_plaintext_tensor_in_encrypted_file_is_refused(sample):
    data, params, _, _ = sample
    plain = bytearray(with_block(data, blocks()))
    _, offset, size = _entry(bytes(plain))
    plain[offset + size :  offset + size + DATA.nbytes] = DATA.view(torch.uint8).numpy().tobytes()
    with pytest.raises(CryptographyError, match="not authenticated") as info:
        _load(bytes(plain), params)
    assert info.value.tensor == "w"


def _small_one_chunk_file(seed):
    """A random key, a 1000-element tensor, its encrypted file (one crypto chunk), that chunk's nonce and MAC."""
    params = EncryptionParams.random()
    small = random_tensor((1000,), torch.float64, seed=seed)
    data = _encrypted(params, small)
    contents = block_of(data)
    return params, small, data, contents[20:44], contents[-16:]


def test_sequential_chunk_is_read(sample):
    """Type 3 (one nonce and MAC over the whole data) equals a one-chunk parallel block."""
    params, small, data, nonce, mac = _small_one_chunk_file(seed=6)
    sequential = with_block(data, blocks(chunk(3, nonce + mac)))
    got = _load(sequential, params)["w"]  # the header changed size, so its stored hashes no longer match
    assert got.view(torch.int64).tolist() == small.view(torch.int64).tolist()


@pytest.mark.parametrize("chunk_size", [CHUNK, 2**63, 2**64 - 64])
def test_chunk_size_beyond_the_data_is_one_chunk(chunk_size):
    """Any legal chunk size larger than the data gives one chunk (near 2**64 the count once wrapped)."""
    params, small, data, nonce, mac = _small_one_chunk_file(seed=7)
    got = _load(with_block(data, blocks(parallel(chunk_size, nonce, [mac]))), params)["w"]
    assert got.view(torch.int64).tolist() == small.view(torch.int64).tolist()


def test_derivation_limits_apply_only_to_passphrases(sample):
    data, params, nonce, macs = sample
    for kdf, field in ((pwhash(memlimit=1 << 40), "memlimit"), (pwhash(opslimit=2**32), "opslimit"),
                       (pwhash(alg=1), "alg")):
        hostile = with_block(data, blocks(kdf, parallel(CHUNK, nonce, macs)))
        assert torch.equal(_load(hostile, params)["w"].view(torch.int32), DATA.view(torch.int32))
        with pytest.raises(FormatError) as info:
            _load(hostile, passphrase="anything")
        assert info.value.field == field and info.value.tensor == "w"


def test_passphrase_files_load_after_block_round_trip():
    """The key-derivation chunk as tensorstream writes it is what the parser reads."""
    params = EncryptionParams.from_string("phrase", **FAST)
    data = _encrypted(params)
    contents = block_of(data)
    assert struct.unpack_from("<H", contents, 0)[0] == 2
    assert chunk(1, struct.pack("<HQQiH", 1, 1, 8192, 2, 16) + params.salt) == contents[2 : 2 + 8 + 2 + 40]
    assert torch.equal(_load(data, passphrase="phrase")["w"].view(torch.int32), DATA.view(torch.int32))
