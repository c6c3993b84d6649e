"""Django: a default deadline for every query, through ``execute_wrapper``.

In ``settings.py``::

    PSYCANCEL = {"QUERY_TIMEOUT": 5}           # every database: 5 s (None: no default)
    DATABASES = {
        "default": {..., "PSYCANCEL": {"QUERY_TIMEOUT": 10}},   # this one: 10 s
        "reports": {..., "PSYCANCEL": {"QUERY_TIMEOUT": None}}, # this one: none
    }

and once, at start-up (an ``AppConfig.ready``, ``wsgi.py``...)::

    from psycancel.integrations import django as deadlines
    deadlines.install()

Every PostgreSQL connection Django opens from then on (Django's
``connection_created`` signal, in the thread that opens it) gets a
:class:`QueryDeadline` appended to its ``execute_wrappers``: each query runs
inside :class:`psycancel.cancel_after` and a query past its limit raises
:class:`psycancel.QueryTimeout` ``from`` Django's ``OperationalError``. When
the deadline had to break the connection, Django sees it as unusable
(``close_if_unusable_or_obsolete`` at the end of the request drops it).

Per block::

    with psycancel.integrations.query_timeout(60):      # these queries: 60 s
        Report.objects.all()...
    with psycancel.integrations.query_timeout(None):    # no deadline
        ...
    with connection.execute_wrapper(QueryDeadline(2)):  # without install(): 2 s here
        ...

Keys of ``PSYCANCEL`` (global, then a database's own, which win):
``QUERY_TIMEOUT`` (seconds or None), ``CANCEL_TIMEOUT``, ``STRICT`` and
``BREAK_CONNECTION`` (:class:`psycancel.cancel_after`'s ``timeout``,
``strict`` and ``break_connection``). They are read when a connection is
opened. When several :class:`QueryDeadline` wrap one connection, the
innermost (the last installed: a block's) decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]
from django.db.backends.signals import connection_created  # type: ignore[import-untyped]

from .._engine.plan import DEFAULT_TIMEOUT
from ._core import UNSET, Deadline, Unset

__all__ = ["SETTING", "QueryDeadline", "deadline_for", "install", "uninstall"]

SETTING = "PSYCANCEL"
"""The setting (and the key of a ``DATABASES`` entry) holding the configuration."""

_UID = "psycancel.integrations.django"


def deadline_for(alias: str) -> Deadline:
    """The configured deadline of database ``alias`` (settings, then the database's own)."""
    merged: dict[str, Any] = dict(getattr(settings, SETTING, None) or {})
    merged.update(connections.settings[alias].get(SETTING) or {})
    unknown = set(merged) - {"QUERY_TIMEOUT", "CANCEL_TIMEOUT", "STRICT", "BREAK_CONNECTION"}
    if unknown:
        raise ValueError(f"unknown {SETTING} keys for database {alias!r}: {sorted(unknown)}")
    return Deadline(
        merged.get("QUERY_TIMEOUT"),
        merged.get("CANCEL_TIMEOUT", DEFAULT_TIMEOUT),
        merged.get("STRICT", False),
        merged.get("BREAK_CONNECTION", True),
    )


class QueryDeadline:
    """An ``execute_wrapper`` that runs each query inside :class:`psycancel.cancel_after`.

    ``QueryDeadline(5)``: 5 s; ``QueryDeadline(None)``: no deadline (only a
    ``query_timeout`` block gives one); ``QueryDeadline()``: the settings'
    deadline of the connection's database. ``timeout``, ``strict`` and
    ``break_connection`` are ``cancel_after``'s (ignored with no ``seconds``:
    the settings give them). On a database other than PostgreSQL it does
    nothing.
    """

    __slots__ = ("_deadline",)

    def __init__(
        self,
        seconds: float | Deadline | Unset | None = UNSET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        strict: bool = False,
        break_connection: bool = True,
    ) -> None:
        if isinstance(seconds, Unset):
            self._deadline: Deadline | None = None
        elif isinstance(seconds, Deadline):
            self._deadline = seconds
        else:
            self._deadline = Deadline(seconds, timeout, strict, break_connection)

    @property
    def deadline(self) -> Deadline | None:
        """The deadline it applies (None: the settings', read at each query)."""
        return self._deadline

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: Any,
        params: Any,
        many: bool,
        context: Mapping[str, Any],
    ) -> Any:
        wrapper = context["connection"]
        if wrapper.vendor != "postgresql":  # (a QueryDeadline given to another database)
            return execute(sql, params, many, context)
        wrappers = wrapper.execute_wrappers
        if len(wrappers) > 1 and self is not _innermost(wrappers):
            return execute(sql, params, many, context)
        deadline = self._deadline
        if deadline is None:
            deadline = deadline_for(wrapper.alias)
        guard = deadline.guard(wrapper.connection)
        if guard is None:
            return execute(sql, params, many, context)
        with guard:
            return execute(sql, params, many, context)

    def __repr__(self) -> str:
        return f"<psycancel QueryDeadline {self._deadline!r}>"


def _innermost(wrappers: list[Any]) -> QueryDeadline | None:
    for wrapper in reversed(wrappers):
        if isinstance(wrapper, QueryDeadline):
            return wrapper
    return None


def _add(connection: Any) -> None:
    """Give a PostgreSQL ``DatabaseWrapper`` its settings' deadline (once)."""
    if connection.vendor != "postgresql":
        return
    if any(
        isinstance(w, QueryDeadline) and w.deadline is not None for w in connection.execute_wrappers
    ):
        return
    connection.execute_wrappers.insert(0, QueryDeadline(deadline_for(connection.alias)))


def _created(sender: Any, connection: Any, **kwargs: Any) -> None:
    _add(connection)


def install() -> None:
    """Give every PostgreSQL connection its configured deadline (``connection_created``).

    Connections of the calling thread that are open already get it now.
    Idempotent.
    """
    connection_created.connect(_created, dispatch_uid=_UID, weak=False)
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None:
            _add(connection)


def uninstall() -> None:
    """Stop installing; remove the installed wrappers of the calling thread's connections."""
    connection_created.disconnect(dispatch_uid=_UID)
    for connection in connections.all(initialized_only=True):
        connection.execute_wrappers[:] = [
            w for w in connection.execute_wrappers if not isinstance(w, QueryDeadline)
        ]
