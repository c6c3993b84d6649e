"""Type-checked (never run) by tests/test_typing.py: each ``# E: code`` marks an expected error."""

from __future__ import annotations

import concurrent.futures
import ctypes
import os

import aiopg
import psycopg
import psycopg2
import sqlalchemy
import sqlalchemy.ext.asyncio
import sqlalchemy.orm

import psycancel
from psycancel.pq import PGconn


class Integrated:
    """A driver type that implements the protocol."""

    def __psycancel_pgconn__(self) -> tuple[int, str]:
        return (0, "")


class Unrelated:
    """Not a connection (e.g. an ORM's connection object)."""

    def execute(self, query: str) -> None: ...


async def accepted(
    pg: PGconn,
    pg2: psycopg2.extensions.connection,
    pg3: psycopg.Connection[tuple[object, ...]],
    apg3: psycopg.AsyncConnection[tuple[object, ...]],
    aio: aiopg.Connection,
    sa: sqlalchemy.Connection,
    session: sqlalchemy.orm.Session,
    asa: sqlalchemy.ext.asyncio.AsyncConnection,
    asession: sqlalchemy.ext.asyncio.AsyncSession,
) -> None:
    psycancel.cancel(pg)
    psycancel.cancel(pg2)
    psycancel.cancel(pg3)
    psycancel.cancel(Integrated())
    await psycancel.cancel_async(apg3)
    await psycancel.cancel_async(aio)
    psycancel.cancel(sa)
    psycancel.cancel(sa.connection)
    psycancel.cancel(session)
    psycancel.Canceller(session).cancel()
    await psycancel.cancel_async(asa)
    await psycancel.cancel_async(asession)
    with psycancel.cancel_after(pg2, 1.0):
        pass
    async with psycancel.cancel_after(apg3, 1.0):
        pass
    borrowed = psycancel.Borrowed(pg2.pgconn_ptr, "/usr/lib/libpq.so.5")
    psycancel.cancel(borrowed)
    psycancel.Borrowed(0, ctypes.CDLL(None))
    psycancel.Borrowed(None, pg.libpq)
    with psycancel.prepare(pg2, strict=True) as prepared:
        prepared.cancel(timeout=1.0)
        await prepared.cancel_async(timeout=1.0, offload=None)
        outcome: concurrent.futures.Future[None] = prepared.fire(lambda error: None)
        assert outcome is not None and not prepared.legacy
    typed: psycancel.PreparedCancel = psycancel.prepare(borrowed)
    typed.close()


async def rejected(dsn: str) -> None:
    psycancel.cancel(None)  # E: arg-type
    psycancel.cancel(dsn)  # E: arg-type
    psycancel.cancel(Unrelated())  # E: arg-type
    await psycancel.cancel_async(os.environ.get("DSN"))  # E: arg-type
    with psycancel.cancel_after(None, 1.0):  # E: arg-type
        pass
    psycancel.cancel(psycopg2.connect(dsn), timeout="5")  # E: arg-type
    psycancel.prepare(dsn)  # E: arg-type
    psycancel.Borrowed("0x10", dsn)  # E: arg-type
    psycancel.Borrowed(0, 42)  # E: arg-type
    psycancel.prepare(Unrelated()).fire(callback=print, timeout=1.0).result()  # E: arg-type
