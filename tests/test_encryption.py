"""Encryption at rest: tensorizer compatibility both ways, tampering, keys, the public API."""

from __future__ import annotations

import gc
import logging
import struct
import subprocess
import sys

import numpy
import pytest
import tensorizer
import torch

import tensorstream
from _tensors import assert_same, random_tensor, raw_bytes
from tensorstream import (
    CryptographyError,
    DecryptionParams,
    EncryptionParams,
    HashMismatchError,
    KeyRequiredError,
    TensorDeserializer,
    TensorSerializer,
    _core,
)

FAST = {"opslimit": EncryptionParams.OpsLimit.MIN, "memlimit": EncryptionParams.MemLimit.MIN}
TZ_FAST = {"opslimit": tensorizer.EncryptionParams.OpsLimit.MIN, "memlimit": tensorizer.EncryptionParams.MemLimit.MIN}
CHUNK = 2 << 20


def _state() -> dict:
    """Several crypto chunks (with a short last one), one exactly one chunk, odd dtypes, a meta tensor."""
    return {
        "big": random_tensor((5 * (CHUNK // 4) + 37,), torch.float32, seed=1),
        "exact": random_tensor((CHUNK // 2,), torch.int16, seed=2),
        "bf16": random_tensor((33, 7), torch.bfloat16, seed=3),
        "small": random_tensor((3,), torch.int64, seed=4),
        "meta": torch.empty(4, 5, device="meta"),
    }


def _save(path, state, encryption) -> None:
    with TensorSerializer(path, encryption=encryption) as serializer:
        serializer.write_state_dict(state)


def _tz_save(path, state, encryption) -> None:
    serializer = tensorizer.TensorSerializer(str(path), encryption=encryption)
    serializer.write_state_dict(state)
    serializer.close()


def _check_all(loaded, state) -> None:
    assert sorted(loaded) == sorted(state)
    for name, want in state.items():
        assert_same(loaded[name], want)


def _headers(data: bytes):
    """(header_offset, data_offset, data_length) of every tensor, from the index (test-only parser)."""
    count, pos = struct.unpack_from("<Q", data, 57)[0], 73
    out = []
    for _ in range(count):
        name_len = struct.unpack_from("<H", data, pos)[0]
        pos += 2 + name_len + 1
        pos += 1 + data[pos]
        pos += 1 + 4 * data[pos]
        out.append(struct.unpack_from("<QQQ", data, pos))
        pos += 24
    return out


# Round trips and compatibility ----------------------------------------------------------------


@pytest.mark.parametrize("verify", [False, True], ids=["plain", "verify"])
def test_round_trip_random_key(tmp_path, open_file, verify):
    state, params = _state(), EncryptionParams.random()
    path = tmp_path / "enc.tensors"
    _save(path, state, params)
    with open_file(path, encryption=DecryptionParams.from_key(params.key), verify_hash=verify) as loaded:
        _check_all(loaded, state)


def test_round_trip_passphrase_and_lazy_load(tmp_path, open_file):
    state = _state()
    path = tmp_path / "enc.tensors"
    _save(path, state, EncryptionParams.from_string("correct horse", **FAST))
    with open_file(path, encryption=DecryptionParams.from_string("correct horse"), lazy_load=True) as lazy:
        for name in ("small", "big", "meta"):
            assert_same(lazy[name], state[name])
        _check_all(lazy, state)


def test_writing_leaves_the_callers_tensors_alone(tmp_path):
    state = _state()
    before = {k: raw_bytes(v) for k, v in state.items() if not v.is_meta}
    _save(tmp_path / "enc.tensors", state, EncryptionParams.random())
    for name, copy in before.items():
        assert raw_bytes(state[name]) == copy, name


def test_data_on_disk_is_ciphertext_with_fresh_nonces(tmp_path):
    same = random_tensor((4096,), torch.uint8, seed=9)
    params = EncryptionParams.random()
    path = tmp_path / "enc.tensors"
    _save(path, {"a": same, "b": same.clone()}, params)
    data = path.read_bytes()
    plain = same.numpy().tobytes()
    (ha, da, la), (hb, db, lb) = _headers(data)
    assert plain not in data
    assert data[da : da + la] != data[db : db + lb]  # one key, two nonces
    assert data[ha:da][-8 - 16 - 8 - 24 : -8 - 16 - 8] != data[hb:db][-8 - 16 - 8 - 24 : -8 - 16 - 8]
    version, flags = struct.unpack_from("<I", data, 5)[0], data[9]
    assert version == 3 and flags == 0  # as tensorizer: v3 implies crypt info, flags are for v4+


def test_tensorizer_loads_what_tensorstream_encrypts(tmp_path):
    state = {**_state(), "empty": torch.empty(0, 3)}  # tensorizer itself cannot encrypt an empty tensor
    exact, derived = EncryptionParams.random(), EncryptionParams.from_string("pass phrase", **FAST)
    for params, decryption in (
        (exact, tensorizer.DecryptionParams.from_key(exact.key)),
        (derived, tensorizer.DecryptionParams.from_string("pass phrase")),
    ):
        path = tmp_path / "enc.tensors"
        _save(path, state, params)
        loaded = tensorizer.TensorDeserializer(str(path), encryption=decryption, verify_hash=True)
        try:
            for name, want in state.items():
                got = loaded[name].detach()
                assert_same(got, want)
        finally:
            loaded.close()


@pytest.mark.parametrize("kind", ["key", "passphrase"])
def test_same_bytes_as_tensorizer_but_nonces_macs_and_data(tmp_path, kind):
    """Same layout, index, headers and SHA-256 (of the plaintext) as tensorizer writes."""
    state = {k: v for k, v in _state().items() if k != "exact"}
    salt = b"0123456789abcdef"
    if kind == "key":
        ours, theirs = EncryptionParams(bytes(32)), tensorizer.EncryptionParams(bytes(32))
    else:
        ours = EncryptionParams.from_string("pw", salt=salt, **FAST)
        theirs = tensorizer.EncryptionParams.from_string("pw", salt=salt, **TZ_FAST)
    _save(tmp_path / "ts.tensors", state, ours)
    _tz_save(tmp_path / "tz.tensors", state, theirs)
    a, b = bytearray((tmp_path / "ts.tensors").read_bytes()), bytearray((tmp_path / "tz.tensors").read_bytes())
    assert len(a) == len(b)
    for _, data_offset, length in _headers(bytes(a)):
        if length:
            macs = 16 * -(-length // CHUNK)
            nonce_at = data_offset - 8 - macs - 8 - 24
            for buf in (a, b):
                buf[nonce_at : nonce_at + 24] = bytes(24)
                buf[data_offset - 8 - macs : data_offset + length] = bytes(macs + 8 + length)
    assert a == b


@pytest.mark.parametrize("kind", ["random", "passphrase"])
def test_tensorstream_loads_what_tensorizer_encrypts(tmp_path, open_file, kind):
    state = _state()
    if kind == "random":
        params = tensorizer.EncryptionParams.random()
        decryption = DecryptionParams.from_key(params.key)
    else:
        params = tensorizer.EncryptionParams.from_string("s3cret phrase", **TZ_FAST)
        decryption = DecryptionParams.from_string("s3cret phrase")
    path = tmp_path / "tz.tensors"
    _tz_save(path, state, params)
    for verify in (False, True):
        with open_file(path, encryption=decryption, verify_hash=verify) as loaded:
            _check_all(loaded, state)
    # The key tensorizer derived opens it too, and so does tensorizer's own DecryptionParams.
    with open_file(path, encryption=DecryptionParams.from_key(params.key)) as loaded:
        _check_all(loaded, state)
    with open_file(path, encryption=tensorizer.DecryptionParams.from_key(params.key)) as loaded:
        _check_all(loaded, state)


def test_write_module_encrypted_into_tensorizer_module(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32))
    params = EncryptionParams.random()
    path = tmp_path / "m.tensors"
    with TensorSerializer(path, encryption=params) as serializer:
        serializer.write_module(model)
    for reader in (tensorizer.TensorDeserializer, TensorDeserializer):
        fresh = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32))
        decryption = (tensorizer.DecryptionParams if reader is tensorizer.TensorDeserializer else DecryptionParams)
        loaded = reader(str(path), encryption=decryption.from_key(params.key), verify_hash=True)
        loaded.load_into_module(fresh)
        loaded.close()
        for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("chunk_bytes", [64 << 10, (1 << 20) + 4096, 3 * (1 << 20) + 64, 16 << 20])
@pytest.mark.parametrize("backend", ["posix", "uring"])
def test_any_read_chunking_decrypts_each_crypto_chunk_once_whole(tmp_path, chunk_bytes, backend):
    """Read pieces that split crypto chunks, or span several, still decrypt (and verify)."""
    if backend == "uring" and not _core.features()["io_uring"]:
        pytest.skip("io_uring unavailable here")
    state = _state()
    params = EncryptionParams.random()
    path = tmp_path / "enc.tensors"
    _save(path, state, params)
    source = _core.FileSource(str(path))
    index = _core.read_index(source)
    buffers = [numpy.empty(e.data_length, dtype=numpy.uint8) for e in index.entries]
    requests = [(i, b.ctypes.data if b.size else 0, b.size) for i, b in enumerate(buffers)]
    loader = _core.Loader(source, backend=backend, threads=3, chunk_bytes=chunk_bytes)
    loader.set_decryption(key=params.key)
    loader.load(index, requests, True)
    for entry, buf in zip(index.entries, buffers, strict=True):
        name = entry.name.decode()
        if not state[name].is_meta:
            assert buf.tobytes() == state[name].contiguous().view(torch.uint8).numpy().tobytes(), name


def test_over_http(tmp_path):
    if getattr(_core, "HttpSource", None) is None:
        pytest.skip("built without the HTTP source")
    from _http_servers import FaultServer

    state, params = _state(), EncryptionParams.random()
    path = tmp_path / "enc.tensors"
    _save(path, state, params)
    server = FaultServer()
    try:
        url = server.put("enc.tensors", path.read_bytes())
        with TensorDeserializer(url, encryption=DecryptionParams.from_key(params.key), verify_hash=True) as loaded:
            _check_all(loaded, state)
    finally:
        server.close()


# Refusals ----------------------------------------------------------------------------------------


@pytest.fixture
def encrypted(tmp_path):
    """(path, params) of a tensorstream-encrypted file of _state()."""
    params = EncryptionParams.random()
    path = tmp_path / "enc.tensors"
    _save(path, _state(), params)
    return path, params


def test_wrong_key_yields_nothing(encrypted, engine):
    path, _ = encrypted
    wrong = DecryptionParams.from_key(EncryptionParams.random().key)
    with pytest.raises(CryptographyError) as info:
        TensorDeserializer(path, encryption=wrong)
    assert not isinstance(info.value, KeyRequiredError)
    assert str(path) in str(info.value) and info.value.tensor in _state()
    with TensorDeserializer(path, encryption=wrong, lazy_load=True) as lazy:
        for _ in range(2):  # a failed tensor is never cached
            with pytest.raises(CryptographyError, match="'big'"):
                lazy["big"]
        assert_same(lazy["meta"], _state()["meta"])  # no data, nothing to decrypt


def test_failed_loads_do_not_pin_their_memory(tmp_path):
    """A kept exception holds the failed load's frames, but not the memory read into."""
    psutil = pytest.importorskip("psutil")
    path = tmp_path / "big.tensors"
    _save(path, {"w": torch.ones(32 << 18)}, EncryptionParams.random())  # 32 MiB
    wrong = DecryptionParams.from_key(bytes(32))
    kept = []
    gc.disable()
    try:
        for i in range(5):
            with pytest.raises(CryptographyError) as info:
                TensorDeserializer(path, encryption=wrong)
            kept.append(info.value)
            if i == 0:
                base = psutil.Process().memory_info().rss
        grown = psutil.Process().memory_info().rss - base
    finally:
        gc.enable()
    assert grown < 12 << 20, f"{grown >> 20} MiB kept by 4 failed loads"


def test_wrong_passphrase(tmp_path):
    path = tmp_path / "enc.tensors"
    _save(path, {"w": torch.arange(100.0)}, EncryptionParams.from_string("right", **FAST))
    with pytest.raises(CryptographyError, match="'w'"):
        TensorDeserializer(path, encryption=DecryptionParams.from_string("wrong"))


@pytest.mark.parametrize("where", ["data-first", "data-last", "mac", "nonce"])
def test_tampering_is_caught_and_names_the_tensor(encrypted, where, engine):
    path, params = encrypted
    data = bytearray(path.read_bytes())
    header_offset, data_offset, length = _headers(bytes(data))[0]  # "big"
    if where == "data-first":
        at = data_offset + 5
    elif where == "data-last":
        at = data_offset + length - 1
    else:
        num_macs = -(-length // CHUNK)
        macs_at = data_offset - 8 - 16 * num_macs
        at = macs_at + 16 * 2 + 3 if where == "mac" else macs_at - 8 - 24 + 1
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    for verify in (False, True):
        with pytest.raises(CryptographyError, match=r"'big'.*|.*'big'") as info:
            TensorDeserializer(path, encryption=DecryptionParams.from_key(params.key), verify_hash=verify)
        assert info.value.tensor == "big"
        assert "wrong key, or the data or its MAC was altered" in str(info.value)


def test_verify_hash_checks_the_plaintext(encrypted):
    """A changed SHA-256 in the header (outside the authenticated data) fails verify_hash only."""
    path, params = encrypted
    data = bytearray(path.read_bytes())
    header_offset, _, _ = _headers(bytes(data))[3]  # "small"
    header = bytes(data[header_offset : header_offset + 200])
    sha_at = header_offset + header.index(b"\x01\x20") + 2
    data[sha_at] ^= 1
    path.write_bytes(bytes(data))
    key = DecryptionParams.from_key(params.key)
    with TensorDeserializer(path, encryption=key) as loaded:
        assert_same(loaded["small"], _state()["small"])
    with pytest.raises(HashMismatchError, match="small"):
        TensorDeserializer(path, encryption=key, verify_hash=True)


def test_missing_key_and_needless_key(encrypted, tmp_path):
    path, params = encrypted
    with pytest.raises(KeyRequiredError, match="encrypted"):
        TensorDeserializer(path)
    plain = tmp_path / "plain.tensors"
    tensorstream.save({"w": torch.ones(3)}, plain)
    with pytest.raises(CryptographyError, match="not encrypted"):
        TensorDeserializer(plain, encryption=DecryptionParams.from_key(params.key))
    loader = _core.Loader(_core.FileSource(str(plain)))
    loader.set_decryption(key=params.key)
    index = _core.read_index(_core.FileSource(str(plain)))
    w = torch.empty(3)
    with pytest.raises(CryptographyError, match="not encrypted"):
        loader.load(index, [(0, w.data_ptr(), w.nbytes)])


def test_passphrase_for_a_file_with_an_exact_key(encrypted):
    path, _ = encrypted
    with pytest.raises(CryptographyError, match="from_key"):
        TensorDeserializer(path, encryption=DecryptionParams.from_string("anything"))


def test_wrong_types_are_refused_before_writing(tmp_path):
    target = tmp_path / "x.tensors"
    target.write_bytes(b"keep me")
    with pytest.raises(TypeError):
        TensorSerializer(target, encryption=DecryptionParams.from_key(bytes(32)))
    assert target.read_bytes() == b"keep me"
    with pytest.raises(TypeError):
        TensorSerializer(target, encryption=bytes(32))
    with pytest.raises(TypeError):
        TensorDeserializer(target, encryption=EncryptionParams.random())


# The parameter classes ---------------------------------------------------------------------------


def test_params_mirror_tensorizer():
    for ours, theirs in ((EncryptionParams.OpsLimit, tensorizer.EncryptionParams.OpsLimit),
                         (EncryptionParams.MemLimit, tensorizer.EncryptionParams.MemLimit)):
        assert {m.name: int(m) for m in ours} == {m.name: int(m) for m in theirs}
    salt = b"0123456789abcdef"
    for cost in (FAST, {"opslimit": 2, "memlimit": 1 << 20}):
        ours = EncryptionParams.from_string("phrase", salt=salt, **cost)
        theirs = tensorizer.EncryptionParams.from_string("phrase", salt=salt, **cost)
        assert ours.key == theirs.key and ours.salt == salt
    assert len(EncryptionParams.random().key) == 32
    assert EncryptionParams.random().key != EncryptionParams.random().key
    assert EncryptionParams.from_string("x", **FAST).salt != EncryptionParams.from_string("x", **FAST).salt
    key = bytes(range(32))
    assert EncryptionParams(key).key == key == DecryptionParams.from_key(key).key
    assert DecryptionParams.from_key(key).source is None
    assert DecryptionParams.from_string("pw").source == b"pw" and DecryptionParams.from_string("pw").key is None


_DEFAULT_COST = """
import sys, torch, tensorizer, tensorstream
salt = b"0123456789abcdef"
ours = tensorstream.EncryptionParams.from_string("phrase", salt=salt)
assert ours.key == tensorizer.EncryptionParams.from_string("phrase", salt=salt).key
serializer = tensorizer.TensorSerializer(sys.argv[1], encryption=tensorizer.EncryptionParams.from_string("phrase"))
serializer.write_state_dict({"w": torch.arange(1000.0)})
serializer.close()
decryption = tensorstream.DecryptionParams.from_string("phrase")
with tensorstream.TensorDeserializer(sys.argv[1], encryption=decryption, verify_hash=True) as loaded:
    assert torch.equal(loaded["w"], torch.arange(1000.0))
print("same")
"""


def test_default_passphrase_cost_is_tensorizers(tmp_path):
    """The defaults (3 passes, 256 MiB) derive tensorizer's key; in a child, to keep 256 MiB
    of Argon2 memory out of this process's peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", _DEFAULT_COST, str(tmp_path / "d.tensors")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]


def test_params_refuse_bad_input():
    with pytest.raises(ValueError):
        EncryptionParams(bytes(31))
    with pytest.raises(TypeError):
        EncryptionParams("a string key")
    with pytest.raises(ValueError):
        EncryptionParams(bytes(32)).salt
    with pytest.raises(ValueError):
        DecryptionParams.from_key(b"")
    with pytest.raises(ValueError):
        DecryptionParams.from_key(bytes(16))
    with pytest.raises(ValueError):
        DecryptionParams.from_string("")
    with pytest.raises(TypeError):
        DecryptionParams.from_string(42)
    with pytest.raises(ValueError):
        EncryptionParams.from_string("")
    with pytest.raises(ValueError, match="salt"):
        EncryptionParams.from_string("x", salt=b"short", **FAST)
    with pytest.raises(TypeError):
        EncryptionParams.from_string("x", opslimit=EncryptionParams.MemLimit.MIN)
    with pytest.raises(ValueError, match="opslimit"):
        EncryptionParams.from_string("x", opslimit=33, memlimit=8192)
    with pytest.raises(ValueError, match="memlimit"):
        EncryptionParams.from_string("x", opslimit=1, memlimit=(4 << 30) + 1)


def test_secrets_stay_out_of_reprs_errors_and_logs(tmp_path, caplog):
    passphrase = "hunter2-very-secret-phrase"
    exact = EncryptionParams.random()
    derived = EncryptionParams.from_string(passphrase, **FAST)
    secrets = [exact.key, derived.key, passphrase.encode()]
    needles = [s.hex() for s in secrets] + [repr(s)[2:-1] for s in secrets] + [passphrase]
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)
    for params in (exact, derived):
        seen += [repr(params), str(params)]
    for dec in (DecryptionParams.from_key(exact.key), DecryptionParams.from_string(passphrase)):
        seen += [repr(dec), str(dec)]
    path_a, path_b, plain = tmp_path / "a.tensors", tmp_path / "b.tensors", tmp_path / "p.tensors"
    _save(path_a, {"w": torch.arange(1000.0)}, exact)
    _save(path_b, {"w": torch.arange(1000.0)}, derived)
    tensorstream.save({"w": torch.ones(2)}, plain)
    attempts = [
        lambda: TensorDeserializer(path_a, encryption=DecryptionParams.from_key(derived.key)),
        lambda: TensorDeserializer(path_b, encryption=DecryptionParams.from_string(passphrase + "x")),
        lambda: TensorDeserializer(path_a, encryption=DecryptionParams.from_string(passphrase)),
        lambda: TensorDeserializer(plain, encryption=DecryptionParams.from_key(exact.key)),
        lambda: DecryptionParams.from_key(exact.key + b"!"),
        lambda: EncryptionParams(exact.key[:-1]),
    ]
    for attempt in attempts:
        with pytest.raises(Exception) as info:
            attempt()
        seen += [str(info.value), repr(info.value)]
    with TensorDeserializer(path_b, encryption=DecryptionParams.from_string(passphrase)) as ok:
        seen.append(repr(dict(ok)))
    seen += [record.getMessage() for record in caplog.records]
    text = "\n".join(seen)
    assert "w" in text  # the checks above did produce messages
    for needle in needles:
        assert needle not in text
