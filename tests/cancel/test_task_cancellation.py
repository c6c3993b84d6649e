"""A cancelled task ends its query on the server (issue 19, item 2).

A task cancelled while it awaits a query stops waiting, but the server goes
on running the query unless someone tells it: aiopg closes its connection
(the server never hears of it), others leave the session busy. Inside
``async with cancel_after(...)`` or ``cancel_on_cancellation(...)`` the
cancel is sent before the cancellation propagates. Checked on the server:
``pg_stat_activity`` no longer shows the backend sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from testing import client
from tests.support import frameworks
from tests.support.active import SLEEP
from tests.support.drivers import need
from tests.support.frameworks import Monitor
from tests.support.proxy import ServerLike, TcpProxy
from tests.support.queries import QUERY_CANCELED, drain

psycopg = need("psycopg")
aiopg = need("aiopg")
anyio = need("anyio")
trio = need("trio")
sqlalchemy = need("sqlalchemy")
sqlalchemy_asyncio = need("sqlalchemy.ext.asyncio")

ENDED_WITHIN = 5.0
"""How long the server may take to end the query after the task was cancelled."""


watcher = frameworks.monitor
"""A :class:`Monitor` on the test server (``tests.support.frameworks.monitor``)."""


def ended(watcher: Monitor, pid: int, within: float = ENDED_WITHIN) -> bool:
    """True once backend ``pid`` no longer sleeps (polled up to ``within`` s)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not watcher.sleeping(pid):
            return True
        time.sleep(0.02)
    return False


async def connect(kind: str, dsn: str) -> tuple[Any, Callable[[str], Awaitable[Any]], int]:
    """(the object to pass psycancel, run(sql), backend pid) for an async client."""
    if kind == "psycopg":
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        return conn, conn.execute, conn.info.backend_pid
    if kind == "aiopg":
        conn = await aiopg.connect(dsn)
        cur = await conn.cursor()
        return conn, cur.execute, await conn.get_backend_pid()
    engine = sqlalchemy_asyncio.create_async_engine(
        "postgresql+psycopg://",
        async_creator=functools.partial(psycopg.AsyncConnection.connect, dsn),
    )
    sa_conn = await engine.connect()
    pid = (await sa_conn.execute(sqlalchemy.text("select pg_backend_pid()"))).scalar()

    async def run(sql: str) -> Any:
        return await sa_conn.execute(sqlalchemy.text(sql))

    return sa_conn, run, int(pid)


async def cancel_when_sleeping(watcher: Monitor, pid: int, task: asyncio.Task[Any]) -> None:
    await watcher.await_sleeping(pid)
    task.cancel()


@pytest.mark.parametrize("sslmode", ["disable", "require"])
@pytest.mark.parametrize("kind", ["psycopg", "aiopg", "sqlalchemy"])
@pytest.mark.parametrize("how", ["cancel_after", "cancel_on_cancellation"])
def test_cancelled_task_ends_its_query(
    kind: str, how: str, sslmode: str, pg_server: ServerLike, watcher: Monitor
) -> None:
    dsn = pg_server.dsn(sslmode)

    async def main() -> int:
        conn, run, pid = await connect(kind, dsn)

        async def query() -> None:
            block = (
                psycancel.cancel_after(conn, 60, timeout=5)
                if how == "cancel_after"
                else psycancel.cancel_on_cancellation(conn, timeout=5)
            )
            async with block:
                await run(SLEEP)

        task = asyncio.ensure_future(query())
        await cancel_when_sleeping(watcher, pid, task)
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid

    pid = asyncio.run(main())
    try:
        assert ended(watcher, pid), f"backend {pid} still runs the query"
    finally:
        watcher.terminate(pid)


def test_without_psycancel_aiopg_leaves_the_query_running(dsn_plain: str, watcher: Monitor) -> None:
    """The contrast that makes the test above mean something."""

    async def main() -> int:
        conn, run, pid = await connect("aiopg", dsn_plain)
        task = asyncio.ensure_future(run(SLEEP))
        await cancel_when_sleeping(watcher, pid, task)
        with pytest.raises(asyncio.CancelledError):
            await task
        conn.close()
        return pid

    pid = asyncio.run(main())
    try:
        assert not ended(watcher, pid, within=1.0)
    finally:
        watcher.terminate(pid)


