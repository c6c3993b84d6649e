"""Test helpers shared by the suite: real connections, real queries."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from psycancel._engine.offload import reactor_fds
from psycancel.pq import Libpq, PGconn, QueryResult

SLEEP = "select pg_sleep(30)"
QUERY_CANCELED = "57014"


def open_fds() -> set[int]:
    """The file descriptors open in this process (Linux).

    The offload reactor's own fds (kept for the life of the process) are left
    out, so that starting it is not taken for a leak.
    """
    return {int(name) for name in os.listdir("/proc/self/fd")} - reactor_fds()


def sockets_to(port: int) -> set[int]:
    """This process's fds that are TCP sockets connected to loopback ``port``.

    Unlike a count of all fds, this ignores the sockets of the test's own
    proxy threads, and sees exactly the client side of cancel connections.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    found = set()
    for fd in open_fds():
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            found.add(fd)
    return found


def wait_until_active(monitor: PGconn, pid: int, timeout: float = 15.0) -> None:
    """Block until backend ``pid`` is inside ``pg_sleep`` (seen by ``monitor``)."""
    deadline = time.monotonic() + timeout
    query = f"select 1 from pg_stat_activity where pid = {pid} and wait_event = 'PgSleep'"
    while time.monotonic() < deadline:
        monitor.send_query(query)
        res = drain(monitor)
        if res.rows:
            return
        time.sleep(0.005)
    raise AssertionError(f"backend {pid} never started its query")


def drain(conn: PGconn) -> QueryResult:
    """The first result of the current query; later ones are discarded."""
    first = conn.get_result()
    assert first is not None
    while conn.get_result() is not None:
        pass
    return first


def run(conn: PGconn, query: str) -> QueryResult:
    """Run ``query`` and return its first result."""
    conn.send_query(query)
    return drain(conn)


@contextmanager
def sleeping(dsn: str, libpq: Libpq, monitor_dsn: str | None = None) -> Iterator[PGconn]:
    """A connection running ``pg_sleep(30)``, already active on the server."""
    conn = PGconn.connect(dsn, libpq=libpq)
    try:
        monitor = PGconn.connect(monitor_dsn or dsn, libpq=libpq)
        try:
            conn.send_query(SLEEP)
            wait_until_active(monitor, conn.backend_pid)
        finally:
            monitor.finish()
        yield conn
    finally:
        conn.finish()


def loop_fds(loop: asyncio.AbstractEventLoop) -> set[int]:
    """The fds with a reader or writer registered on a selector event loop."""
    selector = loop._selector  # type: ignore[attr-defined]
    return set(selector.get_map().keys())
