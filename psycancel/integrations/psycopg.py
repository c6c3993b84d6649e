"""psycopg 3 (sync and async) and psycopg_pool: a default deadline for every query.

::

    import psycopg, psycopg_pool
    from psycancel.integrations import psycopg as deadlines

    conn = psycopg.connect(dsn)
    deadlines.install(conn, 5)                   # every query of conn: 5 s
    conn.execute("select ...")                   # psycancel.QueryTimeout after 5 s

    cur = conn.cursor()
    cur.psycancel_timeout = 60                   # this cursor: 60 s (None: no deadline)

    pool = psycopg_pool.ConnectionPool(dsn, configure=deadlines.configure(5))
    apool = psycopg_pool.AsyncConnectionPool(dsn, configure=deadlines.configure_async(5))

:func:`install` sets the connection's ``cursor_factory`` to
:class:`DeadlineCursor` (:class:`AsyncDeadlineCursor` for an
``AsyncConnection``), whose ``execute`` and ``executemany`` run inside
:class:`psycancel.cancel_after` (``async with`` for the async cursor: a loop
timer, a non-blocking cancel). ``Connection.execute`` goes through that
factory too. The limit of one query: the cursor's ``psycancel_timeout`` if
set, else the enclosing :class:`psycancel.integrations.query_timeout` block's,
else the connection's default. Server-side cursors (``conn.cursor(name)``),
``stream()`` and ``copy()`` are not guarded.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import psycopg
from psycopg.abc import Params, Query
from psycopg.rows import Row

from .._engine.plan import DEFAULT_TIMEOUT
from ..errors import InterfaceError
from ._core import NO_DEADLINE, UNSET, Deadline, Unset

__all__ = [
    "AsyncDeadlineCursor",
    "DeadlineCursor",
    "configure",
    "configure_async",
    "deadline_of",
    "install",
]

_deadlines: weakref.WeakKeyDictionary[object, Deadline] = weakref.WeakKeyDictionary()

_C = TypeVar("_C", bound="DeadlineCursor[Any]")
_A = TypeVar("_A", bound="AsyncDeadlineCursor[Any]")


def deadline_of(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> Deadline:
    """The default deadline :func:`install` gave ``conn`` (``Deadline(None)`` if none)."""
    return _deadlines.get(conn, NO_DEADLINE)


class DeadlineCursor(psycopg.Cursor[Row]):
    """A psycopg cursor whose ``execute``/``executemany`` run under the connection's deadline."""

    psycancel_timeout: float | Unset | None = UNSET
    """This cursor's limit, over the block's and the connection's (None: no deadline)."""

    def execute(
        self: _C,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> _C:
        conn = self.connection
        guard = _deadlines.get(conn, NO_DEADLINE).guard(conn, self.psycancel_timeout)
        if guard is None:
            return super().execute(query, params, prepare=prepare, binary=binary)
        with guard:
            return super().execute(query, params, prepare=prepare, binary=binary)

    def executemany(
        self, query: Query, params_seq: Iterable[Params], *, returning: bool = False
    ) -> None:
        conn = self.connection
        guard = _deadlines.get(conn, NO_DEADLINE).guard(conn, self.psycancel_timeout)
        if guard is None:
            return super().executemany(query, params_seq, returning=returning)
        with guard:
            return super().executemany(query, params_seq, returning=returning)


class AsyncDeadlineCursor(psycopg.AsyncCursor[Row]):
    """:class:`DeadlineCursor` for an ``AsyncConnection`` (``async with cancel_after``)."""

    psycancel_timeout: float | Unset | None = UNSET
    """This cursor's limit, over the block's and the connection's (None: no deadline)."""

    async def execute(
        self: _A,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> _A:
        conn = self.connection
        guard = _deadlines.get(conn, NO_DEADLINE).guard(conn, self.psycancel_timeout)
        if guard is None:
            return await super().execute(query, params, prepare=prepare, binary=binary)
        async with guard:
            return await super().execute(query, params, prepare=prepare, binary=binary)

    async def executemany(
        self, query: Query, params_seq: Iterable[Params], *, returning: bool = False
    ) -> None:
        conn = self.connection
        guard = _deadlines.get(conn, NO_DEADLINE).guard(conn, self.psycancel_timeout)
        if guard is None:
            return await super().executemany(query, params_seq, returning=returning)
        async with guard:
            return await super().executemany(query, params_seq, returning=returning)


def _deadline(
    seconds: float | Deadline | None, timeout: float, strict: bool, break_connection: bool
) -> Deadline:
    if isinstance(seconds, Deadline):
        return seconds
    return Deadline(seconds, timeout, strict, break_connection)


def install(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    seconds: float | Deadline | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    strict: bool = False,
    break_connection: bool = True,
) -> None:
    """Give every query of ``conn`` a default deadline of ``seconds`` (None: none by default).

    Sets ``conn.cursor_factory`` to :class:`DeadlineCursor` (or
    :class:`AsyncDeadlineCursor`) unless it already is one of their
    subclasses; another cursor class is refused (:class:`InterfaceError`:
    derive it from ours). ``timeout``, ``strict`` and ``break_connection`` are
    :class:`psycancel.cancel_after`'s. Call again to change the default.
    """
    deadline = _deadline(seconds, timeout, strict, break_connection)
    if isinstance(conn, psycopg.AsyncConnection):
        ours: type[Any] = AsyncDeadlineCursor
        plain: type[Any] = psycopg.AsyncCursor
    elif isinstance(conn, psycopg.Connection):
        ours, plain = DeadlineCursor, psycopg.Cursor
    else:
        raise InterfaceError(
            f"install() takes a psycopg Connection or AsyncConnection, got {type(conn).__name__}"
        )
    factory = conn.cursor_factory
    if not (isinstance(factory, type) and issubclass(factory, ours)):
        if factory is not plain:
            raise InterfaceError(
                f"the connection's cursor_factory is {factory!r}: derive it from "
                f"psycancel.integrations.psycopg.{ours.__name__} to give it a deadline"
            )
        conn.cursor_factory = ours
    _deadlines[conn] = deadline


def configure(
    seconds: float | Deadline | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    strict: bool = False,
    break_connection: bool = True,
) -> Callable[[psycopg.Connection[Any]], None]:
    """A ``configure=`` callback for ``psycopg_pool.ConnectionPool``: :func:`install` on each."""
    deadline = _deadline(seconds, timeout, strict, break_connection)

    def configure_connection(conn: psycopg.Connection[Any]) -> None:
        install(conn, deadline)

    return configure_connection


def configure_async(
    seconds: float | Deadline | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    strict: bool = False,
    break_connection: bool = True,
) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    """The same for ``psycopg_pool.AsyncConnectionPool`` (an async callback)."""
    deadline = _deadline(seconds, timeout, strict, break_connection)

    async def configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
        install(conn, deadline)

    return configure_connection
