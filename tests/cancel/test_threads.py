"""Threads and processes: concurrent cancels, cross-thread use, and fork().

* 8 threads cancel 8 running queries at once (sync, asyncio and trio, each
  thread with its own loop): every query ends with 57014, every cancel object
  is finished, no socket is left.
* The query blocks in one thread while another cancels it (possible only if
  ``get_result`` releases the GIL, in both twins); a ``PGcancelConn`` made in
  one thread is used in another (libpq allows it).
* After ``os.fork()`` the child drops (garbage-collects) the parent's cancel
  objects, one of them in the middle of its handshake: the parent's objects
  still work, its session is unharmed, and no stray cancel reached it. The
  same for a ``PGconn`` that psycancel owns (the twins' fork guard).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

import pytest

from psycancel._engine.blocking import wait_blocking
from psycancel._engine.machine import cancel_steps
from psycancel._engine.plan import Deadline
from psycancel.pq import Libpq, PGconn
from psycancel.pq.enums import PollingStatus
from testing import client
from testing.client import Client, ExecStatus
from tests.support.fds import sockets_to
from tests.support.modes import LOOP_MODES, call_cancel
from tests.support.queries import QUERY_CANCELED, drain, run, sleeping, wait_until_active

N_THREADS = 8


def start_sleeping(dsn: str, libpq: Libpq, monitor: Client, n: int) -> list[Client]:
    conns = [client.connect(dsn, libpq=libpq) for _ in range(n)]
    for conn in conns:
        conn.send_query("select pg_sleep(30)")
    for conn in conns:
        wait_until_active(monitor, conn.backend_pid)
    return conns


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_eight_threads_cancel_eight_queries(
    mode: str, sslmode: str, pg_server: Any, libpq: Libpq, created: list[Any]
) -> None:
    monitor = client.connect(pg_server.dsn("disable"), libpq=libpq)
    conns = start_sleeping(pg_server.dsn(sslmode), libpq, monitor, N_THREADS)
    try:
        before = sockets_to(pg_server.port)
        barrier = threading.Barrier(N_THREADS)
        errors: list[BaseException] = []

        def worker(conn: Client) -> None:
            try:
                barrier.wait(10)
                call_cancel(mode, conn, timeout=10)
            except BaseException as ex:
                errors.append(ex)

        threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads), "a cancel thread hangs"
        assert not errors, errors
        elapsed = time.monotonic() - t0
        for conn in conns:
            assert drain(conn).sqlstate == QUERY_CANCELED
        assert elapsed < 10, elapsed
        assert sockets_to(pg_server.port) == before
    finally:
        for conn in conns:
            conn.finish()
        monitor.finish()
    assert len(created) == N_THREADS and all(cc.closed for cc in created)


BLOCKED_SLEEP = 4  # seconds: how long a blocked query lasts if the cancel cannot get through


def cancel_target(conn: Client, libpq: Libpq, via: str) -> Client | PGconn:
    """What the other thread passes to psycancel: the object itself, or a borrowed
    wrapper of the same pointer (as the driver adapters make)."""
    if via == "same-object":
        return conn
    return PGconn.from_ptr(conn.pgconn_ptr, libpq)


@pytest.mark.parametrize("via", ["same-object", "borrowed-wrapper"])
@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_query_blocks_in_one_thread_cancelled_from_another(
    via: str, sslmode: str, pg_server: Any, libpq: Libpq
) -> None:
    """The main thread blocks in get_result(); a thread cancels (needs the GIL free)."""
    import psycancel

    conn = client.connect(pg_server.dsn(sslmode), libpq=libpq)
    monitor = client.connect(pg_server.dsn("disable"), libpq=libpq)
    target = cancel_target(conn, libpq, via)
    errors: list[BaseException] = []

    def canceller() -> None:
        try:
            wait_until_active(monitor, conn.backend_pid)
            psycancel.cancel(target, timeout=2)
        except BaseException as ex:
            errors.append(ex)

    try:
        conn.send_query(f"select pg_sleep({BLOCKED_SLEEP})")
        thread = threading.Thread(target=canceller)
        t0 = time.monotonic()
        thread.start()
        result = drain(conn)  # blocks this thread in libpq
        thread.join(10)
        assert not errors, errors
        assert result.sqlstate == QUERY_CANCELED
        assert time.monotonic() - t0 < BLOCKED_SLEEP
    finally:
        conn.finish()
        monitor.finish()


@pytest.mark.parametrize("via", ["same-object", "borrowed-wrapper"])
def test_query_in_a_thread_cancelled_from_the_main_thread(
    via: str, dsn_plain: str, libpq: Libpq
) -> None:
    import psycancel

    conn = client.connect(dsn_plain, libpq=libpq)
    monitor = client.connect(dsn_plain, libpq=libpq)
    try:
        results: list[Any] = []
        conn.send_query(f"select pg_sleep({BLOCKED_SLEEP})")
        wait_until_active(monitor, conn.backend_pid)
        thread = threading.Thread(target=lambda: results.append(drain(conn)))
        thread.start()
        time.sleep(0.05)  # let it block in get_result
        t0 = time.monotonic()
        psycancel.cancel(cancel_target(conn, libpq, via), timeout=2)
        assert time.monotonic() - t0 < 2
        thread.join(10)
        assert not thread.is_alive()
        assert results[0].sqlstate == QUERY_CANCELED
    finally:
        conn.finish()
        monitor.finish()


def test_cancel_conn_made_in_one_thread_used_in_another(dsn: str, libpq: Libpq) -> None:
    with sleeping(dsn, libpq) as conn:
        cc = conn.cancel_conn()  # in the thread that owns the connection
        errors: list[BaseException] = []

        def use() -> None:
            try:
                wait_blocking(cancel_steps(cc), Deadline.after(10))
            except BaseException as ex:
                errors.append(ex)
            finally:
                cc.finish()

        thread = threading.Thread(target=use)
        thread.start()
        thread.join(10)
        assert not errors, errors
        assert cc.closed
        assert drain(conn).sqlstate == QUERY_CANCELED


# =====================================================================================
# fork()
# =====================================================================================


def in_child(body: Any) -> int:
    """Fork; run ``body()`` in the child and leave with os._exit; the exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 0
        try:
            body()
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def poll_once(cc: Any) -> PollingStatus:
    """Start ``cc`` and poll it once after the connect (leaves it mid-handshake)."""
    import select

    cc.start()
    poller = select.poll()
    poller.register(cc.socket, select.POLLOUT)
    poller.poll(5000)
    status: PollingStatus = cc.poll()
    return status


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_fork_child_drops_parent_cancel_objects(sslmode: str, pg_server: Any, libpq: Libpq) -> None:
    conn = client.connect(pg_server.dsn(sslmode), libpq=libpq)
    try:
        # Only this dict refers to the cancel objects, so that clearing it in
        # the child really drops them there (the garbage collector finishes them).
        objs = {"fresh": conn.cancel_conn(), "midway": conn.cancel_conn()}
        assert poll_once(objs["midway"]) in (PollingStatus.WRITING, PollingStatus.READING)

        def child() -> None:
            objs.clear()
            gc.collect()

        assert in_child(child) == 0
        # The parent's objects still work.
        wait_blocking(_continue(objs["midway"]), Deadline.after(10))
        wait_blocking(cancel_steps(objs["fresh"]), Deadline.after(10))
        for cc in objs.values():
            cc.finish()
        # The session is unharmed, and no stray cancel hits its next query.
        res = run(conn, "select pg_sleep(0.3), 7")
        assert res.status == ExecStatus.TUPLES_OK and res.rows == (("", "7"),)
    finally:
        conn.finish()


def _continue(cc: Any) -> Any:
    """Drive an already started (and polled once) cancel conn to its end."""
    from psycancel._engine.machine import READ, WRITE

    def steps() -> Any:
        event = WRITE if cc.status.name == "MADE" else READ
        while True:
            yield cc.socket, event
            status = cc.poll()
            if status == PollingStatus.OK:
                return
            assert status != PollingStatus.FAILED, cc.error_message
            event = READ if status == PollingStatus.READING else WRITE

    return steps()


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_fork_child_drops_parent_pgconn(sslmode: str, pg_server: Any, libpq: Libpq) -> None:
    objs = {"conn": client.connect(pg_server.dsn(sslmode), libpq=libpq)}

    def child() -> None:
        objs.clear()  # the only reference: the child's GC finishes the PGconn
        gc.collect()

    try:
        assert in_child(child) == 0
        res = run(objs["conn"], "select 1")
        assert res.rows == (("1",),), f"the parent's session is gone: {res.message}"
    finally:
        objs["conn"].finish()
