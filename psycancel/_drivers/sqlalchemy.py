"""SQLAlchemy 2.x: connections, pool connections, sessions, and their asyncio twins.

Each object is unwrapped to the one it holds, down to the DBAPI driver's
connection (``PoolProxiedConnection.driver_connection``: psycopg2's or
psycopg's connection, also under the asyncio dialect), which the driver rows
then resolve. Nothing here reconnects, begins a transaction or checks a
connection out: an object that holds no connection now has nothing to cancel.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import InterfaceError
from .adapter import Acquired, Adapter, Released, Unwatch

__all__ = ["ADAPTERS", "FAMILIES"]

_FAMILY = "SQLAlchemy"


def _connection(conn: Any) -> object | None:
    """``Connection``: its pool connection; None once closed or invalidated (no reconnect)."""
    if conn.closed or conn.invalidated:
        return None
    held: object | None = conn.connection
    return held


def _pool_connection(fairy: Any) -> object | None:
    """``PoolProxiedConnection`` (``_ConnectionFairy``): the driver's own connection."""
    if not fairy.is_valid:
        return None
    held: object | None = fairy.driver_connection
    return held


def _session_connections(session: Any) -> list[object]:
    """The ``Connection`` objects the session's transaction holds now (none: no transaction)."""
    root = session.get_transaction()
    if root is None:
        return []
    held = getattr(root, "connections", None)  # SQLAlchemy >= 2.1.7
    if held is None:
        held = {entry[0] for entry in root._connections.values()}
    unique: dict[int, object] = {id(conn): conn for conn in held}
    return list(unique.values())


def _session(session: Any) -> object | None:
    """``orm.Session``: the connection it holds now; None when it holds none."""
    held = _session_connections(session)
    if not held:
        return None
    if len(held) > 1:
        raise InterfaceError(
            f"this SQLAlchemy Session holds {len(held)} connections (several binds): pass the "
            "one to cancel, session.connection(bind_arguments=...)"
        )
    return held[0]


def _watch_session(session: Any, acquired: Acquired, released: Released) -> Unwatch:
    """Session events, in the session's thread: a connection begun, the transaction ended."""
    event = sys.modules["sqlalchemy.event"]

    def after_begin(session: Any, transaction: Any, connection: Any) -> None:
        acquired(connection)

    def after_transaction_end(session: Any, transaction: Any) -> None:
        if transaction.parent is None:  # the root: its connections go back
            released()

    listeners = (("after_begin", after_begin), ("after_transaction_end", after_transaction_end))
    for name, fn in listeners:
        event.listen(session, name, fn)

    def unwatch() -> None:
        for name, fn in listeners:
            if event.contains(session, name, fn):
                event.remove(session, name, fn)

    return unwatch


def _async_connection(conn: Any) -> object | None:
    """``AsyncConnection``: its sync ``Connection``; None before it was started."""
    held: object | None = conn.sync_connection
    return held


def _async_session(session: Any) -> object | None:
    """``AsyncSession``: the sync ``Session`` it proxies."""
    held: object | None = session.sync_session
    return held


def _scoped_session(scoped: Any) -> object | None:
    """``scoped_session``: the calling thread's (or scope's) session, if it has one."""
    registry = scoped.registry
    return registry() if registry.has() else None


def _watch_via(unwrap: Any) -> Any:
    """The session watch applied to what ``unwrap`` gives (an AsyncSession's sync session)."""

    def watch(obj: Any, acquired: Acquired, released: Released) -> Unwatch:
        return _watch_session(unwrap(obj), acquired, released)

    return watch


_ADAPTED = (
    "pass its .driver_connection (the driver's connection), or the Connection or "
    "AsyncConnection that holds it"
)

ADAPTERS = (
    Adapter("sqlalchemy.engine.base", "Connection", unwrap=_connection),
    Adapter("sqlalchemy.pool.base", "PoolProxiedConnection", unwrap=_pool_connection),
    Adapter("sqlalchemy.orm.session", "Session", unwrap=_session, watch=_watch_session),
    Adapter("sqlalchemy.orm.scoping", "scoped_session", unwrap=_scoped_session),
    Adapter("sqlalchemy.ext.asyncio.engine", "AsyncConnection", unwrap=_async_connection),
    Adapter(
        "sqlalchemy.ext.asyncio.session",
        "AsyncSession",
        unwrap=_async_session,
        watch=_watch_via(_async_session),
    ),
    Adapter(
        "sqlalchemy.dialects.postgresql.psycopg",
        "AsyncAdapt_psycopg_connection",
        hint=f"an SQLAlchemy AsyncAdapt_psycopg_connection: {_ADAPTED}",
    ),
    Adapter(
        "sqlalchemy.dialects.postgresql.asyncpg",
        "AsyncAdapt_asyncpg_connection",
        hint="an SQLAlchemy AsyncAdapt_asyncpg_connection: asyncpg implements the PostgreSQL "
        "protocol itself and has no libpq, so psycancel cannot cancel through it (use the "
        "postgresql+psycopg dialect)",
    ),
    Adapter(
        "sqlalchemy.engine.base",
        "Engine",
        hint="an SQLAlchemy Engine: an engine runs no query itself; pass the Connection "
        "(or Session) that runs it",
    ),
    Adapter(
        "sqlalchemy.ext.asyncio.engine",
        "AsyncEngine",
        hint="an SQLAlchemy AsyncEngine: an engine runs no query itself; pass the "
        "AsyncConnection (or AsyncSession) that runs it",
    ),
)
"""SQLAlchemy's objects, by the module that defines each class (2.0 and 2.1)."""

FAMILIES = (
    (
        "sqlalchemy",
        _FAMILY,
        "pass a Connection, Session, AsyncConnection, AsyncSession, scoped_session or pool "
        "connection (Connection.connection), or the driver's connection (.driver_connection)",
    ),
)
"""(module prefix, family name, what to pass instead) for SQLAlchemy's other classes."""
