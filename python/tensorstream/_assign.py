"""Putting loaded tensors into a ``torch.nn.Module`` (assign semantics, ties kept)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _names

_SHOWN = 8  # names listed per problem in an error message


def _split(name: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> ``("a.b", "weight")``; ``".weight"`` and ``"weight"`` -> root."""
    module, _, attr = name.rpartition(".")
    return module, attr


def plan(m: torch.nn.Module, records: Sequence[Any], *, check_missing: bool) -> list[tuple[Any, torch.nn.Module, str]]:
    """``(record, module, attr)`` for each record; RuntimeError listing every mismatch."""
    modules = dict(m.named_modules(remove_duplicate=False))
    out, unexpected, mismatched, named = [], [], [], []
    for rec in records:
        if not _names.is_plain(rec.path):
            raise RuntimeError(
                f"tensor {rec.name!r} has a structured name and cannot be loaded into a module; "
                "use the deserializer as a mapping (or .tree()) instead"
            )
        prefix, attr = _split(rec.name)
        module = modules.get(prefix)
        if module is None or (attr not in module._parameters and attr not in module._buffers):
            unexpected.append(rec.name)
            continue
        current = _slot(module, attr)
        named.append((module, attr))
        if current is not None and tuple(current.shape) != rec.shape:
            mismatched.append(f"{rec.name}: file {list(rec.shape)} vs module {list(current.shape)}")
            continue
        out.append((rec, module, attr))
    missing = _missing(m, named) if check_missing else []
    if unexpected or missing or mismatched:
        raise RuntimeError(
            f"cannot load the file into {type(m).__name__}: "
            + "; ".join(
                _problem(label, items)
                for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                if items
            )
        )
    return out


def _problem(label: str, items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"{label} {len(items)}: {', '.join(map(repr, items[:_SHOWN]))}{more}"


def _slot(module: torch.nn.Module, attr: str) -> Any:
    return module._parameters[attr] if attr in module._parameters else module._buffers[attr]


def _missing(m: torch.nn.Module, named: Sequence[tuple[torch.nn.Module, str]]) -> list[str]:
    """Parameters and persistent buffers of ``m`` that the file does not name (ties count)."""
    filled: set[int] = {id(_slot(module, attr)) for module, attr in named}
    missing = []
    for prefix, module in m.named_modules():
        persistent = [b for b in module._buffers if b not in module._non_persistent_buffers_set]
        for attr in list(module._parameters) + persistent:
            tensor = _slot(module, attr)
            if tensor is not None and id(tensor) not in filled:
                missing.append(f"{prefix}.{attr}" if prefix else attr)
    return missing


def apply(m: torch.nn.Module, assignments: Sequence[tuple[torch.nn.Module, str, torch.Tensor]]) -> None:
    """Replace each slot's tensor; slots sharing one tensor in ``m`` get one shared result."""
    replaced: dict[int, tuple[Any, Any]] = {}  # id(old) -> (old, new); old kept alive
    for module, attr, tensor in assignments:
        old = _slot(module, attr)
        if old is not None and id(old) in replaced:
            new = replaced[id(old)][1]  # tied to a slot already loaded
        elif attr in module._parameters:
            grad = (old is None or old.requires_grad) and (tensor.is_floating_point() or tensor.is_complex())
            new = torch.nn.Parameter(tensor, requires_grad=grad)
        else:
            new = tensor
        _store(module, attr, new)
        if old is not None:
            replaced.setdefault(id(old), (old, new))
    for module in m.modules():  # slots tied to a loaded one but not named in the file
        for table in (module._parameters, module._buffers):
            for attr, old in table.items():
                hit = replaced.get(id(old)) if old is not None else None
                if hit is not None and hit[0] is old:
                    table[attr] = hit[1]


def _store(module: torch.nn.Module, attr: str, value: torch.Tensor) -> None:
    if attr in module._parameters:
        module._parameters[attr] = value
    else:
        module._buffers[attr] = value