def test_outer_timeout(dsn_plain: str, watcher: Monitor) -> None:
    """``asyncio.wait_for`` cancelling the block (a client that gave up)."""

    async def main() -> int:
        conn, run, pid = await connect("aiopg", dsn_plain)

        async def query() -> None:
            async with psycancel.cancel_on_cancellation(conn):
                await run(SLEEP)

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(query(), 0.5)
        return pid

    pid = asyncio.run(main())
    try:
        assert ended(watcher, pid)
    finally:
        watcher.terminate(pid)


def test_anyio_cancel_scope_on_asyncio(dsn_plain: str, watcher: Monitor) -> None:
    async def main() -> int:
        conn, run, pid = await connect("aiopg", dsn_plain)
        with anyio.move_on_after(0.5) as scope:
            async with psycancel.cancel_on_cancellation(conn):
                await run(SLEEP)
        assert scope.cancelled_caught
        return pid

    pid = anyio.run(main, backend="asyncio")
    try:
        assert ended(watcher, pid)
    finally:
        watcher.terminate(pid)


@pytest.mark.parametrize("how", ["cancel_after", "cancel_on_cancellation"])
def test_trio_cancel_scope(how: str, dsn_plain: str, libpq: Libpq, watcher: Monitor) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    try:

        async def main() -> None:
            conn.send_query(SLEEP)
            block = (
                psycancel.cancel_after(conn, 60, timeout=5)
                if how == "cancel_after"
                else psycancel.cancel_on_cancellation(conn, timeout=5)
            )
            with trio.move_on_after(0.5) as scope:
                async with block:
                    while True:
                        conn.consume_input()
                        if not conn.is_busy():
                            break
                        await trio.lowlevel.wait_readable(conn.socket)
            assert scope.cancelled_caught

        anyio.run(main, backend="trio")
        assert drain(conn).sqlstate == QUERY_CANCELED  # the server ended it
        assert ended(watcher, conn.backend_pid)
    finally:
        conn.finish()


def test_failed_cancel_is_logged_and_cancellation_propagates(
    pg_server: ServerLike, proxy: Any, watcher: Monitor, caplog: pytest.LogCaptureFixture
) -> None:
    px: TcpProxy = proxy()
    dsn = px.dsn(pg_server, sslmode="disable")

    async def main() -> tuple[int, float]:
        conn, run, pid = await connect("aiopg", dsn)
        px.blackhole()  # the cancel connection: no answer

        async def query() -> None:
            async with psycancel.cancel_on_cancellation(conn, timeout=0.3):
                await run(SLEEP)

        task = asyncio.ensure_future(query())
        await watcher.await_sleeping(pid)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid, time.monotonic() - t0

    with caplog.at_level(logging.WARNING, logger="psycancel"):
        pid, waited = asyncio.run(main())
    watcher.terminate(pid)
    assert waited < 0.3 + 0.5  # bounded by the timeout
    assert any("may still be running" in r.getMessage() for r in caplog.records)


def test_no_cancel_when_the_block_is_not_cancelled(dsn_plain: str) -> None:
    """A block that ends normally or with another error sends nothing."""

    async def main() -> None:
        conn, run, _ = await connect("psycopg", dsn_plain)
        async with psycancel.cancel_on_cancellation(conn) as block:
            await run("select 1")
        assert not block.fired
        with pytest.raises(KeyError):
            async with psycancel.cancel_on_cancellation(conn):
                raise KeyError("mine")
        assert (await (await run("select 1")).fetchone()) == (1,)
        await conn.close()

    asyncio.run(main())


def test_not_for_with() -> None:
    block = psycancel.cancel_on_cancellation(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async with"), block:
        pass


def test_loop_blocked_block_warns(dsn_plain: str) -> None:
    """A blocking call inside ``async with`` holds the loop: the timer could not
    fire, and the exit says so instead of passing silently."""

    async def main() -> None:
        conn, _, _ = await connect("psycopg", dsn_plain)
        try:
            with pytest.warns(RuntimeWarning, match="use a plain `with cancel_after"):
                async with psycancel.cancel_after(conn, 0.05) as block:
                    time.sleep(0.5)  # the mistake under test
            assert not block.fired
        finally:
            await conn.close()

    asyncio.run(main())
