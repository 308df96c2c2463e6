"""The ranks of a ``torch.distributed`` process group loading one checkpoint together: which
group, which device its collectives use, and the agreement every rank reaches before bytes move.

An agreement is one ``all_gather`` of a small fixed-size status block per rank (a failure flag,
a fingerprint of what the rank is about to load, and its error as text). If any rank failed,
every rank raises the same :class:`~tensorstream.errors.RankFailedError`; a collective that
itself fails (a rank that died, or never came within the group's timeout) becomes one too.
Nothing here initialises or destroys a group: the caller owns it.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass
from typing import Any

import torch

from .errors import RankFailedError

STATUS_BYTES = 2048  # per rank and agreement: flag, fingerprint, message
_HEAD = struct.Struct("<B32sI")  # failed, fingerprint, message length
_MESSAGE_BYTES = STATUS_BYTES - _HEAD.size
_DEFAULT = ("default", "world")
_loads: collections.Counter[str] = collections.Counter()  # group loads started, by group name


def _dist() -> Any:
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("process_group needs torch.distributed, which this torch build lacks")
    return dist


@dataclass
class Team:
    """A resolved group: the ProcessGroup, this process's rank in it, its size, and the device
    that status blocks (and staged bytes) use for its collectives."""

    group: Any
    rank: int
    size: int
    device: torch.device
    backend: str
    serial: int = 0  # this process's count of loads with this group: the same on every rank
    store: Any = None  # the group's store when reachable, for the markers below

    def mark(self) -> None:
        """Best effort: note in the group's store that this rank started this load, so that a failed
        collective can name the ranks that never came. Silent where the store cannot be used."""
        if self.store is None:
            return
        try:
            self.store.set(self._marker(self.rank), "1")
        except Exception:
            self.store = None

    def absent(self) -> list[int]:
        """The ranks that never marked this load (empty when that cannot be known)."""
        if self.store is None:
            return []
        try:
            return [r for r in range(self.size) if not self.store.check([self._marker(r)])]
        except Exception:
            return []

    def _marker(self, rank: int) -> str:
        return f"tensorstream/load{self.serial}/rank{rank}"

    def global_rank(self, rank: int) -> int:
        return self.dist.get_global_rank(self.group, rank)

    @property
    def dist(self) -> Any:
        return _dist()

    def agree(self, failure: BaseException | None, what: str, fingerprint: bytes = b"") -> None:
        """Every rank's status of ``what``; RankFailedError on every rank if any rank failed, or
        if the ranks' ``fingerprint`` (what each is about to load) differ."""
        mine = _encode(failure, fingerprint).to(self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.size)]
        try:
            self.dist.all_gather(gathered, mine, group=self.group)
        except Exception as exc:
            raise self.broken(exc, what) from (failure or exc)
        statuses = [_decode(t.cpu()) for t in gathered]
        failures = {r: msg for r, (failed, _, msg) in enumerate(statuses) if failed}
        if failures:
            first = min(failures)
            same = [str(r) for r, msg in sorted(failures.items()) if r != first and msg == failures[first]]
            others = [f"rank {r}: {msg}" for r, msg in sorted(failures.items()) if msg != failures[first]]
            text = f"{what} failed on rank {first} of {self.size}: {failures[first]}"
            text += f" (the same on rank(s) {', '.join(same)})" if same else ""
            text += "; also " + "; ".join(others) if others else ""
            raise RankFailedError(text, first, failures, failures[first].split(":", 1)[0]) from failure
        prints = [fp for _, fp, _ in statuses]
        odd = [r for r, fp in enumerate(prints) if fp != prints[0]]
        if odd:
            failures = {r: "ValueError: a different file, selection or setting than rank 0" for r in odd}
            who = ", ".join(f"rank {r}" for r in odd)
            raise RankFailedError(
                f"{what}: {who} (of {self.size}) asked for another load than rank 0 (another file, "
                "filter_func, verify_hash or setting); every rank must ask for the same load",
                odd[0], failures, "ValueError",
            )

    def broken(self, exc: BaseException, what: str) -> RankFailedError:
        """The error for a collective that failed: a rank died, left, or did not come in time."""
        absent = self.absent()
        who = "".join(f"; rank {r} never started this load" for r in absent)
        text = (f"{what}: the process group's collective failed (a rank died, left, or did not take part "
                f"within the group's timeout){who}: {type(exc).__name__}: {exc}")
        rank = absent[0] if absent else None
        failures = {r: "never started this load" for r in absent}
        return RankFailedError(text, rank, failures, None)


