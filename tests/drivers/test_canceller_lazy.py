"""A ``Canceller`` made from a framework object that holds no connection yet.

SQLAlchemy's ``Session`` and ``AsyncSession`` hold a connection only inside a
transaction: a handle made before the first query follows the session
(``after_begin`` in the session's thread) and cancels the connection it gets;
after the session gave it back (``after_transaction_end``) it holds nothing.
Sessions and engines of the asyncpg and pg8000 dialects can never be
cancelled: ``Canceller()`` and ``cancel_after`` refuse them at once, before
the query runs. Dropping a handle leaves no listener behind. Django's
counterpart runs in a child process: ``tests/drivers/test_django.py``.

Real SQLAlchemy, psycopg / psycopg2, asyncpg and pg8000, the real server.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
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
sa_event = need("sqlalchemy.event")
sa_orm = need("sqlalchemy.orm")
sa_asyncio = need("sqlalchemy.ext.asyncio")
sa_exc = need("sqlalchemy.exc")
psycopg2 = need("psycopg2")
psycopg = need("psycopg")
asyncpg = need("asyncpg")
pg8000 = need("pg8000")

text = sqlalchemy.text
CANCELED = "57014"


@pytest.fixture(params=["psycopg2", "psycopg"])
def engine(request: pytest.FixtureRequest, fdsn: str) -> Iterator[Any]:
    connect = psycopg2.connect if request.param == "psycopg2" else psycopg.connect
    eng = sqlalchemy.create_engine(f"postgresql+{request.param}://", creator=lambda: connect(fdsn))
    try:
        yield eng
    finally:
        eng.dispose()


def listeners(session: Any) -> int:
    """How many session listeners a watch may have added (after_begin, after_transaction_end)."""
    return len(session.dispatch.after_begin) + len(session.dispatch.after_transaction_end)


def _psycopg_async_engine(dsn: str) -> Any:
    """An ``AsyncEngine`` of the psycopg dialect whose connections go to ``dsn``."""
    return sa_asyncio.create_async_engine(
        "postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(dsn)
    )


def pid_of(executable: Any) -> int:
    return int(executable.execute(text("select pg_backend_pid()")).scalar())


# =====================================================================================
# Session: made with no connection, cancels the one the session gets
# =====================================================================================


def test_canceller_of_a_session_without_connection_cancels_its_first_query(
    engine: Any, monitor: Monitor
) -> None:
    """The handle is made in the query's thread before the session connects."""
    made, checked, connected = threading.Event(), threading.Event(), threading.Event()
    handle: list[psycancel.Canceller] = []
    pids: list[int] = []

    with sa_orm.Session(engine) as session:

        def run() -> Any:
            assert session.get_transaction() is None  # no connection at all yet
            handle.append(psycancel.Canceller(session))
            made.set()
            checked.wait(15)  # (the handle is looked at before the session connects)
            pids.append(pid_of(session))  # the session's first connection, begun here
            connected.set()
            return session.execute(text(SLEEP))

        query = Background(run)
        assert made.wait(15)
        canceller = handle[0]
        try:
            assert "not connected yet" in repr(canceller)
        finally:
            checked.set()
        assert connected.wait(15)
        monitor.wait_sleeping(pids[0])
        assert canceller.connection is not None  # resolved in the session's thread
        assert "following sqlalchemy.orm.session.Session" in repr(canceller)
        canceller.cancel()
        error = query.error()
        assert isinstance(error, sa_exc.OperationalError), repr(error)
        assert sqlstate(error) == CANCELED
        assert not monitor.sleeping(pids[0])
        session.rollback()
        assert session.execute(text("select 42")).scalar() == 42


