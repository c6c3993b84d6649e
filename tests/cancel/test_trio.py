"""``cancel_async`` and ``cancel_after`` under Trio, through AnyIO.

Run with ``anyio.run(..., backend="trio")`` (no pytest plugin needed). Checks
the same guarantees as the asyncio waiter: the cancel works (plain and TLS),
the deadline holds against a black hole, task cancellation cleans up, the
event loop is never blocked, and nothing stays registered with Trio.
"""

from __future__ import annotations

import functools
import time
import types
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import psycancel
from psycancel._engine import anyio_loop as _waiting_anyio
from psycancel.pq import Libpq
from psycancel.pq.abc import PGcancelConn
from testing import client
from testing.client import Client, QueryResult
from tests.support.drivers import QUERY_CANCELED, SLEEP, pgcode
from tests.support.drivers import need as _need
from tests.support.fds import sockets_to
from tests.support.queries import drain, run, sleeping, wait_until_active

anyio = _need("anyio")
trio = _need("trio")
psycopg2 = _need("psycopg2")
psycopg2_errors = _need("psycopg2.errors")


def trio_run(func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    return anyio.run(functools.partial(func, *args, **kwargs), backend="trio")


async def waiting_tasks() -> int:
    """Tasks of the running Trio loop waiting for an fd (read or write).

    Trio's own system task (waiting on its wake-up socket) counts too: compare
    with a count taken at the start (after a checkpoint, so that it runs).
    """
    await trio.sleep(0.001)
    stats = trio.lowlevel.current_statistics().io_statistics
    return int(stats.tasks_waiting_read + stats.tasks_waiting_write)


async def trio_result(conn: Client) -> QueryResult:
    """The result of the query in progress on ``conn``, waiting the Trio way."""
    while True:
        conn.consume_input()
        if not conn.is_busy():
            return drain(conn)
        await trio.lowlevel.wait_readable(conn.socket)


# =====================================================================================
# cancel_async under Trio, new API
# =====================================================================================


def test_cancels_running_query(dsn: str, libpq: Libpq, created: list[PGcancelConn]) -> None:
    with sleeping(dsn, libpq) as conn:

        async def main() -> None:
            before = await waiting_tasks()  # Trio's own system tasks
            await psycancel.cancel_async(conn, timeout=10)
            assert await waiting_tasks() == before

        trio_run(main)
        assert drain(conn).sqlstate == QUERY_CANCELED
        assert run(conn, "select 1").rows == (("1",),)
    assert len(created) == 1 and created[0].closed


def test_query_awaited_by_trio_cancelled_from_another_task(
    dsn_tls: str, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    conn = client.connect(dsn_tls, libpq=libpq)
    monitor = client.connect(dsn_tls, libpq=libpq)
    try:

        async def main() -> QueryResult:
            conn.send_query(SLEEP)
            result: list[QueryResult] = []

            async def query() -> None:
                result.append(await trio_result(conn))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(query)
                await trio.to_thread.run_sync(wait_until_active, monitor, conn.backend_pid)
                await psycancel.cancel_async(conn, timeout=10)
            return result[0]

        assert trio_run(main).sqlstate == QUERY_CANCELED
    finally:
        monitor.finish()
        conn.finish()
    assert len(created) == 1 and created[0].closed


@pytest.mark.parametrize("dsn_name", ["dsn_plain", "dsn_tls"])
def test_psycopg2_in_a_trio_thread(
    dsn_name: str, request: pytest.FixtureRequest, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    dsn = request.getfixturevalue(dsn_name)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    monitor = client.connect(dsn, libpq=libpq)
    try:

        async def main() -> BaseException | None:
            caught: list[BaseException] = []

            def execute() -> None:
                try:
                    conn.cursor().execute(SLEEP)
                except psycopg2.Error as ex:
                    caught.append(ex)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, execute)
                await trio.to_thread.run_sync(wait_until_active, monitor, conn.info.backend_pid)
                await psycancel.cancel_async(conn, timeout=10)
            return caught[0] if caught else None

        assert pgcode(trio_run(main)) == QUERY_CANCELED
        with conn.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
    finally:
        monitor.finish()
        conn.close()
    assert len(created) == 1 and created[0].closed


def test_idle_connection(dsn_plain: str, libpq: Libpq) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    try:
        trio_run(psycancel.cancel_async, conn)
        assert run(conn, "select 1").rows == (("1",),)
    finally:
        conn.finish()


def test_timeout_when_black_holed(
    pg_server: Any, proxy: Any, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="require"), libpq=libpq)
    try:
        px.blackhole()
        session = sockets_to(px.port)  # the connection itself
        timeout = 0.5

        async def main() -> float:
            before = await waiting_tasks()
            t0 = time.monotonic()
            with pytest.raises(psycancel.CancellationTimeout):
                await psycancel.cancel_async(conn, timeout=timeout)
            elapsed = time.monotonic() - t0
            assert await waiting_tasks() == before  # nothing left registered with Trio
            return elapsed

        elapsed = trio_run(main)
        assert timeout <= elapsed < timeout + 1.0
        assert sockets_to(px.port) == session  # no cancel socket left
    finally:
        conn.finish()
    assert len(created) == 1 and created[0].closed


def test_task_cancellation_cleans_up(
    pg_server: Any, proxy: Any, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="require"), libpq=libpq)
    try:
        px.blackhole()
        session = sockets_to(px.port)  # the connection itself

        async def main() -> None:
            before = await waiting_tasks()
            with anyio.move_on_after(0.3) as scope:
                await psycancel.cancel_async(conn, timeout=30)
            assert scope.cancelled_caught
            assert await waiting_tasks() == before

        t0 = time.monotonic()
        trio_run(main)
        assert time.monotonic() - t0 < 5
        assert sockets_to(px.port) == session  # no cancel socket left
    finally:
        conn.finish()
    assert len(created) == 1 and created[0].closed


