"""The type stubs of the compiled core name exactly what the core exports."""

import ast
from pathlib import Path

import tensorstream
from tensorstream import _core

STUB = Path(tensorstream.__file__).with_name("_core.pyi")


def _stub_members() -> dict[str, set[str]]:
    tree = ast.parse(STUB.read_text())
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
        elif isinstance(node, ast.FunctionDef):
            out[node.name] = set()
    return out


def test_stub_lists_every_public_name():
    stub = _stub_members()
    public = {name for name in dir(_core) if not name.startswith("_")}
    assert set(stub) == public


def test_stub_classes_match_members():
    for name, members in _stub_members().items():
        obj = getattr(_core, name)
        if not isinstance(obj, type):
            continue
        real = {m for m in vars(obj) if not m.startswith("_")}
        declared = {m for m in members if not m.startswith("_")}
        assert declared == real, name
