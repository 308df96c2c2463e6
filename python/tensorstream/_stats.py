"""Where a load's time goes: bytes and seconds per stage, summed over a deserializer's loads."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class LoadStats:
    """Figures for the loads a ``TensorDeserializer`` ran (``deserializer.stats``).

    ``read`` is the data phase as the caller waits for it (reads, with hashing, decryption and
    device copies overlapping them); ``hash`` and ``decrypt`` are busy time summed over the worker
    threads, so they can exceed the wall time when several workers check at once. ``ring_wait`` is
    time the ring's lanes spent waiting for a slot's device copies to finish (GPU loads): large
    means host->device copies are the limit. ``header`` is reading and checking the per-tensor
    headers before the data.
    """

    loads: int = 0
    tensors: int = 0
    bytes: int = 0  # data bytes read
    seconds: float = 0.0  # wall time of the loads, end to end
    header_seconds: float = 0.0
    read_seconds: float = 0.0
    hashed_bytes: int = 0
    hash_seconds: float = 0.0
    decrypted_bytes: int = 0
    decrypt_seconds: float = 0.0
    copied_bytes: int = 0  # bytes copied host -> device (GPU loads)
    ring_wait_seconds: float = 0.0
    ring_alloc_seconds: float = 0.0
    reads: int = 0  # read requests issued (headers and data)

    @classmethod
    def of_load(cls, core: dict[str, Any], *, tensors: int, seconds: float, verified: bool, encrypted: bool,
                on_device: bool) -> LoadStats:
        """One load's figures: the core loader's ``stats()`` and what Python knows of it."""
        nbytes = int(core.get("bytes", 0))
        return cls(
            loads=1,
            tensors=tensors,
            bytes=nbytes,
            seconds=seconds,
            header_seconds=float(core.get("header_seconds", 0.0)),
            read_seconds=float(core.get("data_seconds", 0.0)),
            hashed_bytes=nbytes if verified else 0,
            hash_seconds=float(core.get("hash_seconds", 0.0)),
            decrypted_bytes=nbytes if encrypted else 0,
            decrypt_seconds=float(core.get("decrypt_seconds", 0.0)),
            copied_bytes=nbytes if on_device else 0,
            ring_wait_seconds=float(core.get("slot_wait_seconds", 0.0)),
            ring_alloc_seconds=float(core.get("alloc_seconds", 0.0)),
            reads=int(core.get("reads", 0)),
        )

    def add(self, other: LoadStats) -> None:
        """Adds ``other``'s figures to these."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def stages(self) -> dict[str, dict[str, float]]:
        """``{stage: {"bytes", "seconds", "gbps"}}`` for the stages that ran."""
        rows = {
            "header": (0, self.header_seconds),
            "read": (self.bytes, self.read_seconds),
            "hash": (self.hashed_bytes, self.hash_seconds),
            "decrypt": (self.decrypted_bytes, self.decrypt_seconds),
            "ring_wait": (self.copied_bytes, self.ring_wait_seconds),
        }
        out = {}
        for name, (nbytes, secs) in rows.items():
            if name in ("header", "read") or nbytes:
                out[name] = {"bytes": nbytes, "seconds": secs, "gbps": nbytes / secs / 1e9 if secs > 0 else 0.0}
        return out

    def summary(self) -> str:
        """One line for the log: each stage's seconds (and GB/s where it moves data)."""
        parts = []
        for name, row in self.stages().items():
            rate = f" {row['gbps']:.2f} GB/s" if row["bytes"] and row["seconds"] > 0 else ""
            parts.append(f"{name} {row['seconds']:.3f} s{rate}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prometheus(stats: LoadStats, prefix: str = "tensorstream_load", labels: dict[str, str] | None = None) -> str:
    """The figures in Prometheus' text exposition format (counters), for a serving process's
    ``/metrics`` page. ``labels`` are added to every sample (values escaped)."""
    label_text = ""
    if labels:
        escaped = (f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        label_text = "{" + ",".join(escaped) + "}"
    lines = []
    for field in dataclasses.fields(stats):
        name = f"{prefix}_{field.name}_total"
        lines.append(f"# TYPE {name} counter")
        lines.append(f"{name}{label_text} {getattr(stats, field.name)}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
