"""Real connections and real queries through the tests' client (``testing.client``).

``sleeping()`` gives a connection running ``SLEEP``, already active on the
server; ``run``/``drain`` read results; ``wait_until_active`` is the active
query poll of :mod:`tests.support.active` on a client monitor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from psycancel.pq import Libpq
from testing.client import Client, QueryResult, connect

from .active import POLL_TIMEOUT, QUERY_CANCELED, SLEEP, poll_until_active

__all__ = ["QUERY_CANCELED", "SLEEP", "drain", "run", "sleeping", "wait_until_active"]


def wait_until_active(
    monitor: Client,
    pid: int | None = None,
    *,
    tag: str | None = None,
    timeout: float = POLL_TIMEOUT,
) -> None:
    """Block until backend ``pid`` (or a query containing ``tag``) is inside ``pg_sleep``."""
    poll_until_active(lambda sql: run(monitor, sql).rows, pid, tag=tag, timeout=timeout)


def drain(conn: Client) -> QueryResult:
    """The first result of the current query; later ones are discarded."""
    first = conn.get_result()
    assert first is not None
    while conn.get_result() is not None:
        pass
    return first


def run(conn: Client, query: str) -> QueryResult:
    """Run ``query`` and return its first result."""
    conn.send_query(query)
    return drain(conn)


@contextmanager
def sleeping(dsn: str, libpq: Libpq, monitor_dsn: str | None = None) -> Iterator[Client]:
    """A connection running ``pg_sleep(30)``, already active on the server."""
    conn = connect(dsn, libpq=libpq)
    try:
        monitor = connect(monitor_dsn or dsn, libpq=libpq)
        try:
            conn.send_query(SLEEP)
            wait_until_active(monitor, conn.backend_pid)
        finally:
            monitor.finish()
        yield conn
    finally:
        conn.finish()
