"""psycopg2: a default deadline for every query of a connection.

::

    import psycopg2
    from psycancel.integrations import psycopg2 as deadlines

    conn = psycopg2.connect(dsn, connection_factory=deadlines.DeadlineConnection)
    conn.psycancel_timeout = 5                # every query of conn: 5 s
    # or, for a connection made elsewhere:
    deadlines.install(conn, 5)

    with conn.cursor() as cur:
        cur.execute("select ...")             # psycancel.QueryTimeout after 5 s
        cur.psycancel_timeout = None          # this cursor: no deadline

Queries run through :class:`DeadlineCursor` (``execute``, ``executemany``,
``callproc``), inside :class:`psycancel.cancel_after`. The limit of one
query: the cursor's ``psycancel_timeout`` if set, else the enclosing
:class:`psycancel.integrations.query_timeout` block's, else the connection's
default. psycopg2's blocking calls wait inside libpq: the deadline's timer
thread sends the cancel, and breaks the connection if it does not end the
query (see ``cancel_after``). A named (server-side) cursor's ``execute``
only declares it: its fetches, which run the query, are not guarded.
For aiopg (psycopg2 in asynchronous mode) see :class:`psycancel.cancel_after`
with ``async with``.
"""

from __future__ import annotations

import weakref
from typing import Any

import psycopg2.extensions

from .._engine.plan import DEFAULT_TIMEOUT
from ..errors import InterfaceError
from ._core import NO_DEADLINE, UNSET, Deadline, Unset

__all__ = ["DeadlineConnection", "DeadlineCursor", "deadline_of", "install"]

_deadlines: weakref.WeakKeyDictionary[object, Deadline] = weakref.WeakKeyDictionary()


def deadline_of(conn: Any) -> Deadline:
    """The default deadline of ``conn`` (``Deadline(None)`` if it has none)."""
    return _deadlines.get(conn, NO_DEADLINE)


class DeadlineCursor(psycopg2.extensions.cursor):
    """A psycopg2 cursor whose queries run under the connection's deadline."""

    psycancel_timeout: float | Unset | None = UNSET
    """This cursor's limit, over the block's and the connection's (None: no deadline)."""

    def execute(self, query: Any, vars: Any = None) -> None:
        conn = self.connection
        guard = _deadlines.get(conn, NO_DEADLINE).guard(conn, self.psycancel_timeout)
        if guard is None:
            return super().execute(query, vars)
        with guard:
            return super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> None:
        conn = self.connection
        guard = _deadlines.get(conn, NO_DEADLINE).guard(conn, self.psycancel_timeout)
        if guard is None:
            return super().executemany(query, vars_list)
        with guard:
            return super().executemany(query, vars_list)

    def callproc(self, procname: str | bytes, parameters: Any = None) -> Any:
        conn = self.connection
        guard = _deadlines.get(conn, NO_DEADLINE).guard(conn, self.psycancel_timeout)
        if guard is None:
            return super().callproc(procname, parameters)
        with guard:
            return super().callproc(procname, parameters)


class DeadlineConnection(psycopg2.extensions.connection):
    """A psycopg2 connection whose cursors are :class:`DeadlineCursor`.

    ``psycopg2.connect(dsn, connection_factory=DeadlineConnection)``; its
    default deadline is the ``psycancel_timeout`` attribute (None until set:
    no deadline, except where an override gives one).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = DeadlineCursor

    @property
    def psycancel_timeout(self) -> float | None:
        """The default deadline of this connection's queries (None: none)."""
        return deadline_of(self).seconds

    @psycancel_timeout.setter
    def psycancel_timeout(self, seconds: float | None) -> None:
        install(self, seconds)


def install(
    conn: Any,
    seconds: float | Deadline | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    strict: bool = False,
    break_connection: bool = True,
) -> None:
    """Give every query of psycopg2 connection ``conn`` a default deadline (None: none).

    Sets ``conn.cursor_factory`` to :class:`DeadlineCursor` unless it already
    is a subclass of it; another cursor class is refused
    (:class:`InterfaceError`: derive it from ours, e.g.
    ``class DictDeadlineCursor(DeadlineCursor, psycopg2.extras.DictCursor)``).
    ``timeout``, ``strict`` and ``break_connection`` are
    :class:`psycancel.cancel_after`'s. Call again to change the default.
    """
    if not isinstance(conn, psycopg2.extensions.connection):
        raise InterfaceError(f"install() takes a psycopg2 connection, got {type(conn).__name__}")
    if isinstance(seconds, Deadline):
        deadline = seconds
    else:
        deadline = Deadline(seconds, timeout, strict, break_connection)
    factory = conn.cursor_factory
    if not (isinstance(factory, type) and issubclass(factory, DeadlineCursor)):
        if factory not in (None, psycopg2.extensions.cursor):
            raise InterfaceError(
                f"the connection's cursor_factory is {factory!r}: derive it from "
                "psycancel.integrations.psycopg2.DeadlineCursor to give it a deadline"
            )
        conn.cursor_factory = DeadlineCursor
    _deadlines[conn] = deadline
