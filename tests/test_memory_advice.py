"""Eager loads put all tensors in one arena; TENSORSTREAM_HUGE_PAGES decides how it is advised."""

import os

import pytest
import torch

import tensorstream

pytestmark = pytest.mark.skipif(
    not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled") or not os.path.exists("/proc/self/smaps"),
    reason="no transparent huge pages in this kernel",
)


def _vm_flags(address: int) -> set[str]:
    """The kernel's VmFlags of the mapping holding `address` (from /proc/self/smaps)."""
    current = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = lo <= address < hi
            elif head == "VmFlags:" and current:
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(11)
    sd = {f"w{i}": torch.randn(256, 1024 + i, generator=gen) for i in range(4)}
    path = tmp_path_factory.mktemp("advice") / "m.tensors"
    tensorstream.save(sd, path)
    return path, sd


@pytest.mark.parametrize(
    "value, flag, absent",
    [(None, "nh", "hg"), ("0", "nh", "hg"), ("off", "nh", "hg"), ("1", "hg", "nh"), ("on", "hg", "nh")],
)
def test_arena_advice_follows_the_variable(model_file, monkeypatch, value, flag, absent):
    path, sd = model_file
    if value is None:
        monkeypatch.delenv("TENSORSTREAM_HUGE_PAGES", raising=False)
    else:
        monkeypatch.setenv("TENSORSTREAM_HUGE_PAGES", value)
    loaded = tensorstream.load(path)
    for name, tensor in sd.items():
        assert torch.equal(loaded[name], tensor)
    flags = _vm_flags(loaded["w0"].data_ptr())
    # nh: MADV_NOHUGEPAGE, hg: MADV_HUGEPAGE
    assert flag in flags and absent not in flags, flags


def test_a_bad_value_is_refused_by_name(model_file, monkeypatch):
    path, _ = model_file
    monkeypatch.setenv("TENSORSTREAM_HUGE_PAGES", "maybe")
    with pytest.raises(ValueError, match="TENSORSTREAM_HUGE_PAGES"):
        tensorstream.load(path)
