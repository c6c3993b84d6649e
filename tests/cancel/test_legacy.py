"""The fallback for libpq < 17 (the machine's system libpq): PQcancel in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from testing import client
from tests.support.modes import API_MODES, call_cancel
from tests.support.queries import QUERY_CANCELED, drain, run, sleeping


def test_system_libpq_is_legacy(legacy_libpq: Libpq) -> None:
    assert not legacy_libpq.has_cancel_conn
    assert legacy_libpq.version < 170000


@pytest.mark.parametrize("mode", API_MODES)
def test_plain_cancel_without_warning(mode: str, dsn_plain: str, legacy_libpq: Libpq) -> None:
    with sleeping(dsn_plain, legacy_libpq) as conn:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call_cancel(mode, conn, timeout=10, strict=True)
        assert drain(conn).sqlstate == QUERY_CANCELED
        assert run(conn, "select 1").rows == (("1",),)


@pytest.mark.parametrize("mode", API_MODES)
def test_tls_cancel_warns(mode: str, dsn_tls: str, legacy_libpq: Libpq) -> None:
    with sleeping(dsn_tls, legacy_libpq) as conn:
        assert conn.ssl_in_use
        with pytest.warns(psycancel.InsecureCancelWarning, match="clear text") as record:
            call_cancel(mode, conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    if mode == "sync":
        # The warning points at the caller's line (in call_cancel), not at psycancel.
        assert record[0].filename.endswith("modes.py")


@pytest.mark.parametrize("mode", API_MODES)
def test_tls_cancel_strict_refuses(mode: str, dsn_tls: str, legacy_libpq: Libpq) -> None:
    with sleeping(dsn_tls, legacy_libpq) as conn:
        with pytest.raises(psycancel.InsecureCancelError):
            call_cancel(mode, conn, timeout=10, strict=True)
        # Nothing was sent: the query is still running.
        conn.consume_input()
        assert conn.is_busy()


@pytest.mark.parametrize("mode", API_MODES)
def test_idle(mode: str, dsn_plain: str, legacy_libpq: Libpq) -> None:
    conn = client.connect(dsn_plain, libpq=legacy_libpq)
    try:
        call_cancel(mode, conn)
        assert run(conn, "select 1").rows == (("1",),)
    finally:
        conn.finish()


@pytest.mark.parametrize("mode", API_MODES)
def test_timeout_when_black_holed(
    mode: str, pg_server: Any, proxy: Any, legacy_libpq: Libpq
) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="disable"), libpq=legacy_libpq)
    try:
        px.blackhole()
        t0 = time.monotonic()
        with pytest.raises(psycancel.CancellationTimeout, match="legacy"):
            call_cancel(mode, conn, timeout=0.5)
        elapsed = time.monotonic() - t0
        assert 0.5 <= elapsed < 1.5
        stuck = [t for t in threading.enumerate() if t.name == "psycancel-legacy-cancel"]
        assert stuck and all(t.daemon for t in stuck)
    finally:
        conn.finish()
        px.close()  # the stuck PQcancel sees the connection close and returns
    for t in stuck:
        t.join(10)
        assert not t.is_alive()


def test_async_does_not_block_the_loop(pg_server: Any, proxy: Any, legacy_libpq: Libpq) -> None:
    """With 500 ms added each way, the loop keeps ticking while PQcancel waits."""
    px = proxy()
    with sleeping(px.dsn(pg_server, sslmode="disable"), legacy_libpq, pg_server.dsn()) as conn:
        px.delay = 0.5

        async def main() -> tuple[float, int]:
            ticks = 0
            gap = 0.0
            done = False

            async def ticker() -> None:
                nonlocal ticks, gap
                last = time.perf_counter()
                while not done:
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    gap, last, ticks = max(gap, now - last), now, ticks + 1

            task = asyncio.create_task(ticker())
            await psycancel.cancel_async(conn, timeout=10)
            done = True
            await task
            return gap, ticks

        gap, ticks = asyncio.run(main())
        assert drain(conn).sqlstate == QUERY_CANCELED
    # The cancel took >= 1 s; a blocked loop would show one gap that long. (Half
    # of it: a free-threaded build among other suites once showed 248 ms.)
    assert gap < 0.5, f"largest loop gap {gap * 1000:.0f} ms"
    assert ticks > 50
