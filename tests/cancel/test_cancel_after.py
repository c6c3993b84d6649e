"""``psycancel.cancel_after``: a client-side statement timeout, with real drivers.

The races matter most: a timer that fires just as the query ends must never
cancel the *next* query on the connection, so leaving the block waits for an
in-flight cancel to complete.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from psycancel.pq.abc import PGcancelConn
from testing import client
from tests.support.drivers import QUERY_CANCELED, SLEEP, Background, pgcode, run_legacy
from tests.support.drivers import need as _need
from tests.support.fds import loop_fds
from tests.support.queries import run, wait_until_active

psycopg2 = _need("psycopg2")
psycopg2_errors = _need("psycopg2.errors")
psycopg = _need("psycopg")
aiopg = _need("aiopg")

# =====================================================================================
# Drivers, sync and async, behind one small interface
# =====================================================================================


class Sync:
    """A blocking driver: ``connect(dsn)``, ``execute(conn, sql)`` (returns rows)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.canceled = (
            psycopg2_errors.QueryCanceled if name == "psycopg2" else psycopg.errors.QueryCanceled
        )

    def connect(self, dsn: str) -> Any:
        if self.name == "psycopg2":
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            return conn
        return psycopg.connect(dsn, autocommit=True)

    def execute(self, conn: Any, query: str) -> list[tuple[Any, ...]]:
        if self.name == "psycopg2":
            with conn.cursor() as cur:
                cur.execute(query)
                return list(cur.fetchall())
        return list(conn.execute(query).fetchall())

    def pid(self, conn: Any) -> int:
        return int(conn.info.backend_pid)