def test_canceller_holds_nothing_between_transactions(engine: Any, monitor: Monitor) -> None:
    """After commit the connection is back in the pool: the handle no longer holds it."""
    with sa_orm.Session(engine) as session:
        canceller = psycancel.Canceller(session)
        assert canceller.connection is None
        assert repr(canceller) == (
            "<psycancel.Canceller of sqlalchemy.orm.session.Session, not connected yet>"
        )
        pid_of(session)  # the first transaction: the handle holds its connection
        assert canceller.connection is not None
        session.commit()
        assert canceller.connection is None
        assert "holds no connection now" in repr(canceller)
        canceller.cancel()  # nothing held: returns, sends nothing
        pid = pid_of(session)  # a new transaction: the handle follows it
        assert canceller.connection is not None
        query = Background(lambda: session.execute(text(SLEEP)))
        monitor.wait_sleeping(pid)
        canceller.cancel()
        assert sqlstate(query.error()) == CANCELED
        assert not monitor.sleeping(pid)


def test_a_dropped_canceller_leaves_no_session_listener(engine: Any) -> None:
    with sa_orm.Session(engine) as session:
        before = listeners(session)
        canceller = psycancel.Canceller(session)
        assert listeners(session) == before + 2
        ref = weakref.ref(canceller)
        del canceller
        gc.collect()
        assert ref() is None
        assert listeners(session) == before
        pid_of(session)  # a begin with no handle left: nothing is called
        session.commit()


def test_a_canceller_does_not_keep_the_session_alive(engine: Any) -> None:
    session = sa_orm.Session(engine)
    canceller = psycancel.Canceller(session)
    ref = weakref.ref(session)
    session.close()
    del session
    gc.collect()
    assert ref() is None
    assert canceller.connection is None
    del canceller  # its finalizer finds the session gone
    gc.collect()


def test_cancel_after_a_canceller_follows_it(engine: Any) -> None:
    """``cancel_after(handle)``: the block follows what the handle acquires in it."""
    with sa_orm.Session(engine) as session:
        canceller = psycancel.Canceller(session)
        with (
            pytest.raises(psycancel.QueryTimeout) as info,
            psycancel.cancel_after(canceller, 0.2, timeout=10),
        ):
            session.execute(text(SLEEP))
        assert sqlstate(info.value.__cause__) == CANCELED
        session.rollback()
        assert session.execute(text("select 1")).scalar() == 1


@pytest.mark.parametrize("through", ["session", "canceller"])
def test_a_deadline_passed_between_transactions_cancels_the_next_one(
    engine: Any, through: str
) -> None:
    """The deadline passes while the session holds no connection: the connection it
    acquires later in the block is cancelled at once (it was a silent no-op: the
    query ran on, unbounded). The same through a ``Canceller`` of the session."""
    with sa_orm.Session(engine) as session:
        target = session if through == "session" else psycancel.Canceller(session)
        timer = psycancel.cancel_after(target, 0.2, timeout=10)
        with pytest.raises(psycancel.QueryTimeout) as info, timer:
            pid_of(session)
            session.commit()  # the connection goes back: the block holds none
            time.sleep(0.5)  # the deadline passes meanwhile, nothing to cancel
            assert timer.fired
            session.execute(text(SLEEP))
        assert sqlstate(info.value.__cause__) == CANCELED  # cancelled, not broken
        assert timer.fired and not timer.connection_broken
        session.rollback()
        assert session.execute(text("select 1")).scalar() == 1


@pytest.mark.parametrize("through", ["session", "canceller"])
def test_a_deadline_passed_on_a_connection_given_back_cancels_the_next_one(
    engine: Any, through: str
) -> None:
    """The deadline passes while the session holds an idle connection (the cancel
    finds no query), which it then gives back: the connection it acquires next in
    the block gets the cancel (it ran on until the bound broke it: seen in CI,
    where a loaded machine took over 0.2 s to reach the ``commit``)."""
    with sa_orm.Session(engine) as session:
        target = session if through == "session" else psycancel.Canceller(session)
        timer = psycancel.cancel_after(target, 0.2, timeout=10)
        with pytest.raises(psycancel.QueryTimeout) as info, timer:
            pid_of(session)
            time.sleep(0.5)  # fired: the cancel reaches an idle backend
            assert timer.fired
            session.commit()  # given back
            time.sleep(0.6)  # the confirmation finds no connection held
            t0 = time.monotonic()
            session.execute(text(SLEEP))
        assert sqlstate(info.value.__cause__) == CANCELED  # cancelled, not broken
        assert time.monotonic() - t0 < 5  # (the bound, 10 s, would break it)
        assert timer.fired and not timer.connection_broken
        session.rollback()
        assert session.execute(text("select 1")).scalar() == 1


