"""The settings object's Python face: ``configure()``, ``configured()`` and one value by keyword.

The settings live in the core (one typed object: defaults, then the ``TENSORSTREAM_*`` variables,
then ``configure()``); the package reads them only through :func:`get`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import _native


def get(key: str) -> Any:
    """The value in effect for one setting (ValueError naming the variable if it is malformed)."""
    return _native.settings()[key]


def _text(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"{key} takes a number, a bool or a string, not {type(value).__name__}")


def configure(**values: Any) -> None:
    """Override settings from code, by keyword (``http_connections=8``); ``None`` drops an override.

    Overrides win over the environment. A bad keyword or value raises ValueError naming it, and
    then nothing changes.
    """
    _native.configure({key: _text(key, value) for key, value in values.items()})


@contextlib.contextmanager
def configured(**values: Any) -> Iterator[None]:
    """``configure(**values)`` for the body of a ``with`` block; the overrides before it come back after."""
    saved = _native.setting_overrides()
    configure(**values)
    try:
        yield
    finally:
        _native.configure(dict(saved), replace=True)


def describe() -> list[dict[str, Any]]:
    """Every setting: keyword, variable, value and origin (default, environment or configure)."""
    return list(_native.describe_settings())
