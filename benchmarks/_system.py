"""Machine facts, memory accounting and page-cache helpers for the benchmarks (stdlib only)."""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import resource
import zlib

PACKAGES = ("torch", "tensorizer", "safetensors", "numpy", "tensorstream")


def _read(path: str, default: str = "?") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _proc_field(path: str, key: str) -> str:
    for line in _read(path, "").splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return "?"


def _filesystem(path: str) -> str:
    """Type and source of the mount holding `path` (longest matching mount point)."""
    path, best = os.path.realpath(path), ("", "?")
    for line in _read("/proc/mounts", "").splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mnt = fields[1]
            inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) > len(best[0]):
                best = (mnt, f"{fields[2]} ({fields[0]} on {mnt})")
    return best[1]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(workdir: str) -> dict:
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(_proc_field("/proc/meminfo", "MemTotal").split()[0]) / 2**20, 1),
        "kernel": platform.release(),
        "thp_enabled": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_defrag": _read("/sys/kernel/mm/transparent_hugepage/defrag"),
        "workdir_fs": _filesystem(workdir),
        "versions": versions(),
    }


def thp_mode() -> str:
    """The bracketed choice of the kernel's THP 'enabled' setting, e.g. 'madvise'."""
    text = _read("/sys/kernel/mm/transparent_hugepage/enabled", "")
    return text[text.find("[") + 1:text.find("]")] if "[" in text else "?"


def peak_rss_mib() -> float:
    """ru_maxrss of this process (KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_mib(key: str) -> float:
    """A kB field of /proc/self/status (VmRSS, VmHWM, ...) in MiB."""
    value = _proc_field("/proc/self/status", key)
    return int(value.split()[0]) / 1024 if value != "?" else float("nan")


def anon_huge_mib() -> float:
    value = _proc_field("/proc/self/smaps_rollup", "AnonHugePages")
    return int(value.split()[0]) / 1024 if value != "?" else float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux clear_refs '5')."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# The parent keeps its memory small: a child's ru_maxrss starts from its parent's peak RSS
# (fork + exec carry it over), so large buffers here would show up in every child's number.
CHUNK = 1 << 20


def read_once(path: str, chunk: int = CHUNK, crc: int = 0) -> int:
    """Read a whole file through a reused buffer (pulls it into the page cache); its CRC32
    (continued from `crc`, so that several files chain into one)."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return crc


def resident_fraction(path: str) -> float:
    """Fraction of a file's pages in the page cache (mincore on a read-only mapping)."""
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed", path)
        try:
            vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed", path)
            return sum(1 for v in bytes(vec) if v & 1) / len(vec)
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def files_of(path: str) -> list[str]:
    """A file -> [it]; a folder -> the files directly inside it, sorted by name."""
    if not os.path.isdir(path):
        return [path]
    return sorted(os.path.join(path, n) for n in os.listdir(path)
                  if os.path.isfile(os.path.join(path, n)))


def tree_size(path: str) -> int:
    """The size of a file, or the total size of the files directly inside a folder."""
    return sum(os.path.getsize(p) for p in files_of(path))


def evict(path: str) -> None:
    """Drop a file's pages from the page cache: fsync (dirty pages cannot be dropped), then
    POSIX_FADV_DONTNEED. Pages mapped by a live process stay; check with resident_fraction."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def first_difference(a: str, b: str, chunk: int = CHUNK) -> int | None:
    """Offset of the first byte where two files differ (a size difference counts); None if equal."""
    offset, x, y = 0, bytearray(chunk), bytearray(chunk)
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            nx, ny = fa.readinto(x), fb.readinto(y)
            if nx != ny or x[:nx] != y[:ny]:
                n = min(nx, ny)
                return offset + next((i for i in range(n) if x[i] != y[i]), n)
            if not nx:
                return None
            offset += nx


def run_script_worker(script: str, spec: dict, env: dict, timeout: float, workdir: str | None = None) -> dict:
    """Runs ``script --worker SPEC`` in a fresh process; its JSON result, or a FAIL with its error."""
    import json
    import subprocess
    import sys
    import tempfile

    fd, out = tempfile.mkstemp(prefix="result-", suffix=".json", dir=workdir)
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(script), "--worker", json.dumps({**spec, "out": out})]
    try:
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
        with open(out) as f:
            text = f.read()
        if proc.returncode != 0 or not text:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"check": f"FAIL: worker exited {proc.returncode}: {' | '.join(tail)}"}
        return json.loads(text)
    except subprocess.TimeoutExpired:
        return {"check": f"FAIL: worker timed out after {timeout:.0f} s"}
    finally:
        os.unlink(out)
