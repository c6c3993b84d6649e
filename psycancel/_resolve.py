"""Turn what the caller passed into a psycancel ``PGconn`` of some twin.

Accepted, in this order:

1. a psycancel ``PGconn`` (either twin);
2. any object whose type implements the driver protocol
   ``__psycancel_pgconn__(self)`` (see below and ``docs/drivers.md``);
3. a connection of a driver the program has imported: psycopg2 (and so
   aiopg), psycopg 3 (see ``psycancel._drivers``).

Everything else, and closed connections, raise :class:`InterfaceError`.

The driver protocol
-------------------
``__psycancel_pgconn__(self) -> tuple[int, str] | psycancel.pq.PGconn``

Return ``(address of the open PGconn, absolute path of the libpq file that
created it)``, or a psycancel ``PGconn`` (e.g. ``PGconn.from_ptr(ptr, libpq)``).
Return a NULL/None address, or raise :class:`InterfaceError`, when the
connection is closed. The libpq file must already be loaded in the process.
"""

from __future__ import annotations

import os
import sys

from ._drivers import driver_pgconn
from ._owner import libpq_of_file
from .errors import InterfaceError
from .pq import PGconn as ActivePGconn
from .pq import _ctypes
from .pq.abc import PGconn

__all__ = ["PROTOCOL", "as_pgconn"]

PROTOCOL = "__psycancel_pgconn__"
"""The name of the method a driver implements to be cancellable by psycancel."""


def _pgconn_types() -> tuple[type, ...]:
    types: list[type] = [_ctypes.PGconn]
    compiled = sys.modules.get("psycancel_c._pq")
    if compiled is not None:
        types.append(compiled.PGconn)
    return tuple(types)


def _open(pgconn: PGconn) -> PGconn:
    if pgconn.closed:
        raise InterfaceError("the connection is closed")
    return pgconn


def _describe(conn: object) -> str:
    return f"{type(conn).__module__}.{type(conn).__qualname__}"


def _from_protocol(conn: object, answer: object) -> PGconn:
    what = f"{_describe(conn)}.{PROTOCOL}()"
    if isinstance(answer, _pgconn_types()):
        return _open(answer)  # type: ignore[arg-type]
    if not (isinstance(answer, tuple) and len(answer) == 2):
        raise InterfaceError(
            f"{what} must return (pgconn_ptr, libpq_path) or a psycancel PGconn, "
            f"got {type(answer).__name__}"
        )
    ptr, path = answer
    if ptr is None or ptr == 0:
        raise InterfaceError(f"the connection is closed ({what} returned no PGconn)")
    if isinstance(ptr, bool) or not isinstance(ptr, int):
        raise InterfaceError(f"{what}: the PGconn pointer must be an int, got {type(ptr).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise InterfaceError(f"{what}: the libpq path must be a str, got {type(path).__name__}")
    return ActivePGconn.from_ptr(ptr, libpq_of_file(path, what))


def as_pgconn(conn: object) -> PGconn:
    """The open ``PGconn`` behind ``conn``; :class:`InterfaceError` otherwise.

    For a driver's connection the result is *borrowed*: it wraps the driver's
    pointer with the libpq that created it and is never finished by psycancel.
    """
    if conn is None:
        raise InterfaceError("expected a connection, got None")
    if isinstance(conn, _pgconn_types()):
        return _open(conn)  # type: ignore[arg-type]
    hook = getattr(type(conn), PROTOCOL, None)
    if hook is not None:
        return _from_protocol(conn, hook(conn))
    found = driver_pgconn(conn)
    if found is not None:
        return found
    raise InterfaceError(
        f"cannot cancel a {_describe(conn)}: expected a psycancel.pq.PGconn, a psycopg2, "
        f"aiopg or psycopg connection, or an object implementing {PROTOCOL}()"
    )