def test_a_connection_goes_back_once_its_cancel_was_processed(pg_server: Any, proxy: Any) -> None:
    """A cancel still on its way when the session gives its connection back would
    cancel the next user's query (seen in CI: a loaded machine fired the deadline
    just before the ``commit``). The connection goes back once the server has
    processed the cancel: here the cancel's connection is slowed by the proxy
    (0.4 s per chunk), the session's own is not."""
    px = proxy()
    dsn = px.dsn(pg_server)
    eng = sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn),
        pool_size=1,
        max_overflow=0,
    )
    try:
        with sa_orm.Session(eng) as session, sa_orm.Session(eng) as other:
            timer = psycancel.cancel_after(session, 0.2, timeout=10)
            with timer:
                pid = pid_of(session)  # its connection: made now, not slowed
                px.forward(delay=0.4)  # connections made from now on: slowed
                time.sleep(0.3)  # fired: the cancel is on its way
                assert timer.fired
                t0 = time.monotonic()
                session.commit()  # given back once the server processed it
                waited = time.monotonic() - t0
                assert pid_of(other) == pid
                other.execute(text("select pg_sleep(1)"))  # not cancelled
            assert waited > 0.2  # (the commit alone takes milliseconds)
            assert not timer.connection_broken
            other.commit()
    finally:
        eng.dispose()


def test_an_async_session_giving_back_never_waits_on_its_own_loop(
    pg_server: Any, proxy: Any
) -> None:
    """Under asyncio the block's cancel runs on the session's own loop: giving the
    connection back while it is on its way must not wait for it there (the loop
    would stop until the cancel's bound, 30 s here)."""
    px = proxy()
    dsn = px.dsn(pg_server)

    async def main() -> float:
        eng = _psycopg_async_engine(dsn)
        try:
            async with sa_asyncio.AsyncSession(eng) as asession:
                timer = psycancel.cancel_after(asession, 0.2, timeout=30)
                async with timer:
                    await asession.execute(text("select 1"))
                    px.forward(delay=0.4)  # the cancel's connection: slowed
                    await asyncio.sleep(0.3)  # fired: the cancel is on its way
                    assert timer.fired
                    t0 = time.monotonic()
                    await asession.commit()
                    return time.monotonic() - t0
        finally:
            await eng.dispose()
        raise AssertionError("unreachable")

    assert asyncio.run(main()) < 10


def test_a_connection_acquired_past_the_bound_is_broken_at_once(engine: Any) -> None:
    """Fired on an idle connection, given back, and past the bound (seconds +
    timeout) with none held: the connection the block acquires then is broken at
    once (the block must end by its bound), not left to run a query unbounded."""
    with sa_orm.Session(engine) as session:
        timer = psycancel.cancel_after(session, 0.2, timeout=1)
        with pytest.raises(psycancel.QueryTimeout) as info, timer:
            pid_of(session)
            time.sleep(0.4)  # fired: the backend is idle
            assert timer.fired
            session.commit()  # given back
            time.sleep(1.5)  # past the bound (0.2 + 1 s), holding nothing
            assert not timer.connection_broken  # (nothing held: nothing broken)
            t0 = time.monotonic()
            session.execute(text(SLEEP))
        assert time.monotonic() - t0 < 5
        assert timer.connection_broken and info.value.connection_broken


# (Whether a re-send reached the idle connection before the commit depends on the
# machine's timing: if one did, the block warns that its cancel was not taken.)
@pytest.mark.filterwarnings("ignore::psycancel.CancelNotTakenWarning")
def test_a_connection_given_back_is_never_broken(engine: Any) -> None:
    """A connection the block gave back after its deadline fired is another
    session's by the bound: it is not broken (it was, and that session's query
    failed); nor does the block leave with an error of its own."""
    with sa_orm.Session(engine) as session, sa_orm.Session(engine) as other:
        timer = psycancel.cancel_after(session, 0.2, timeout=1)
        with timer:
            pid = pid_of(session)
            time.sleep(0.4)  # fired: the cancel reaches an idle backend
            assert timer.fired
            session.commit()  # given back: the pool hands it to the other session
            assert pid_of(other) == pid
            # Past the bound (0.2 + 1 s) while the other session's query runs on it.
            other.execute(text("select pg_sleep(1.5)"))
        assert not timer.connection_broken
        assert other.execute(text("select 1")).scalar() == 1
        assert pid_of(other) == pid


