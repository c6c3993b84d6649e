"""psycopg 3 (sync, async) and psycopg_pool: the configured default deadline (issue 23).

Real server, real driver: the default applies to every query, a cursor's
``psycancel_timeout`` and a ``query_timeout`` block override it, None
disables it; a slow query ends with ``QueryTimeout`` and its connection runs
the next query; a black-holed one ends with ``QueryTimeout(connection_broken)``
and the pool hands out a fresh connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import psycancel
from psycancel.integrations import query_timeout
from tests.integrations.helpers import (
    OUTLIVES,
    SECONDS,
    SLOW,
    TIMEOUT,
    BlackHole,
    assert_timed_out,
)
from tests.support.drivers import need

psycopg = need("psycopg")
psycopg_pool = need("psycopg_pool")
deadlines = need("psycancel.integrations.psycopg")


def connect(dsn: str, seconds: float | None = SECONDS) -> Any:
    conn = psycopg.connect(dsn, autocommit=True)
    deadlines.install(conn, seconds, timeout=TIMEOUT)
    return conn


def test_the_default_applies_to_every_query(fdsn: str) -> None:
    with connect(fdsn) as conn:
        assert isinstance(conn.cursor(), deadlines.DeadlineCursor)
        for _ in range(2):  # conn.execute, then a cursor's
            with pytest.raises(psycancel.QueryTimeout) as info:
                conn.execute(SLOW)
            assert_timed_out(info)
            with conn.cursor() as cur, pytest.raises(psycancel.QueryTimeout) as info:
                cur.execute(SLOW)
            assert_timed_out(info)
        assert conn.execute("select 1").fetchone() == (1,)  # usable


def test_executemany_is_guarded(dsn_plain: str) -> None:
    with connect(dsn_plain) as conn, conn.cursor() as cur:
        with pytest.raises(psycancel.QueryTimeout) as info:
            cur.executemany("select pg_sleep(%s)", [(30,)])
        assert_timed_out(info)


def test_the_cursor_override_wins(dsn_plain: str) -> None:
    with connect(dsn_plain) as conn:
        cur = conn.cursor()
        cur.psycancel_timeout = 10
        cur.execute(OUTLIVES)  # outlives the default: the cursor's limit applies
        cur.psycancel_timeout = None
        cur.execute(OUTLIVES)  # no deadline at all
        with query_timeout(10):
            conn.execute(OUTLIVES)  # the block's
        with query_timeout(None):
            conn.execute(OUTLIVES)
        with query_timeout(10), pytest.raises(psycancel.QueryTimeout):
            shorter = conn.cursor()
            shorter.psycancel_timeout = SECONDS  # the cursor's wins over the block's
            shorter.execute(SLOW)


def test_an_override_sets_a_deadline_where_the_default_is_none(dsn_plain: str) -> None:
    with connect(dsn_plain, seconds=None) as conn:
        conn.execute(OUTLIVES)
        with query_timeout(SECONDS), pytest.raises(psycancel.QueryTimeout) as info:
            conn.execute(SLOW)
        assert_timed_out(info)


def test_another_cursor_class_is_refused(dsn_plain: str) -> None:
    with (
        psycopg.connect(dsn_plain, cursor_factory=psycopg.ClientCursor) as conn,
        pytest.raises(psycancel.InterfaceError, match="DeadlineCursor"),
    ):
        deadlines.install(conn, SECONDS)


def test_async_default_override_and_none(fdsn: str) -> None:
    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(fdsn, autocommit=True)
        async with conn:
            deadlines.install(conn, SECONDS, timeout=TIMEOUT)
            for _ in range(2):
                with pytest.raises(psycancel.QueryTimeout) as info:
                    await conn.execute(SLOW)
                assert_timed_out(info)
            with query_timeout(None):
                await conn.execute(OUTLIVES)
            cur = conn.cursor()
            cur.psycancel_timeout = 10
            await cur.execute(OUTLIVES)
            assert await (await conn.execute("select 1")).fetchone() == (1,)

    asyncio.run(main())


def test_pool_configure(dsn_plain: str) -> None:
    with psycopg_pool.ConnectionPool(
        dsn_plain,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True},
        configure=deadlines.configure(SECONDS, timeout=TIMEOUT),
    ) as pool:
        for _ in range(2):
            with pool.connection() as conn, pytest.raises(psycancel.QueryTimeout) as info:
                conn.execute(SLOW)
            assert_timed_out(info)
        with pool.connection() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            with query_timeout(None):
                conn.execute(OUTLIVES)


def test_async_pool_configure(dsn_plain: str) -> None:
    async def main() -> None:
        pool = psycopg_pool.AsyncConnectionPool(
            dsn_plain,
            min_size=1,
            max_size=1,
            kwargs={"autocommit": True},
            configure=deadlines.configure_async(SECONDS, timeout=TIMEOUT),
            open=False,
        )
        async with pool:
            async with pool.connection() as conn:
                with pytest.raises(psycancel.QueryTimeout) as info:
                    await conn.execute(SLOW)
                assert_timed_out(info)
            async with pool.connection() as conn:
                await conn.execute("select 1")

    asyncio.run(main())


def test_pool_replaces_a_connection_the_deadline_broke(black_hole: BlackHole) -> None:
    with psycopg_pool.ConnectionPool(
        black_hole.dsn(),
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True},
        configure=deadlines.configure(SECONDS, timeout=TIMEOUT),
    ) as pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
            conn.execute("select 1")  # its block's cancel is kept: the next one breaks with it
            black_hole.freeze_when_sleeping(pid)
            with pytest.raises(psycancel.QueryTimeout) as info:
                conn.execute(SLOW)
            assert info.value.connection_broken
            assert conn.broken
            black_hole.heal(pid)  # before the pool reconnects (through the proxy)
        with pool.connection(timeout=10) as again:
            assert again.info.backend_pid != pid
            assert again.execute("select 1").fetchone() == (1,)


def test_async_pool_replaces_a_connection_the_deadline_broke(black_hole: BlackHole) -> None:
    async def main() -> None:
        pool = psycopg_pool.AsyncConnectionPool(
            black_hole.dsn(),
            min_size=1,
            max_size=1,
            kwargs={"autocommit": True},
            configure=deadlines.configure_async(SECONDS, timeout=TIMEOUT),
            open=False,
        )
        async with pool:
            async with pool.connection() as conn:
                pid = conn.info.backend_pid
                black_hole.freeze_when_sleeping(pid)
                with pytest.raises(psycancel.QueryTimeout) as info:
                    await conn.execute(SLOW)
                assert info.value.connection_broken
                assert conn.broken
                await asyncio.to_thread(black_hole.heal, pid)
            async with pool.connection(timeout=10) as again:
                assert again.info.backend_pid != pid
                await again.execute("select 1")

    asyncio.run(main())
