"""The ``tensorstream`` command: look inside, check, copy, convert and time ``.tensors`` files.

Exit codes (the same for every subcommand):

- 0: done, and every check passed;
- 1: a check failed: a hash or decryption MAC does not match, the file breaks the format, or a
  copy does not match its source;
- 2: usage: bad arguments or settings, or a key is needed and was not given;
- 3: the work could not be done: a file or object is missing, a network or permission error, a
  missing optional package, or another runtime error;
- 130: interrupted (Ctrl-C).

Errors are printed as one line on stderr (``--debug`` prints the traceback too).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from . import _common, bench, convert, cp, info, verify

__all__ = ["main"]

_COMMANDS = (info, verify, cp, bench, convert)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tensorstream",
        description="Look inside, check, copy, convert and time .tensors files (local, http(s)://, s3://).",
        epilog="exit codes: 0 ok, 1 a check failed, 2 usage error, 3 runtime or I/O error, 130 interrupted",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_common.version()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMANDS:
        module.register(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"tensorstream {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every error becomes one line and an exit code
        if args.debug:
            traceback.print_exc()
        print(f"tensorstream {args.command}: error: {_common.one_line(exc)}", file=sys.stderr)
        return _common.exit_code(exc)
