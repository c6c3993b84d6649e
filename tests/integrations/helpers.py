"""Shared by the integration tests: limits, the black hole, checks of an outcome."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import psycancel
from tests.support.frameworks import Monitor
from tests.support.proxy import ServerLike, TcpProxy

SECONDS = 0.3
"""The configured default of the tests (a query past it is cancelled)."""
TIMEOUT = 0.6
"""The cancel's bound; past it the deadline breaks the connection."""
SLOW = "select pg_sleep(30)"
"""A query that only a deadline ends in a test's time."""
OUTLIVES = "select pg_sleep(0.8)"
"""A query that outlives :data:`SECONDS` (it completes unless a deadline of SECONDS applies)."""
QUERY_CANCELED = "57014"


def driver_error(exc: BaseException | None) -> BaseException | None:
    """The driver's exception behind ``exc``: ``.orig``, ``__cause__`` (any depth)."""
    for _ in range(16):
        if exc is None:
            return None
        if getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None):
            return exc
        orig = getattr(exc, "orig", None)
        exc = orig if isinstance(orig, BaseException) else exc.__cause__
    return None


def assert_timed_out(info: pytest.ExceptionInfo[psycancel.QueryTimeout]) -> None:
    """A deadline's cancel ended the query: QueryTimeout from the driver's 57014."""
    error = info.value
    assert not error.connection_broken
    driver = driver_error(error.__cause__)
    assert driver is not None, repr(error.__cause__)
    code = getattr(driver, "sqlstate", None) or getattr(driver, "pgcode", None)
    assert code == QUERY_CANCELED


class BlackHole:
    """A proxy towards the server that a test freezes once a backend sleeps."""

    def __init__(self, proxy: TcpProxy, server: ServerLike, monitor: Monitor) -> None:
        self.proxy = proxy
        self.server = server
        self.monitor = monitor
        self._thread: threading.Thread | None = None

    def dsn(self, sslmode: str = "disable") -> str:
        return self.proxy.dsn(self.server, sslmode=sslmode)

    def freeze_when_sleeping(self, pid: int) -> None:
        """Freeze the proxy, from a thread, once backend ``pid`` runs ``pg_sleep``."""
        mon = Monitor(self.monitor.conn.info.dsn)

        def main() -> None:
            try:
                mon.wait_sleeping(pid)
                self.proxy.freeze()
            finally:
                mon.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()

    def heal(self, pid: int) -> None:
        """Join the freezer, end the stranded backend, forward again."""
        if self._thread is not None:
            self._thread.join(10)
        assert self.proxy.frozen.is_set()
        self.monitor.terminate(pid)
        self.proxy.thaw()


@pytest.fixture
def black_hole(pg_server: ServerLike, proxy: Any, monitor: Monitor) -> BlackHole:
    """A :class:`BlackHole` (the test proxy, frozen mid-query on demand)."""
    return BlackHole(proxy(), pg_server, monitor)
