"""Tensor names: plain strings and structured paths.

Internally every name is a *path*: a tuple of ``str`` / non-negative ``int`` components. A path
of one ``str`` is a plain name, stored as raw UTF-8; any other path is stored as byte 0x1E
followed by compact JSON (``\\x1e["model",0,"w"]``). Callers see plain names as ``str`` and
structured ones as tuples (see :func:`public`).
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from .errors import FormatError

Component = str | int
Path = tuple[Component, ...]
PublicName = str | Path

_RS = b"\x1e"
MAX_NAME_BYTES = 0xFFFF
MAX_DEPTH = 256  # components per path; keeps tree rebuilding far from Python's recursion limit


def as_path(name: Any) -> Path:
    """A user-supplied name (str, tuple or list of components) as a validated path."""
    path = (name,) if isinstance(name, str) else tuple(name) if isinstance(name, (tuple, list)) else None
    if path is None:
        raise TypeError(f"tensor name must be a str or a sequence of str/int, not {type(name).__name__}")
    _check_path(path)
    return path


def _check_path(path: Path) -> None:
    if not path:
        raise ValueError("tensor name must not be empty")
    if len(path) > MAX_DEPTH:
        raise ValueError(f"tensor path has {len(path)} components, more than {MAX_DEPTH}")
    for part in path:
        if isinstance(part, bool) or not isinstance(part, (str, int)):
            raise ValueError(f"tensor path {path!r}: component {part!r} is not a str or int")
        if isinstance(part, int) and part < 0:
            raise ValueError(f"tensor path {path!r}: negative index {part}")


def is_plain(path: Path) -> bool:
    return len(path) == 1 and isinstance(path[0], str)


def public(path: Path) -> PublicName:
    """What callers see: the str of a plain name, else the path tuple."""
    return path[0] if is_plain(path) else path


def encode(path: Path) -> bytes:
    """The bytes stored in the file for ``path`` (ValueError if it cannot be stored)."""
    if is_plain(path):
        raw = path[0].encode("utf-8")
        if not raw:
            raise ValueError("tensor name must not be empty")
        if raw.startswith(_RS):
            raise ValueError(f"tensor name {path[0]!r} must not start with the byte 0x1E")
    else:
        raw = _RS + json.dumps(list(path), separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"tensor name {public(path)!r} is longer than {MAX_NAME_BYTES} bytes")
    return raw


def flatten(obj: Any) -> Iterator[tuple[Path, torch.Tensor]]:
    """Depth-first ``(path, tensor)`` pairs of nested dicts / lists, in insertion order."""
    stack: list[tuple[Path, Iterator[tuple[Component, Any]]]] = [((), _children(obj))]
    while stack:
        prefix, children = stack[-1]
        for key, value in children:
            path = prefix + (key,)
            if isinstance(value, torch.Tensor):
                yield path, value
            else:
                stack.append((path, _children(value)))
                break
        else:
            stack.pop()


def _children(obj: Any) -> Iterator[tuple[Component, Any]]:
    if isinstance(obj, Mapping):
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"state dict keys must be str, not {type(key).__name__} ({key!r})")
        return iter(obj.items())
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes, bytearray)):
        return enumerate(obj)
    raise TypeError(f"cannot serialize a {type(obj).__name__} inside a state dict")


class Registry:
    """The tree of names seen so far; refuses duplicates, leaf/prefix clashes, mixed key kinds."""

    def __init__(self) -> None:
        self.root: dict[Component, Any] = {}

    def check(self, path: Path) -> None:
        """ValueError if ``path`` cannot join the tree (does not add it)."""
        branch: Any = self.root
        for depth, part in enumerate(path):
            if not isinstance(branch, dict):
                raise ValueError(f"tensor name {public(path)!r} extends another tensor's name")
            if branch and type(next(iter(branch))) is not type(part):
                raise ValueError(
                    f"tensor name {public(path)!r} mixes list indices and dict keys at {path[: depth + 1]!r}"
                )
            if part not in branch:
                return
            branch = branch[part]
        kind = "is used twice" if not isinstance(branch, dict) else "is a prefix of another name"
        raise ValueError(f"tensor name {public(path)!r} {kind}")

    def add(self, path: Path) -> None:
        self.check(path)
        branch = self.root
        for part in path[:-1]:
            branch = branch.setdefault(part, {})
        branch[path[-1]] = path

    def node(self, prefix: Path) -> Any:
        """The subtree (dict) or leaf (path) at ``prefix``; KeyError if absent."""
        branch: Any = self.root
        for part in prefix:
            if not isinstance(branch, dict):
                raise KeyError(prefix)
            branch = branch[part]
        return branch


def registry_of(paths: Sequence[Path]) -> Registry:
    """A registry of names read from a file; FormatError on the first clash."""
    reg = Registry()
    for path in paths:
        try:
            reg.add(path)
        except ValueError as exc:
            raise FormatError(str(exc), tensor=str(public(path)), field="name") from None
    return reg


def rebuild(flat: dict[Path, Any], strip: int = 0, proxies: bool = False) -> Any:
    """Nest ``{path: tensor}`` back into dicts and lists (or read-only mappings if ``proxies``).

    ``strip`` drops that many leading components (all paths must share them).
    """
    root: dict[Component, Any] = {}
    for path, value in flat.items():
        branch = root
        for part in path[strip:-1]:
            branch = branch.setdefault(part, {})
        branch[path[-1]] = value
    return _retype(root, proxies)


def _retype(layer: dict[Component, Any], proxies: bool) -> Any:
    for key, value in layer.items():
        if isinstance(value, dict):
            layer[key] = _retype(value, proxies)
    if proxies:
        return types.MappingProxyType(layer)
    if layer and isinstance(next(iter(layer)), int):
        return [layer[k] for k in sorted(layer)]
    return layer