def test_a_deadline_passed_before_an_async_session_connected(fdsn: str) -> None:
    """``async with`` under asyncio: the same, the loop timer's path."""

    async def main() -> None:
        eng = _psycopg_async_engine(fdsn)
        try:
            async with sa_asyncio.AsyncSession(eng) as asession:
                timer = psycancel.cancel_after(asession, 0.1, timeout=10)
                with pytest.raises(psycancel.QueryTimeout) as info:
                    async with timer:
                        await asyncio.sleep(0.3)  # past the deadline, not connected yet
                        assert timer.fired
                        await asession.execute(text(SLEEP))
                assert sqlstate(info.value.__cause__) == CANCELED
                assert timer.fired and not timer.connection_broken
                await asession.rollback()
                assert (await asession.execute(text("select 7"))).scalar() == 7
        finally:
            await eng.dispose()

    asyncio.run(main())


def test_a_deadline_passed_on_a_connection_an_async_session_gave_back(fdsn: str) -> None:
    """``async with`` under asyncio: the confirmation waits on the loop while the
    session holds no connection, and cancels the one it acquires next."""

    async def main() -> None:
        eng = _psycopg_async_engine(fdsn)
        try:
            async with sa_asyncio.AsyncSession(eng) as asession:
                timer = psycancel.cancel_after(asession, 0.2, timeout=10)
                with pytest.raises(psycancel.QueryTimeout) as info:
                    async with timer:
                        await asession.execute(text("select 1"))
                        await asyncio.sleep(0.5)  # fired: the backend is idle
                        assert timer.fired
                        await asession.commit()  # given back
                        await asyncio.sleep(0.6)  # the confirmation finds none held
                        t0 = time.monotonic()
                        await asession.execute(text(SLEEP))
                assert sqlstate(info.value.__cause__) == CANCELED
                assert time.monotonic() - t0 < 5  # (the bound, 10 s, would break it)
                assert timer.fired and not timer.connection_broken
                await asession.rollback()
                assert (await asession.execute(text("select 7"))).scalar() == 7
        finally:
            await eng.dispose()

    asyncio.run(main())


# =====================================================================================
# AsyncSession
# =====================================================================================


def test_canceller_of_an_async_session_without_connection(fdsn: str, monitor: Monitor) -> None:
    async def main() -> None:
        eng = _psycopg_async_engine(fdsn)
        try:
            async with sa_asyncio.AsyncSession(eng) as asession:
                canceller = psycancel.Canceller(asession)
                assert canceller.connection is None
                assert "not connected yet" in repr(canceller)
                before = listeners(asession.sync_session)
                pid = int((await asession.execute(text("select pg_backend_pid()"))).scalar())
                assert canceller.connection is not None
                task = asyncio.ensure_future(asession.execute(text(SLEEP)))
                await monitor.await_sleeping(pid)
                await canceller.cancel_async(timeout=10)
                with pytest.raises(sa_exc.OperationalError) as info:
                    await task
                assert sqlstate(info.value) == CANCELED
                assert not monitor.sleeping(pid)
                await asession.rollback()
                assert canceller.connection is None  # given back
                assert (await asession.execute(text("select 7"))).scalar() == 7
                del canceller
                gc.collect()
                assert listeners(asession.sync_session) == before - 2
        finally:
            await eng.dispose()

    asyncio.run(main())


# =====================================================================================
# asyncpg and pg8000: refused at once, before any query
# =====================================================================================


