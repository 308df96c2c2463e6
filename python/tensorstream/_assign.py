"""Putting loaded tensors into a ``torch.nn.Module``.

Two policies, chosen by ``strict``:

- tensorizer's (the default of ``TensorDeserializer.load_into_module``): every tensor of the file
  goes into the module. A parameter or buffer of that name is replaced, taking the file's shape
  and dtype; a name the module lacks is registered, as a parameter or a buffer as the file's
  tensor type says. Tensors the module has and the file lacks stay as they are.
- strict (``strict=True``, the default of ``tensorstream.load_module``): the file and the module
  must name the same parameters and persistent buffers, with the same shapes; otherwise a
  RuntimeError lists every difference and nothing is changed.

Either way weights tied in the module (one tensor in several slots) stay tied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from . import _names

_SHOWN = 8  # names listed per problem in an error message
PARAM, BUFFER, STATE_DICT = 0, 1, 2  # the file's tensor types (serialization.TensorType)


class Slot(NamedTuple):
    """Where one record of the file goes."""

    record: Any
    module: torch.nn.Module
    attr: str
    new: bool  # registered by the load (the module had no such parameter or buffer)


def _split(name: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> ``("a.b", "weight")``; ``".weight"`` and ``"weight"`` -> root."""
    module, _, attr = name.rpartition(".")
    return module, attr


def plan(m: torch.nn.Module, records: Sequence[Any], *, strict: bool, check_missing: bool = True) -> list[Slot]:
    """A :class:`Slot` for each record; RuntimeError listing every problem, before any change.

    ``check_missing`` (strict only): also refuse parameters and persistent buffers of ``m`` that
    no record names.
    """
    modules = dict(m.named_modules(remove_duplicate=False))
    out: list[Slot] = []
    problems: dict[str, list[str]] = {}
    for rec in records:
        if not _names.is_plain(rec.path):
            raise NotImplementedError(
                f"tensor {rec.name!r} has a structured name and cannot be loaded into a module; "
                "use the deserializer as a mapping (or .tree()) instead"
            )
        prefix, attr = _split(rec.name)
        module = modules.get(prefix)
        if module is None:
            problems.setdefault("unexpected" if strict else "no such submodule", []).append(rec.name)
        elif attr in module._parameters or attr in module._buffers:
            current = _slot(module, attr)
            if strict and current is not None and tuple(current.shape) != rec.shape:
                msg = f"{rec.name}: file {list(rec.shape)} vs module {list(current.shape)}"
                problems.setdefault("shape mismatch", []).append(msg)
            else:
                out.append(Slot(rec, module, attr, new=False))
        elif strict:
            problems.setdefault("unexpected", []).append(rec.name)
        elif hasattr(module, attr) or "." in attr or not attr:
            problems.setdefault("not a parameter or buffer of the module", []).append(rec.name)
        elif rec.tensor_type == STATE_DICT:
            problems.setdefault("not in the module (a state-dict entry: parameter or buffer unknown)", []).append(
                rec.name
            )
        else:
            out.append(Slot(rec, module, attr, new=True))
    if strict and check_missing:
        missing = _missing(m, [(s.module, s.attr) for s in out])
        if missing:
            problems = {"missing": missing, **problems}
    if problems:
        raise RuntimeError(
            f"cannot load the file into {type(m).__name__}: "
            + "; ".join(_problem(label, items) for label, items in problems.items())
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


def _trainable(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def apply(m: torch.nn.Module, slots: Sequence[Slot], tensors: dict[Any, torch.Tensor]) -> None:
    """Fill each slot with its record's tensor; slots sharing one tensor in ``m`` share the result."""
    replaced: dict[int, tuple[Any, Any]] = {}  # id(old) -> (old, new); old kept alive
    for slot in slots:
        tensor = tensors[slot.record.path]
        if slot.new:
            if slot.record.tensor_type == PARAM:
                slot.module.register_parameter(
                    slot.attr, torch.nn.Parameter(tensor, requires_grad=_trainable(tensor))
                )
            else:
                slot.module.register_buffer(slot.attr, tensor)
            continue
        module, attr = slot.module, slot.attr
        old = _slot(module, attr)
        if old is not None and id(old) in replaced:
            new = replaced[id(old)][1]  # tied to a slot already loaded
        elif attr in module._parameters:
            grad = (old is None or old.requires_grad) and _trainable(tensor)
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
