"""SQLAlchemy 2.x objects accepted by cancel, cancel_async, cancel_after and Canceller.

Real SQLAlchemy, real drivers (psycopg2 and psycopg dialects), the real
server, plain and TLS; each query ends with SQLSTATE 57014 and its connection
(or session) is used again afterwards. The asyncpg and pg8000 dialects have
no libpq: an ``InterfaceError`` says so, before any query (a session that
holds no connection yet is followed: ``test_canceller_lazy.py``).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import psycancel
from testing.conninfo import parse_conninfo
from tests.support import frameworks as frameworks_helpers
from tests.support.drivers import Background, need
from tests.support.frameworks import SLEEP, Monitor, sqlstate

fdsn = frameworks_helpers.fdsn
monitor = frameworks_helpers.monitor

sqlalchemy = need("sqlalchemy")
sa_orm = need("sqlalchemy.orm")
sa_asyncio = need("sqlalchemy.ext.asyncio")
sa_exc = need("sqlalchemy.exc")
psycopg2 = need("psycopg2")
psycopg = need("psycopg")
asyncpg = need("asyncpg")
pg8000 = need("pg8000")

text = sqlalchemy.text
CANCELED = "57014"
DIALECTS = ["psycopg2", "psycopg"]


def make_engine(dialect: str, dsn: str) -> Any:
    """An engine of ``dialect`` whose connections are made from the test conninfo."""
    connect = psycopg2.connect if dialect == "psycopg2" else psycopg.connect
    return sqlalchemy.create_engine(f"postgresql+{dialect}://", creator=lambda: connect(dsn))


def make_async_engine(dsn: str) -> Any:
    """An asyncio engine of the psycopg dialect."""
    return sa_asyncio.create_async_engine(
        "postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(dsn)
    )


@pytest.fixture(params=DIALECTS)
def engine(request: pytest.FixtureRequest, fdsn: str) -> Iterator[Any]:
    eng = make_engine(request.param, fdsn)
    try:
        yield eng
    finally:
        eng.dispose()


def pid_of(executable: Any) -> int:
    """The backend PID of a Connection or Session (which then holds its connection)."""
    return int(executable.execute(text("select pg_backend_pid()")).scalar())


def cancelled_in_background(
    executable: Any, target: object, monitor: Monitor, cancel: Callable[[object], None]
) -> BaseException | None:
    """Run a long query on ``executable`` in a thread, cancel it through ``target``."""
    pid = pid_of(executable)
    query = Background(lambda: executable.execute(text(SLEEP)))
    monitor.wait_sleeping(pid)
    cancel(target)
    return query.error()


def assert_cancelled(error: BaseException | None) -> None:
    assert isinstance(error, sa_exc.OperationalError), repr(error)
    assert sqlstate(error) == CANCELED


def assert_usable(executable: Any) -> None:
    executable.rollback()
    assert executable.execute(text("select 42")).scalar() == 42


# =====================================================================================
# Each sync object, cancelled directly (cancel) and through a Canceller
# =====================================================================================

SYNC_TARGETS: dict[str, Callable[[Any], object]] = {
    "Connection": lambda conn: conn,
    "Connection.connection (_ConnectionFairy)": lambda conn: conn.connection,
}


@pytest.mark.parametrize("target", list(SYNC_TARGETS))
def test_connection_objects_are_cancelled(engine: Any, monitor: Monitor, target: str) -> None:
    with engine.connect() as conn:
        obj = SYNC_TARGETS[target](conn)
        assert_cancelled(cancelled_in_background(conn, obj, monitor, psycancel.cancel))
        assert_usable(conn)


def test_raw_connection_is_cancelled(engine: Any, monitor: Monitor) -> None:
    raw = engine.raw_connection()  # a _ConnectionFairy, a PoolProxiedConnection
    try:
        assert isinstance(raw, sqlalchemy.pool.PoolProxiedConnection)
        cur = raw.cursor()
        cur.execute("select pg_backend_pid()")
        pid = cur.fetchone()[0]
        query = Background(lambda: cur.execute(SLEEP))
        monitor.wait_sleeping(pid)
        psycancel.cancel(raw)
        assert sqlstate(query.error()) == CANCELED
        raw.rollback()
        cur.execute("select 1")
        assert cur.fetchone()[0] == 1
    finally:
        raw.close()


def test_session_is_cancelled(engine: Any, monitor: Monitor) -> None:
    with sa_orm.Session(engine) as session:
        assert_cancelled(cancelled_in_background(session, session, monitor, psycancel.cancel))
        assert_usable(session)


def test_scoped_session_is_cancelled(engine: Any, monitor: Monitor) -> None:
    scoped = sa_orm.scoped_session(sa_orm.sessionmaker(engine))
    try:
        session = scoped()
        pid = pid_of(session)
        # scoped resolves to the *calling thread's* session: resolve it here.
        canceller = psycancel.Canceller(scoped)
        query = Background(lambda: session.execute(text(SLEEP)))
        monitor.wait_sleeping(pid)
        canceller.cancel()
        assert_cancelled(query.error())
        assert_usable(session)
        psycancel.cancel(scoped)  # this thread's session, idle: accepted
    finally:
        scoped.remove()


@pytest.mark.parametrize("api", ["cancel(handle)", "handle.cancel()"])
def test_session_through_canceller_made_in_its_thread(
    engine: Any, monitor: Monitor, api: str
) -> None:
    """The handle is made in the thread running the query; another thread cancels."""
    made = threading.Event()
    handle: list[tuple[psycancel.Canceller, int]] = []

    with sa_orm.Session(engine) as session:

        def run() -> Any:
            pid = pid_of(session)
            handle.append((psycancel.Canceller(session), pid))
            made.set()
            return session.execute(text(SLEEP))

        query = Background(run)
        assert made.wait(15)
        canceller, pid = handle[0]
        monitor.wait_sleeping(pid)
        if api == "cancel(handle)":
            psycancel.cancel(canceller)
        else:
            canceller.cancel()
        assert_cancelled(query.error())
        assert_usable(session)


def test_session_without_connection_has_nothing_to_cancel(engine: Any) -> None:
    with sa_orm.Session(engine) as session:
        psycancel.cancel(session)  # nothing held: returns, acquires nothing
        asyncio.run(psycancel.cancel_async(session))
        assert session.get_transaction() is None
        handle = psycancel.Canceller(session)
        assert handle.connection is None
        handle.cancel()


def test_closed_connection_has_nothing_to_cancel(engine: Any) -> None:
    conn = engine.connect()
    fairy = conn.connection
    conn.close()
    psycancel.cancel(conn)
    psycancel.cancel(fairy)


def test_session_with_two_connections_is_refused(fdsn: str) -> None:
    one, two = make_engine("psycopg", fdsn), make_engine("psycopg", fdsn)
    try:
        with sa_orm.Session(binds={}) as session:
            session.connection(bind_arguments={"bind": one})
            session.connection(bind_arguments={"bind": two})
            with pytest.raises(psycancel.InterfaceError, match="holds 2 connections"):
                psycancel.cancel(session)
    finally:
        one.dispose()
        two.dispose()


def test_engine_is_refused_with_a_hint(engine: Any) -> None:
    with pytest.raises(psycancel.InterfaceError, match="Engine: an engine runs no query"):
        psycancel.cancel(engine)


def test_unknown_sqlalchemy_object_names_the_way(engine: Any) -> None:
    with pytest.raises(psycancel.InterfaceError, match=r"SQLAlchemy sessionmaker .*pass a"):
        psycancel.cancel(sa_orm.sessionmaker(engine))


# =====================================================================================
# asyncio: AsyncConnection, AsyncSession, get_raw_connection() (psycopg dialect)
# =====================================================================================


async def _async_cancel(
    fdsn: str, monitor: Monitor, target: str, api: str, *, via_handle: bool = False
) -> None:
    eng = make_async_engine(fdsn)
    try:
        async with eng.connect() as aconn, sa_asyncio.AsyncSession(eng) as asession:
            executable = aconn if target != "AsyncSession" else asession
            pid = int((await executable.execute(text("select pg_backend_pid()"))).scalar())
            if target == "get_raw_connection()":
                obj: object = await aconn.get_raw_connection()
            else:
                obj = executable
            if via_handle:
                obj = psycancel.Canceller(obj)
            task = asyncio.ensure_future(executable.execute(text(SLEEP)))
            await monitor.await_sleeping(pid)
            if api == "cancel_async":
                await psycancel.cancel_async(obj)
            else:
                await asyncio.to_thread(psycancel.cancel, obj)
            with pytest.raises(sa_exc.OperationalError) as info:
                await task
            assert sqlstate(info.value) == CANCELED
            await executable.rollback()
            assert (await executable.execute(text("select 7"))).scalar() == 7
    finally:
        await eng.dispose()


@pytest.mark.parametrize("api", ["cancel_async", "cancel"])
@pytest.mark.parametrize("target", ["AsyncConnection", "AsyncSession", "get_raw_connection()"])
def test_async_objects_are_cancelled(fdsn: str, monitor: Monitor, target: str, api: str) -> None:
    asyncio.run(_async_cancel(fdsn, monitor, target, api))


def test_async_session_through_canceller(fdsn: str, monitor: Monitor) -> None:
    asyncio.run(_async_cancel(fdsn, monitor, "AsyncSession", "cancel", via_handle=True))


def test_async_adapter_gets_a_hint(fdsn: str) -> None:
    async def main() -> None:
        eng = make_async_engine(fdsn)
        try:
            async with eng.connect() as aconn:
                raw = await aconn.get_raw_connection()
                adapted = raw.dbapi_connection
                with pytest.raises(
                    psycancel.InterfaceError,
                    match="an SQLAlchemy AsyncAdapt_psycopg_connection: pass its "
                    r"\.driver_connection",
                ):
                    await psycancel.cancel_async(adapted)
                await psycancel.cancel_async(raw.driver_connection)  # idle: accepted
        finally:
            await eng.dispose()

    asyncio.run(main())


def test_unstarted_async_connection_has_nothing_to_cancel(fdsn: str) -> None:
    async def main() -> None:
        eng = make_async_engine(fdsn)
        try:
            await psycancel.cancel_async(eng.connect())  # never started
            async with sa_asyncio.AsyncSession(eng) as asession:
                await psycancel.cancel_async(asession)
        finally:
            await eng.dispose()

    asyncio.run(main())


# =====================================================================================
# The dialects without libpq
# =====================================================================================


def test_asyncpg_dialect_has_no_libpq(pg_server: Any) -> None:
    params = parse_conninfo(pg_server.dsn_plain)

    async def main() -> None:
        eng = sa_asyncio.create_async_engine(
            "postgresql+asyncpg://",
            async_creator=lambda: asyncpg.connect(
                host=params["host"],
                port=int(params["port"]),
                user=params["user"],
                database=params["dbname"],
                ssl=False,
            ),
        )
        try:
            async with eng.connect() as aconn, sa_asyncio.AsyncSession(eng) as asession:
                await aconn.execute(text("select 1"))
                await asession.execute(text("select 1"))
                raw = await aconn.get_raw_connection()
                for obj in (aconn, asession, raw, raw.driver_connection):
                    with pytest.raises(psycancel.InterfaceError, match=r"asyncpg .*no libpq"):
                        await psycancel.cancel_async(obj)
                with pytest.raises(psycancel.InterfaceError, match="AsyncAdapt_asyncpg"):
                    psycancel.Canceller(raw.dbapi_connection)
        finally:
            await eng.dispose()

    asyncio.run(main())


def test_pg8000_dialect_has_no_libpq(pg_server: Any) -> None:
    params = parse_conninfo(pg_server.dsn_plain)
    eng = sqlalchemy.create_engine(
        "postgresql+pg8000://",
        creator=lambda: pg8000.connect(
            host=params["host"],
            port=int(params["port"]),
            user=params["user"],
            database=params["dbname"],
        ),
    )
    try:
        with eng.connect() as conn:
            conn.execute(text("select 1"))
            for obj in (conn, conn.connection, conn.connection.driver_connection):
                with pytest.raises(psycancel.InterfaceError, match=r"pg8000 .*no libpq"):
                    psycancel.cancel(obj)
    finally:
        eng.dispose()


# =====================================================================================
# cancel_after(session / connection, seconds)
# =====================================================================================


def test_cancel_after_session_acquiring_its_connection_in_the_block(engine: Any) -> None:
    with sa_orm.Session(engine) as session:
        assert session.get_transaction() is None  # holds no connection at entry
        with pytest.raises(psycancel.QueryTimeout) as info, psycancel.cancel_after(session, 0.2):
            session.execute(text(SLEEP))
        cause = info.value.__cause__
        assert isinstance(cause, sa_exc.OperationalError)  # the framework's error, kept
        assert sqlstate(cause) == CANCELED
        assert_usable(session)


def test_cancel_after_connection(engine: Any) -> None:
    with engine.connect() as conn:
        with pytest.raises(psycancel.QueryTimeout) as info, psycancel.cancel_after(conn, 0.2):
            conn.execute(text(SLEEP))
        assert isinstance(info.value.__cause__, sa_exc.OperationalError)
        assert_usable(conn)


def test_cancel_after_does_not_cancel_a_connection_the_session_gave_back(
    fdsn: str, monitor: Monitor
) -> None:
    """After commit the session's connection is back in the pool: not cancelled any more."""
    eng = sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(fdsn),
        pool_size=1,
        max_overflow=0,
    )
    try:
        with sa_orm.Session(eng) as session, sa_orm.Session(eng) as other:
            with psycancel.cancel_after(session, 0.2) as timer:
                first = pid_of(session)
                session.commit()  # the connection goes back to the pool
                # The same connection, now another session's, outlives the timer.
                assert pid_of(other) == first
                other.execute(text("select pg_sleep(0.6)"))
            assert timer.fired
            other.commit()
    finally:
        eng.dispose()


