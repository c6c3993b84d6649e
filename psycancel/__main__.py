"""Command line: ``python -m psycancel info`` and ``python -m psycancel demo``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _info() -> int:
    from . import __version__
    from .pq import Libpq, __impl__, import_twin

    print(f"psycancel {__version__} (Python {sys.version.split()[0]})")
    print(f"implementation: {__impl__}")
    for name in ("c", "python"):
        try:
            import_twin(name)
            state = "available"
        except ImportError as ex:
            state = f"unavailable: {ex}"
        print(f"  twin {name}: {state}")
    from .pq.libfind import ENV_LIBPQ, default_libpq_origin

    try:
        origin, _ = default_libpq_origin()
        lib = Libpq.load()
    except OSError as ex:
        print(f"libpq: not found ({ex})")
        return 1
    where = {"env": f"from ${ENV_LIBPQ}", "bundled": "bundled", "system": "system"}[origin]
    major, minor = divmod(lib.version, 10000)
    print(f"libpq: {lib.path} ({where})")
    print(f"libpq version: {major}.{minor} ({lib.version})")
    print(f"PQcancelConn API (encrypted, non-blocking cancel): {lib.has_cancel_conn}")
    print(f"TLS support: {lib.ssl_library or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m psycancel``."""
    parser = argparse.ArgumentParser(prog="python -m psycancel")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the implementation and the libpq in use")
    demo = sub.add_parser("demo", help="cancel a long query from asyncio and show a timeline")
    demo.add_argument(
        "--dsn", help="use this server (default: build/start a throwaway one, like the tests)"
    )
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    from ._demo import run_demo

    return run_demo(args.dsn)


if __name__ == "__main__":
    sys.exit(main())
