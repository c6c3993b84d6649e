"""Pools: what psycopg_pool and aiopg's pool lend are driver connections, cancelled as such.

psycopg_pool lends plain psycopg ``Connection``/``AsyncConnection`` objects and
aiopg's pool its own ``Connection``: psycancel needs no adapter for them. Each
query ends with SQLSTATE 57014, and the connection goes back to the pool and
serves the next query. Plain and TLS.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import psycancel
from tests.support import frameworks
from tests.support.active import SLEEP
from tests.support.drivers import Background, need
from tests.support.frameworks import Monitor, sqlstate
from tests.support.queries import QUERY_CANCELED

psycopg = need("psycopg")
psycopg_pool = need("psycopg_pool")
aiopg = need("aiopg")


@pytest.fixture(params=["dsn_plain", "dsn_tls"], ids=["plain", "tls"])
def pool_dsn(request: pytest.FixtureRequest) -> str:
    value: str = request.getfixturevalue(request.param)
    return value


watcher = frameworks.monitor
"""A :class:`Monitor` on the test server (``tests.support.frameworks.monitor``)."""


def test_psycopg_pool_connection(pool_dsn: str, watcher: Monitor) -> None:
    with psycopg_pool.ConnectionPool(pool_dsn, min_size=1, max_size=1, open=True) as pool:
        with pool.connection() as conn:
            assert type(conn) is psycopg.Connection
            pid = conn.info.backend_pid
            query = Background(lambda: conn.execute(SLEEP))
            watcher.wait_sleeping(pid)
            psycancel.cancel(conn, timeout=10)
            error = query.error()
            assert sqlstate(error) == QUERY_CANCELED, repr(error)
        with pool.connection() as again:  # back in the pool, and usable
            assert again.info.backend_pid == pid
            assert again.execute("select 1").fetchone() == (1,)


def test_psycopg_async_pool_connection(pool_dsn: str, watcher: Monitor) -> None:
    async def main() -> None:
        pool = psycopg_pool.AsyncConnectionPool(pool_dsn, min_size=1, max_size=1, open=False)
        await pool.open()
        try:
            async with pool.connection() as conn:
                assert type(conn) is psycopg.AsyncConnection
                pid = conn.info.backend_pid
                query = asyncio.ensure_future(conn.execute(SLEEP))
                await watcher.await_sleeping(pid)
                await psycancel.cancel_async(conn, timeout=10)
                with pytest.raises(psycopg.errors.QueryCanceled):
                    await query
            async with pool.connection() as again:
                assert again.info.backend_pid == pid
                cur = await again.execute("select 1")
                assert await cur.fetchone() == (1,)
        finally:
            await pool.close()

    asyncio.run(main())


def test_aiopg_pool_connection(pool_dsn: str, watcher: Monitor) -> None:
    async def main() -> None:
        pool: Any = await aiopg.create_pool(pool_dsn, minsize=1, maxsize=1)
        try:
            async with pool.acquire() as conn:
                pid = conn.raw.get_backend_pid()
                cur = await conn.cursor()
                query = asyncio.ensure_future(cur.execute(SLEEP))
                await watcher.await_sleeping(pid)
                await psycancel.cancel_async(conn, timeout=10)
                try:
                    await query
                    error: BaseException | None = None
                except BaseException as ex:  # aiopg: QueryCanceled, or CancelledError over it
                    error = ex
                assert sqlstate(error) == QUERY_CANCELED or _context_code(error), repr(error)
            async with pool.acquire() as again:
                assert again.raw.get_backend_pid() == pid
                cur = await again.cursor()
                await cur.execute("select 1")
                assert await cur.fetchone() == (1,)
        finally:
            pool.close()
            await pool.wait_closed()

    asyncio.run(main())


def _context_code(error: BaseException | None) -> bool:
    from tests.support.sqlstate import pgcode

    return pgcode(error) == QUERY_CANCELED
