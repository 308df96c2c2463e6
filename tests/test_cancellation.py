"""Loads that run side by side, or end early: several deserializers in threads, close() from another
thread while a load runs, and Ctrl-C during a load. Each must end promptly, free its memory, leave
no thread or descriptor behind and never hand out a partly written tensor.

A stalled HTTP server makes a load last until it is stopped, whatever the machine's speed. A local
file loads in a fraction of a second, so those tests act once the load has visibly started writing
(the process's resident memory grows) and try again, up to a few times, when it finished first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import faulthandler
import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

import tensorstream
from _http_servers import FaultServer
from tensorstream import LoadCancelled, TensorDeserializer, _core

BIG = 32 << 20  # int32 elements of the large tensor: 128 MiB
STALL_AFTER = 1 << 20  # the fault server stalls data ranges only, never the index or headers
STALL_S = 10  # how long a stalled range waits before the server hangs up
TRIES = 4  # local loads: attempts to land the stop while the load runs
PROMPT_S = 0.5  # longest wait between asking a load to stop and having it stopped

needs_http = pytest.mark.skipif(getattr(_core, "HttpSource", None) is None, reason="built without libcurl")


@pytest.fixture(autouse=True)
def _watchdog():
    """A hung test dumps every thread's stack and ends the run instead of blocking it."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _http_settings(monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_HTTP_TIMEOUT", "60")  # a stall is not a timeout here
    monkeypatch.setenv("TENSORSTREAM_HTTP_RETRIES", "0")  # a load that is not stopped fails after one stall
    for name in ("TENSORSTREAM_HTTP_DEADLINE", "TENSORSTREAM_HTTP_CONNECTIONS"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------------- resources


@dataclasses.dataclass(frozen=True)
class Usage:
    threads: int  # Python threads
    tasks: int  # OS threads, the core's included
    fds: int
    rss: int  # bytes
    workers: int = 0  # the runtime's read workers (OS threads kept for the process)
    rings: int = 0  # the runtime's io_uring rings (a descriptor each, kept for the process)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    """Hands memory that malloc keeps for reuse back to the system, so RSS shows what is held."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def usage() -> Usage:
    _core.close_idle_connections()  # connections kept per host for later loads are not leaks
    gc.collect()
    _trim()
    tasks, fds = len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))
    kept = _core.runtime_info()
    return Usage(threading.active_count(), tasks, fds, rss(), kept["workers"], kept["rings_kept"])