def _store_of(group: Any) -> Any:
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._world.pg_map[group][1]
    except Exception:
        return None


def _encode(failure: BaseException | None, fingerprint: bytes) -> torch.Tensor:
    message = b""
    if failure is not None:
        message = f"{type(failure).__name__}: {failure}".encode("utf-8", "replace")[:_MESSAGE_BYTES]
    block = bytearray(STATUS_BYTES)
    _HEAD.pack_into(block, 0, failure is not None, fingerprint[:32].ljust(32, b"\0"), len(message))
    block[_HEAD.size:_HEAD.size + len(message)] = message
    return torch.frombuffer(block, dtype=torch.uint8).clone()


def _decode(block: torch.Tensor) -> tuple[bool, bytes, str]:
    raw = block.numpy().tobytes()
    failed, fingerprint, length = _HEAD.unpack_from(raw, 0)
    message = raw[_HEAD.size:_HEAD.size + min(length, _MESSAGE_BYTES)].decode("utf-8", "replace")
    return bool(failed), fingerprint, message


def resolve(process_group: Any, device: torch.device) -> Team | None:
    """The team for ``process_group`` (None, False: no team), loading to ``device``; ValueError
    or TypeError for a value that names no usable group. Touches no collective."""
    if process_group is None or process_group is False:
        return None
    dist = _dist()
    if process_group is True or (isinstance(process_group, str) and process_group.lower() in _DEFAULT):
        if not dist.is_initialized():
            raise ValueError(
                "process_group=True uses torch.distributed's default group, which is not initialised: call "
                "torch.distributed.init_process_group() first (torchrun sets the variables its env:// init reads)"
            )
        group = dist.group.WORLD
    elif isinstance(process_group, dist.ProcessGroup):
        group = process_group
    else:
        raise TypeError(
            "process_group must be None, True / 'default' (the default group) or a torch.distributed "
            f"ProcessGroup, not {process_group!r}"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the process_group it was given")
    backend = str(dist.get_backend(group))
    name = str(getattr(group, "group_name", ""))
    _loads[name] += 1
    team = Team(group, rank, dist.get_world_size(group), _comm_device(backend, device), backend,
                _loads[name], _store_of(group))
    team.mark()
    return team


def _comm_device(backend: str, device: torch.device) -> torch.device:
    """Where tensors for ``backend``'s collectives live when loading to ``device``: the GPU for
    NCCL, the CPU otherwise (gloo stages GPU targets through host memory)."""
    by_device = _backends_by_device(backend)
    if by_device.get(device.type, by_device.get("*", "")) != "nccl":
        return torch.device("cpu")
    if device.type != "cpu":
        return device
    raise ValueError(
        "an NCCL process group moves GPU memory only: load to the GPU (device='cuda:N') or pass a gloo "
        "group (torch.distributed.new_group(backend='gloo')) to load to the CPU"
    )


def _backends_by_device(backend: str) -> dict[str, str]:
    """``"cpu:gloo,cuda:nccl"`` -> {"cpu": "gloo", "cuda": "nccl"}; ``"gloo"`` -> {"*": "gloo"}."""
    if ":" not in backend:
        return {"*": backend.lower()}
    pairs = (item.split(":", 1) for item in backend.split(",") if ":" in item)
    return {dev.strip(): name.strip().lower() for dev, name in pairs}
