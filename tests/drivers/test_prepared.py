"""``psycancel.prepare``: a cancel prepared in the connection's thread, sent later, reused.

Real drivers (psycopg2, psycopg 3, aiopg) against the real server, with the
active twin; the legacy path with the machine's libpq < 17 (the tests'
client). Each prepared cancel must create its cancel object once, when
prepared, and reuse it (``PQcancelReset``) for every send.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import psycancel
from psycancel._engine import plan as _plan
from psycancel.pq import Libpq
from psycancel.pq.abc import PGcancelConn
from tests.support.drivers import QUERY_CANCELED, SLEEP, Background, pgcode
from tests.support.drivers import need as _need
from tests.support.queries import drain, run, sleeping, wait_until_active

psycopg2 = _need("psycopg2")
psycopg = _need("psycopg")
aiopg = _need("aiopg")

TIMEOUT = 20.0


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[PGcancelConn]:
    """Every cancel object the engine creates (``plan.new_cancel_conn``)."""
    found: list[PGcancelConn] = []
    original = _plan.new_cancel_conn

    def spy(pgconn: Any) -> PGcancelConn:
        cc = original(pgconn)
        found.append(cc)
        return cc

    monkeypatch.setattr(_plan, "new_cancel_conn", spy)
    return found


class Driver:
    """A blocking driver's connection, a monitor, and a query run in a thread."""

    def __init__(self, name: str, dsn: str) -> None:
        self.name = name
        self.conn = self._connect(dsn)
        self.monitor = self._connect(dsn)

    def _connect(self, dsn: str) -> Any:
        if self.name == "psycopg2":
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            return conn
        return psycopg.connect(dsn, autocommit=True)

    def execute(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        if self.name == "psycopg2":
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        return list(conn.execute(sql).fetchall())

    def sleeping(self) -> Background:
        """``SLEEP`` running in a thread, active on the server when this returns."""
        query = Background(lambda: self.execute(self.conn, SLEEP))
        pid = int(self.conn.info.backend_pid)
        from tests.support.drivers import wait_active

        wait_active(lambda sql: self.execute(self.monitor, sql), pid)
        return query

    def close(self) -> None:
        self.conn.close()
        self.monitor.close()


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver(request: pytest.FixtureRequest, dsn: str) -> Iterator[Driver]:
    d = Driver(request.param, dsn)
    try:
        yield d
    finally:
        d.close()


def cancelled(query: Background) -> bool:
    error = query.error()
    return error is not None and pgcode(error) == QUERY_CANCELED


# =====================================================================================
# Blocking, awaited, fired: one cancel object, reused
# =====================================================================================


def test_prepared_once_sent_three_ways(driver: Driver, made: list[PGcancelConn]) -> None:
    with psycancel.prepare(driver.conn) as prepared:
        assert len(made) == 1 and not prepared.legacy and not prepared.empty
        query = driver.sleeping()
        prepared.cancel(timeout=TIMEOUT)
        assert cancelled(query)

        query = driver.sleeping()
        asyncio.run(prepared.cancel_async(timeout=TIMEOUT))
        assert cancelled(query)

        query = driver.sleeping()
        outcome = prepared.fire()
        assert outcome.result(TIMEOUT) is None
        assert cancelled(query)
        assert len(made) == 1  # never created again: PQcancelReset between sends
        assert not made[0].closed
        assert driver.execute(driver.conn, "select 1") == [(1,)]
    assert prepared.closed and made[0].closed


@pytest.mark.parametrize("offload", [None, True, False])
def test_every_placement_reuses_the_object(
    driver: Driver, made: list[PGcancelConn], offload: bool | None
) -> None:
    with psycancel.prepare(driver.conn) as prepared:
        for _ in range(2):
            query = driver.sleeping()
            asyncio.run(prepared.cancel_async(timeout=TIMEOUT, offload=offload))
            assert cancelled(query)
        assert len(made) == 1 and not made[0].closed
    with pytest.raises(TypeError):
        asyncio.run(prepared.cancel_async(offload=1))  # type: ignore[arg-type]


def test_prepared_in_the_owner_thread_sent_from_another(driver: Driver) -> None:
    prepared = psycancel.prepare(driver.conn)
    try:
        query = driver.sleeping()
        sender = threading.Thread(target=prepared.cancel, kwargs={"timeout": TIMEOUT})
        sender.start()
        sender.join(TIMEOUT * 2)
        assert not sender.is_alive()
        assert cancelled(query)
    finally:
        prepared.close()


@pytest.mark.parametrize("offload", [False, True])
def test_trio_sends_it(driver: Driver, offload: bool) -> None:
    trio = _need("trio")
    with psycancel.prepare(driver.conn) as prepared:
        query = driver.sleeping()
        trio.run(lambda: prepared.cancel_async(timeout=TIMEOUT, offload=offload))
        assert cancelled(query)


async def aio_wait_active(monitor: Any, pid: int) -> None:
    """Poll until backend ``pid`` runs ``pg_sleep`` (aiopg's monitor connection)."""
    async with monitor.cursor() as mon:
        for _ in range(1200):
            await mon.execute(
                "select count(*) from pg_stat_activity "
                f"where pid = {pid} and query like '%pg_sleep%' and state = 'active'"
            )
            if (await mon.fetchone())[0]:
                return
            await asyncio.sleep(0.025)
    raise AssertionError(f"backend {pid} never ran the query")


async def aiopg_cancelled(task: asyncio.Future[Any]) -> None:
    """aiopg reports a server-side cancel as CancelledError, raised while handling
    psycopg2's QueryCanceled."""
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    assert pgcode(info.value.__context__) == QUERY_CANCELED


def test_aiopg_awaits_it(dsn: str) -> None:
    async def main() -> None:
        async with aiopg.connect(dsn) as conn, aiopg.connect(dsn) as monitor:
            prepared = psycancel.prepare(conn)
            try:
                async with conn.cursor() as cur:
                    pid = conn.raw.info.backend_pid
                    task = asyncio.ensure_future(cur.execute(SLEEP))
                    await aio_wait_active(monitor, pid)
                    await prepared.cancel_async(timeout=TIMEOUT)
                    await aiopg_cancelled(task)
                    # Reused at once for the next query.
                    task = asyncio.ensure_future(cur.execute(SLEEP))
                    await aio_wait_active(monitor, pid)
                    prepared.fire()
                    await aiopg_cancelled(task)
            finally:
                prepared.close()

    asyncio.run(main())


# =====================================================================================
# Fire and forget: the outcome is reported, never lost, never stray
# =====================================================================================


def test_fire_then_close_still_sends(driver: Driver, made: list[PGcancelConn]) -> None:
    """A driver's ``close()``: fire, close the prepared cancel, return; the cancel goes out."""
    prepared = psycancel.prepare(driver.conn)
    query = driver.sleeping()
    errors: list[BaseException | None] = []
    done = threading.Event()

    def callback(error: BaseException | None) -> None:
        errors.append(error)
        done.set()

    outcome = prepared.fire(callback)
    prepared.close()
    assert done.wait(TIMEOUT)
    assert errors == [None] and outcome.result(0) is None
    assert cancelled(query)
    assert made[0].closed  # finished by the send, when it ended


def test_a_failed_fire_is_reported(
    pg_server: Any, proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    px = proxy()
    conn = psycopg2.connect(px.dsn(pg_server, sslmode="disable"))
    prepared = psycancel.prepare(conn)
    try:
        px.blackhole()
        # With a callback: the error goes to it and to the future, nothing is logged.
        got: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()
        outcome = prepared.fire(got.set_result, timeout=0.3)
        assert isinstance(got.result(TIMEOUT), psycancel.CancellationTimeout)
        assert isinstance(outcome.exception(TIMEOUT), psycancel.CancellationTimeout)
        assert not [r for r in caplog.records if r.name == "psycancel"]
        # Without one: logged, once.
        with caplog.at_level(logging.WARNING, logger="psycancel"):
            outcome = prepared.fire(timeout=0.3)
            assert isinstance(outcome.exception(TIMEOUT), psycancel.CancellationTimeout)
            for _ in range(100):
                if caplog.records:
                    break
                threading.Event().wait(0.01)
        messages = [r.getMessage() for r in caplog.records if r.name == "psycancel"]
        assert len(messages) == 1 and "CancellationTimeout" in messages[0], messages
    finally:
        prepared.close()
        px.reset()
        conn.close()


@pytest.mark.parametrize("offload", [False, True])
def test_cancelled_task_leaves_nothing_stray(
    pg_server: Any, proxy: Any, caplog: pytest.LogCaptureFixture, offload: bool
) -> None:
    """A task awaiting ``cancel_async`` cancelled: CancelledError, the object ready again.

    Inline, at once; offloaded, when its thread's send ends (by its deadline).
    """
    px = proxy()
    conn = psycopg2.connect(px.dsn(pg_server, sslmode="disable"))
    prepared = psycancel.prepare(conn)
    timeout = 0.5 if offload else TIMEOUT

    async def main() -> None:
        task = asyncio.ensure_future(prepared.cancel_async(timeout=timeout, offload=offload))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        px.blackhole()
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            asyncio.run(main())
            gc.collect()
        for _ in range(int(TIMEOUT * 100)):  # an offloaded send ends by its deadline
            if "ready" in repr(prepared):
                break
            threading.Event().wait(0.01)
        gc.collect()
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        assert "ready" in repr(prepared)  # reset, reusable
    finally:
        prepared.close()
        px.reset()
        conn.close()


# =====================================================================================
# Misuse, closed connections, and the legacy path
# =====================================================================================


def test_one_send_at_a_time_and_not_after_close(pg_server: Any, proxy: Any) -> None:
    px = proxy()
    conn = psycopg2.connect(px.dsn(pg_server, sslmode="disable"))
    prepared = psycancel.prepare(conn)
    try:
        px.blackhole()
        outcome = prepared.fire(timeout=1.0)
        with pytest.raises(psycancel.InterfaceError, match="already being sent"):
            prepared.cancel(timeout=1.0)
        with pytest.raises(psycancel.InterfaceError, match="already being sent"):
            prepared.fire()
        assert isinstance(outcome.exception(TIMEOUT), psycancel.CancellationTimeout)
    finally:
        prepared.close()
        px.reset()
        conn.close()
    with pytest.raises(psycancel.InterfaceError, match="closed"):
        prepared.cancel()
    with pytest.raises(psycancel.InterfaceError, match="closed"):
        asyncio.run(prepared.cancel_async())
    prepared.close()  # idempotent


def test_bad_arguments(driver: Driver) -> None:
    with psycancel.prepare(driver.conn) as prepared:
        with pytest.raises(ValueError):
            prepared.cancel(timeout=0)
        with pytest.raises(TypeError):
            prepared.fire("not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        psycancel.prepare(driver.conn, strict=1)  # type: ignore[arg-type]
    with pytest.raises(psycancel.InterfaceError):
        psycancel.prepare(object())  # type: ignore[arg-type]


def test_closed_connection_prepares_an_empty_cancel(dsn_plain: str) -> None:
    conn = psycopg2.connect(dsn_plain)
    conn.close()
    with psycancel.prepare(conn) as prepared:
        assert prepared.empty
        prepared.cancel()
        asyncio.run(prepared.cancel_async())
        assert prepared.fire().result(0) is None


@pytest.mark.parametrize("how", ["sync", "async", "fire"])
def test_legacy_prepared_and_reused(how: str, dsn_plain: str, legacy_libpq: Libpq) -> None:
    with sleeping(dsn_plain, legacy_libpq) as conn:
        prepared = psycancel.prepare(conn, strict=True)
        try:
            assert prepared.legacy
            for round_ in range(2):
                if round_:
                    conn.send_query(SLEEP)
                    monitor_wait(dsn_plain, legacy_libpq, conn.backend_pid)
                if how == "sync":
                    prepared.cancel(timeout=TIMEOUT)
                elif how == "async":
                    asyncio.run(prepared.cancel_async(timeout=TIMEOUT))
                else:
                    assert prepared.fire().result(TIMEOUT) is None
                assert drain(conn).sqlstate == QUERY_CANCELED
            assert run(conn, "select 1").rows == (("1",),)
        finally:
            prepared.close()


def monitor_wait(dsn: str, libpq: Libpq, pid: int) -> None:
    from testing.client import connect

    monitor = connect(dsn, libpq=libpq)
    try:
        wait_until_active(monitor, pid)
    finally:
        monitor.finish()


def test_legacy_policy_applies_when_prepared(dsn_tls: str, legacy_libpq: Libpq) -> None:
    with sleeping(dsn_tls, legacy_libpq) as conn:
        with pytest.raises(psycancel.InsecureCancelError):
            psycancel.prepare(conn, strict=True)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            prepared = psycancel.prepare(conn)
        assert [w.category for w in seen] == [psycancel.InsecureCancelWarning]
        assert seen[0].filename == __file__  # the caller's line
        with prepared:
            prepared.cancel(timeout=TIMEOUT)
        assert drain(conn).sqlstate == QUERY_CANCELED


def test_policy_set_once_for_the_process(dsn_tls: str, legacy_libpq: Libpq) -> None:
    """docs/drivers.md: the warning made an error refuses every clear-text cancel, unsent."""
    with sleeping(dsn_tls, legacy_libpq) as conn:
        with warnings.catch_warnings():
            warnings.simplefilter("error", psycancel.InsecureCancelWarning)
            with pytest.raises(psycancel.InsecureCancelWarning):
                psycancel.prepare(conn)
            with pytest.raises(psycancel.InsecureCancelWarning):
                psycancel.cancel(conn, timeout=TIMEOUT)
        assert conn.is_busy()  # nothing was sent: the query runs on
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", psycancel.InsecureCancelWarning)
            with psycancel.prepare(conn) as prepared:
                prepared.cancel(timeout=TIMEOUT)
        assert drain(conn).sqlstate == QUERY_CANCELED


@pytest.mark.parametrize("how", ["prepared", "prepared-fire"])
@pytest.mark.parametrize("legacy", [False, True], ids=["new", "legacy"])
def test_gevent_hub_keeps_running(pg_server: Any, how: str, legacy: bool) -> None:
    """Under gevent a prepared send waits through the hub (legacy: its native pool)."""
    from tests.cancel.test_gevent import DELAY, ROUNDS, check
    from tests.support.drivers import need_legacy_psycopg2
    from tests.support.gevent_rounds import gevent_rounds

    _need("gevent")
    _need("psycogreen")
    pythonpath = [str(need_legacy_psycopg2())] if legacy else []
    results = gevent_rounds(
        pg_server,
        how=how,
        impl=psycancel.pq.__impl__,
        delay=DELAY,
        pythonpath=pythonpath,
        repeats=ROUNDS,
    )
    check(results)
    assert (results[0]["libpq_version"] < 170000) == legacy  # type: ignore[operator]
