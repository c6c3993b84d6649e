"""SQLAlchemy (sync and asyncio engines): the default deadline through engine events (issue 23).

Real server, real drivers (psycopg2 and psycopg 3 dialects; asyncio:
psycopg's): ``install(engine, seconds)`` applies to every statement (Core
and ORM ``Session``), the ``psycancel_timeout`` execution option (statement,
connection) and a ``query_timeout`` block override it, None disables it; a
slow statement raises ``QueryTimeout`` (SQLAlchemy raises it ``from`` the
driver's 57014) and the connection runs the next one; a black-holed one
breaks the connection and the pool invalidates it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import psycancel
from psycancel.integrations import query_timeout
from testing import parse_conninfo
from tests.integrations.helpers import (
    OUTLIVES,
    SECONDS,
    SLOW,
    TIMEOUT,
    BlackHole,
    assert_timed_out,
)
from tests.support.drivers import need

sqlalchemy = need("sqlalchemy")
sqlalchemy_asyncio = need("sqlalchemy.ext.asyncio")
sqlalchemy_orm = need("sqlalchemy.orm")
need("psycopg")
need("psycopg2")
deadlines = need("psycancel.integrations.sqlalchemy")

text = sqlalchemy.text


def url(dsn: str, dialect: str) -> Any:
    params = parse_conninfo(dsn)
    return sqlalchemy.engine.URL.create(
        f"postgresql+{dialect}",
        username=params.get("user"),
        host=params["host"],
        port=int(params["port"]),
        database=params.get("dbname", "postgres"),
        query={"sslmode": params.get("sslmode", "disable")},
    )


@pytest.fixture(params=["psycopg2", "psycopg"])
def engine(request: pytest.FixtureRequest, dsn_plain: str) -> Iterator[Any]:
    eng = sqlalchemy.create_engine(url(dsn_plain, request.param), pool_size=1, max_overflow=0)
    deadlines.install(eng, SECONDS, timeout=TIMEOUT)
    try:
        yield eng
    finally:
        deadlines.uninstall(eng)
        eng.dispose()


def test_the_default_applies_to_every_statement(engine: Any) -> None:
    with engine.connect() as conn:
        for _ in range(2):
            with pytest.raises(psycancel.QueryTimeout) as info:
                conn.execute(text(SLOW))
            assert_timed_out(info)
            assert not conn.invalidated
            conn.rollback()
        assert conn.execute(text("select 1")).scalar() == 1
    with sqlalchemy_orm.Session(engine) as session:
        with pytest.raises(psycancel.QueryTimeout) as info:
            session.execute(text(SLOW))
        assert_timed_out(info)
        session.rollback()
        assert session.execute(text("select 1")).scalar() == 1


def test_execution_options_override(engine: Any) -> None:
    with engine.connect() as conn:
        conn.execute(text(OUTLIVES).execution_options(psycancel_timeout=10))
        conn.execute(text(OUTLIVES).execution_options(psycancel_timeout=None))
        with pytest.raises(ValueError):
            conn.execute(text("select 1").execution_options(psycancel_timeout=-1))
        conn.rollback()
        with query_timeout(None):
            conn.execute(text(OUTLIVES))
        with query_timeout(10):
            conn.execute(text(OUTLIVES))
    with engine.connect() as conn:
        conn.execution_options(psycancel_timeout=10)  # (in place: this connection)
        conn.execute(text(OUTLIVES))
        with pytest.raises(psycancel.QueryTimeout) as info:  # one execute's options win
            conn.execute(text(SLOW), execution_options={"psycancel_timeout": SECONDS})
        assert_timed_out(info)
        conn.rollback()
    deadlines.install(engine, None)
    with engine.connect() as conn:
        conn.execute(text(OUTLIVES))  # no default
        with pytest.raises(psycancel.QueryTimeout):
            conn.execute(text(SLOW).execution_options(psycancel_timeout=SECONDS))


def test_engine_level_execution_option(dsn_plain: str) -> None:
    eng = sqlalchemy.create_engine(
        url(dsn_plain, "psycopg"), execution_options={"psycancel_timeout": SECONDS}
    )
    deadlines.install(eng, None, timeout=TIMEOUT)
    try:
        with eng.connect() as conn, pytest.raises(psycancel.QueryTimeout):
            conn.execute(text(SLOW))
    finally:
        eng.dispose()


def test_uninstall_removes_the_deadline(dsn_plain: str) -> None:
    eng = sqlalchemy.create_engine(url(dsn_plain, "psycopg"))
    deadlines.install(eng, SECONDS)
    deadlines.uninstall(eng)
    try:
        with eng.connect() as conn:
            conn.execute(text(OUTLIVES))
    finally:
        eng.dispose()


def test_the_pool_invalidates_a_connection_the_deadline_broke(black_hole: BlackHole) -> None:
    eng = sqlalchemy.create_engine(url(black_hole.dsn(), "psycopg2"), pool_size=1, max_overflow=0)
    deadlines.install(eng, SECONDS, timeout=TIMEOUT)
    try:
        with eng.connect() as conn:
            pid = conn.connection.dbapi_connection.get_backend_pid()
            black_hole.freeze_when_sleeping(pid)
            with pytest.raises(psycancel.QueryTimeout) as info:
                conn.execute(text(SLOW))
            assert info.value.connection_broken
            assert conn.invalidated
            black_hole.heal(pid)
        with eng.connect() as again:
            assert again.connection.dbapi_connection.get_backend_pid() != pid
            assert again.execute(text("select 1")).scalar() == 1
    finally:
        eng.dispose()


def test_async_engine(dsn_tls: str) -> None:
    async def main() -> None:
        eng = sqlalchemy_asyncio.create_async_engine(url(dsn_tls, "psycopg"), pool_size=1)
        deadlines.install(eng, SECONDS, timeout=TIMEOUT)
        try:
            async with eng.connect() as conn:
                for _ in range(2):
                    with pytest.raises(psycancel.QueryTimeout) as info:
                        await conn.execute(text(SLOW))
                    assert_timed_out(info)
                    await conn.rollback()
                await conn.execute(text(OUTLIVES).execution_options(psycancel_timeout=None))
                with query_timeout(10):
                    await conn.execute(text(OUTLIVES))
                assert (await conn.execute(text("select 1"))).scalar() == 1
            async with sqlalchemy_asyncio.AsyncSession(eng) as session:
                with pytest.raises(psycancel.QueryTimeout):
                    await session.execute(text(SLOW))
        finally:
            await eng.dispose()

    asyncio.run(main())


def test_async_engine_invalidates_a_broken_connection(black_hole: BlackHole) -> None:
    async def main() -> None:
        eng = sqlalchemy_asyncio.create_async_engine(
            url(black_hole.dsn(), "psycopg"), pool_size=1, max_overflow=0
        )
        deadlines.install(eng, SECONDS, timeout=TIMEOUT)
        try:
            async with eng.connect() as conn:
                raw = await conn.get_raw_connection()
                pid = raw.driver_connection.info.backend_pid
                black_hole.freeze_when_sleeping(pid)
                with pytest.raises(psycancel.QueryTimeout) as info:
                    await conn.execute(text(SLOW))
                assert info.value.connection_broken
                assert conn.invalidated
                await asyncio.to_thread(black_hole.heal, pid)
            async with eng.connect() as again:
                raw = await again.get_raw_connection()
                assert raw.driver_connection.info.backend_pid != pid
                assert (await again.execute(text("select 1"))).scalar() == 1
        finally:
            await eng.dispose()

    asyncio.run(main())
