"""``python -m psycancel demo --dsn ...``: cancel a long query from asyncio, with a timeline.

For each DSN: start ``pg_sleep(60)``, wait until the server runs it, cancel
it with :func:`psycancel.cancel_async` while a busy coroutine ticks, and
print when the cancel was sent, when it was done, how the query ended, and
the largest gap between ticks (the event loop stayed responsive). A source
checkout's ``bash tools/quickstart.sh demo`` runs it against a throwaway
server (``python -m testing.demo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator

from .. import cancel_async
from ..errors import Error
from ..pq import Libpq, PGconn, QueryResult

__all__ = ["read_result_async", "run_demo", "wait_until_active"]

SLEEP_QUERY = "select pg_sleep(60)"


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def read_result_async(conn: PGconn) -> QueryResult:
    """The first result of the query running on ``conn``, read without blocking.

    Drains the remaining results so the connection is ready for a new query.
    """
    loop = asyncio.get_running_loop()
    fd = conn.socket
    while True:
        conn.consume_input()
        if not conn.is_busy():
            break
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _set_done, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
    first = conn.get_result()
    assert first is not None
    while conn.get_result() is not None:
        pass
    return first


async def wait_until_active(monitor: PGconn, pid: int, timeout: float = 10.0) -> None:
    """Return once ``pid`` runs a query that waits in ``pg_sleep``."""
    deadline = time.monotonic() + timeout
    query = f"select 1 from pg_stat_activity where pid = {int(pid)} and wait_event = 'PgSleep'"
    while time.monotonic() < deadline:
        monitor.send_query(query)
        res = await read_result_async(monitor)
        if res.rows:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"backend {pid} did not start its query within {timeout} s")


class _Ticker:
    """A busy coroutine that records the largest gap between its ticks."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    @contextlib.contextmanager
    def running(self) -> Iterator[_Ticker]:
        self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()


async def _one(dsn: str, libpq: Libpq) -> None:
    conn = PGconn.connect(dsn, libpq=libpq)
    monitor = PGconn.connect(dsn, libpq=libpq)
    label = "TLS" if conn.ssl_in_use else "plain"
    try:
        pid = conn.backend_pid
        conn.send_query(SLEEP_QUERY)
        await wait_until_active(monitor, pid)
        print(f"[{label}] {SLEEP_QUERY!r} running in backend {pid}, TLS={conn.ssl_in_use}")
        await asyncio.sleep(0)
        with _Ticker().running() as ticker:
            await asyncio.sleep(0.01)  # let the ticker take its first steps
            t0 = time.perf_counter()
            print(f"[{label}]   +0.0 ms  cancel sent")
            await cancel_async(conn, timeout=10)
            t1 = time.perf_counter()
            gap = ticker.max_gap
            ticks = ticker.ticks
        print(f"[{label}] {1000 * (t1 - t0):6.1f} ms  cancel done")
        res = await read_result_async(conn)
        t2 = time.perf_counter()
        print(
            f"[{label}] {1000 * (t2 - t0):6.1f} ms  query ended: SQLSTATE {res.sqlstate} "
            f"({res.message.splitlines()[0] if res.message else res.status.name})"
        )
        print(
            f"[{label}] largest event-loop gap while cancelling: {1000 * gap:.2f} ms "
            f"({ticks} ticks of a busy coroutine)"
        )
    finally:
        monitor.finish()
        conn.finish()


async def _demo(dsns: list[str], libpq: Libpq) -> None:
    for dsn in dsns:
        await _one(dsn, libpq)


def run_demo(dsns: list[str]) -> int:
    """Run the demo against each of ``dsns``; 1 (with one line on stderr) if it fails."""
    from ..pq import __impl__

    try:
        libpq = Libpq.load()
        print(f"psycancel demo: twin={__impl__}, libpq {libpq.version} at {libpq.path}")
        asyncio.run(_demo(dsns, libpq))
    except (Error, OSError, TimeoutError) as ex:
        one_line = " ".join(str(ex).split())
        print(f"psycancel demo: {one_line}", file=sys.stderr)
        return 1
    return 0