def test_refused(pg_server: Any, proxy: Any, libpq: Libpq, created: list[PGcancelConn]) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="disable"), libpq=libpq)
    try:
        px.close()
        with pytest.raises(psycancel.CancelError, match=r"(?i)refused"):
            trio_run(psycancel.cancel_async, conn, timeout=10)
    finally:
        conn.finish()
    assert len(created) == 1 and created[0].closed


async def _tick_during(work: Callable[[], Awaitable[Any]]) -> tuple[float, int]:
    """Run ``work()`` while a ticker measures the largest loop gap."""
    gap = 0.0
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal gap, ticks
        last = time.perf_counter()
        while not done:
            await trio.sleep(0.001)
            now = time.perf_counter()
            gap, last, ticks = max(gap, now - last), now, ticks + 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await work()
        done = True
    return gap, ticks


@pytest.mark.parametrize("which", ["new", "legacy"])
def test_does_not_block_the_loop(
    which: str, pg_server: Any, proxy: Any, libpq: Libpq, legacy_libpq: Libpq
) -> None:
    """With ``delay`` added each way, the loop keeps ticking while the cancel waits.

    A blocking cancel would stall it for >= 2 * delay; the limit is half that
    (0.1 s each way and a 0.1 s limit broke with three suites at a time: gaps of
    0.17 s from the load alone).
    """
    delay = 0.5
    px = proxy()
    lib = libpq if which == "new" else legacy_libpq
    with sleeping(px.dsn(pg_server, sslmode="disable"), lib, pg_server.dsn()) as conn:
        px.delay = delay

        async def main() -> tuple[float, int]:
            return await _tick_during(lambda: psycancel.cancel_async(conn, timeout=10))

        t0 = time.monotonic()
        gap, ticks = trio_run(main)
        assert time.monotonic() - t0 >= 2 * delay
        assert drain(conn).sqlstate == QUERY_CANCELED
    assert gap < delay, f"largest loop gap {gap * 1000:.0f} ms"
    assert ticks > 20


