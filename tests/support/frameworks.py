"""Helpers shared by the framework and pool tests (SQLAlchemy, Django, pools)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .active import (
    POLL_TIMEOUT,
    SLEEP,
    active_sleep_query,
    poll_until_active,
    poll_until_active_async,
)
from .drivers import need

psycopg = need("psycopg")

__all__ = ["SLEEP", "Monitor", "driver_error", "monitor", "sqlstate"]


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
        return self._rows(active_sleep_query(pid)) != []

    def _rows(self, sql: str) -> list[Any]:
        return list(self.conn.execute(sql).fetchall())

    def wait_sleeping(self, pid: int, timeout: float = POLL_TIMEOUT) -> None:
        """Block until backend ``pid`` sleeps in ``pg_sleep``."""
        poll_until_active(self._rows, pid, timeout=timeout)

    async def await_sleeping(self, pid: int, timeout: float = POLL_TIMEOUT) -> None:
        """:meth:`wait_sleeping` for a coroutine (each poll is a short blocking query)."""

        async def rows(sql: str) -> list[Any]:
            return self._rows(sql)

        await poll_until_active_async(rows, pid, timeout=timeout)

    def terminate(self, pid: int) -> None:
        """End backend ``pid`` (a black-holed session's server side would sleep on)."""
        self.conn.execute("select pg_terminate_backend(%s)", (pid,))

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