def test_cancel_after_session_races_leave_no_cancel_in_flight(engine: Any) -> None:
    """Timers firing around the query's end: the next query is never hit.

    The limits spread from 10 to 120 % of the query's median time in this session,
    measured first (fixed ones, 20-40 ms around a 30 ms query, saw no round time out
    on a loaded free-threaded run: every cancel landed late), over 30 rounds, or
    more until some timed out (at most 90).
    """
    query = text("select pg_sleep(0.03)")
    timeouts = 0
    with sa_orm.Session(engine) as session:
        spans = []
        for _ in range(7):
            t0 = time.monotonic()
            session.execute(query)
            spans.append(time.monotonic() - t0)
            session.commit()
        took = statistics.median(spans)
        for i in range(90):
            if i >= 30 and timeouts:
                break
            try:
                with psycancel.cancel_after(session, took * (0.1 + 1.1 * (i % 10) / 9)):
                    session.execute(query)
            except psycancel.QueryTimeout:
                timeouts += 1
            session.rollback() if i % 2 else session.commit()
            # Would be hit by a cancel still in flight from the block above.
            session.execute(text("select pg_sleep(0.05)"))
            session.commit()
    assert timeouts  # some rounds did time out


def test_cancel_after_async_session(fdsn: str) -> None:
    async def main() -> None:
        eng = make_async_engine(fdsn)
        try:
            async with sa_asyncio.AsyncSession(eng) as asession:
                with pytest.raises(psycancel.QueryTimeout) as info:
                    async with psycancel.cancel_after(asession, 0.2):
                        await asession.execute(text(SLEEP))
                assert isinstance(info.value.__cause__, sa_exc.OperationalError)
                await asession.rollback()
                assert (await asession.execute(text("select 3"))).scalar() == 3
        finally:
            await eng.dispose()

    asyncio.run(main())


