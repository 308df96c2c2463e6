"""The child side of the benchmarks: one save or one load per process, reported as JSON.

bench_local.py starts itself with --worker; that calls main() here with a spec saying what to do.
Library imports happen before the timed region; checks happen after it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import _system

COPY_THREADS = 2
HUGE = 2 << 20


def settle(spec: dict) -> None:
    """Waits spec["settle"] seconds before a timed region that fills new memory.

    A virtual machine may hand memory freed by one process back to its host a few seconds later;
    a process that starts right after another one freed its memory then gets it back cheaply,
    while one that starts later (or in a fresh pod) pays a host fault on every first touch. The
    wait gives every method the second, realistic case, whatever ran before it.
    """
    if spec.get("settle"):
        time.sleep(spec["settle"])


def _read_key(key_file: str | None) -> bytes | None:
    """The 32-byte key stored (as hex) by the encrypted saver; None without a key file."""
    if not key_file:
        return None
    with open(key_file) as f:
        return bytes.fromhex(f.read().strip())


def _integrity_options(method: str, key_file: str | None, decryption_params) -> dict:
    """verify_hash / encryption keyword arguments for the integrity methods (bench_integrity)."""
    opts = {"verify_hash": method.endswith("-verify")}
    if "-encrypted" in method:
        opts["encryption"] = decryption_params.from_key(_read_key(key_file))
    return opts


def _loader(method: str, key_file: str | None = None):
    """Import the method's library (outside the timed region); return load(path).

    load returns (name -> tensor mapping, engine description, object to close afterwards).
    key_file holds the key of an encrypted file (methods with "-encrypted" in their name).
    tensorstream methods take a file, a checkpoint folder or a URL; the safetensors and Run:ai
    methods take a file or a list of files (the shards of one checkpoint, loaded as one mapping).
    """
    import torch

    if method in ("ts-verify", "ts-encrypted", "ts-encrypted-verify"):
        import tensorstream

        opts = _integrity_options(method, key_file, tensorstream.DecryptionParams)

        def load(path):
            d = tensorstream.TensorDeserializer(path, device="cpu", **opts)
            return dict(d.items()), str(getattr(d, "io_backend", "?")), d
    elif method in ("tensorizer-verify", "tensorizer-encrypted"):
        import tensorizer

        opts = _integrity_options(method, key_file, tensorizer.DecryptionParams)

        def load(path):
            d = tensorizer.TensorDeserializer(path, device="cpu", **opts)
            return dict(d.items()), f"{getattr(d, '_num_readers', '?')} readers", d
    elif method.startswith("ts-"):
        import tensorstream

        extra = {"zero_copy": True} if method in ("ts-mmap", "ts-st-zc") else {}

        def load(path):
            d = tensorstream.TensorDeserializer(path, device="cpu", **extra)
            return dict(d.items()), str(getattr(d, "io_backend", "?")), d
    elif method == "tensorizer":
        from tensorizer import TensorDeserializer

        def load(path):
            d = TensorDeserializer(path, device="cpu")
            return dict(d.items()), f"{getattr(d, '_num_readers', '?')} readers", d
    elif method == "tensorizer-s3":
        from tensorizer import TensorDeserializer
        from tensorizer.stream_io import open_stream

        def load(path):
            # tensorizer presigns the URL with boto3 and reads it with curl. An explicit http://
            # endpoint is refused unless force_http is given.
            stream = open_stream(path, "rb", s3_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                                 s3_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                                 s3_endpoint=os.environ["AWS_ENDPOINT_URL"], force_http=True)
            d = TensorDeserializer(stream, device="cpu")
            return dict(d.items()), f"{getattr(d, '_num_readers', '?')} readers", d
    elif method == "runai":
        from runai_model_streamer import SafetensorsStreamer

        def load(path):
            streamer = SafetensorsStreamer().__enter__()
            streamer.stream_files(_paths(path))
            tensors = dict(streamer.get_tensors())
            return tensors, "", _Closing(lambda: streamer.__exit__(None, None, None))
    elif method == "safetensors":
        from safetensors.torch import load_file

        def load(path):
            tensors = {}
            for p in _paths(path):
                tensors.update(load_file(p, device="cpu"))
            return tensors, "", None
    elif method == "safetensors-lazy":
        from safetensors import safe_open

        def load(path):
            tensors = {}
            for p in _paths(path):
                with safe_open(p, framework="pt", device="cpu") as f:
                    for name in f.keys():
                        tensors[name] = f.get_tensor(name)
            return tensors, "", None
    else:
        mmap = method == "torch.load-mmap"

        def load(path):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), "", None
    return load


def _paths(path) -> list:
    return list(path) if isinstance(path, (list, tuple)) else [path]


class _Closing:
    def __init__(self, close) -> None:
        self.close = close


def _saver(fmt: str, key_file: str | None = None, shard_bytes: int | None = None):
    """Import the format's library (outside the timed region); return save(state_dict, path).

    "tensorstream-encrypted" encrypts with a fresh random key, written as hex to key_file.
    "safetensors-shards" writes a folder: shards of at most shard_bytes of tensors each (a larger
    tensor gets a shard of its own), saved by safetensors, and model.safetensors.index.json.
    """
    import torch

    if fmt == "tensorstream-encrypted":
        from tensorstream import EncryptionParams, TensorSerializer

        params = EncryptionParams.random()
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(params.key.hex())

        def save(sd, path):
            s = TensorSerializer(path, encryption=params)
            s.write_state_dict(sd)
            s.close()
    elif fmt in ("tensorstream", "tensorizer"):
        if fmt == "tensorstream":
            from tensorstream import TensorSerializer
        else:
            from tensorizer import TensorSerializer

        def save(sd, path):
            s = TensorSerializer(path)
            s.write_state_dict(sd)
            s.close()
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        def save(sd, path):
            save_file(sd, path)
    elif fmt == "safetensors-shards":
        if not shard_bytes or shard_bytes < 1:
            raise ValueError("safetensors-shards needs shard_bytes >= 1")

        def save(sd, path):
            _save_shards(sd, path, shard_bytes)
    else:
        def save(sd, path):
            torch.save(sd, path)
    return save


def _shard_groups(sd: dict, shard_bytes: int) -> list[list[str]]:
    """Names in order, cut into groups of at most shard_bytes (a larger tensor stands alone)."""
    groups, size = [[]], 0
    for name, t in sd.items():
        n = t.numel() * t.element_size()
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    return groups


def _save_shards(sd: dict, folder: str, shard_bytes: int) -> None:
    """Shards named as transformers names them, written by safetensors, and their index."""
    from safetensors.torch import save_file

    os.makedirs(folder)
    groups = _shard_groups(sd, shard_bytes)
    weight_map = {}
    for i, names in enumerate(groups, 1):
        shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: sd[n] for n in names}, os.path.join(folder, shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, shard))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _load_and_free(load, path: str) -> None:
    """An untimed load whose memory is freed again, so the timed load reuses those pages."""
    import gc

    tensors, _, handle = load(path)
    if hasattr(handle, "close"):
        handle.close()
    del tensors, handle
    gc.collect()


def _load_worker(spec: dict) -> dict:
    import _model

    with open(spec["reference"]) as f:
        expected = json.load(f)["tensors"]
    load = _loader(spec["method"], spec.get("key_file"))
    settle(spec)
    if spec["method"] == "ts-reload" or spec.get("preload"):
        _load_and_free(load, spec["path"])
    base = _system.status_mib("VmRSS")
    t0 = time.perf_counter()
    tensors, engine, handle = load(spec["path"])
    touched = _model.touch_pages(tensors.values())
    seconds = time.perf_counter() - t0
    problems = _model.compare(expected, _model.checksums(tensors))
    if not problems and touched != sum(t["touch"] for t in expected.values()):
        problems = ["data arrived after the load returned (touched bytes differ)"]
    if hasattr(handle, "close"):
        handle.close()
    out = {"seconds": seconds, "engine": engine, "base_rss_mib": base,
           "check": "FAIL: " + "; ".join(problems[:3]) if problems else "pass"}
    if "tensorstream" in sys.modules:  # what the per-host ramp chose (bench_concurrency)
        out["hosts"] = sys.modules["tensorstream"]._native.host_concurrency()
    return out


def _fresh_buffer(size: int, huge: bool) -> tuple[memoryview, object]:
    """Fresh anonymous memory for `size` bytes, 2 MiB aligned, advised for huge pages or not.

    Plain np.empty is not used: numpy itself advises large arrays MADV_HUGEPAGE.
    """
    import ctypes
    import mmap

    m = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    anchor = ctypes.c_char.from_buffer(m)
    offset = -ctypes.addressof(anchor) % HUGE
    del anchor
    return memoryview(m)[offset:offset + size], m


def _pread_range(fd: int, view: memoryview, start: int, stop: int, chunk: int = 8 << 20) -> None:
    pos = start
    while pos < stop:
        n = os.preadv(fd, [view[pos:min(stop, pos + chunk)]], pos)
        if n <= 0:
            raise OSError(f"short read at offset {pos}")
        pos += n


def _copy_worker(spec: dict) -> dict:
    """Ceiling: copy the file from the page cache into fresh memory with 2 threads."""
    import threading
    import zlib

    settle(spec)
    base = _system.status_mib("VmRSS")
    huge_before = _system.anon_huge_mib()
    t0 = time.perf_counter()
    fd = os.open(spec["path"], os.O_RDONLY)
    size = os.fstat(fd).st_size
    view, holder = _fresh_buffer(size, spec["method"] == "copy-thp")
    cuts = [size * i // COPY_THREADS // HUGE * HUGE for i in range(COPY_THREADS)] + [size]
    threads = [threading.Thread(target=_pread_range, args=(fd, view, a, b))
               for a, b in zip(cuts, cuts[1:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.close(fd)
    seconds = time.perf_counter() - t0
    thp = _system.anon_huge_mib() - huge_before
    ok = zlib.crc32(view) == spec["file_crc32"]
    result = {"seconds": seconds, "base_rss_mib": base, "huge_mib": thp,
                  "engine": f"{COPY_THREADS} threads",
                  "check": "pass" if ok else "FAIL: copied bytes differ from the file"}
    view.release()
    holder.close()
    return result


def _save_worker(spec: dict) -> dict:
    import _model

    save = _saver(spec["format"], spec.get("key_file"), spec.get("shard_bytes"))
    t0 = time.perf_counter()
    sd = _model.generate(spec["size_bytes"], spec["seed"], bool(spec.get("fp32")))
    generate_s = time.perf_counter() - t0
    sums = _model.checksums(sd)
    model_rss = _system.status_mib("VmRSS")
    reset = _system.reset_peak_rss()
    times = []
    for _ in range(spec["runs"]):
        if os.path.isdir(spec["path"]):
            shutil.rmtree(spec["path"])
        elif os.path.exists(spec["path"]):
            os.unlink(spec["path"])
        os.sync()  # earlier dirty pages should not be written back inside the timed region
        t0 = time.perf_counter()
        save(sd, spec["path"])
        times.append(time.perf_counter() - t0)
    return {"seconds": times, "generate_s": generate_s, "tensors": sums,
            "model_rss_mib": model_rss, "peak_reset": reset, "check": "pass",
            "file_size": _system.tree_size(spec["path"])}


def main(spec: dict) -> None:
    kind = spec["kind"]
    run = {"load": _load_worker, "copy": _copy_worker, "save": _save_worker}[kind]
    result = run(spec)
    result["peak_rss_mib"] = _system.peak_rss_mib()
    result["hwm_mib"] = _system.status_mib("VmHWM")
    with open(spec["out"], "w") as f:
        json.dump(result, f)
