"""One process of a fleet run (bench_fleet.py --worker SPEC): wait for "go", load, check, report.

The spec says the mode, this process's rank among ``procs``, what to load and the run's folder.
Libraries are imported, a process group joined (group modes; its setup is timed on its own) and
the settle wait spent before the process says it is ready; then it waits for the go file, loads,
reads one byte of every 4 KiB page of every tensor and notes the wall-clock time. The checks
against the reference checksums run after that, outside the timed region.
"""

from __future__ import annotations

import datetime
import json
import os
import time

import _model
import _system
import _workers

GO_POLL_S = 0.001
GROUP_MODES = ("cooperative", "runai-dist")


def _tensorstream_loader(spec: dict):
    """load() -> (tensors, engine note, close) with tensorstream.load and the mode's keywords."""
    import tensorstream

    mode, kwargs = spec["mode"], {"device": "cpu"}
    if mode == "cooperative":
        kwargs["process_group"] = True
    elif mode in ("cache", "cache-warm"):
        kwargs["cache_dir"] = spec["cache_dir"]

    def load():
        return tensorstream.load(spec["uri"], **kwargs), "", None
    return load


def _runai_dist_loader(spec: dict):
    """The Run:ai model streamer's distributed form: every rank streams a share of the file and
    the group broadcasts the rest (RUNAI_STREAMER_DIST=1 lets it use a gloo group on the CPU)."""
    from runai_model_streamer import SafetensorsStreamer

    def load():
        streamer = SafetensorsStreamer().__enter__()
        streamer.stream_files([spec["uri"]], device="cpu", is_distributed=True)
        tensors = dict(streamer.get_tensors())
        used = streamer.file_streamer.is_distributed
        note = "distributed" if used else "NOT distributed (fell back to one process each)"
        return tensors, note, lambda: streamer.__exit__(None, None, None)
    return load


def _loader(spec: dict):
    mode = spec["mode"]
    if mode in ("independent", "cooperative", "cache", "cache-warm", "local"):
        return _tensorstream_loader(spec)
    if mode == "runai-dist":
        return _runai_dist_loader(spec)
    if mode in ("tensorizer", "runai"):
        plain = _workers._loader(mode)

        def load():
            tensors, engine, handle = plain(spec["uri"])
            return tensors, engine, getattr(handle, "close", None)
        return load
    raise ValueError(f"unknown mode {mode!r}")


def _join_group(spec: dict) -> float:
    """Joins the gloo group of the run (rank 0 hosts its TCP store); seconds it took."""
    import torch.distributed as dist

    t0 = time.perf_counter()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{spec['port']}", rank=spec["rank"],
                            world_size=spec["procs"], timeout=datetime.timedelta(seconds=spec["timeout"]))
    dist.barrier()
    return time.perf_counter() - t0


def _wait_go(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no go signal within {timeout:.0f} s")
        time.sleep(GO_POLL_S)


def _check(expected: dict, tensors: dict, touched: int) -> str:
    problems = _model.compare(expected, _model.checksums(tensors))
    if not problems and touched != sum(t["touch"] for t in expected.values()):
        problems = ["data arrived after the load returned (touched bytes differ)"]
    return "FAIL: " + "; ".join(problems[:3]) if problems else "pass"


def main(spec: dict) -> None:
    with open(spec["reference"]) as f:
        expected = json.load(f)["tensors"]
    load = _loader(spec)
    group_s = _join_group(spec) if spec["mode"] in GROUP_MODES else None
    _workers.settle(spec)
    base = _system.status_mib("VmRSS")
    with open(os.path.join(spec["ready_dir"], str(spec["rank"])), "w"):
        pass
    _wait_go(spec["go"], spec["timeout"])
    t0 = time.perf_counter()
    tensors, engine, close = load()
    touched = _model.touch_pages(tensors.values())
    end_wall = time.time()
    seconds = time.perf_counter() - t0
    check = _check(expected, tensors, touched)
    if engine.startswith("NOT"):
        check = "FAIL: " + engine
    if close:
        close()
    result = {"rank": spec["rank"], "seconds": seconds, "end_wall": end_wall, "group_s": group_s,
              "engine": engine, "base_rss_mib": base, "check": check,
              "peak_rss_mib": _system.peak_rss_mib(), "hwm_mib": _system.status_mib("VmHWM")}
    if group_s is not None:
        import torch.distributed as dist

        dist.destroy_process_group()
    with open(spec["out"], "w") as f:
        json.dump(result, f)
