"""SQLAlchemy 2.x: connections, pool connections, sessions, and their asyncio twins.

Each object is unwrapped to the one it holds, down to the DBAPI driver's
connection (``PoolProxiedConnection.driver_connection``: psycopg2's or
psycopg's connection, also under the asyncio dialect), which the driver rows
then resolve. Nothing here reconnects, begins a transaction or checks a
connection out: an object that holds no connection now has nothing to cancel.

A session, connection or engine of a dialect whose driver has no libpq
(asyncpg, pg8000) is refused at once (``refuse``), even before it holds a
connection: it could never be cancelled, and saying so after its query ran
would lose the query's result.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from typing import Any

from ..errors import InterfaceError
from .adapter import Acquired, Adapter, Released, Unwatch
from .nolibpq import WHY, why_not

__all__ = ["ADAPTERS", "FAMILIES"]

_FAMILY = "SQLAlchemy"


def _driver_of(bind: Any) -> object:
    """The dialect's driver name of an Engine, AsyncEngine, Connection or AsyncConnection."""
    engine = getattr(bind, "sync_engine", None) or getattr(bind, "engine", bind)
    engine = getattr(engine, "sync_engine", None) or engine
    return getattr(getattr(engine, "dialect", None), "driver", None)


def _refused(what: str, binds: Iterable[Any]) -> str | None:
    """Why ``what`` can never be cancelled: every bind it has uses a driver without libpq."""
    drivers = {_driver_of(bind) for bind in binds}
    reasons = [why_not(driver) for driver in drivers]
    if not reasons or None in reasons:
        return None  # unbound (nothing known yet), or a bind that may be cancelled
    names = " and ".join(sorted(str(driver) for driver in drivers))
    return f"an SQLAlchemy {what} of the {names} dialect: " + "; ".join(
        sorted(str(reason) for reason in reasons)
    )


def _refuse_bind(kind: str) -> Any:
    """A ``refuse`` for an engine or connection of class ``kind``: its own dialect."""

    def refuse(obj: Any) -> str | None:
        return _refused(kind, [obj])

    return refuse


def _session_binds(session: Any) -> list[Any]:
    """The engines or connections a ``Session`` may run on (its bind, its per-mapper binds)."""
    binds = [session.bind] if session.bind is not None else []
    binds.extend(getattr(session, "_Session__binds", {}).values())
    return binds


def _refuse_session(session: Any) -> str | None:
    return _refused(type(session).__name__, _session_binds(session))


def _refuse_scoped(scoped: Any) -> str | None:
    """A ``scoped_session``: its session factory's binds (whether or not a session exists)."""
    kw = getattr(scoped.session_factory, "kw", {})
    binds = [kw["bind"]] if kw.get("bind") is not None else []
    binds.extend((kw.get("binds") or {}).values())
    return _refused("scoped_session", binds)


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
    """Session events, in the session's thread: a connection begun, the transaction ended.

    The listeners live on the session (as long as it does, or until unwatched)
    and the unwatch holds the session weakly: watching keeps nothing alive.
    """
    event = sys.modules["sqlalchemy.event"]
    ref = weakref.ref(session)

    def after_begin(session: Any, transaction: Any, connection: Any) -> None:
        acquired(connection)

    def after_transaction_end(session: Any, transaction: Any) -> None:
        if transaction.parent is None:  # the root: its connections go back
            released()

    listeners = (("after_begin", after_begin), ("after_transaction_end", after_transaction_end))
    for name, fn in listeners:
        event.listen(session, name, fn)

    def unwatch() -> None:
        target = ref()
        if target is None:
            return  # gone, and its listeners with it
        for name, fn in listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)

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
    Adapter(
        "sqlalchemy.engine.base",
        "Connection",
        unwrap=_connection,
        refuse=_refuse_bind("Connection"),
    ),
    Adapter("sqlalchemy.pool.base", "PoolProxiedConnection", unwrap=_pool_connection),
    Adapter(
        "sqlalchemy.orm.session",
        "Session",
        unwrap=_session,
        watch=_watch_session,
        refuse=_refuse_session,
    ),
    Adapter(
        "sqlalchemy.orm.scoping",
        "scoped_session",
        unwrap=_scoped_session,
        refuse=_refuse_scoped,
    ),
    Adapter(
        "sqlalchemy.ext.asyncio.engine",
        "AsyncConnection",
        unwrap=_async_connection,
        refuse=_refuse_bind("AsyncConnection"),
    ),
    Adapter(
        "sqlalchemy.ext.asyncio.session",
        "AsyncSession",
        unwrap=_async_session,
        watch=_watch_via(_async_session),
        refuse=lambda asession: _refused("AsyncSession", _session_binds(asession.sync_session)),
    ),
    Adapter(
        "sqlalchemy.dialects.postgresql.psycopg",
        "AsyncAdapt_psycopg_connection",
        hint=f"an SQLAlchemy AsyncAdapt_psycopg_connection: {_ADAPTED}",
    ),
    Adapter(
        "sqlalchemy.dialects.postgresql.asyncpg",
        "AsyncAdapt_asyncpg_connection",
        hint=f"an SQLAlchemy AsyncAdapt_asyncpg_connection: {WHY['asyncpg']}",
    ),
    Adapter(
        "sqlalchemy.engine.base",
        "Engine",
        hint="an SQLAlchemy Engine: an engine runs no query itself; pass the Connection "
        "(or Session) that runs it",
        refuse=_refuse_bind("Engine"),
    ),
    Adapter(
        "sqlalchemy.ext.asyncio.engine",
        "AsyncEngine",
        hint="an SQLAlchemy AsyncEngine: an engine runs no query itself; pass the "
        "AsyncConnection (or AsyncSession) that runs it",
        refuse=_refuse_bind("AsyncEngine"),
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
