"""The command line: ``python -m psycancel info``.

(The demo, which needs a query client, is ``python -m testing.demo`` in a
source checkout: psycancel itself only cancels connections made by drivers.)

This package is the top layer: it may import every other one.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m psycancel``."""
    parser = argparse.ArgumentParser(prog="python -m psycancel")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser(
        "info", help="show the implementation, psycancel's libpq and each driver's libpq"
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        from .info import show_info

        code = show_info(as_json=args.json)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``... info | head -1``): stop quietly. Python
        # flushes stdout again at exit; point it at /dev/null so that this
        # flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code
