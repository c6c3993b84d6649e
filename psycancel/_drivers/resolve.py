"""Turn what the caller passed into an open psycancel ``PGconn`` of some twin.

Accepted, in this order:

1. a psycancel ``PGconn`` (either twin);
2. any object whose type implements ``__psycancel_pgconn__`` (``protocol``);
3. an instance of a class in :data:`ADAPTERS`, the table of the families the
   program has imported: drivers (psycopg2, aiopg, psycopg 3), whose rows give
   the ``PGconn``, and frameworks (SQLAlchemy, Django), whose rows unwrap
   their object to the one it holds, which is resolved in turn (down to the
   driver's connection). One module per family.

A closed connection, or a framework object that holds no connection now,
resolves to None: there is nothing to cancel. An object that can never be
cancelled (a row's ``refuse``: an SQLAlchemy session or engine of the asyncpg
or pg8000 dialect) raises even when it holds no connection yet. Anything else raises
:class:`InterfaceError`, naming the way to the driver's connection when the
object's family is known. For a driver's connection the result is
*borrowed*: it wraps the driver's pointer with the libpq that created it and
is never finished by psycancel.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InterfaceError
from ..pq import PGconn, _pgconn_classes
from . import aiopg, django, nolibpq, psycopg, psycopg2, sqlalchemy
from .adapter import Adapter, Watch
from .protocol import PROTOCOL, WATCH, describe, from_protocol, open_pgconn

__all__ = ["ADAPTERS", "FAMILIES", "Resolution", "as_pgconn", "resolve"]

ADAPTERS: tuple[Adapter, ...] = (
    psycopg2.ADAPTERS
    + aiopg.ADAPTERS
    + psycopg.ADAPTERS
    + sqlalchemy.ADAPTERS
    + django.ADAPTERS
    + nolibpq.ADAPTERS
)
"""Every class psycancel recognises, family by family."""

FAMILIES: tuple[tuple[str, str, str], ...] = sqlalchemy.FAMILIES + django.FAMILIES
"""(module prefix, family, what to pass instead): the message for a family's other classes."""

MAX_DEPTH = 8
"""How many framework objects may wrap one another (a session, a connection, a pool's...)."""


@dataclass(frozen=True)
class Resolution:
    """What an object stands for: the driver-level object, and how to watch it."""

    driver: object | None
    """A ``PGconn``, a protocol object or a driver's connection; None: nothing to cancel."""
    row: Adapter | None
    """The driver's row (None for a ``PGconn`` or a protocol object)."""
    watch: tuple[Watch, object] | None
    """The innermost watchable object of the chain, with its row's watch.

    Innermost: ``django.db.connection`` is watched as the calling thread's
    wrapper, an ``AsyncSession`` as its sync ``Session``. A ``Canceller``
    given in turn gives its own watch (what it acquires later).
    """
    holder: object | None = None
    """When :attr:`driver` is None: the framework object that held nothing (for messages)."""

    def pgconn(self) -> PGconn | None:
        """The ``PGconn`` of :attr:`driver` now, None if there is none or it is closed."""
        obj = self.driver
        if obj is None:
            return None
        if self.row is not None:
            assert self.row.pgconn is not None
            return self.row.pgconn(obj)
        if isinstance(obj, _pgconn_classes()):
            return open_pgconn(obj)  # type: ignore[arg-type]
        return from_protocol(obj, getattr(type(obj), PROTOCOL)(obj))


def _row(obj: object) -> Adapter | None:
    for adapter in ADAPTERS:
        if adapter.matches(obj):
            return adapter
    return None


def _through(path: list[object]) -> str:
    """`` (held by a.B, held by c.D)``: how the resolution got to an object."""
    if not path:
        return ""
    return " (held by " + ", held by ".join(describe(o) for o in reversed(path)) + ")"


def _unsupported(obj: object, path: list[object]) -> InterfaceError:
    module = type(obj).__module__
    for prefix, family, instead in FAMILIES:
        if module == prefix or module.startswith(prefix + "."):
            return InterfaceError(
                f"cannot cancel a {family} {type(obj).__qualname__} ({describe(obj)})"
                f"{_through(path)}: {instead}"
            )
    return InterfaceError(
        f"cannot cancel a {describe(obj)}{_through(path)}: expected a psycancel.pq.PGconn, "
        "a psycopg2, aiopg or psycopg connection, an SQLAlchemy or Django connection or "
        f"session, or an object implementing {PROTOCOL}()"
    )


def resolve(conn: object) -> Resolution:
    """Follow ``conn`` down to its driver-level object, reading what it holds *now*."""
    if conn is None:
        raise InterfaceError("expected a connection, got None")
    path: list[object] = []
    watch: tuple[Watch, object] | None = None
    obj: object = conn
    for _ in range(MAX_DEPTH):
        if isinstance(obj, _pgconn_classes()) or getattr(type(obj), PROTOCOL, None) is not None:
            follow = getattr(type(obj), WATCH, None)
            function = follow(obj) if follow is not None else None
            if function is not None:
                watch = (function, obj)
            return Resolution(obj, None, watch)
        row = _row(obj)
        if row is None:
            raise _unsupported(obj, path)
        if row.refuse is not None and (why := row.refuse(obj)) is not None:
            raise InterfaceError(f"cannot cancel {why}{_through(path)}")
        if row.pgconn is not None:
            return Resolution(obj, row, watch)
        if row.hint is not None:
            raise InterfaceError(f"cannot cancel {row.hint}{_through(path)}")
        assert row.unwrap is not None
        if row.watch is not None:
            watch = (row.watch, obj)
        path.append(obj)
        inner = row.unwrap(obj)
        if inner is None:
            return Resolution(None, None, watch, obj)
        obj = inner
    raise InterfaceError(
        f"cannot cancel a {describe(conn)}: more than {MAX_DEPTH} objects wrap one another"
    )


def as_pgconn(conn: object) -> PGconn | None:
    """The ``PGconn`` behind ``conn`` now (None: nothing to cancel), or :class:`InterfaceError`."""
    return resolve(conn).pgconn()