def test_cancel_after_asyncpg_session_fails_at_entry(pg_server: Any) -> None:
    """A session of the asyncpg dialect can never be cancelled: refused before its query."""
    params = parse_conninfo(pg_server.dsn_plain)

    async def main() -> None:
        eng = sa_asyncio.create_async_engine(
            "postgresql+asyncpg://",
            async_creator=lambda: asyncpg.connect(
                host=params["host"],
                port=int(params["port"]),
                user=params["user"],
                database=params["dbname"],
                ssl=False,
            ),
        )
        ran = False
        try:
            async with sa_asyncio.AsyncSession(eng) as asession:
                with pytest.raises(psycancel.InterfaceError, match="asyncpg's own timeout"):
                    async with psycancel.cancel_after(asession, 5):
                        ran = True
                        await asession.execute(text("select 1"))
                assert not ran  # the block never started: its result is not lost
                assert (await asession.execute(text("select 1"))).scalar() == 1
        finally:
            await eng.dispose()

    asyncio.run(main())


class _OwnSession:
    """A framework's object implementing the hook as docs/drivers.md suggests."""

    def __init__(self, driver_connection: Any) -> None:
        self.driver_connection = driver_connection

    def __psycancel_pgconn__(self) -> Any:
        return psycancel.Canceller(self.driver_connection).__psycancel_pgconn__()


def test_framework_hook_delegating_to_a_canceller(fdsn: str, monitor: Monitor) -> None:
    conn = psycopg.connect(fdsn, autocommit=True)
    try:
        own = _OwnSession(conn)
        query = Background(lambda: conn.execute(SLEEP))
        monitor.wait_sleeping(conn.info.backend_pid)
        psycancel.cancel(own)
        assert sqlstate(query.error()) == CANCELED
        assert conn.execute("select 1").fetchone() == (1,)
        conn.close()
        psycancel.cancel(own)  # closed: nothing to cancel
    finally:
        conn.close()
