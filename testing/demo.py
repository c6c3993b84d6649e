"""``python -m testing.demo``: the quick start's demo, against a throwaway server.

Starts a throwaway TLS server (building PostgreSQL on first use), or uses the
servers given with ``--dsn``; for each DSN (plain, then verify-full): start
``pg_sleep(60)`` with the tests' client (:mod:`testing.client`), wait until
the server runs it, cancel it with :func:`psycancel.cancel_async` while a
busy coroutine ticks, and print when the cancel was sent, when it was done,
how the query ended, and the largest gap between ticks (the event loop
stayed responsive). The libpq is ``$PSYCANCEL_LIBPQ``, else the server
build's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator

from psycancel import cancel_async
from psycancel.errors import Error
from psycancel.pq import Libpq

from .client import Client, QueryResult, connect
from .installation import find_postgres_prefix, libpq_file

__all__ = ["main", "read_result_async", "run_demo", "wait_until_active"]

SLEEP_QUERY = "select pg_sleep(60)"


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def read_result_async(conn: Client) -> QueryResult:
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


async def wait_until_active(monitor: Client, pid: int, timeout: float = 10.0) -> None:
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
    conn = connect(dsn, libpq=libpq)
    monitor = connect(dsn, libpq=libpq)
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


def run_demo(dsns: list[str], libpq_path: str) -> int:
    """Run the demo against each of ``dsns``; 1 (with one line on stderr) if it fails."""
    from psycancel.pq import __impl__

    try:
        libpq = Libpq.load(libpq_path)
        print(f"psycancel demo: twin={__impl__}, libpq {libpq.version} at {libpq.path}")
        asyncio.run(_demo(dsns, libpq))
    except (Error, OSError, TimeoutError) as ex:
        one_line = " ".join(str(ex).split())
        print(f"psycancel demo: {one_line}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo (against a throwaway server unless ``--dsn`` is given); its exit status."""
    parser = argparse.ArgumentParser(prog="python -m testing.demo")
    parser.add_argument(
        "--dsn",
        action="append",
        help="a server to run the demo against (repeat it for several); "
        "without it, a throwaway server is started",
    )
    args = parser.parse_args(argv)
    env_libpq = os.environ.get("PSYCANCEL_LIBPQ")
    if args.dsn:
        libpq_path = env_libpq or str(libpq_file(find_postgres_prefix()))
        return run_demo(args.dsn, libpq_path)
    from .server import ThrowawayServer

    with ThrowawayServer(find_postgres_prefix()) as server:
        print(f"throwaway PostgreSQL on 127.0.0.1:{server.port}", flush=True)
        code = run_demo([server.dsn_plain, server.dsn_verify], env_libpq or str(server.libpq_path))
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
