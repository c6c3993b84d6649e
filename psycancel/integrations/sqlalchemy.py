"""SQLAlchemy (sync and asyncio engines): a default deadline per engine, through its events.

::

    from sqlalchemy import create_engine, text
    from psycancel.integrations import sqlalchemy as deadlines

    engine = create_engine("postgresql+psycopg://...")
    deadlines.install(engine, 5)                       # every statement: 5 s

    with engine.connect() as conn:
        conn.execute(text("select ..."))                # psycancel.QueryTimeout after 5 s
        long = conn.execution_options(psycancel_timeout=600)
        long.execute(text("select ..."))                # 600 s
        conn.execution_options(psycancel_timeout=None).execute(...)  # no deadline

An ``AsyncEngine`` is installed the same way (its ``sync_engine`` gets the
events); ``Session``/``AsyncSession`` queries go through the engine's events
like any other. ``before_cursor_execute`` enters a
:class:`psycancel.cancel_after` block for the DBAPI connection,
``after_cursor_execute`` leaves it, ``handle_error`` leaves it with the
error: a query the deadline cancelled raises :class:`psycancel.QueryTimeout`
(returned from ``handle_error``, so SQLAlchemy raises it in place of its
``OperationalError``, ``from`` the driver's "query cancelled" error: SQLAlchemy
sets the cause of an exception a handler returns to the DBAPI exception). When
the deadline had to break the connection (``QueryTimeout.connection_broken``),
``handle_error`` marks the error a disconnect: the pool invalidates the
connection and hands out a fresh one next.

The limit of a statement: its ``psycancel_timeout`` execution option if
set (SQLAlchemy merges the levels: one ``execute``'s ``execution_options``
win over the connection's, which win over the statement's; the engine's are
the connection's defaults),
else the enclosing :class:`psycancel.integrations.query_timeout` block's,
else the engine's default. Under an asyncio engine the block is a
synchronous one (the events are synchronous): its timer runs in psycancel's
timer thread, and leaving a block whose cancel was sent waits for the cancel
(bounded by ``timeout``) on the event loop's thread.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from .._after import cancel_after
from .._engine.plan import DEFAULT_TIMEOUT
from ..errors import InterfaceError, QueryTimeout
from ._core import NO_DEADLINE, UNSET, Deadline, check_limit

__all__ = ["OPTION", "deadline_of", "install", "uninstall"]

OPTION = "psycancel_timeout"
"""The execution option that overrides the default (seconds, or None: no deadline)."""

_GUARD = "_psycancel_guard"
"""The attribute of the execution context holding its statement's ``cancel_after``."""

_deadlines: weakref.WeakKeyDictionary[Engine, Deadline] = weakref.WeakKeyDictionary()


def _engine(engine: Engine | AsyncEngine) -> Engine:
    if isinstance(engine, AsyncEngine):
        return engine.sync_engine
    if isinstance(engine, Engine):
        return engine
    raise InterfaceError(f"expected an Engine or AsyncEngine, got {type(engine).__name__}")


def deadline_of(engine: Engine | AsyncEngine) -> Deadline:
    """The default deadline :func:`install` gave ``engine`` (``Deadline(None)`` if none)."""
    return _deadlines.get(_engine(engine), NO_DEADLINE)


def install(
    engine: Engine | AsyncEngine,
    seconds: float | Deadline | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    strict: bool = False,
    break_connection: bool = True,
) -> None:
    """Give every statement of ``engine`` a default deadline of ``seconds`` (None: none).

    With None, only statements given a ``psycancel_timeout`` execution option
    (or run in a ``query_timeout`` block) get one. ``timeout``, ``strict`` and
    ``break_connection`` are :class:`psycancel.cancel_after`'s. Call again to
    change the default; :func:`uninstall` removes the events.
    """
    target = _engine(engine)
    if isinstance(seconds, Deadline):
        deadline = seconds
    else:
        deadline = Deadline(seconds, timeout, strict, break_connection)
    _deadlines[target] = deadline
    if not event.contains(target, "before_cursor_execute", _before):
        event.listen(target, "before_cursor_execute", _before)
        event.listen(target, "after_cursor_execute", _after)
        event.listen(target, "handle_error", _error)


def uninstall(engine: Engine | AsyncEngine) -> None:
    """Remove the deadline events from ``engine`` (statements running now keep theirs)."""
    target = _engine(engine)
    _deadlines.pop(target, None)
    if event.contains(target, "before_cursor_execute", _before):
        event.remove(target, "before_cursor_execute", _before)
        event.remove(target, "after_cursor_execute", _after)
        event.remove(target, "handle_error", _error)


def _before(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    if context is None:
        return  # nowhere to keep the block until the statement ends
    options = context.execution_options
    if options.get("skip_user_error_events"):
        return  # handle_error would not run: a failed statement would leave its block armed
    statement_limit = options.get(OPTION, UNSET)
    if statement_limit is not UNSET:
        statement_limit = check_limit(statement_limit, OPTION)
    deadline = _deadlines.get(conn.engine, NO_DEADLINE)
    guard = deadline.guard(conn.connection.driver_connection, statement_limit)
    if guard is not None:
        guard.__enter__()
        setattr(context, _GUARD, guard)


def _take(context: ExecutionContext | None) -> cancel_after | None:
    guard: cancel_after | None = getattr(context, _GUARD, None)
    if guard is not None:
        setattr(context, _GUARD, None)
    return guard


def _after(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    guard = _take(context)
    if guard is not None:
        guard.__exit__(None, None, None)


def _error(ctx: ExceptionContext) -> BaseException | None:
    guard = _take(ctx.execution_context)
    if guard is None:
        return None
    exc: BaseException = ctx.sqlalchemy_exception or ctx.original_exception
    try:
        guard.__exit__(type(exc), exc, exc.__traceback__)
    except QueryTimeout as timeout:
        if timeout.connection_broken:
            ctx.is_disconnect = True  # the pool invalidates the connection
        return timeout
    return None
