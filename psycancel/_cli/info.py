"""``python -m psycancel info``: the implementation and the libpq in use."""

from __future__ import annotations

import sys

__all__ = ["show_info"]


def show_info() -> int:
    """Print what psycancel would use here; 1 if no libpq can be found."""
    from .. import __version__
    from ..pq import Libpq, __impl__, import_twin
    from ..pq.libfind import ENV_LIBPQ, default_libpq_origin

    print(f"psycancel {__version__} (Python {sys.version.split()[0]})")
    print(f"implementation: {__impl__}")
    for name in ("c", "python"):
        try:
            import_twin(name)
            state = "available"
        except ImportError as ex:
            state = f"unavailable: {ex}"
        print(f"  twin {name}: {state}")
    try:
        origin, _ = default_libpq_origin()
        lib = Libpq.load()
    except OSError as ex:
        print(f"libpq: not found ({ex})")
        return 1
    where = {
        "env": f"from ${ENV_LIBPQ}",
        "bundled": "bundled with this installation",
        "linked": "linked with the compiled twin when it was built",
        "system": "system",
    }[origin]
    major, minor = divmod(lib.version, 10000)
    print(f"libpq: {lib.path} ({where})")
    print(f"libpq version: {major}.{minor} ({lib.version})")
    print(f"PQcancelConn API (encrypted, non-blocking cancel): {lib.has_cancel_conn}")
    print(f"TLS support: {lib.ssl_library or 'none'}")
    return 0
