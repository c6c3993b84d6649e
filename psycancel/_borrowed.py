"""``Borrowed``: a ``PGconn*`` address and the libpq it came from, as a cancellable object.

For a driver (or any C code) that holds a ``PGconn*`` and knows its libpq,
without defining ``__psycancel_pgconn__`` on a class of its own::

    psycancel.cancel(psycancel.Borrowed(ptr, "/path/to/libpq.so.5"))
    prepared = psycancel.prepare(psycancel.Borrowed(ptr, ctypes_cdll))

The libpq is resolved once, when the object is made (it must be loaded in the
process already: the connection's own libpq, never another one); the address
is wrapped anew (``PGconn.from_ptr``, borrowed: never finished by psycancel)
each time a cancel asks for it. ``docs/drivers.md`` tells the rules.
"""

from __future__ import annotations

import ctypes
import os
from typing import TypeAlias, cast

from ._drivers.owner import libpq_of_cdll, libpq_of_file
from .errors import InterfaceError
from .pq import Libpq, PGconn

__all__ = ["Borrowed", "LibpqSource"]

LibpqSource: TypeAlias = "str | os.PathLike[str] | ctypes.CDLL | Libpq"
"""What names a libpq: the path of its file, a ``ctypes`` library object, or a
psycancel ``Libpq`` of the active twin."""


def _libpq_of(libpq: object, what: str) -> Libpq:
    if isinstance(libpq, (str, os.PathLike)):
        return libpq_of_file(libpq, what)
    if isinstance(libpq, ctypes.CDLL):
        return libpq_of_cdll(libpq, what)
    if isinstance(libpq, cast("type[object]", Libpq)):  # (the active twin's class at run time)
        return cast(Libpq, libpq)
    path = getattr(libpq, "path", None)
    if isinstance(path, str) and hasattr(libpq, "has_cancel_conn"):  # the other twin's
        return libpq_of_file(path, what)
    raise InterfaceError(
        f"{what}: libpq must be a path, a ctypes.CDLL or a psycancel.pq.Libpq, "
        f"got {type(libpq).__name__}"
    )


class Borrowed:
    """A connection psycancel knows only by its ``PGconn*`` address and its libpq.

    ``ptr``: the address (an int; 0 or None: the connection is closed, and a
    cancel then sends nothing). ``libpq``: the libpq that made the
    connection, as an absolute path, a ``ctypes.CDLL`` or a
    ``psycancel.pq.Libpq`` (either twin's: it names its file).
    :class:`~psycancel.InterfaceError` if it is not a libpq loaded in the
    process. The caller keeps the connection open while
    a cancel reads it (the preparation of a cancel, in the connection's thread).
    """

    __slots__ = ("_libpq", "_ptr")

    def __init__(self, ptr: int | None, libpq: LibpqSource) -> None:
        if ptr is not None and (isinstance(ptr, bool) or not isinstance(ptr, int)):
            raise InterfaceError(
                f"Borrowed: the PGconn pointer must be an int, got {type(ptr).__name__}"
            )
        self._ptr = ptr or 0
        self._libpq = _libpq_of(libpq, "Borrowed")

    @property
    def ptr(self) -> int:
        """The ``PGconn*`` address (0: closed)."""
        return self._ptr

    @property
    def libpq(self) -> Libpq:
        """The connection's libpq."""
        return self._libpq

    def __psycancel_pgconn__(self) -> PGconn | tuple[int, str]:
        """The driver protocol: the borrowed ``PGconn`` (a NULL address once closed)."""
        if not self._ptr:
            return (0, self._libpq.path)
        return PGconn.from_ptr(self._ptr, self._libpq)

    def __repr__(self) -> str:
        return f"<psycancel.Borrowed 0x{self._ptr:x} of {self._libpq.path}>"