def _asyncpg_engine(pg_server: Any) -> Any:
    params = parse_conninfo(pg_server.dsn_plain)
    return sa_asyncio.create_async_engine(
        "postgresql+asyncpg://",
        async_creator=lambda: asyncpg.connect(
            host=params["host"],
            port=int(params["port"]),
            user=params["user"],
            database=params["dbname"],
            ssl=False,
        ),
    )


def _ran(monitor: Monitor, marker: str) -> bool:
    """True if a backend other than the monitor's shows a query containing ``marker``."""
    rows = monitor.conn.execute(
        "select 1 from pg_stat_activity where query like %s and pid <> pg_backend_pid()",
        (f"%{marker}%",),
    ).fetchall()
    return bool(rows)


def test_asyncpg_sessions_and_engines_are_refused_at_once(pg_server: Any, monitor: Monitor) -> None:
    marker = f"psycancel-{uuid.uuid4().hex}"

    async def main() -> None:
        eng = _asyncpg_engine(pg_server)
        try:
            async with sa_asyncio.AsyncSession(eng) as asession:
                for obj in (asession, asession.sync_session, eng, eng.sync_engine, eng.connect()):
                    with pytest.raises(psycancel.InterfaceError, match="asyncpg") as info:
                        psycancel.Canceller(obj)
                    message = str(info.value)
                    assert "no libpq" in message and "timeout" in message, message
                body = False
                with pytest.raises(psycancel.InterfaceError, match="asyncpg's own timeout"):
                    async with psycancel.cancel_after(asession, 5):
                        body = True
                        await asession.execute(text(f"select pg_sleep(2) -- {marker}"))
                assert not body
                assert asession.get_transaction() is None  # never connected
                assert not _ran(monitor, marker)
        finally:
            await eng.dispose()
        # A raw asyncpg connection: refused by its class.
        params = parse_conninfo(pg_server.dsn_plain)
        raw = await asyncpg.connect(
            host=params["host"],
            port=int(params["port"]),
            user=params["user"],
            database=params["dbname"],
            ssl=False,
        )
        try:
            with pytest.raises(psycancel.InterfaceError, match="asyncpg's own timeout"):
                psycancel.Canceller(raw)
            with pytest.raises(psycancel.InterfaceError, match="asyncpg's own timeout"):
                async with psycancel.cancel_after(raw, 5):
                    await raw.execute(f"select pg_sleep(2) -- {marker}")
            assert not _ran(monitor, marker)
        finally:
            await raw.close()

    asyncio.run(main())


def test_pg8000_sessions_are_refused_at_once(pg_server: Any, monitor: Monitor) -> None:
    marker = f"psycancel-{uuid.uuid4().hex}"
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
        with sa_orm.Session(eng) as session:
            for obj in (session, eng, sa_orm.scoped_session(sa_orm.sessionmaker(eng))):
                with pytest.raises(psycancel.InterfaceError, match=r"pg8000 .*no libpq"):
                    psycancel.Canceller(obj)
            body = False
            refused = pytest.raises(psycancel.InterfaceError, match="statement_timeout")
            with refused, psycancel.cancel_after(session, 5):
                body = True
                session.execute(text(f"select pg_sleep(2) -- {marker}"))
            assert not body
            assert not _ran(monitor, marker)
    finally:
        eng.dispose()


def test_a_session_with_a_libpq_bind_is_not_refused(engine: Any, pg_server: Any) -> None:
    """Refused only when *every* bind lacks libpq: one psycopg bind may be cancelled."""
    params = parse_conninfo(pg_server.dsn_plain)
    other = sqlalchemy.create_engine(
        "postgresql+pg8000://",
        creator=lambda: pg8000.connect(
            host=params["host"], port=int(params["port"]), user=params["user"]
        ),
    )
    try:
        base = sa_orm.declarative_base()

        class Item(base):  # type: ignore[misc, valid-type]
            __tablename__ = "psycancel_item"
            id = sqlalchemy.Column(sqlalchemy.Integer, primary_key=True)

        with sa_orm.Session(binds={Item: other}, bind=engine) as session:
            canceller = psycancel.Canceller(session)
            assert canceller.connection is None
    finally:
        other.dispose()
