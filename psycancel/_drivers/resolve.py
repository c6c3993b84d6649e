"""Turn what the caller passed into an open psycancel ``PGconn`` of some twin.

Accepted, in this order:

1. a psycancel ``PGconn`` (either twin);
2. any object whose type implements ``__psycancel_pgconn__`` (``protocol``);
3. an instance of a class in :data:`ADAPTERS`, the table of the families the
   program has imported (psycopg2, aiopg, psycopg 3): one module per family.

A closed connection resolves to None: there is nothing to cancel. Anything
else raises :class:`InterfaceError`. For a driver's connection the result is
*borrowed*: it wraps the driver's pointer with the libpq that created it and
is never finished by psycancel.
"""

from __future__ import annotations

from ..errors import InterfaceError
from ..pq import PGconn, _pgconn_classes
from . import aiopg, psycopg, psycopg2
from .adapter import Adapter
from .protocol import PROTOCOL, describe, from_protocol, open_pgconn

__all__ = ["ADAPTERS", "as_pgconn"]

ADAPTERS: tuple[Adapter, ...] = psycopg2.ADAPTERS + aiopg.ADAPTERS + psycopg.ADAPTERS
"""Every class psycancel recognises, family by family."""


_adapter_of: dict[type, Adapter] = {}
"""The row that last matched each class (a cache: the row is checked again on use)."""


def as_pgconn(conn: object) -> PGconn | None:
    """The ``PGconn`` behind ``conn``, None if it is closed; :class:`InterfaceError` otherwise."""
    if conn is None:
        raise InterfaceError("expected a connection, got None")
    if isinstance(conn, _pgconn_classes()):
        return open_pgconn(conn)  # type: ignore[arg-type]
    cls = type(conn)
    hook = getattr(cls, PROTOCOL, None)
    if hook is not None:
        return from_protocol(conn, hook(conn))
    adapter = _adapter_of.get(cls)
    if adapter is not None and adapter.matches(conn):  # re-checked: exact semantics
        return adapter.pgconn(conn)
    for adapter in ADAPTERS:
        if adapter.matches(conn):
            _adapter_of[cls] = adapter
            return adapter.pgconn(conn)
    raise InterfaceError(
        f"cannot cancel a {describe(conn)}: expected a psycancel.pq.PGconn, a psycopg2, "
        f"aiopg or psycopg connection, or an object implementing {PROTOCOL}()"
    )
