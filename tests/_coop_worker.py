"""One rank of the cooperative-loading tests: a real process in a gloo group on loopback.

Started by ``test_cooperative.py`` with the variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``), it joins the default group with env:// (timeout
``COOP_TIMEOUT`` seconds), makes a subgroup of ranks 0 and 1, then runs JSON commands read from
stdin, one per line, answering each with one line ``RESULT <json>`` on stdout. With
``COOP_COMMAND`` set it runs that one command and exits (as under torchrun).

A ``load`` command loads with ``process_group`` and reports a ``summary`` of every tensor (to be
compared with a plain load's), the bytes this rank read, or the error: its type, ``rank``,
``failures``, ``error_type`` and the type of its ``__cause__``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist

import tensorstream
from tensorstream import _cooperative

GROUPS: dict = {}


def _kwargs(cmd: dict) -> dict:
    kwargs = dict(device="cpu", verify_hash=cmd.get("verify_hash", False))
    if cmd.get("key"):
        kwargs["encryption"] = tensorstream.DecryptionParams.from_key(bytes.fromhex(cmd["key"]))
    if cmd.get("prefix"):
        prefix = cmd["prefix"]
        kwargs["filter_func"] = lambda name: str(name).startswith(prefix)
    if cmd.get("dtype"):
        kwargs["dtype"] = getattr(torch, cmd["dtype"])
    return kwargs


def summary(tensors: dict) -> dict:
    """What the test compares with a plain load: dtype, shape, device, a digest of the bytes, and
    whether the tensor owns a storage of exactly its bytes."""
    out = {}
    for name, t in tensors.items():
        raw = t.detach().cpu().contiguous().view(-1).view(torch.uint8) if t.numel() else torch.empty(0)
        own = not t.numel() or t.untyped_storage().nbytes() == t.nbytes
        out[str(name)] = [str(t.dtype), list(t.shape), str(t.device), hashlib.sha256(raw.numpy()).hexdigest(), own]
    return out


def _load(cmd: dict) -> dict:
    group = GROUPS[cmd.get("group", "world")]
    if group is None:
        return {"skipped": True}
    for key, value in cmd.get("env", {}).items():
        os.environ[key] = value
    _cooperative.BATCH_BYTES = cmd.get("batch", _cooperative.BATCH_BYTES)
    _cooperative.STAGE_BYTES = cmd.get("stage", _cooperative.STAGE_BYTES)
    kwargs = _kwargs(cmd)
    start = time.monotonic()
    try:
        with tensorstream.configured(**cmd.get("configure", {})):
            got, nread = _call(cmd.get("api", "deserializer"), cmd["uri"], group, kwargs)
    except Exception as exc:
        cause = exc.__cause__
        return {
            "ok": False, "type": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - start,
            "rank": getattr(exc, "rank", None), "error_type": getattr(exc, "error_type", None),
            "failures": {str(k): v for k, v in getattr(exc, "failures", {}).items()},
            "cause": type(cause).__name__ if cause is not None else None,
        }
    seconds = time.monotonic() - start
    return {"ok": True, "tensors": summary(got), "bytes_read": nread, "seconds": seconds}


def model() -> torch.nn.Module:
    """The module of the ``load_module`` command (the test saves one like it)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.LayerNorm(256), torch.nn.Linear(256, 32))


def _call(api: str, uri: str, group, kwargs: dict) -> tuple[dict, int | None]:
    """The tensors of a load through ``api``, and the bytes this rank read (when known)."""
    if api == "load":
        return tensorstream.load(uri, process_group=group, **kwargs), None
    if api == "load_module":
        return tensorstream.load_module(uri, model, process_group=group, **kwargs).state_dict(), None
    with tensorstream.TensorDeserializer(uri, process_group=group, **kwargs) as d:
        return dict(d.items()), d.total_bytes_read


def run(cmd: dict) -> dict:
    op = cmd["op"]
    if op == "load":
        return _load(cmd)
    if op == "exit":
        os._exit(cmd.get("code", 0))
    if op == "sleep":
        time.sleep(cmd["seconds"])
        return {"ok": True}
    if op == "rank":
        return {"rank": dist.get_rank(), "world": dist.get_world_size()}
    raise ValueError(f"unknown op {op!r}")


def _answer(result: dict) -> None:
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def main() -> None:
    timeout = datetime.timedelta(seconds=float(os.environ.get("COOP_TIMEOUT", "30")))
    dist.init_process_group("gloo", timeout=timeout)
    GROUPS["world"] = True  # the default group
    pair = dist.new_group([0, 1], timeout=timeout) if dist.get_world_size() > 2 else dist.group.WORLD
    GROUPS["pair"] = pair if dist.get_rank() < 2 else None
    one = os.environ.get("COOP_COMMAND")
    lines = [one] if one else sys.stdin
    for line in lines:
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        try:
            _answer(run(cmd))
        except Exception:
            _answer({"ok": False, "type": "WorkerError", "message": traceback.format_exc()})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
