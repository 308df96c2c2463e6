"""What every subcommand shares: exit codes, options, keys, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from .. import _progress, utils
from ..encryption import KEY_BYTES, DecryptionParams, EncryptionParams
from ..errors import CryptographyError, FormatError, HashMismatchError, KeyRequiredError

OK, CHECK_FAILED, USAGE, RUNTIME = 0, 1, 2, 3


class UsageError(ValueError):
    """Arguments that do not go together (exit code 2)."""


class CheckFailed(Exception):
    """A check found something wrong (exit code 1); the report was printed already."""


def version() -> str:
    from .. import __version__

    return __version__


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, CheckFailed | HashMismatchError | FormatError):
        return CHECK_FAILED
    if isinstance(exc, KeyRequiredError | UsageError):
        return USAGE
    if isinstance(exc, CryptographyError):
        return CHECK_FAILED  # a wrong key or altered data
    if isinstance(exc, ValueError | TypeError):
        return USAGE
    return RUNTIME


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, CheckFailed) else f"{text} ({type(exc).__name__})"


def add_command(sub: Any, name: str, doc: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A subcommand with ``--debug`` and ``--verbose``; its help is ``doc``'s first paragraph."""
    first, _, rest = doc.strip().partition("\n\n")
    p = sub.add_parser(name, help=first.split("\n")[0], description=first, epilog=rest or None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does (INFO)")
    p.set_defaults(run=run)
    return p


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (none is drawn anyway when stderr is not a terminal, "
                        "or with TENSORSTREAM_PROGRESS=0)")


def progress(args: argparse.Namespace) -> bool:
    """On a terminal a bar is drawn unless ``--no-progress`` or ``TENSORSTREAM_PROGRESS=0``."""
    return _progress.wanted(False if args.no_progress else None, default=True)


def add_key(p: argparse.ArgumentParser, prefix: str = "", what: str = "an encrypted file") -> None:
    dash = f"--{prefix}-" if prefix else "--"
    p.add_argument(f"{dash}key-file", metavar="PATH",
                   help=f"key for {what}: a file of {KEY_BYTES} raw bytes or {2 * KEY_BYTES} hex digits")
    p.add_argument(f"{dash}passphrase-env", metavar="VAR",
                   help=f"name of an environment variable holding the passphrase for {what}")


def read_key(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read(4 * KEY_BYTES + 2)
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise UsageError(f"key file {path} must hold {KEY_BYTES} raw bytes or {2 * KEY_BYTES} hex digits")


def passphrase(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise UsageError(f"environment variable {var} (--passphrase-env) is not set or empty")
    return value


def decryption(args: argparse.Namespace, prefix: str = "") -> DecryptionParams | None:
    key_file, env = _key_args(args, prefix)
    if key_file:
        return DecryptionParams.from_key(read_key(key_file))
    return DecryptionParams.from_string(passphrase(env)) if env else None


def encryption(args: argparse.Namespace, prefix: str) -> EncryptionParams | None:
    key_file, env = _key_args(args, prefix)
    if key_file:
        return EncryptionParams(read_key(key_file))
    return EncryptionParams.from_string(passphrase(env)) if env else None


def _key_args(args: argparse.Namespace, prefix: str) -> tuple[str | None, str | None]:
    under = f"{prefix}_" if prefix else ""
    key_file, env = getattr(args, f"{under}key_file"), getattr(args, f"{under}passphrase_env")
    if key_file and env:
        dash = f"--{prefix}-" if prefix else "--"
        raise UsageError(f"give {dash}key-file or {dash}passphrase-env, not both")
    return key_file, env


def emit(args: argparse.Namespace, data: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
    """Prints ``data`` as JSON with ``--json``, else as ``text(data)``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(text(data))


def size(nbytes: float) -> str:
    return utils.convert_bytes(nbytes)


def public_name(name: Any) -> Any:
    """A tensor's name for JSON: a string, or a list for a structured name."""
    return list(name) if isinstance(name, tuple) else name
