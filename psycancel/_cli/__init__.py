"""The command line: ``python -m psycancel info`` and ``python -m psycancel demo``.

This package is the top layer: it may import every other one.
"""

from __future__ import annotations

import argparse

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m psycancel``."""
    parser = argparse.ArgumentParser(prog="python -m psycancel")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the implementation and the libpq in use")
    demo = sub.add_parser("demo", help="cancel a long query from asyncio and show a timeline")
    demo.add_argument(
        "--dsn",
        action="append",
        required=True,
        help="the server to run the demo against (repeat it for several); a source "
        "checkout's 'bash tools/quickstart.sh demo' starts a throwaway server itself",
    )
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import show_info

        return show_info()
    from .demo import run_demo

    return run_demo(args.dsn)
