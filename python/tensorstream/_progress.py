"""Progress bars for long loads, saves, conversions and copies (drawn by tqdm).

A bar is shown only when asked for and when stderr is a terminal: piped or redirected output
stays clean. ``TENSORSTREAM_PROGRESS=0`` turns bars off everywhere (the command line's too);
``TENSORSTREAM_PROGRESS=1`` turns them on for library calls that leave ``progress=None``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import _settings

_POLL_SECONDS = 0.1
_PART_BYTES = 256 << 20  # with a bar, saves are written in parts of about this size


def _setting() -> bool | None:
    value = _settings.get("progress")  # one of auto, 0/1, on/off, true/false, yes/no (checked there)
    if value == "auto":
        return None
    return value in ("1", "true", "yes", "on")


def wanted(progress: bool | None, *, default: bool = False) -> bool:
    """Whether to draw a bar: ``progress`` (None: the setting, else ``default``), on a terminal only.

    ``TENSORSTREAM_PROGRESS=0`` wins over everything.
    """
    setting = _setting()
    if setting is False:
        return False
    chosen = progress if progress is not None else (setting if setting is not None else default)
    return bool(chosen) and _stderr_is_tty()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _terminal_columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "progress bars need the 'tqdm' package: pip install tqdm (or tensorstream[progress]), "
            "or pass progress=False / set TENSORSTREAM_PROGRESS=0"
        ) from None
    return tqdm


class Bar:
    """A bytes bar (size, GB/s, ETA); a no-op when ``enabled`` is false."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self._bar = None
        if enabled:
            sized = _terminal_columns() > 0  # a terminal that reports no size gets 80x24
            self._bar = _tqdm()(
                total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1000,
                dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24, leave=False,
                file=sys.stderr,
                mininterval=_POLL_SECONDS,
            )

    def update(self, nbytes: int) -> None:
        if self._bar is not None and nbytes:
            self._bar.update(nbytes)

    def set_to(self, done: int) -> None:
        """Moves the bar to ``done`` bytes (for counters polled from the core)."""
        if self._bar is not None and done > self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bytes_read(loader: Any) -> Callable[[], int]:
    """Reads a loader's live byte counter (a core loader, or a ``_native.CoreWrapper``)."""
    return lambda: loader.progress


class Poller:
    """While a blocking core call runs, moves ``bar`` to ``read()`` every tenth of a second."""

    def __init__(self, bar: Bar, read: Callable[[], int]) -> None:
        self._bar, self._read = bar, read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Poller:
        if self._bar._bar is not None:
            self._thread = threading.Thread(target=self._run, name="tensorstream-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(_POLL_SECONDS):
            self._bar.set_to(self._read())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def parts(items: Sequence[Any], size_of: Callable[[Any], int], bar: Bar) -> Iterator[Sequence[Any]]:
    """``items`` whole, or, when ``bar`` is drawn, in runs of about 256 MB; the bar advances after
    each run the caller has handled."""
    if bar._bar is None:
        yield items
        return
    start = size = 0
    for i, item in enumerate(items):
        size += size_of(item)
        if size >= _PART_BYTES or i == len(items) - 1:
            yield items[start : i + 1]
            bar.update(size)
            start, size = i + 1, 0
