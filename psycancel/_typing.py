"""The static type of what the cancel functions accept: :data:`Cancellable`.

At run time psycancel recognises a connection by its class (``psycancel._drivers``)
and never imports a driver. For a type checker, :data:`Cancellable` describes
the same objects by their *shape*, with Protocols that need no driver import:

* a psycancel ``PGconn`` (:class:`psycancel.pq.abc.PGconn`);
* any object with ``__psycancel_pgconn__`` (:class:`SupportsPsycancelPgconn`,
  ``docs/drivers.md``);
* a psycopg2 connection (its ``pgconn_ptr``; psycopg2's types come from the
  ``types-psycopg2`` stubs), a psycopg 3 connection, sync or async (its
  ``pgconn``), an aiopg connection (its ``raw``);
* the framework objects of ``docs/drivers.md``: an SQLAlchemy ``Connection``
  or a Django connection (``connection``), a pooled SQLAlchemy connection
  (``dbapi_connection``), an ``orm.Session`` (``connection()``),
  ``AsyncConnection`` (``sync_connection``) and ``AsyncSession``
  (``sync_session``).

Why Protocols and not the drivers' own classes under ``TYPE_CHECKING``: for
a user who does not have one of those drivers installed, a type checker
would read the missing class as ``Any``, and ``Any`` in the union would let
``None`` or a DSN string through again. With these Protocols, ``mypy
--strict`` rejects ``None``, a ``str`` or an unrelated object everywhere.
A shape is what a type checker can know; whether the object is really one
psycancel recognises is decided at run time (``InterfaceError`` otherwise).
"""

from __future__ import annotations

import os
from typing import Protocol, TypeAlias

from .pq.abc import PGconn

__all__ = ["Cancellable", "SupportsPsycancelPgconn"]


class SupportsPsycancelPgconn(Protocol):
    """An object that makes itself cancellable: the ``__psycancel_pgconn__`` protocol."""

    def __psycancel_pgconn__(self) -> tuple[int, str | os.PathLike[str]] | PGconn:
        """``(PGconn address, absolute path of its libpq)``, or a psycancel ``PGconn``."""
        ...


class _Psycopg2Connection(Protocol):
    """A psycopg2 connection (also psycopg's ``pq.PGconn`` objects): ``pgconn_ptr``."""

    @property
    def pgconn_ptr(self) -> int | None:
        """The address of the ``PGconn``."""
        ...


class _PsycopgConnection(Protocol):
    """A psycopg 3 ``Connection`` or ``AsyncConnection``: ``pgconn``."""

    @property
    def pgconn(self) -> object:
        """psycopg's ``PGconn`` wrapper."""
        ...


class _AiopgConnection(Protocol):
    """An aiopg ``Connection``: the psycopg2 connection it wraps is ``raw``."""

    @property
    def raw(self) -> object:
        """The wrapped psycopg2 connection."""
        ...


class _HasConnection(Protocol):
    """An SQLAlchemy ``Connection`` or a Django ``DatabaseWrapper``: ``connection``."""

    @property
    def connection(self) -> object:
        """The pooled connection (SQLAlchemy) or the driver connection (Django)."""
        ...


class _HasDbapiConnection(Protocol):
    """An SQLAlchemy pooled connection (``PoolProxiedConnection``)."""

    @property
    def dbapi_connection(self) -> object:
        """The DBAPI connection it proxies."""
        ...


class _OrmSession(Protocol):
    """An SQLAlchemy ``orm.Session``: the connection it holds is ``connection()``."""

    def connection(self) -> object:
        """The session's ``Connection``."""
        ...


class _HasSyncConnection(Protocol):
    """An SQLAlchemy ``ext.asyncio.AsyncConnection``."""

    @property
    def sync_connection(self) -> object:
        """The ``Connection`` it wraps."""
        ...


class _HasSyncSession(Protocol):
    """An SQLAlchemy ``ext.asyncio.AsyncSession``."""

    @property
    def sync_session(self) -> object:
        """The ``Session`` it wraps."""
        ...


Cancellable: TypeAlias = (
    PGconn
    | SupportsPsycancelPgconn
    | _Psycopg2Connection
    | _PsycopgConnection
    | _AiopgConnection
    | _HasConnection
    | _HasDbapiConnection
    | _OrmSession
    | _HasSyncConnection
    | _HasSyncSession
)
"""What :func:`psycancel.cancel`, :func:`psycancel.cancel_async` and
:func:`psycancel.cancel_after` accept (see the module documentation)."""
