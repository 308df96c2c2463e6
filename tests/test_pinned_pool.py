"""The process's pool of ring slots (pinned memory on CUDA): a ring takes its slots from it and
gives them back after each load, so deserializers after the first pin nothing. Counted through
the host stand-in, whose blocks the pool makes and frees exactly as it does pinned ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import tensorstream
from _tensors import assert_same, random_tensor
from tensorstream import TensorDeserializer, _core

MIB = 1 << 20


@pytest.fixture
def model(tmp_path):
    sd = {f"t{i}": random_tensor((128, 257), torch.float32, i) for i in range(40)}
    path = tmp_path / "model.tensors"
    tensorstream.save(sd, path)
    return path, sd


@pytest.fixture
def ring(monkeypatch):
    """Loads to "cpu" go through the ring (host stand-in) of 4 slots of 1 MiB; pool emptied."""
    monkeypatch.setenv("TENSORSTREAM_DEVICE_STANDIN", "host")
    monkeypatch.setenv("TENSORSTREAM_RING_MB", "4")
    monkeypatch.setenv("TENSORSTREAM_RING_SLOTS", "4")
    monkeypatch.setenv("TENSORSTREAM_PINNED_IDLE_S", "0")  # nothing freed behind a test's back
    tensorstream.release_pinned_memory()
    yield
    monkeypatch.undo()
    tensorstream.release_pinned_memory()


def _load(path, sd, **kwargs):
    with TensorDeserializer(str(path), device="cpu", **kwargs) as d:
        for name, want in sd.items():
            assert_same(d[name], want)
        return d.stats


def test_twenty_deserializers_pin_the_ring_once(ring, model):
    path, sd = model
    before = _core.host_pool_info()
    for _ in range(20):
        _load(path, sd)
    after = _core.host_pool_info()
    assert after["blocks_made"] - before["blocks_made"] == 4  # one ring's slots, for all 20 loads
    assert after["takes"] - before["takes"] >= 20 * 4
    assert after["in_use_bytes"] == 0 and after["idle_bytes"] == 4 * MIB  # kept for the next ring
    assert tensorstream.features()["pinned_pool"]["idle_bytes"] == 4 * MIB


def test_a_lazy_deserializer_holds_no_slots_between_loads(ring, model):
    path, sd = model
    with TensorDeserializer(str(path), device="cpu", lazy_load=True) as d:
        assert_same(d["t3"], sd["t3"])
        assert _core.host_pool_info()["in_use_bytes"] == 0  # given back after the access
        assert_same(d["t7"], sd["t7"])
    assert _core.host_pool_info()["blocks_made"] >= 1


def test_release_frees_every_idle_slot_and_the_next_load_pins_again(ring, model):
    path, sd = model
    _load(path, sd)
    made = _core.host_pool_info()["blocks_made"]
    assert tensorstream.release_pinned_memory() == 4 * MIB
    info = _core.host_pool_info()
    assert info["idle_bytes"] == 0 and info["blocks_freed"] >= 4
    assert tensorstream.release_pinned_memory() == 0
    _load(path, sd)
    assert _core.host_pool_info()["blocks_made"] == made + 4


def test_a_pool_capped_at_zero_keeps_nothing(ring, model, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_PINNED_MB", "0")
    path, sd = model
    before = _core.host_pool_info()
    _load(path, sd)
    _load(path, sd)
    after = _core.host_pool_info()
    assert after["blocks_made"] - before["blocks_made"] == 8  # each load pins its own ring
    assert after["blocks_freed"] - before["blocks_freed"] == 8 and after["idle_bytes"] == 0


def test_a_ring_of_another_size_does_not_take_a_block_too_big_or_too_small(ring, model, monkeypatch):
    path, sd = model
    _load(path, sd)  # 4 idle blocks of 1 MiB
    made = _core.host_pool_info()["blocks_made"]
    monkeypatch.setenv("TENSORSTREAM_RING_MB", "16")  # slots of 4 MiB: the 1 MiB blocks are too small
    _load(path, sd)
    assert _core.host_pool_info()["blocks_made"] > made
    made = _core.host_pool_info()["blocks_made"]
    monkeypatch.setenv("TENSORSTREAM_RING_MB", "12")  # 3 MiB slots: 4 MiB blocks serve them
    _load(path, sd)
    assert _core.host_pool_info()["blocks_made"] == made


def test_idle_slots_are_freed_after_the_idle_time(ring, model, monkeypatch):
    monkeypatch.setenv("TENSORSTREAM_PINNED_IDLE_S", "0.3")
    path, sd = model
    _load(path, sd)
    assert _core.host_pool_info()["idle_bytes"] == 4 * MIB
    deadline = time.monotonic() + 10
    while _core.host_pool_info()["idle_bytes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _core.host_pool_info()["idle_bytes"] == 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="TENSORSTREAM_PINNED_MB"):
        os.environ["TENSORSTREAM_PINNED_MB"] = "lots"
        try:
            tensorstream.features()
        finally:
            del os.environ["TENSORSTREAM_PINNED_MB"]


FORK_SCRIPT = textwrap.dedent(
    """
    import faulthandler, hashlib, json, os, sys
    import torch, tensorstream
    from tensorstream import TensorDeserializer, _core
    faulthandler.dump_traceback_later(60, exit=True)
    path = sys.argv[1]
    def load():  # no torch arithmetic: its thread pool does not survive a fork
        with TensorDeserializer(path, device="cpu") as d:
            return hashlib.sha256(b"".join(t.numpy().tobytes() for t in d.values())).hexdigest()
    want = load()
    parent = _core.host_pool_info()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child pins its own ring and never frees the parent's blocks
        first = _core.host_pool_info()
        ok = load() == want
        os.write(w, json.dumps({"first": first, "after": _core.host_pool_info(), "ok": ok,
                                "released": tensorstream.release_pinned_memory()}).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = json.loads(os.read(r, 1 << 16))
    print(json.dumps({"parent": parent, "child": child, "parent_after": _core.host_pool_info(),
                      "again": load() == want}))
    """
)


def test_a_forked_child_starts_with_an_empty_pool(model):
    path, _ = model
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TENSORSTREAM_DEVICE_STANDIN": "host",
           "TENSORSTREAM_RING_MB": "4", "TENSORSTREAM_RING_SLOTS": "4"}
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["parent"]["idle_bytes"] == 4 * MIB
    assert out["child"]["first"]["blocks_made"] == 0 and out["child"]["first"]["idle_bytes"] == 0
    assert out["child"]["ok"] and out["child"]["after"]["blocks_made"] == 4
    assert out["child"]["released"] == 4 * MIB  # its own blocks only
    assert out["parent_after"]["idle_bytes"] == 4 * MIB and out["again"]
    assert out["parent_after"]["blocks_made"] == out["parent"]["blocks_made"]  # the parent pins nothing again