def assert_released(before: Usage, rss_slack: int = 64 << 20, timeout: float = 5.0) -> None:
    """Threads and descriptors back to ``before`` (an in-process server closes its side of a
    connection a moment after the client), resident memory within ``rss_slack`` of it (malloc's
    per-thread arenas keep some freed memory even after a trim: tens of MiB, never growing).

    What the process's runtime started meanwhile and keeps on purpose (read workers, io_uring
    rings: counted by the core, bounded by the readers that ran at once) is not a leak; anything
    beyond it is."""
    deadline = time.monotonic() + timeout
    while True:
        now = usage()
        kept_tasks, kept_fds = max(0, now.workers - before.workers), max(0, now.rings - before.rings)
        assert kept_tasks <= 32 and kept_fds <= 64, f"the runtime keeps too much: {now} (before: {before})"
        if (now.threads <= before.threads and now.tasks <= before.tasks + kept_tasks
                and now.fds <= before.fds + kept_fds):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"still held after {timeout} s: {now} (before: {before})")
        time.sleep(0.05)
    assert now.rss - before.rss < rss_slack, f"resident memory grew by {(now.rss - before.rss) >> 20} MiB"


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, step: float = 0.0005) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class Loading(threading.Thread):
    """Runs ``call()`` in a thread; ``result`` or ``error`` afterwards."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(name="test-loading", daemon=True)
        self.call = call
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def finish(self, timeout: float = 10.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the load did not end"


class Published(TensorDeserializer):
    """A deserializer that another thread can reach while its constructor still loads."""

    opened: list[TensorDeserializer] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Published.opened.append(self)
        super().__init__(*args, **kwargs)


# ---------------------------------------------------------------------------------------- files


BIG_NAMES = ("big", "small0", "small1", "small2")


def expected(name: str) -> torch.Tensor:
    """The big file's tensors, made on demand (not kept: the runner's memory stays low)."""
    if name == "big":  # every element differs, so a partial copy cannot pass for it
        return torch.arange(BIG, dtype=torch.int32)
    i = int(name[-1])
    return torch.full((1000 + i,), i, dtype=torch.float32)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cancel") / "big.tensors"
    tensorstream.save({name: expected(name) for name in BIG_NAMES}, path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """(path, tensors): 8 tensors of 4 MiB."""
    tensors = {f"t{i}": torch.arange(i << 20, (i + 1) << 20, dtype=torch.int32) for i in range(8)}
    path = tmp_path_factory.mktemp("cancel-model") / "model.tensors"
    tensorstream.save(tensors, path)
    return path, tensors


@pytest.fixture(scope="module")
def wide_file(tmp_path_factory):
    """(path, tensors): a 36 MiB tensor and small ones. Blocks over 32 MiB always get their own
    mapping from malloc, so resident memory shows whether lazy loads in threads free them."""
    tensors = {"wide": torch.arange(9 << 20, dtype=torch.int32)}
    tensors.update({f"s{i}": torch.full((100 + i,), i, dtype=torch.int64) for i in range(4)})
    path = tmp_path_factory.mktemp("cancel-wide") / "wide.tensors"
    tensorstream.save(tensors, path)
    return path, tensors


@pytest.fixture(scope="module")
def http_model(model_file, wide_file):
    """(server, url, tensors): the model file on the fault server (each 4 MiB range its own GET)."""
    if getattr(_core, "HttpSource", None) is None:
        pytest.skip("built without libcurl")
    path, tensors = model_file
    server = FaultServer()
    url = server.put("model.tensors", path.read_bytes())
    server.put("other.tensors", path.read_bytes())  # never faulted
    server.put("wide.tensors", wide_file[0].read_bytes())
    yield server, url, tensors
    server.close()


@pytest.fixture
def stalled(http_model):
    """``stalled()``: from then on the model's data ranges stall (until the client hangs up or
    STALL_S pass); returns a function telling whether a stalled request has arrived. Cleared after
    the test."""
    server, url, _ = http_model
    server.fault("model.tensors")
    server.forget("model.tensors")

    def arm() -> Callable[[], bool]:
        server.fault("model.tensors", "stall", seconds=STALL_S, after=STALL_AFTER)
        return lambda: any(h.fault == "stall" for h in server.hits("model.tensors"))

    yield arm
    server.fault("model.tensors")


def _warm_up(source: Any) -> None:
    """One small load first, so the baseline has the allocator and libraries already set up."""
    with TensorDeserializer(source, filter_func=lambda name: name.startswith(("s", "t0"))) as d:
        d.tree()


# ------------------------------------------------------------------------- concurrent deserializers


def _check_all(d: TensorDeserializer, want: dict[str, torch.Tensor]) -> None:
    assert sorted(d) == sorted(want)
    for name, tensor in want.items():
        assert torch.equal(d[name], tensor), name


@pytest.mark.parametrize("where", ["io_uring", "posix", "http"])
def test_deserializers_load_side_by_side_in_threads(where, request, monkeypatch):
    source, want = request.getfixturevalue("wide_file")
    if where == "http":
        server, url, _ = request.getfixturevalue("http_model")
        source = url.replace("model.tensors", "wide.tensors")
    else:
        if where == "io_uring" and not _core.features()["io_uring"]:
            pytest.skip("io_uring unavailable here")
        monkeypatch.setenv("TENSORSTREAM_IO_BACKEND", {"io_uring": "uring", "posix": "posix"}[where])
    _warm_up(source)
    before = usage()

    def eager() -> None:
        with TensorDeserializer(source) as d:
            _check_all(d, want)

    def lazy() -> None:
        with TensorDeserializer(source, lazy_load=True) as d:
            _check_all(d, want)

    loads = [Loading(eager), Loading(eager), Loading(lazy), Loading(lazy)]
    for t in loads:
        t.start()
    for t in loads:
        t.finish(60)
        assert t.error is None, repr(t.error)
    loads = None
    assert_released(before, rss_slack=24 << 20)  # 4 loads of 36 MiB each came and went


def test_one_lazy_deserializer_shared_by_threads(big_file):
    with TensorDeserializer(big_file, lazy_load=True) as d:
        loads = [Loading(lambda n=name: d[n]) for name in BIG_NAMES for _ in range(2)]
        for t in loads:
            t.start()
        for t in loads:
            t.finish(60)
            assert t.error is None, repr(t.error)
        for i, name in enumerate(n for n in BIG_NAMES for _ in range(2)):
            assert torch.equal(loads[i].result, expected(name)), name
        assert loads[0].result is loads[1].result  # loaded once, then cached


# ------------------------------------------------------------------------------ close() mid-load


def _close_when(d: TensorDeserializer, started: Callable[[], bool], load: Loading) -> tuple[float, int] | None:
    """Closes ``d`` once ``started()``, unless ``load`` ended first: (seconds close() took,
    resident bytes when it returned)."""
    if not wait_for(lambda: started() or not load.is_alive()) or not load.is_alive():
        return None
    t0 = time.monotonic()
    d.close()
    return time.monotonic() - t0, rss()


@needs_http
@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_close_from_another_thread_cancels_a_stalled_http_load(lazy, http_model, stalled):
    _, url, want = http_model
    _warm_up(url)
    before = usage()
    Published.opened.clear()
    d = TensorDeserializer(url, lazy_load=True) if lazy else None
    arrived = stalled()
    load = Loading((lambda: d["t3"]) if lazy else (lambda: Published(url)))
    load.start()
    if not lazy:
        assert wait_for(lambda: bool(Published.opened))
        d = Published.opened[0]
    # Another deserializer of the same server loads meanwhile and is not disturbed.
    other_url = url.replace("model.tensors", "other.tensors")
    other = Loading(lambda: _check_all(TensorDeserializer(other_url), want))
    other.start()
    closed = _close_when(d, arrived, load)
    assert closed is not None, f"the load ended before close(): {load.error!r}"
    took = closed[0]
    load.finish()
    other.finish()
    assert other.error is None, repr(other.error)
    assert took < PROMPT_S, f"close() took {took:.2f} s"
    assert isinstance(load.error, LoadCancelled), repr(load.error)
    assert load.result is None
    assert "cancelled" in str(load.error) and url in str(load.error)
    assert not d._cache  # nothing of that load is kept
    with pytest.raises(ValueError, match="closed"):
        d["t0"]
    load = d = other = None
    Published.opened.clear()
    assert_released(before)


@pytest.mark.parametrize("lazy,verify", [(False, False), (True, False), (False, True)],
                         ids=["eager", "lazy", "eager-verify_hash"])
def test_close_from_another_thread_cancels_a_local_load(lazy, verify, engine, big_file):
    path = big_file
    _warm_up(path)
    before = usage()
    for _ in range(TRIES):
        Published.opened.clear()
        start_rss = rss()
        d = TensorDeserializer(path, lazy_load=True, verify_hash=verify) if lazy else None
        load = Loading((lambda: d["big"]) if lazy else (lambda: Published(path, verify_hash=verify)))
        load.start()
        if not lazy:
            assert wait_for(lambda: bool(Published.opened) or not load.is_alive())
            d = Published.opened[0] if Published.opened else None
        closed = None if d is None else _close_when(d, lambda: rss() - start_rss > (32 << 20), load)
        load.finish()
        if closed is None or load.error is None:  # finished first: try again
            if d is not None:
                d.close()
            continue
        took, rss_after = closed
        assert took < PROMPT_S, f"close() took {took:.2f} s"
        # close() returned after the load's memory was freed (it had grown past 32 MiB).
        assert rss_after - start_rss < 16 << 20, f"{(rss_after - start_rss) >> 20} MiB still resident"
        assert isinstance(load.error, LoadCancelled), repr(load.error)
        assert not d._cache
        break
    else:
        pytest.fail(f"no close() landed during a load in {TRIES} tries")
    load = d = None
    Published.opened.clear()
    assert_released(before)


# ------------------------------------------------------------------------------- Ctrl-C mid-load


class CtrlC:
    """Sends SIGINT once ``started()``, raising KeyboardInterrupt only while ``loading`` (a late
    signal is counted, not raised, so it cannot escape the test)."""

    def __init__(self, started: Callable[[], bool]) -> None:
        self.started = started
        self.loading = False
        self.late = False
        self.sent_at: float | None = None
        self.in_core = False  # the KeyboardInterrupt came out of the core's load call
        self.rss_in_handler = 0  # resident bytes when the handler raised it
        self.rss_after = 0  # resident bytes when it arrived
        self._thread = threading.Thread(target=self._send, name="test-ctrl-c", daemon=True)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.loading:
            self.rss_in_handler = rss()
            raise KeyboardInterrupt
        self.late = True

    def _send(self) -> None:
        if wait_for(lambda: self.started() or not self.loading, timeout=20) and self.loading:
            self.sent_at = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)

    def run(self, call: Callable[[], Any]) -> tuple[Any, float | None]:
        """``call()`` with the signal armed: (its result, or None when interrupted; seconds from the
        signal to the KeyboardInterrupt, or None)."""
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            self.loading = True
            self._thread.start()
            try:
                return call(), None
            except KeyboardInterrupt as exc:
                took = time.monotonic() - self.sent_at if self.sent_at is not None else None
                self.rss_after = rss()
                codes = []
                tb = exc.__traceback__
                while tb is not None:
                    codes.append(tb.tb_frame.f_code)
                    tb = tb.tb_next
                # The handler ran from the core's load call (or right after it returned).
                caller = codes[-2] if len(codes) > 1 and codes[-1] is CtrlC._handler.__code__ else None
                self.in_core = caller is not None and caller.co_name == "load"
                self.in_core = self.in_core and caller.co_filename.endswith("_loading.py")
                return None, took
            finally:
                self.loading = False
                self._thread.join(5)
        finally:
            signal.signal(signal.SIGINT, previous)


@needs_http
@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_ctrl_c_stops_a_stalled_http_load(lazy, http_model, stalled):
    server, url, want = http_model
    _warm_up(url)
    before = usage()
    d = TensorDeserializer(url, lazy_load=True) if lazy else None
    arrived = stalled()
    ctrl_c = CtrlC(arrived)
    result, took = ctrl_c.run((lambda: d["t5"]) if lazy else (lambda: TensorDeserializer(url)))
    assert result is None and took is not None, "the load was not interrupted"
    assert ctrl_c.in_core
    assert took < PROMPT_S, f"KeyboardInterrupt came {took:.2f} s after the signal"
    if lazy:  # the deserializer stays usable, and the interrupted tensor was not kept
        assert not d._cache
        server.fault("model.tensors")
        assert torch.equal(d["t5"], want["t5"])
        d.close()
    d = None
    assert_released(before)


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_ctrl_c_stops_a_local_load(lazy, engine, big_file):
    path = big_file
    _warm_up(path)
    before = usage()
    with TensorDeserializer(path, lazy_load=True) as d:
        for _ in range(TRIES):
            start_rss = rss()
            call = (lambda: d["big"]) if lazy else (lambda: TensorDeserializer(path))
            ctrl_c = CtrlC(lambda: rss() - start_rss > (32 << 20))
            result, took = ctrl_c.run(call)
            # The handler must have run while the load was still writing, not after it ended.
            mid_load = ctrl_c.rss_in_handler - start_rss < BIG * 4 - (16 << 20)
            if took is None or not ctrl_c.in_core or not mid_load:  # finished first: try again
                result = None
                d._cache.clear()
                continue
            assert took < PROMPT_S, f"KeyboardInterrupt came {took:.2f} s after the signal"
            assert not d._cache  # nothing of the interrupted load is kept
            rss_grown = ctrl_c.rss_after - start_rss
            assert rss_grown < 16 << 20, f"{rss_grown >> 20} MiB still resident after the interrupt"
            break
        else:
            pytest.fail(f"no Ctrl-C landed during a load in {TRIES} tries")
        if lazy:  # still usable: the next access loads the whole tensor again
            assert torch.equal(d["big"], expected("big"))
    result = d = None
    assert_released(before)


@needs_http
def test_close_from_a_signal_handler_on_the_loading_thread(http_model, stalled):
    """A handler that closes the deserializer it interrupts: LoadCancelled, no deadlock."""
    _, url, _ = http_model
    d = TensorDeserializer(url, lazy_load=True)
    arrived = stalled()
    previous = signal.signal(signal.SIGUSR1, lambda *_: d.close())
    timer = threading.Thread(target=lambda: wait_for(arrived) and os.kill(os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(LoadCancelled):
            d["t2"]
        assert time.monotonic() - t0 < 2  # a stalled range waits STALL_S
    finally:
        timer.join(5)
        signal.signal(signal.SIGUSR1, previous)
    assert d._loader is None and not d._cache
    with pytest.raises(ValueError, match="closed"):
        d["t2"]


# ------------------------------------------------------------------------------------ core level


def test_a_cancelled_core_loader_refuses_later_loads(big_file):
    source = _core.FileSource(str(big_file))
    index = _core.read_index(source)
    loader = _core.Loader(source)
    pos = next(i for i, e in enumerate(index.entries) if e.name == b"small1")
    out = torch.zeros(1001, dtype=torch.float32)
    loader.load(index, [(pos, out.data_ptr(), out.numel() * 4)])
    assert torch.equal(out, expected("small1")) and not loader.cancelled
    loader.cancel()
    assert loader.cancelled
    out.zero_()
    with pytest.raises(LoadCancelled, match="was cancelled"):
        loader.load(index, [(pos, out.data_ptr(), out.numel() * 4)])
    assert not out.any()
    assert issubclass(LoadCancelled, tensorstream.TensorstreamError)
