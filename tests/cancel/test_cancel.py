"""The public API against the real server, with the new PQcancelConn API."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from psycancel.pq.abc import PGcancelConn
from testing import client
from testing.client import ExecStatus
from tests.support.fds import loop_fds, open_fds, sockets_to
from tests.support.modes import API_MODES, call_cancel, offload_kwargs
from tests.support.queries import QUERY_CANCELED, drain, run, sleeping


@pytest.mark.parametrize("mode", API_MODES)
def test_cancels_running_query(
    mode: str, dsn: str, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    with sleeping(dsn, libpq) as conn:
        call_cancel(mode, conn, timeout=10)
        res = drain(conn)
        assert res.status == ExecStatus.FATAL_ERROR
        assert res.sqlstate == QUERY_CANCELED
        assert run(conn, "select 42").rows == (("42",),)
    assert len(created) == 1 and created[0].closed


@pytest.mark.parametrize("mode", API_MODES)
def test_connection_was_encrypted_as_expected(mode: str, dsn: str, libpq: Libpq) -> None:
    with sleeping(dsn, libpq) as conn:
        assert conn.ssl_in_use == ("sslmode=disable" not in dsn)
        call_cancel(mode, conn)
        assert drain(conn).sqlstate == QUERY_CANCELED


@pytest.mark.parametrize("mode", API_MODES)
def test_idle_connection(mode: str, dsn: str, libpq: Libpq, created: list[PGcancelConn]) -> None:
    conn = client.connect(dsn, libpq=libpq)
    try:
        call_cancel(mode, conn)
        res = run(conn, "select 1")
        assert res.status == ExecStatus.TUPLES_OK and res.rows == (("1",),)
    finally:
        conn.finish()
    assert len(created) == 1 and created[0].closed


@pytest.mark.parametrize("mode", API_MODES)
def test_timeout_when_black_holed(
    mode: str, pg_server: Any, proxy: Any, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="require"), libpq=libpq)
    try:
        px.blackhole()
        before = sockets_to(px.port)  # the session's own connection
        timeout = 0.5
        t0 = time.monotonic()
        if mode == "sync":
            with pytest.raises(psycancel.CancellationTimeout):
                psycancel.cancel(conn, timeout=timeout)
        else:

            async def main() -> None:
                loop = asyncio.get_running_loop()
                before = loop_fds(loop)
                with pytest.raises(psycancel.CancellationTimeout):
                    await psycancel.cancel_async(conn, timeout=timeout, **offload_kwargs(mode))
                assert loop_fds(loop) == before

            asyncio.run(main())
        elapsed = time.monotonic() - t0
        assert elapsed >= timeout
        # Generous: catches a deadline checked only when woken, not a slow machine.
        assert elapsed < timeout + 1.0
        assert sockets_to(px.port) == before
    finally:
        conn.finish()
    assert len(created) == 1 and created[0].closed


@pytest.mark.parametrize("mode", API_MODES)
def test_refused(
    mode: str, pg_server: Any, proxy: Any, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="disable"), libpq=libpq)
    try:
        px.close()
        fds = open_fds()
        t0 = time.monotonic()
        with pytest.raises(psycancel.CancelError) as info:
            call_cancel(mode, conn, timeout=10)
        assert time.monotonic() - t0 < 5  # refused means fast, not the timeout
        assert "refused" in str(info.value).lower()
        assert open_fds() <= fds
    finally:
        conn.finish()
    assert len(created) == 1 and created[0].closed


@pytest.mark.parametrize("offload", [False, True])
def test_task_cancellation_cleans_up(
    offload: bool, pg_server: Any, proxy: Any, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="require"), libpq=libpq)
    try:
        px.blackhole()
        before = sockets_to(px.port)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            before = loop_fds(loop)
            task = asyncio.create_task(psycancel.cancel_async(conn, timeout=30, offload=offload))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop_fds(loop) == before

        asyncio.run(main())
        assert sockets_to(px.port) == before
    finally:
        conn.finish()
    assert len(created) == 1 and created[0].closed


def test_bad_offload(dsn_plain: str, libpq: Libpq) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    try:
        with pytest.raises(TypeError, match="offload"):
            asyncio.run(psycancel.cancel_async(conn, offload="yes"))  # type: ignore[arg-type]
    finally:
        conn.finish()


@pytest.mark.parametrize("offload", [False, True])
def test_many_concurrent_async_cancels(
    offload: bool, dsn_tls: str, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    """50 concurrent cancels of 5 running queries: all complete, all cleaned up."""
    conns = []
    stack = contextlib.ExitStack()
    try:
        for _ in range(5):
            conns.append(stack.enter_context(sleeping(dsn_tls, libpq)))

        async def main() -> None:
            await asyncio.gather(
                *(
                    psycancel.cancel_async(conns[i % 5], timeout=20, offload=offload)
                    for i in range(50)
                )
            )

        asyncio.run(main())
        for conn in conns:
            assert drain(conn).sqlstate == QUERY_CANCELED
    finally:
        stack.close()
    assert len(created) == 50 and all(cc.closed for cc in created)


@pytest.mark.parametrize("mode", API_MODES)
@pytest.mark.parametrize(
    "bad", [None, object(), "host=localhost", 42], ids=["None", "object", "str", "int"]
)
def test_not_a_connection(mode: str, bad: object) -> None:
    with pytest.raises(psycancel.InterfaceError):
        call_cancel(mode, bad)


@pytest.mark.parametrize("mode", API_MODES)
def test_finished_connection(
    mode: str, dsn_plain: str, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    """A finished connection runs no query: nothing to cancel, nothing is sent."""
    conn = client.connect(dsn_plain, libpq=libpq)
    conn.finish()
    call_cancel(mode, conn)
    assert created == []


@pytest.mark.parametrize("mode", API_MODES)
@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (-1, ValueError),
        (0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("1", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_timeout(
    mode: str, timeout: object, error: type[Exception], dsn_plain: str, libpq: Libpq
) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    try:
        with pytest.raises(error, match="timeout"):
            call_cancel(mode, conn, timeout=timeout)
    finally:
        conn.finish()


def test_errors_hierarchy() -> None:
    assert issubclass(psycancel.CancellationTimeout, TimeoutError)
    for name in ("CancelError", "CancellationTimeout", "InterfaceError", "InsecureCancelError"):
        assert issubclass(getattr(psycancel, name), psycancel.Error)
    assert issubclass(psycancel.InsecureCancelWarning, UserWarning)


def test_signal_handler_exception_interrupts_a_blocking_cancel(
    pg_server: Any, proxy: Any, libpq: Libpq, created: list[PGcancelConn]
) -> None:
    """An exception raised by a signal handler (e.g. KeyboardInterrupt) ends a
    blocking cancel at once, and the cancel connection is finished."""

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="require"), libpq=libpq)
    old = signal.signal(signal.SIGALRM, handler)
    try:
        px.blackhole()
        before = sockets_to(px.port)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        t0 = time.monotonic()
        with pytest.raises(Interrupted):
            psycancel.cancel(conn, timeout=30)
        assert time.monotonic() - t0 < 10
        assert sockets_to(px.port) == before
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        conn.finish()
    assert len(created) == 1 and created[0].closed
