"""The driver protocol: ``__psycancel_pgconn__``, for types that make themselves cancellable.

``__psycancel_pgconn__(self) -> tuple[int, str] | psycancel.pq.PGconn``

Return ``(address of the open PGconn, absolute path of the libpq file that
created it)``, or a psycancel ``PGconn`` (e.g. ``PGconn.from_ptr(ptr, libpq)``).
Return a NULL/None address, or raise :class:`InterfaceError`, when the
connection is closed. The libpq file must already be loaded in the process
(see ``docs/drivers.md``).
"""

from __future__ import annotations

import os

from ..errors import InterfaceError
from ..pq import PGconn, _pgconn_classes
from .owner import libpq_of_file

__all__ = ["PROTOCOL", "WATCH", "describe", "from_protocol", "open_pgconn"]

PROTOCOL = "__psycancel_pgconn__"
"""The name of the method a driver implements to be cancellable by psycancel."""

WATCH = "_psycancel_watch_"
"""psycancel's own (private) companion of :data:`PROTOCOL`: ``obj._psycancel_watch_()``
gives a ``Watch`` of what ``obj`` acquires later, or None (``psycancel.Canceller``)."""


def describe(obj: object) -> str:
    """``module.QualName`` of ``obj``'s type, for messages."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def open_pgconn(pgconn: PGconn) -> PGconn | None:
    """``pgconn``, or None if it was finished (nothing to cancel)."""
    return None if pgconn.closed else pgconn


def from_protocol(conn: object, answer: object) -> PGconn | None:
    """The ``PGconn`` that ``conn.__psycancel_pgconn__()`` answered with (None: closed)."""
    what = f"{describe(conn)}.{PROTOCOL}()"
    if isinstance(answer, _pgconn_classes()):
        return open_pgconn(answer)  # type: ignore[arg-type]
    if not (isinstance(answer, tuple) and len(answer) == 2):
        raise InterfaceError(
            f"{what} must return (pgconn_ptr, libpq_path) or a psycancel PGconn, "
            f"got {type(answer).__name__}"
        )
    ptr, path = answer
    if ptr is None or ptr == 0:
        return None  # the connection is closed
    if isinstance(ptr, bool) or not isinstance(ptr, int):
        raise InterfaceError(f"{what}: the PGconn pointer must be an int, got {type(ptr).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise InterfaceError(f"{what}: the libpq path must be a str, got {type(path).__name__}")
    return PGconn.from_ptr(ptr, libpq_of_file(path, what))
