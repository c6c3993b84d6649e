"""Pool connections: psycopg_pool (sync and async) and aiopg's pool.

What a pool hands out is the driver's own connection class (psycopg's
``Connection``/``AsyncConnection``, aiopg's ``Connection``): these tests prove
it, cancel a real query on each (plain and TLS, SQLSTATE 57014), and use the
connection again after it went back to the pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import psycancel

from . import frameworks_helpers
from .drivers_helpers import Background, need
from .frameworks_helpers import SLEEP, Monitor, sqlstate

psycopg = need("psycopg")
psycopg_pool = need("psycopg_pool")
aiopg = need("aiopg")

fdsn = frameworks_helpers.fdsn
monitor = frameworks_helpers.monitor
CANCELED = "57014"


@pytest.mark.parametrize("api", ["cancel", "cancel_async", "Canceller"])
def test_psycopg_pool_connection(fdsn: str, monitor: Monitor, api: str) -> None:
    with psycopg_pool.ConnectionPool(fdsn, min_size=1, max_size=1, open=True) as pool:
        with pool.connection() as conn:
            assert isinstance(conn, psycopg.Connection)  # the driver's own class
            pid = conn.info.backend_pid
            query = Background(lambda: conn.execute(SLEEP))
            monitor.wait_sleeping(pid)
            if api == "cancel":
                psycancel.cancel(conn)
            elif api == "cancel_async":
                asyncio.run(psycancel.cancel_async(conn))
            else:
                psycancel.Canceller(conn).cancel()
            assert sqlstate(query.error()) == CANCELED
        with pool.connection() as again:  # back in the pool, then handed out again
            assert again.info.backend_pid == pid
            assert again.execute("select 1").fetchone() == (1,)


def test_psycopg_pool_cancel_after(fdsn: str) -> None:
    with psycopg_pool.ConnectionPool(fdsn, min_size=1, max_size=1, open=True) as pool:
        with (
            pool.connection() as conn,
            pytest.raises(psycancel.QueryTimeout),
            psycancel.cancel_after(conn, 0.2),
        ):
            conn.execute(SLEEP)
        with pool.connection() as again:
            assert again.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("api", ["cancel_async", "cancel"])
def test_psycopg_async_pool_connection(fdsn: str, monitor: Monitor, api: str) -> None:
    async def main() -> None:
        pool = psycopg_pool.AsyncConnectionPool(fdsn, min_size=1, max_size=1, open=False)
        await pool.open()
        try:
            async with pool.connection() as conn:
                assert isinstance(conn, psycopg.AsyncConnection)
                pid = conn.info.backend_pid
                task = asyncio.ensure_future(conn.execute(SLEEP))
                await monitor.await_sleeping(pid)
                if api == "cancel_async":
                    await psycancel.cancel_async(conn)
                else:
                    await asyncio.to_thread(psycancel.cancel, conn)
                with pytest.raises(psycopg.errors.QueryCanceled):
                    await task
            async with pool.connection() as again:
                assert again.info.backend_pid == pid
                cur = await again.execute("select 1")
                assert await cur.fetchone() == (1,)
            async with pool.connection() as conn:
                with pytest.raises(psycancel.QueryTimeout):
                    async with psycancel.cancel_after(conn, 0.2):
                        await conn.execute(SLEEP)
        finally:
            await pool.close()

    asyncio.run(main())


def test_aiopg_pool_connection(fdsn: str, monitor: Monitor) -> None:
    async def main() -> Any:
        async with aiopg.create_pool(fdsn, minsize=1, maxsize=1) as pool:
            async with pool.acquire() as conn:
                assert isinstance(conn, aiopg.Connection)
                pid = conn.raw.get_backend_pid()
                async with conn.cursor() as cur:
                    task = asyncio.ensure_future(cur.execute(SLEEP))
                    await monitor.await_sleeping(pid)
                    await psycancel.cancel_async(conn)
                    # aiopg re-raises psycopg2's QueryCanceled as CancelledError.
                    with pytest.raises((asyncio.CancelledError, Exception)) as info:
                        await task
                    error = info.value
                    context = error if sqlstate(error) else error.__context__
                    assert sqlstate(context) == CANCELED, repr(error)
            async with pool.acquire() as again:
                assert again.raw.get_backend_pid() == pid
                async with again.cursor() as cur:
                    await cur.execute("select 1")
                    assert await cur.fetchone() == (1,)
                    with pytest.raises(psycancel.QueryTimeout):
                        async with psycancel.cancel_after(again, 0.2):
                            await cur.execute(SLEEP)
                    await cur.execute("select 2")
                    assert await cur.fetchone() == (2,)

    asyncio.run(main())
