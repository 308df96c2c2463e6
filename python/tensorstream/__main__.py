"""``python -m tensorstream``: the ``tensorstream`` command."""

from .cli import main

raise SystemExit(main())
