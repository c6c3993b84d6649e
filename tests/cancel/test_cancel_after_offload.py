"""``cancel_after`` under asyncio follows ``cancel_async``'s default offload rule.

A fired timer's cancel of a TLS session runs in the offload reactor (the
handshake's CPU work stays off the loop thread); a plain one stays inline.
Observed through the process's reactors: fresh ones are installed for the
test, and a reactor exists afterwards exactly when a cancel was offloaded.
"""

from __future__ import annotations

import asyncio

import pytest

import psycancel
from psycancel._engine import offload
from tests.support.drivers import need

psycopg = need("psycopg")


async def _fired_block(dsn: str) -> BaseException:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        with pytest.raises(psycancel.QueryTimeout) as info:
            async with psycancel.cancel_after(conn, 0.05):
                await conn.execute("select pg_sleep(30)")
        cur = await conn.execute("select 1")  # the connection is usable at once
        assert await cur.fetchone() == (1,)
        return info.value
    finally:
        await conn.close()


@pytest.mark.parametrize(("dsn_name", "offloaded"), [("dsn_tls", True), ("dsn_plain", False)])
def test_fired_cancel_follows_the_default_offload_rule(
    dsn_name: str, offloaded: bool, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    dsn = request.getfixturevalue(dsn_name)
    monkeypatch.setattr(offload, "_reactors", {})
    error = asyncio.run(asyncio.wait_for(_fired_block(dsn), 60))
    assert getattr(error.__cause__, "sqlstate", None) == "57014"
    assert bool(offload._reactors) is offloaded
