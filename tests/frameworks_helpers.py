"""Helpers shared by the framework and pool tests (SQLAlchemy, Django, pools)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .drivers_helpers import need

psycopg = need("psycopg")

SLEEP = "select pg_sleep(30)"


def driver_error(exc: BaseException | None) -> BaseException | None:
    """The driver's exception behind a framework's one (``.orig``, ``__cause__``)."""
    seen = 0
    while exc is not None and seen < 16:
        if getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None):
            return exc
        orig = getattr(exc, "orig", None)
        exc = orig if isinstance(orig, BaseException) else exc.__cause__
        seen += 1
    return None


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of the driver's exception behind ``exc`` (any depth)."""
    err = driver_error(exc)
    if err is None:
        return None
    return getattr(err, "pgcode", None) or getattr(err, "sqlstate", None)


class Monitor:
    """A psycopg connection that watches ``pg_stat_activity``."""

    def __init__(self, dsn: str) -> None:
        self.conn: Any = psycopg.connect(dsn, autocommit=True)

    def sleeping(self, pid: int) -> bool:
        """True while backend ``pid`` runs ``pg_sleep``."""
        row = self.conn.execute(
            "select 1 from pg_stat_activity where pid = %s and wait_event = 'PgSleep'", (pid,)
        ).fetchone()
        return row is not None

    def wait_sleeping(self, pid: int, timeout: float = 15.0) -> None:
        """Block until backend ``pid`` sleeps in ``pg_sleep``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sleeping(pid):
                return
            time.sleep(0.005)
        raise AssertionError(f"backend {pid} never started its query")

    async def await_sleeping(self, pid: int, timeout: float = 15.0) -> None:
        """:meth:`wait_sleeping` for a coroutine (polls without blocking the loop long)."""
        import asyncio

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sleeping(pid):
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"backend {pid} never started its query")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def monitor(dsn_plain: str) -> Iterator[Monitor]:
    """A :class:`Monitor` on the test server."""
    mon = Monitor(dsn_plain)
    try:
        yield mon
    finally:
        mon.close()


@pytest.fixture(params=["dsn_plain", "dsn_tls"], ids=["plain", "tls"])
def fdsn(request: pytest.FixtureRequest) -> str:
    """A plain, then a TLS (``sslmode=require``) conninfo of the test server."""
    value: str = request.getfixturevalue(request.param)
    return value