def test_old_anyio_falls_back_to_trio_fd_waits(
    monkeypatch: pytest.MonkeyPatch, dsn_tls: str, libpq: Libpq
) -> None:
    """AnyIO < 4.7 has no fd-based waits: Trio's own are used."""
    old_anyio = types.SimpleNamespace(move_on_after=anyio.move_on_after)
    monkeypatch.setattr(_waiting_anyio, "anyio", old_anyio)
    readable, writable = _waiting_anyio._fd_waiters()
    assert readable is trio.lowlevel.wait_readable
    assert writable is trio.lowlevel.wait_writable
    with sleeping(dsn_tls, libpq) as conn:
        trio_run(psycancel.cancel_async, conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED


def test_anyio_asyncio_backend_takes_the_asyncio_path(
    monkeypatch: pytest.MonkeyPatch, dsn_plain: str, libpq: Libpq
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the AnyIO waiter must not run under asyncio")

    monkeypatch.setattr(_waiting_anyio, "run_anyio", refuse)
    with sleeping(dsn_plain, libpq) as conn:
        anyio.run(functools.partial(psycancel.cancel_async, conn, timeout=10), backend="asyncio")
        assert drain(conn).sqlstate == QUERY_CANCELED


# =====================================================================================
# cancel_async under Trio, legacy libpq (< 17)
# =====================================================================================


def test_legacy_plain(dsn_plain: str, legacy_libpq: Libpq) -> None:
    with sleeping(dsn_plain, legacy_libpq) as conn:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trio_run(psycancel.cancel_async, conn, timeout=10, strict=True)
        assert drain(conn).sqlstate == QUERY_CANCELED


def test_legacy_tls_warns(dsn_tls: str, legacy_libpq: Libpq) -> None:
    with sleeping(dsn_tls, legacy_libpq) as conn:

        async def main() -> None:
            await psycancel.cancel_async(conn, timeout=10)

        with pytest.warns(psycancel.InsecureCancelWarning, match="clear text") as record:
            trio_run(main)
        assert drain(conn).sqlstate == QUERY_CANCELED
    assert record[0].filename == __file__  # the warning points at the awaiting line


def test_legacy_tls_strict_refuses(dsn_tls: str, legacy_libpq: Libpq) -> None:
    with sleeping(dsn_tls, legacy_libpq) as conn:
        with pytest.raises(psycancel.InsecureCancelError):
            trio_run(psycancel.cancel_async, conn, timeout=10, strict=True)
        conn.consume_input()
        assert conn.is_busy()  # nothing was sent


def test_legacy_timeout_when_black_holed(pg_server: Any, proxy: Any, legacy_libpq: Libpq) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="disable"), libpq=legacy_libpq)
    try:
        px.blackhole()

        async def main() -> float:
            t0 = time.monotonic()
            with pytest.raises(psycancel.CancellationTimeout, match="legacy"):
                await psycancel.cancel_async(conn, timeout=0.5)
            return time.monotonic() - t0

        elapsed = trio_run(main)
        assert 0.5 <= elapsed < 1.5
    finally:
        conn.finish()
        px.close()  # the stuck PQcancel sees the connection close and returns


# =====================================================================================
# cancel_after under Trio (a thread timer; the awaiting task is never cancelled)
# =====================================================================================


def test_cancel_after_fires_with_psycopg2_in_a_thread(
    dsn: str, created: list[PGcancelConn]
) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:

        async def main() -> None:
            timer = psycancel.cancel_after(conn, 0.2)
            with pytest.raises(psycancel.QueryTimeout) as info:
                async with timer:
                    await trio.to_thread.run_sync(conn.cursor().execute, SLEEP)
            assert isinstance(info.value.__cause__, psycopg2_errors.QueryCanceled)
            assert timer.fired

        trio_run(main)
        with conn.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    assert len(created) == 1 and created[0].closed


def test_cancel_after_with_a_trio_awaited_query(dsn_tls: str, libpq: Libpq) -> None:
    conn = client.connect(dsn_tls, libpq=libpq)
    try:

        async def main() -> tuple[QueryResult, QueryResult, bool, bool]:
            fast = psycancel.cancel_after(conn, 5)
            async with fast:
                conn.send_query("select 1")
                first = await trio_result(conn)
            slow = psycancel.cancel_after(conn, 0.2)
            async with slow:
                conn.send_query(SLEEP)
                second = await trio_result(conn)
            return first, second, fast.fired, slow.fired

        first, second, fast_fired, slow_fired = trio_run(main)
        assert first.rows == (("1",),) and not fast_fired
        # A psycancel PGconn returns the error result instead of raising.
        assert second.sqlstate == QUERY_CANCELED and slow_fired
        assert run(conn, "select 2").rows == (("2",),)
    finally:
        conn.finish()