class Async:
    """An async driver (psycopg AsyncConnection, aiopg), same interface, awaited."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.canceled = (
            psycopg.errors.QueryCanceled if name == "psycopg" else psycopg2_errors.QueryCanceled
        )

    async def connect(self, dsn: str) -> Any:
        if self.name == "psycopg":
            return await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        return await aiopg.connect(dsn)

    async def execute(self, conn: Any, query: str) -> list[tuple[Any, ...]]:
        if self.name == "psycopg":
            cur = await conn.execute(query)
            return list(await cur.fetchall())
        cur = await conn.cursor()
        try:
            await cur.execute(query)
            return list(await cur.fetchall())
        finally:
            cur.close()

    async def close(self, conn: Any) -> None:
        if self.name == "psycopg":
            await conn.close()
        else:
            await conn.close()

    def pid(self, conn: Any) -> int:
        raw = conn if self.name == "psycopg" else conn.raw
        return int(raw.info.backend_pid)


@pytest.fixture(params=["psycopg2", "psycopg"])
def sync_driver(request: pytest.FixtureRequest) -> Sync:
    return Sync(request.param)


@pytest.fixture(params=["psycopg", "aiopg"])
def async_driver(request: pytest.FixtureRequest) -> Async:
    return Async(request.param)


def timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "psycancel-cancel-after"]


def no_timer_threads_soon(timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while timer_threads():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def arun(func: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(func())  # type: ignore[arg-type]


# =====================================================================================
# It fires: QueryTimeout from the driver's QueryCanceled, connection still usable
# =====================================================================================


def test_fires_sync(sync_driver: Sync, dsn: str, created: list[PGcancelConn]) -> None:
    conn = sync_driver.connect(dsn)
    try:
        timer = psycancel.cancel_after(conn, 0.2)
        t0 = time.monotonic()
        with pytest.raises(psycancel.QueryTimeout) as info, timer:
            sync_driver.execute(conn, SLEEP)
        assert 0.2 <= time.monotonic() - t0 < 5
        assert timer.fired
        assert isinstance(info.value.__cause__, sync_driver.canceled)
        assert pgcode(info.value.__cause__) == QUERY_CANCELED
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, psycancel.Error)
        assert sync_driver.execute(conn, "select 1") == [(1,)]
    finally:
        conn.close()
    assert len(created) == 1 and created[0].closed
    assert no_timer_threads_soon()


def test_fires_async(async_driver: Async, dsn: str, created: list[PGcancelConn]) -> None:
    async def main() -> None:
        conn = await async_driver.connect(dsn)
        loop = asyncio.get_running_loop()
        try:
            before = loop_fds(loop)
            timer = psycancel.cancel_after(conn, 0.2)
            t0 = time.monotonic()
            with pytest.raises(psycancel.QueryTimeout) as info:
                async with timer:
                    await async_driver.execute(conn, SLEEP)
            assert 0.2 <= time.monotonic() - t0 < 5
            assert timer.fired
            assert isinstance(info.value.__cause__, async_driver.canceled)
            # The awaiting task itself was never cancelled.
            task = asyncio.current_task()
            assert task is not None
            assert not getattr(task, "cancelling", lambda: 0)()
            assert loop_fds(loop) == before  # the cancel left nothing registered
            assert await async_driver.execute(conn, "select 1") == [(1,)]
        finally:
            await async_driver.close(conn)

    arun(main)
    assert len(created) == 1 and created[0].closed
    assert timer_threads() == []  # asyncio uses a loop timer, not a thread


# =====================================================================================
# It does not fire, or it is not its business
# =====================================================================================


def test_fast_query_untouched_sync(sync_driver: Sync, dsn_plain: str) -> None:
    conn = sync_driver.connect(dsn_plain)
    try:
        timer = psycancel.cancel_after(conn, 5)
        with timer:
            rows = sync_driver.execute(conn, "select 42")
        assert rows == [(42,)]
        assert not timer.fired
    finally:
        conn.close()
    assert no_timer_threads_soon()


def test_fast_query_untouched_async(async_driver: Async, dsn_plain: str) -> None:
    async def main() -> None:
        conn = await async_driver.connect(dsn_plain)
        try:
            timer = psycancel.cancel_after(conn, 0.3)
            async with timer:
                rows = await async_driver.execute(conn, "select 42")
            assert rows == [(42,)]
            await asyncio.sleep(0.5)  # past the limit: the timer was really disarmed
            assert not timer.fired
            assert await async_driver.execute(conn, "select 1") == [(1,)]
        finally:
            await async_driver.close(conn)

    arun(main)


def test_other_errors_untouched(sync_driver: Sync, dsn_plain: str) -> None:
    conn = sync_driver.connect(dsn_plain)
    try:
        with pytest.raises(ZeroDivisionError), psycancel.cancel_after(conn, 5):
            1 / 0  # noqa: B018
        with pytest.raises(Exception) as info, psycancel.cancel_after(conn, 5):
            sync_driver.execute(conn, "select 1 / 0")
        assert pgcode(info.value) == "22012"
        assert not isinstance(info.value, psycancel.Error)
    finally:
        conn.close()


def test_cancel_by_someone_else_is_not_a_timeout(
    sync_driver: Sync, dsn_plain: str, libpq: Libpq
) -> None:
    conn = sync_driver.connect(dsn_plain)
    monitor = client.connect(dsn_plain, libpq=libpq)
    try:

        def body() -> None:
            with psycancel.cancel_after(conn, 30):
                sync_driver.execute(conn, SLEEP)

        query = Background(body)
        wait_until_active(monitor, sync_driver.pid(conn))
        psycancel.cancel(conn)
        error = query.error()
        assert isinstance(error, sync_driver.canceled)
        assert not isinstance(error, psycancel.QueryTimeout)
    finally:
        monitor.finish()
        conn.close()


# =====================================================================================
# The race: a late cancel must never hit the next query
# =====================================================================================

ROUNDS = 100


QUERY = "select pg_sleep(0.01)"


def limit(i: int, took: float) -> float:
    """Time limits spread around ``took``, the query's own median time here
    (10% to 120% of it), so that every side of the race happens: in time,
    cancelled, and fired-but-too-late. Measured, not assumed: under emulation
    (qemu) a TLS round trip takes more than the 10 ms the query sleeps."""
    return took * (0.1 + 1.1 * (i % 12) / 11)


def median_time(run: Callable[[], object], times: int = 7) -> float:
    """The median wall time of ``run()``."""
    spans = []
    for _ in range(times):
        t0 = time.monotonic()
        run()
        spans.append(time.monotonic() - t0)
    return statistics.median(spans)


async def median_time_async(run: Callable[[], Awaitable[object]], times: int = 7) -> float:
    """The median wall time of ``await run()``."""
    spans = []
    for _ in range(times):
        t0 = time.monotonic()
        await run()
        spans.append(time.monotonic() - t0)
    return statistics.median(spans)


def _tally(outcomes: list[str]) -> str:
    return ", ".join(f"{k}: {outcomes.count(k)}" for k in sorted(set(outcomes)))


@pytest.mark.parametrize("dsn_name", ["dsn_plain", "dsn_tls"])
def test_next_query_never_cancelled_sync(
    sync_driver: Sync, dsn_name: str, request: pytest.FixtureRequest
) -> None:
    conn = sync_driver.connect(request.getfixturevalue(dsn_name))
    outcomes: list[str] = []
    try:
        took = median_time(lambda: sync_driver.execute(conn, QUERY))
        for i in range(ROUNDS):
            timer = psycancel.cancel_after(conn, limit(i, took))
            try:
                with timer:
                    sync_driver.execute(conn, QUERY)
            except psycancel.QueryTimeout:
                outcomes.append("timeout")
            else:
                outcomes.append("late" if timer.fired else "in time")
            # Right after the block: must never be hit by the block's cancel.
            assert sync_driver.execute(conn, "select 1") == [(1,)], _tally(outcomes)
    finally:
        conn.close()
    print("outcomes:", _tally(outcomes))
    # Both sides of the race were exercised (else the test proves little).
    assert {"timeout", "late"} & set(outcomes), _tally(outcomes)
    assert len(set(outcomes)) >= 2, _tally(outcomes)


@pytest.mark.parametrize("dsn_name", ["dsn_plain", "dsn_tls"])
def test_next_query_never_cancelled_async(
    async_driver: Async, dsn_name: str, request: pytest.FixtureRequest
) -> None:
    dsn = request.getfixturevalue(dsn_name)

    async def main() -> list[str]:
        conn = await async_driver.connect(dsn)
        outcomes: list[str] = []
        try:
            took = await median_time_async(lambda: async_driver.execute(conn, QUERY))
            for i in range(ROUNDS):
                timer = psycancel.cancel_after(conn, limit(i, took))
                try:
                    async with timer:
                        await async_driver.execute(conn, QUERY)
                except psycancel.QueryTimeout:
                    outcomes.append("timeout")
                else:
                    outcomes.append("late" if timer.fired else "in time")
                rows = await async_driver.execute(conn, "select 1")
                assert rows == [(1,)], _tally(outcomes)
        finally:
            await async_driver.close(conn)
        return outcomes

    outcomes = arun(main)
    print("outcomes:", _tally(outcomes))
    assert {"timeout", "late"} & set(outcomes), _tally(outcomes)
    assert len(set(outcomes)) >= 2, _tally(outcomes)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_block_waits_for_an_in_flight_cancel(
    mode: str, pg_server: Any, proxy: Any, created: list[PGcancelConn]
) -> None:
    """The timer fires, the query ends before the (slow) cancel arrives: the
    block returns normally, but only once the cancel has completed."""
    px = proxy()
    dsn = px.dsn(pg_server, sslmode="disable")
    delay = 0.3

    if mode == "sync":
        conn = Sync("psycopg").connect(dsn)
        try:
            px.forward(delay=delay)  # only the cancel connection (a new one) is slowed
            timer = psycancel.cancel_after(conn, 0.05)
            t0 = time.monotonic()
            with timer:
                rows = Sync("psycopg").execute(conn, "select 1 from pg_sleep(0.15)")
            elapsed = time.monotonic() - t0
            assert rows == [(1,)]
            assert Sync("psycopg").execute(conn, "select 2") == [(2,)]
        finally:
            conn.close()
    else:

        async def main() -> tuple[list[tuple[Any, ...]], float, Any]:
            driver = Async("psycopg")
            conn = await driver.connect(dsn)
            try:
                px.forward(delay=delay)
                timer = psycancel.cancel_after(conn, 0.05)
                t0 = time.monotonic()
                async with timer:
                    rows = await driver.execute(conn, "select 1 from pg_sleep(0.15)")
                elapsed = time.monotonic() - t0
                assert await driver.execute(conn, "select 2") == [(2,)]
                return rows, elapsed, timer
            finally:
                await driver.close(conn)

        rows, elapsed, timer = arun(main)
        assert rows == [(1,)]
    assert timer.fired
    # Cancel request and EOF each crossed the proxy's delay before the block left.
    assert elapsed >= 0.05 + 2 * delay, elapsed
    assert len(created) == 1 and created[0].closed
    assert px.accepted == 2  # the session, and one cancel connection


def test_task_cancelled_while_leaving_still_waits(
    pg_server: Any, proxy: Any, created: list[PGcancelConn]
) -> None:
    """Cancelling the task while the block waits for its in-flight cancel: the
    wait goes on (the guarantee first), then CancelledError propagates."""
    px = proxy()
    dsn = px.dsn(pg_server, sslmode="disable")
    delay = 0.3

    async def main() -> tuple[float, bool]:
        driver = Async("psycopg")
        conn = await driver.connect(dsn)
        try:
            px.forward(delay=delay)

            async def body() -> None:
                async with psycancel.cancel_after(conn, 0.05):
                    await driver.execute(conn, "select 1 from pg_sleep(0.15)")

            task = asyncio.create_task(body())
            await asyncio.sleep(0.25)  # the query is over; the cancel is in flight
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            closed_when_cancelled = created[0].closed
            assert await driver.execute(conn, "select 2") == [(2,)]
            return time.monotonic() - t0, closed_when_cancelled
        finally:
            await driver.close(conn)

    waited, closed_when_cancelled = arun(main)
    assert closed_when_cancelled  # the cancel had completed before the task ended
    assert waited >= 0.05 + 2 * delay - 0.25 - 0.05, waited


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cancel_that_cannot_complete_is_reported(
    mode: str, pg_server: Any, proxy: Any, created: list[PGcancelConn]
) -> None:
    """``break_connection=False``: the cancel connection is black-holed, the
    query runs to its end; the block then raises CancellationTimeout (no
    guarantee can be given) and the connection is still usable."""
    px = proxy()
    dsn = px.dsn(pg_server, sslmode="disable")
    query = "select pg_sleep(1.2), 1"

    if mode == "sync":
        driver = Sync("psycopg2")
        conn = driver.connect(dsn)
        try:
            px.blackhole()
            t0 = time.monotonic()
            timer = psycancel.cancel_after(conn, 0.05, timeout=0.4, break_connection=False)
            with pytest.raises(psycancel.CancellationTimeout), timer:
                driver.execute(conn, query)
            elapsed = time.monotonic() - t0
            assert driver.execute(conn, "select 2") == [(2,)]
        finally:
            conn.close()
    else:

        async def main() -> float:
            adriver = Async("psycopg")
            conn = await adriver.connect(dsn)
            try:
                px.blackhole()
                t0 = time.monotonic()
                with pytest.raises(psycancel.CancellationTimeout):
                    async with psycancel.cancel_after(
                        conn, 0.05, timeout=0.4, break_connection=False
                    ):
                        await adriver.execute(conn, query)
                elapsed = time.monotonic() - t0
                assert await adriver.execute(conn, "select 2") == [(2,)]
                return elapsed
            finally:
                await adriver.close(conn)

        elapsed = arun(main)
    assert 1.2 <= elapsed < 5
    assert len(created) == 1 and created[0].closed


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cancel_that_cannot_complete_breaks_the_connection(
    mode: str, pg_server: Any, proxy: Any, created: list[PGcancelConn]
) -> None:
    """The default: the cancel connection is black-holed, so at ``seconds +
    timeout`` the session's socket is shut down; the block ends then with
    QueryTimeout(connection_broken=True), caused by the CancellationTimeout."""
    px = proxy()
    dsn = px.dsn(pg_server, sslmode="disable")
    query = "select pg_sleep(5), 1"

    if mode == "sync":
        driver = Sync("psycopg2")
        conn = driver.connect(dsn)
        try:
            px.blackhole()
            t0 = time.monotonic()
            timer = psycancel.cancel_after(conn, 0.05, timeout=0.4)
            with pytest.raises(psycancel.QueryTimeout) as info, timer:
                driver.execute(conn, query)
            elapsed = time.monotonic() - t0
            assert conn.closed != 0
        finally:
            conn.close()
    else:

        async def main() -> tuple[float, Any]:
            adriver = Async("psycopg")
            conn = await adriver.connect(dsn)
            try:
                px.blackhole()
                t0 = time.monotonic()
                with pytest.raises(psycancel.QueryTimeout) as info:
                    async with psycancel.cancel_after(conn, 0.05, timeout=0.4):
                        await adriver.execute(conn, query)
                elapsed = time.monotonic() - t0
                assert conn.broken
                return elapsed, info
            finally:
                await adriver.close(conn)

        elapsed, info = arun(main)
    assert info.value.connection_broken
    assert isinstance(info.value.__cause__, psycancel.CancellationTimeout)
    assert elapsed < 0.05 + 0.4 + 0.5, elapsed
    assert len(created) == 1 and created[0].closed


@pytest.mark.parametrize("break_connection", [True, False])
def test_block_error_keeps_priority_over_a_failed_cancel(
    pg_server: Any, proxy: Any, break_connection: bool
) -> None:
    """An error the block raises itself, after its query: with
    ``break_connection=False`` it is kept, the cancel's failure noted on it;
    by default the connection was broken, so QueryTimeout is raised (the
    block's error is its context)."""
    px = proxy()
    driver = Sync("psycopg2")
    conn = driver.connect(px.dsn(pg_server, sslmode="disable"))
    timer = psycancel.cancel_after(conn, 0.05, timeout=0.2, break_connection=break_connection)
    raised: BaseException | None = None
    try:
        px.blackhole()
        with timer:
            try:
                driver.execute(conn, "select pg_sleep(0.5)")
            except psycopg2.OperationalError:
                assert break_connection
            raise KeyError("mine")
    except (KeyError, psycancel.QueryTimeout) as ex:
        raised = ex
    finally:
        conn.close()
    assert timer.connection_broken == break_connection
    if break_connection:
        assert isinstance(raised, psycancel.QueryTimeout) and raised.connection_broken
        assert isinstance(raised.__context__, KeyError)
        assert isinstance(raised.__cause__, psycancel.CancellationTimeout)
    else:
        assert isinstance(raised, KeyError)
        if hasattr(raised, "add_note"):
            assert any("CancellationTimeout" in n for n in getattr(raised, "__notes__", []))


# =====================================================================================
# Legacy libpq (< 17): the prepared PGcancel, the policy at entry
# =====================================================================================


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_legacy_libpq_fires(mode: str, dsn_plain: str, legacy_libpq: Libpq) -> None:
    conn = client.connect(dsn_plain, libpq=legacy_libpq)
    try:
        timer = psycancel.cancel_after(conn, 0.1, strict=True)
        if mode == "sync":
            with timer:
                res = run(conn, SLEEP)
        else:

            async def main() -> Any:
                async with timer:
                    return await asyncio.to_thread(run, conn, SLEEP)

            res = arun(main)
        assert res.sqlstate == QUERY_CANCELED  # a psycancel PGconn returns, not raises
        assert timer.fired
        assert run(conn, "select 1").rows == (("1",),)
    finally:
        conn.finish()


def test_legacy_tls_policy_at_entry(dsn_tls: str, legacy_libpq: Libpq) -> None:
    conn = client.connect(dsn_tls, libpq=legacy_libpq)
    try:
        strict = psycancel.cancel_after(conn, 5, strict=True)
        with pytest.raises(psycancel.InsecureCancelError), strict:
            pytest.fail("the block must not run")
        warning = pytest.warns(psycancel.InsecureCancelWarning, match="clear text")
        with warning as record, psycancel.cancel_after(conn, 5):
            pass
        assert record[0].filename == __file__  # points at the with statement

        async def main() -> None:
            with pytest.raises(psycancel.InsecureCancelError):
                async with psycancel.cancel_after(conn, 5, strict=True):
                    pytest.fail("the block must not run")

        arun(main)
    finally:
        conn.finish()


@pytest.mark.parametrize(
    ("dsn_name", "strict", "errors", "warned"),
    [
        ("dsn_plain", True, ["QueryTimeout"], []),
        ("dsn_tls", False, ["QueryTimeout"], ["InsecureCancelWarning"]),
        ("dsn_tls", True, ["InsecureCancelError"], []),
    ],
    ids=["plain-strict", "tls-warns", "tls-strict-refuses"],
)
def test_legacy_psycopg2(
    dsn_name: str,
    strict: bool,
    errors: list[str],
    warned: list[str],
    request: pytest.FixtureRequest,
) -> None:
    """psycopg2 built against the system libpq, in a child process."""
    res = run_legacy(
        "cancel_after",
        {
            "dsn": request.getfixturevalue(dsn_name),
            "seconds": 0.2,
            "strict": strict,
            "query": SLEEP,
        },
    )
    assert res["errors"] == errors
    assert res["warnings"] == warned
    if errors == ["QueryTimeout"]:
        assert res["cause"] == "QueryCanceled"
    assert res["after"] == 1


# =====================================================================================
# Arguments and misuse
# =====================================================================================


@pytest.mark.parametrize(
    ("seconds", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("1", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_seconds(seconds: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="seconds"):
        psycancel.cancel_after(object(), seconds)


@pytest.mark.parametrize(("timeout", "error"), [(0, ValueError), ("x", TypeError)])
def test_bad_timeout(timeout: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout"):
        psycancel.cancel_after(object(), 1, timeout=timeout)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_not_a_connection(mode: str) -> None:
    timer = psycancel.cancel_after(object(), 1)
    with pytest.raises(psycancel.InterfaceError):
        if mode == "sync":
            with timer:
                pytest.fail("the block must not run")
        else:

            async def main() -> None:
                async with timer:
                    pytest.fail("the block must not run")

            arun(main)


def test_closed_connection(dsn_plain: str, created: list[PGcancelConn]) -> None:
    """A closed connection runs no query: the block runs with no timer."""
    conn = psycopg2.connect(dsn_plain)
    conn.close()
    timer = psycancel.cancel_after(conn, 0.01)
    ran = False
    with timer:
        time.sleep(0.05)
        ran = True
    assert ran and not timer.fired
    assert created == []


def test_single_use(dsn_plain: str) -> None:
    conn = psycopg.connect(dsn_plain)
    try:
        timer = psycancel.cancel_after(conn, 5)
        with timer:
            pass
        with pytest.raises(RuntimeError, match="single use"), timer:
            pass
    finally:
        conn.close()


def test_no_warning_on_encrypted_new_api(dsn_tls: str) -> None:
    conn = psycopg.connect(dsn_tls, autocommit=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            timer = psycancel.cancel_after(conn, 0.1, strict=True)
            with pytest.raises(psycancel.QueryTimeout), timer:
                conn.execute(SLEEP)
    finally:
        conn.close()
