"""A typed outcome for every cancel psycancel starts (issue 23 item 3), real servers.

A query ended by a ``Canceller`` (inside its ``with`` block) raises
``QueryCancelled``; one ended by ``cancel_on_interrupt``'s signal,
``QueryInterrupted`` (the context of the ``KeyboardInterrupt``, or raised
itself when the handler does not raise); ``cancel_after``'s ``QueryTimeout``
is a ``QueryCancelled`` too. The server's own ``statement_timeout`` and
another session's ``pg_cancel_backend`` leave the driver's error unchanged,
inside the same blocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

import psycancel
from tests.integrations.helpers import QUERY_CANCELED, SLOW, driver_error
from tests.support.drivers import ROOT, need
from tests.support.frameworks import Monitor

psycopg = need("psycopg")
psycopg2 = need("psycopg2")
sqlalchemy = need("sqlalchemy")
sqlalchemy_orm = need("sqlalchemy.orm")

CHILD = ROOT / "tests" / "integrations" / "interrupt_outcome_child.py"


def test_the_classes() -> None:
    assert issubclass(psycancel.QueryTimeout, psycancel.QueryCancelled)
    assert issubclass(psycancel.QueryInterrupted, psycancel.QueryCancelled)
    assert not issubclass(psycancel.QueryCancelled, TimeoutError)
    import pickle

    again = pickle.loads(pickle.dumps(psycancel.QueryInterrupted("x", signal=15)))
    assert again.signal == 15 and again.args == ("x",)


class Query:
    """A connection whose query runs in a thread of its own, inside its Canceller's block."""

    def __init__(self, driver: str, dsn: str) -> None:
        self.driver = driver
        if driver == "psycopg":
            self.conn: Any = psycopg.connect(dsn, autocommit=True)
            self.pid = self.conn.info.backend_pid
        else:
            self.conn = psycopg2.connect(dsn)
            self.conn.autocommit = True
            self.pid = self.conn.get_backend_pid()
        self.handle = psycancel.Canceller(self.conn)

    def execute(self, sql: str) -> None:
        if self.driver == "psycopg":
            self.conn.execute(sql)
        else:
            with self.conn.cursor() as cur:
                cur.execute(sql)

    def run(self, monitor: Monitor, end: Callable[[], object]) -> BaseException | None:
        """Run SLOW in a thread inside ``with handle:``; ``end()`` once it sleeps."""
        box: list[BaseException] = []

        def main() -> None:
            try:
                with self.handle:
                    self.execute(SLOW)
            except BaseException as ex:
                box.append(ex)

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        monitor.wait_sleeping(self.pid)
        end()
        thread.join(30)
        assert not thread.is_alive()
        self.execute("select 1")  # usable
        return box[0] if box else None

    def close(self) -> None:
        self.conn.close()


def sqlstate(exc: BaseException | None) -> str | None:
    err = driver_error(exc)
    return None if err is None else getattr(err, "sqlstate", None) or err.pgcode


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_cancellers_cancel_is_told_apart(driver: str, dsn_plain: str, monitor: Monitor) -> None:
    query = Query(driver, dsn_plain)
    try:
        ours = query.run(monitor, query.handle.cancel)
        assert type(ours) is psycancel.QueryCancelled, repr(ours)
        assert sqlstate(ours.__cause__) == QUERY_CANCELED
        assert query.handle.cancels == 1

        theirs = query.run(
            monitor, lambda: monitor.conn.execute(f"select pg_cancel_backend({query.pid})")
        )
        assert not isinstance(theirs, psycancel.Error), repr(theirs)
        assert sqlstate(theirs) == QUERY_CANCELED  # the driver's own error, unchanged

        query.execute("set statement_timeout = 300")
        server = query.run(monitor, lambda: None)
        assert not isinstance(server, psycancel.Error), repr(server)
        assert sqlstate(server) == QUERY_CANCELED
        assert "statement timeout" in str(server)
        query.execute("set statement_timeout = 0")
    finally:
        query.close()


def test_a_cancel_sent_before_the_block_is_not_counted(dsn_plain: str) -> None:
    conn = psycopg.connect(dsn_plain, autocommit=True)
    try:
        handle = psycancel.Canceller(conn)
        handle.cancel()  # idle: nothing to cancel, but a request was sent
        conn.execute("set statement_timeout = 300")
        with pytest.raises(psycopg.errors.QueryCanceled), handle:
            conn.execute(SLOW)
    finally:
        conn.close()


def test_a_sessions_canceller_wraps_the_frameworks_error(dsn_plain: str, monitor: Monitor) -> None:
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn_plain)
    )
    try:
        with sqlalchemy_orm.Session(engine) as session:
            session.execute(sqlalchemy.text("select 1"))
            pid = session.connection().connection.driver_connection.info.backend_pid
            handle = psycancel.Canceller(session)
            timer = threading.Timer(0, lambda: (monitor.wait_sleeping(pid), handle.cancel()))
            timer.start()
            with pytest.raises(psycancel.QueryCancelled) as info, handle:
                session.execute(sqlalchemy.text(SLOW))
            timer.join(30)
            assert isinstance(info.value.__cause__, sqlalchemy.exc.OperationalError)
    finally:
        engine.dispose()


def test_async_canceller(dsn_plain: str, monitor: Monitor) -> None:
    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn_plain, autocommit=True)
        async with conn:
            handle = psycancel.Canceller(conn)
            pid = conn.info.backend_pid

            async def cancel_when_sleeping() -> None:
                await monitor.await_sleeping(pid)
                await handle.cancel_async()

            task = asyncio.create_task(cancel_when_sleeping())
            with pytest.raises(psycancel.QueryCancelled):
                async with handle:
                    await conn.execute(SLOW)
            await task
            assert handle.cancels == 1

    asyncio.run(main())


def test_cancel_after_is_a_query_cancelled(dsn_plain: str) -> None:
    with psycopg.connect(dsn_plain, autocommit=True) as conn:
        with pytest.raises(psycancel.QueryCancelled) as info, psycancel.cancel_after(conn, 0.2):
            conn.execute(SLOW)
        assert isinstance(info.value, psycancel.QueryTimeout)


@pytest.fixture(scope="module", params=["psycopg", "psycopg2"])
def interrupted(request: pytest.FixtureRequest, pg_server: Any) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(CHILD)],
        input=json.dumps({"driver": request.param, "dsn": pg_server.dsn("disable")}),
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=str(ROOT),
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def test_ctrl_c_keyboard_interrupt_from_query_interrupted(interrupted: dict[str, Any]) -> None:
    part = interrupted["sigint"]
    assert part["raised"] == "KeyboardInterrupt", part
    assert part["context"] == "QueryInterrupted", part
    assert part["sqlstate"] == QUERY_CANCELED, part  # along the chain: the driver's error


def test_a_handler_that_does_not_raise_gives_query_interrupted(
    interrupted: dict[str, Any],
) -> None:
    part = interrupted["sigterm_flag"]
    assert part["raised"] == "QueryInterrupted" and part["is_cancelled"], part
    assert part["signal"] == 15 and part["sqlstate"] == QUERY_CANCELED, part
    assert interrupted["sigterm_flags"] == [15]  # the handler ran


def test_the_servers_and_another_sessions_cancels_stay_the_drivers(
    interrupted: dict[str, Any],
) -> None:
    for name in ("statement_timeout", "pg_cancel_backend"):
        part = interrupted[name]
        assert part["raised"] == "QueryCanceled", (name, part)
        assert not part["is_cancelled"] and part["sqlstate"] == QUERY_CANCELED, (name, part)
