"""Hostile files: every broken rule is a typed error; never a crash, a hang or a huge allocation."""

from __future__ import annotations

import faulthandler
import json
import os
import subprocess
import sys

import numpy
import pytest
import torch

import tensorstream
from tensorstream import FormatError, HashMismatchError, KeyRequiredError, _core

import _layout as L
from _hostile_lib import api_load, core_load, peak_rss_mib, sample_bytes, sample_tensors

NAMES = list(sample_tensors())  # alpha, beta, gamma
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def _watchdog():
    """A hang fails the run (with every thread's traceback) instead of blocking it; memory stays sane."""
    before = peak_rss_mib()
    faulthandler.dump_traceback_later(90, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    assert peak_rss_mib() - before < 256, "a hostile file made the process allocate far too much"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> bytes:
    return sample_bytes(str(tmp_path_factory.mktemp("sample")))


@pytest.fixture(scope="module")
def sample_v5(tmp_path_factory) -> bytes:
    return sample_bytes(str(tmp_path_factory.mktemp("sample_v5")), long_dim=True)


@pytest.fixture(params=["memory", "io_uring", "posix"])
def loader(request, tmp_path, monkeypatch):
    """``loader(data, **kwargs)``: all tensors of ``data`` through the public API and one engine."""
    kind = request.param
    if kind == "io_uring" and not _core.features()["io_uring"]:
        pytest.skip("io_uring unavailable here")
    if kind != "memory":
        monkeypatch.setenv("TENSORSTREAM_IO_BACKEND", "uring" if kind == "io_uring" else "posix")
    path = tmp_path / "hostile.tensors"

    def load(data: bytes, verify_hash: bool = True, lazy: bool = False):
        if kind == "memory":
            return api_load(data, verify_hash, lazy)
        path.write_bytes(data)
        return api_load(data, verify_hash, lazy, source=str(path))

    return load


def _field_of(data: bytes, offset: int):
    """The layout field that contains ``offset``."""
    return next(f for f in L.layout(data) if f.start <= offset < f.end)


def _cut_points(data: bytes):
    points = set()
    for f in L.layout(data):
        points.update({f.start, f.start + 1, (f.start + f.end) // 2, f.end - 1})
        if f.name == "index_fill":
            points.update(range(f.start, f.end, 4099))
    return sorted(p for p in points if 0 <= p <= len(data))


# Truncation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["v1", "v5"])
def test_truncated_at_every_field_boundary(loader, sample, sample_v5, which):
    """Any cut before the terminator is a FormatError naming the field (and the tensor, inside a
    record). A cut inside the terminator leaves every record whole: readers go by the index, so
    such a file loads (tensorizer reads it too)."""
    data = sample if which == "v1" else sample_v5
    full = loader(data)
    terminator = L.find(L.layout(data), "terminator")
    names = list(full)
    problems = []
    for cut in _cut_points(data):
        piece = data[:cut]
        try:
            got = loader(piece)
        except FormatError as err:
            if cut >= terminator.start:
                problems.append(f"cut {cut}: all records are whole, yet {err!r}")
            elif not err.field:
                problems.append(f"cut {cut}: FormatError without a field: {err}")
            else:
                field = _field_of(data, cut)
                in_record = field.name == "data" or field.name.startswith("header.")
                if in_record and err.tensor != names[field.tensor]:
                    problems.append(f"cut {cut} in {field.name} of {names[field.tensor]}: err.tensor={err.tensor!r}")
            continue
        except Exception as exc:  # noqa: BLE001 - any other type is a failure
            problems.append(f"cut {cut}: {type(exc).__name__}: {exc}")
            continue
        if cut < terminator.start:
            problems.append(f"cut {cut} (of {len(data)}) loaded without an error")
        elif list(got) != names or any(not torch.equal(got[n], full[n]) for n in names if got[n].numel()):
            problems.append(f"cut {cut} in the terminator loaded different tensors")
    assert not problems, "\n".join(problems[:20])


def test_truncated_at_every_offset(sample):
    """Every single cut in the file header, the index entries and the records, through the core."""
    fields = L.layout(sample)
    entries_end = max(f.end for f in fields if f.name.startswith("index."))
    records_start = L.find(fields, "header.header_size", 0).start
    terminator = L.find(fields, "terminator").start
    for cut in [*range(0, entries_end + 1), *range(records_start, terminator)]:
        with pytest.raises(FormatError) as info:
            core_load(sample[:cut], verify_hash=True)
        if cut < records_start:
            assert info.value.tensor is None and info.value.field in ("file_header", "metadata_len"), (cut, info.value)
        else:
            assert info.value.tensor in NAMES, (cut, info.value)
            assert info.value.field in ("header_offset", "data_offset", "data_length"), (cut, info.value)


def test_file_shrinks_after_opening(tmp_path, engine):
    """Reads that come back short are a FormatError naming the tensor; the rest stays readable."""
    path = tmp_path / "shrink.tensors"
    tensorstream.save({"a": torch.ones(1000), "b": torch.ones(3000)}, path)
    with tensorstream.TensorDeserializer(path, lazy_load=True, verify_hash=True) as deserializer:
        assert deserializer.io_backend == engine
        os.truncate(path, path.stat().st_size - 8 - 100)
        with pytest.raises(FormatError) as info:
            deserializer["b"]
        assert info.value.tensor == "b"
        assert torch.equal(deserializer["a"], torch.ones(1000))


# Single-field corruptions ---------------------------------------------------------------------


def _offsets(data, tensor):
    fields = L.layout(data)
    return (L.read_uint(data, L.find(fields, "index.header_offset", tensor)),
            L.read_uint(data, L.find(fields, "index.data_offset", tensor)))


def _set(name, value, tensor=None, signed=False):
    """A mutation: field ``name`` (of ``tensor``) := ``value``, or ``value(original_data)``."""
    def mutate(data, original=None):
        original = data if original is None else original
        field = L.find(L.layout(original), name, tensor)
        return L.patched(data, field, value(original) if callable(value) else value, signed)
    return mutate


def _both(*mutations):
    """Several mutations, each locating its field in the unmodified file."""
    def mutate(data, original=None):
        original = data if original is None else original
        for m in mutations:
            data = m(data, original)
        return data
    return mutate


def _header_size(data, tensor):
    header_offset, data_offset = _offsets(data, tensor)
    return data_offset - header_offset


_DATA_OR_SIZE = ("data_offset", "header_size")

# case id -> (mutation, expected field(s), expected tensor or None)
INDEX_CASES = {
    "header_offset_past_end": (_set("index.header_offset", lambda d: len(d) + 100, 1), "header_offset", "beta"),
    "header_offset_max": (_set("index.header_offset", 2**64 - 1, 1), "header_offset", "beta"),
    "header_offset_zero": (_set("index.header_offset", 0, 0), "header_offset", "alpha"),
    "header_offset_into_index": (_set("index.header_offset", 100, 2), "header_offset", "gamma"),
    "data_offset_past_end": (_set("index.data_offset", lambda d: len(d) + 1, 1), "data_offset", "beta"),
    "data_offset_max": (_set("index.data_offset", 2**64 - 1, 0), "data_offset", "alpha"),
    "data_offset_at_header": (_set("index.data_offset", lambda d: _offsets(d, 1)[0], 1), _DATA_OR_SIZE, "beta"),
    "data_offset_before_header": (_set("index.data_offset", lambda d: _offsets(d, 1)[0] - 4, 1), _DATA_OR_SIZE, "beta"),
    "data_offset_into_index": (_set("index.data_offset", 80, 1), _DATA_OR_SIZE, "beta"),
    "data_length_past_end": (_set("index.data_length", lambda d: len(d), 2), "data_length", "gamma"),
    "data_length_max": (_set("index.data_length", 2**64 - 1, 0), "data_length", "alpha"),
    "data_length_2_63": (_set("index.data_length", 2**63, 0), "data_length", "alpha"),
    "data_length_one_more": (_set("index.data_length", 49, 0), "data_length", "alpha"),
    "same_record_twice": (_both(_set("index.header_offset", lambda d: _offsets(d, 0)[0], 1),
                                _set("index.data_offset", lambda d: _offsets(d, 0)[1], 1)), "header_offset", None),
    "header_inside_previous_data": (_both(_set("index.header_offset", lambda d: _offsets(d, 0)[1] + 4, 1),
                                          _set("index.data_offset", lambda d: _offsets(d, 0)[1] + 81, 1)),
                                    ("header_offset", "data_offset"), None),
    "shifted_by_one": (_both(_set("index.header_offset", lambda d: _offsets(d, 1)[0] + 1, 1),
                             _set("index.data_offset", lambda d: _offsets(d, 1)[1] + 1, 1)), None, None),
    "header_size_in_index_plus_one": (_set("index.data_offset", lambda d: _offsets(d, 1)[1] + 1, 1), None, None),
    "tensor_count_2_63": (_set("tensor_count", 2**63), "tensor_count", None),
    "tensor_count_max": (_set("tensor_count", 2**64 - 1), "tensor_count", None),
    "tensor_count_plus_one": (_set("tensor_count", 4), None, None),
    "metadata_len_2_63": (_set("metadata_len", 2**63), "metadata_len", None),
    "metadata_len_max": (_set("metadata_len", 2**64 - 1), "metadata_len", None),
    "metadata_len_file_size": (_set("metadata_len", lambda d: len(d)), "metadata_len", None),
    "metadata_len_zero": (_set("metadata_len", 0), "tensor_count", None),
    "metadata_len_cuts_entries": (_set("metadata_len", 60), None, None),
    "index_ndim_255": (_set("index.ndim", 255, 1), None, None),
    "index_dim_u32_max": (_set("index.dim0", 2**32 - 1, 0), ("data_length", "shape"), "alpha"),
    "index_name_len_max": (_set("index.name_len", 0xFFFF, 0), None, None),
    "index_name_len_zero": (_set("index.name_len", 0, 0), None, None),
    "index_dtype_len_255": (_set("index.dtype_len", 255, 1), None, None),
    "index_dtype_len_zero": (_set("index.dtype_len", 0, 1), None, None),
    "index_tensor_type_3": (_set("index.tensor_type", 3, 1), "tensor_type", "beta"),
    "index_tensor_type_255": (_set("index.tensor_type", 255, 2), "tensor_type", "gamma"),
}

HEADER_CASES = {
    "header_size_zero": (_set("header.header_size", 0, 1), "header_size", "beta"),
    "header_size_plus_one": (_set("header.header_size", lambda d: _header_size(d, 1) + 1, 1), "header_size", "beta"),
    "header_size_minus_one": (_set("header.header_size", lambda d: _header_size(d, 1) - 1, 1), "header_size", "beta"),
    "header_size_2_63": (_set("header.header_size", 2**63, 0), "header_size", "alpha"),
    "header_size_max": (_set("header.header_size", 2**64 - 1, 2), "header_size", "gamma"),
    "name_differs": (_set("header.name", int.from_bytes(b"alphx", "little"), 0), "name", "alpha"),
    "name_len_max": (_set("header.name_len", 0xFFFF, 0), None, "alpha"),
    "dtype_differs": (_set("header.dtype", int.from_bytes(b"<i4", "little"), 0), "dtype", "alpha"),
    "dtype_len_255": (_set("header.dtype_len", 255, 0), None, "alpha"),
    "shape_differs": (_set("header.dim0", 4, 0), "shape", "alpha"),
    "ndim_differs": (_set("header.ndim", 1, 0), None, "alpha"),
    "ndim_255": (_set("header.ndim", 255, 2), None, "gamma"),
    "tensor_type_differs": (_set("header.tensor_type", 0, 1), "tensor_type", "beta"),
    "hash_section_len_zero": (_set("header.hash_section_len", 0, 1), "hash_section_len", "beta"),
    "hash_section_len_max": (_set("header.hash_section_len", 0xFFFF, 1), None, "beta"),
    "hash_count_255": (_set("header.hash_count", 255, 0), None, "alpha"),
    "crc_length_5": (_set("header.hash0.len", 5, 0), None, "alpha"),
    "sha_length_33": (_set("header.hash1.len", 33, 2), None, "gamma"),
    "data_length_differs": (_set("header.data_length", 49, 0), "data_length", "alpha"),
    "data_length_negative": (_set("header.data_length", -1, 1, signed=True), "data_length", "beta"),
    "data_length_min": (_set("header.data_length", -(2**63), 2, signed=True), "data_length", "gamma"),
}

FILE_CASES = {
    "magic": (lambda d, o=None: b"|TZX|" + d[5:], "magic", None),
    "magic_zip": (lambda d, o=None: b"PK\x03\x04\x00" + d[5:], "magic", None),
    "version_0": (_set("version", 0), "version", None),
    "version_6": (_set("version", 6), "version", None),
    "version_max": (_set("version", 2**32 - 1), "version", None),
    "flags_in_v1": (_set("feature_flags", 2), "feature_flags", None),
    "unknown_flag_bit": (_both(_set("version", 4), _set("feature_flags", 4)), "feature_flags", None),
    "highest_flag_bit": (_both(_set("version", 4), _set("feature_flags", 1 << 255)), "feature_flags", None),
    "versioned_headers_in_v4": (_both(_set("version", 4), _set("feature_flags", 2)), "feature_flags", None),
}


def _check(err, field, tensor):
    assert isinstance(err, ValueError)
    assert err.field, f"FormatError without a field: {err}"
    if field is not None:
        assert err.field in ((field,) if isinstance(field, str) else field), err
    if tensor is not None:
        assert err.tensor == tensor, err
        assert tensor in str(err)


@pytest.mark.parametrize("case", list(INDEX_CASES) + list(FILE_CASES))
def test_broken_file_header_or_index(loader, sample, case):
    mutate, field, tensor = {**INDEX_CASES, **FILE_CASES}[case]
    data = mutate(sample)
    with pytest.raises(FormatError) as info:
        loader(data)
    _check(info.value, field, tensor)
    with pytest.raises(FormatError) as info:
        core_load(data, verify_hash=False)
    _check(info.value, field, tensor)


@pytest.mark.parametrize("case", list(HEADER_CASES))
@pytest.mark.parametrize("verify", [True, False], ids=["verify", "noverify"])
def test_broken_per_tensor_header(loader, sample, case, verify):
    mutate, field, tensor = HEADER_CASES[case]
    position = NAMES.index(tensor)
    data = L.rehash(mutate(sample), position) if case.startswith(("header_size", "data_length")) else mutate(sample)
    with pytest.raises(FormatError) as info:
        loader(data, verify_hash=verify)
    _check(info.value, field, tensor)
    # Lazily, only the broken tensor fails; the others still load.
    index = _core.read_index(_core.MemorySource(bytearray(data)))  # the index itself is intact
    assert len(index.entries) == 3
    with tensorstream.TensorDeserializer(bytearray(data), lazy_load=True, verify_hash=verify) as deserializer:
        for name in NAMES:
            if name == tensor:
                with pytest.raises(FormatError):
                    deserializer[name]
            else:
                assert deserializer[name].shape == sample_tensors()[name].shape


@pytest.mark.parametrize("version", [3, 4])
def test_encrypted_flag_or_version_3_needs_a_key(loader, sample, version):
    data = _both(_set("version", version), _set("feature_flags", 1 if version == 4 else 0))(sample)
    with pytest.raises(KeyRequiredError, match="(?i)encrypt"):
        loader(data)
    with pytest.raises(KeyRequiredError):
        core_load(data, verify_hash=False)


# Data corruption ------------------------------------------------------------------------------


@pytest.mark.parametrize("position", range(3))
def test_flipped_data_byte(loader, sample, position):
    fields = L.layout(sample)
    data_field = L.find(fields, "data", position)
    at = (data_field.start + data_field.end) // 2
    flipped = sample[:at] + bytes([sample[at] ^ 0x10]) + sample[at + 1 :]
    name = NAMES[position]

    with pytest.raises(HashMismatchError) as info:
        loader(flipped, verify_hash=True)
    assert info.value.tensor == name and name in str(info.value)

    got = loader(flipped, verify_hash=False)  # without hashes the damage goes unnoticed
    want = sample_tensors()
    for other in NAMES:
        same = torch.equal(got[other].reshape(-1).view(torch.uint8), want[other].reshape(-1).view(torch.uint8))
        assert same == (other != name), other

    with pytest.raises(HashMismatchError) as info:
        core_load(flipped, verify_hash=True)
    assert info.value.tensor == name


@pytest.mark.parametrize("value_field", ["header.hash0.value", "header.hash1.value"])
def test_flipped_stored_hash(loader, sample, value_field):
    f = L.find(L.layout(sample), value_field, 2)
    flipped = sample[: f.start] + bytes([sample[f.start] ^ 1]) + sample[f.start + 1 :]
    with pytest.raises(HashMismatchError, match="gamma") as info:
        loader(flipped, verify_hash=True)
    assert info.value.tensor == "gamma"
    assert sorted(loader(flipped, verify_hash=False)) == sorted(NAMES)


def test_fuzzed_headers_in_a_subprocess(tmp_path):
    """Hundreds of seeded mutations of the headers and index, with a hard time limit."""
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "_hostile_lib.py"), "20240601", "300", str(tmp_path)],
        capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, f"fuzz worker died ({proc.returncode}):\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["bad"], "\n".join(report["bad"][:20])
    counts = report["results"]
    assert counts.get("FormatError", 0) > 100 and counts.get("ok", 0) > 10 and counts.get("HashMismatchError", 0) > 10
    assert report["peak_rss_mib"] < 800, report["peak_rss_mib"]


# Long dimensions and absurd shapes ------------------------------------------------------------


def _write_raw(path, records) -> None:
    """A file written by the core from raw records (names, dtypes and shapes unchecked)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        buffers = []
        rows = []
        for name, dtype, shape, nbytes, meta in records:
            buf = numpy.arange(nbytes, dtype=numpy.uint8)
            buffers.append(buf)
            rows.append((name, 2, 0, dtype, tuple(shape), buf.ctypes.data if nbytes else 0, nbytes, meta))
        _core.Writer(fd).write(rows)
    finally:
        os.close(fd)


@pytest.mark.parametrize("shape", [(2**63,), (2**64 - 1,), (2**63, 1), (2**31, 2**31, 4), (2**32, 2**32, 2**32)])
def test_absurd_meta_shapes(tmp_path, shape):
    path = tmp_path / "absurd.tensors"
    _write_raw(path, [(b"ok", "<f4", (2,), 8, False), (b"huge", "|u1", shape, 0, True)])
    with pytest.raises(FormatError) as info:
        tensorstream.load(path)
    assert info.value.tensor == "huge" and info.value.field in ("shape", "data_length")


def test_long_dims_in_u64_entries(sample_v5):
    fields = L.layout(sample_v5)
    long_pos = list(sample_tensors(long_dim=True)).index("long")
    assert L.read_uint(sample_v5, L.find(fields, "index.entry_version", long_pos)) == 5
    # dims whose product overflows 64 bits, changed consistently in index and header
    dim1 = 2**32 + 1
    mutate = _both(_set("index.dim1", dim1, long_pos), _set("header.dim1", dim1, long_pos))
    data = L.rehash(mutate(sample_v5), long_pos)
    with pytest.raises(FormatError) as info:
        api_load(data, verify_hash=True)
    assert info.value.tensor == "long" and info.value.field in ("shape", "data_length")
    # an unknown entry version
    with pytest.raises(FormatError) as info:
        api_load(_set("index.entry_version", 7, 0)(sample_v5), verify_hash=True)
    assert info.value.field == "entry_version"


# Names and dtypes -----------------------------------------------------------------------------

BAD_NAMES = {
    "not_utf8": [b"\xff\xfe\xfd"],
    "empty": [b""],
    "duplicate": [b"w", b"w"],
    "json_broken": [b'\x1e["a",]'],
    "json_object": [b'\x1e{"a":1}'],
    "json_negative_index": [b'\x1e["a",-1]'],
    "json_float": [b'\x1e["a",1.5]'],
    "json_bool": [b'\x1e["a",true]'],
    "json_not_a_list": [b'\x1e"a"'],
    "json_empty_list": [b"\x1e[]"],
    "json_newline": [b'\x1e["a",\n0]'],
    "prefix_of_another": [b'\x1e["a","b"]', b'\x1e["a"]'],
    "plain_prefix_of_structured": [b"a", b'\x1e["a",0]'],
    "mixed_list_and_dict_keys": [b'\x1e["a",0]', b'\x1e["a","k"]'],
}


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_bad_names(tmp_path, case):
    path = tmp_path / "names.tensors"
    _write_raw(path, [(name, "<f4", (1,), 4, False) for name in BAD_NAMES[case]])
    with pytest.raises(FormatError) as info:
        tensorstream.load(path, verify_hash=True)
    assert info.value.field == "name", info.value


BAD_DTYPES = ["<q4", "<f3", ">f4", "", "f4", "<f", "<V2\x00torch.nonsense", "<V2\x00torch.float32",
              "|V1\x00torch.qint8", "<V2\x00numpy.float16", "<i2\x00torch.bfloat16", "<V2\x00torch.__class__"]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=repr)
def test_unknown_dtype_strings(tmp_path, dtype):
    path = tmp_path / "dtype.tensors"
    _write_raw(path, [(b"fine", "<f4", (2,), 8, False), (b"odd", dtype, (2,), 8, False)])
    with pytest.raises(FormatError) as info:
        tensorstream.load(path)
    assert info.value.tensor == "odd"
    assert info.value.field in ("dtype", "data_length"), info.value


# The core's own argument checks ---------------------------------------------------------------


def test_core_rejects_bad_requests(sample):
    source = _core.MemorySource(bytearray(sample))
    index = _core.read_index(source)
    loader = _core.Loader(source, backend="posix")
    buf = numpy.empty(48, dtype=numpy.uint8)
    with pytest.raises(ValueError, match="bytes"):
        loader.load(index, [(0, buf.ctypes.data, 47)])
    with pytest.raises(ValueError):
        loader.load(index, [(3, buf.ctypes.data, 48)])
    with pytest.raises(ValueError):
        loader.load(index, [(0, 0, 48)])
    with pytest.raises(ValueError, match="backend"):
        _core.Loader(_core.FileSource(__file__), backend="carrier-pigeon")


def test_error_types():
    assert issubclass(FormatError, ValueError)
    assert not issubclass(HashMismatchError, FormatError)
    with pytest.raises(OSError) as info:
        _core.FileSource("/nonexistent/dir/x.tensors")
    assert info.value.errno == 2
    with pytest.raises(FileNotFoundError):
        tensorstream.TensorDeserializer("/nonexistent/dir/x.tensors")
