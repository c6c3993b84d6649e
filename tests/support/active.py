"""The one "is the query running yet?" poll of the suite.

A cancel is only meaningful once the server runs the query, so every test
waits until ``pg_stat_activity`` shows the backend inside ``pg_sleep``. The
SQL and the poll live here once; callers pass how to run SQL on a monitor
connection (a psycancel ``PGconn``, a psycopg2/psycopg cursor, an aiopg one).

Standard library only: the driver child scripts import it before any driver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

SLEEP = "select pg_sleep(30)"
"""The long query the tests cancel."""
QUERY_CANCELED = "57014"
"""SQLSTATE query_canceled."""
POLL_TIMEOUT = 15.0
"""How long a query may take to start before the test fails."""
_INTERVAL = 0.005


def active_sleep_query(pid: int | None = None, *, tag: str | None = None) -> str:
    """SQL returning a row while backend ``pid`` (or a query containing ``tag``) sleeps.

    ``tag`` is for connections whose backend PID is unknown to the client
    (through PgBouncer the client sees PgBouncer's key, not the server's).
    """
    where = ["wait_event = 'PgSleep'"]
    if pid is not None:
        where.append(f"pid = {int(pid)}")
    if tag is not None:
        where.append(f"query like '%{tag}%' and pid <> pg_backend_pid()")
    return "select 1 from pg_stat_activity where " + " and ".join(where)


def _failure(pid: int | None, tag: str | None) -> AssertionError:
    what = f"backend {pid}" if pid is not None else f"the query {tag}"
    return AssertionError(f"{what} never started its query")


def poll_until_active(
    rows: Callable[[str], Sequence[Any]],
    pid: int | None = None,
    *,
    tag: str | None = None,
    timeout: float = POLL_TIMEOUT,
) -> None:
    """Block until the query is active; ``rows(sql)`` runs SQL on a monitor."""
    query = active_sleep_query(pid, tag=tag)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rows(query):
            return
        time.sleep(_INTERVAL)
    raise _failure(pid, tag)


async def poll_until_active_async(
    rows: Callable[[str], Awaitable[Sequence[Any]]],
    pid: int | None = None,
    *,
    tag: str | None = None,
    timeout: float = POLL_TIMEOUT,
) -> None:
    """:func:`poll_until_active` for an asyncio monitor (``await rows(sql)``)."""
    query = active_sleep_query(pid, tag=tag)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await rows(query):
            return
        await asyncio.sleep(_INTERVAL)
    raise _failure(pid, tag)
