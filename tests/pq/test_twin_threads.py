"""One thread waits for a query's result, another cancels it through the connection's
``PGconn`` (both twins).

Thread A waits in the tests' client (``testing.client.Client.get_result()``,
which waits for the server without holding its lock, as a driver does);
meanwhile, through the client's borrowed ``PGconn`` of the twin under test:

* thread B can cancel the query (``cancel_conn()`` + ``blocking()``, or
  ``get_cancel().cancel()``, or ``psycancel.cancel``): A's result is
  SQLSTATE 57014, promptly;
* thread B can read the getters (``status``, ``socket``, ...) at once;
* thread B can ``finish()`` the client: A raises ``InterfaceError`` (never a
  use-after-free), and no socket is left open; finishing only the borrowed
  wrapper leaves A's wait alone;
* a signal handler that raises interrupts A's wait.

Before B acts, the test checks (in ``/proc``) that A really is blocked in a
``poll``/``select`` system call, so that B's call races with a waiting
``get_result()``, not with one that has not started yet.
"""

from __future__ import annotations

import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from psycancel.errors import InterfaceError
from psycancel.pq.enums import ConnStatus
from testing import client
from tests.support.fds import sockets_to
from tests.support.queries import QUERY_CANCELED, drain, run, wait_until_active

SLEEP = "select pg_sleep(30)"
PROMPT = 5.0
"""Seconds within which a cancel (or finish) must end A's wait (the query lasts 30)."""

# System calls a thread blocked waiting for a socket sits in (Linux).
_WAIT_SYSCALLS = {
    "x86_64": {7, 23, 232, 270, 271, 281, 441},  # poll select epoll_wait pselect6 ppoll ...
    "aarch64": {22, 72, 73, 441},  # epoll_pwait pselect6 ppoll epoll_pwait2
}.get(platform.machine())


@pytest.fixture
def monitor(twin: ModuleType, new_libpq: Any, pg_server: Any) -> Iterator[Any]:
    """A second connection, to watch (and clean up) the server's backends."""
    conn = client.connect(pg_server.dsn("disable"), libpq=new_libpq)
    try:
        yield conn
    finally:
        conn.finish()


def terminate(monitor: Any, pid: int) -> None:
    """End backend ``pid`` (a query left running by a test that failed or finished)."""
    run(monitor, f"select pg_terminate_backend({pid})")


# =====================================================================================
# Thread A: blocked in get_result()
# =====================================================================================


class Waiter:
    """Thread A: ``get_result()`` (then drains) on ``conn``; keeps what happened."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended_at = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = drain(self.conn)
        except BaseException as ex:
            self.error = ex
        finally:
            self.ended_at = time.monotonic()

    def start(self) -> Waiter:
        self.thread.start()
        wait_until_blocked(self.thread)
        return self

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "get_result() is still waiting"


def blocked_in_wait(native_id: int) -> bool:
    """Is thread ``native_id`` of this process asleep in a poll/select system call?"""
    task = f"/proc/self/task/{native_id}"
    try:
        with open(f"{task}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"{task}/syscall") as f:
            syscall = f.read().split()
    except (OSError, IndexError):
        return False
    if state != "S" or not syscall or not syscall[0].isdigit():
        return False
    return _WAIT_SYSCALLS is None or int(syscall[0]) in _WAIT_SYSCALLS


def wait_until_blocked(thread: threading.Thread, timeout: float = 10.0) -> None:
    """Block until ``thread`` is waiting for its socket (seen twice in a row)."""
    assert thread.native_id is not None
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = seen + 1 if blocked_in_wait(thread.native_id) else 0
        if seen >= 2:
            return
        time.sleep(0.005)
    raise AssertionError("the thread never blocked waiting for its socket")


def bounded(action: Callable[[], object], timeout: float = PROMPT) -> float:
    """Run ``action`` in thread B; fail (instead of hanging) if it takes too long.

    Returns how long it took.
    """
    outcome: list[BaseException] = []

    def body() -> None:
        try:
            action()
        except BaseException as ex:
            outcome.append(ex)

    thread = threading.Thread(target=body, daemon=True)
    t0 = time.monotonic()
    thread.start()
    thread.join(timeout)
    elapsed = time.monotonic() - t0
    assert not thread.is_alive(), f"the call from the other thread still waits after {timeout} s"
    if outcome:
        raise outcome[0]
    return elapsed


def sleeping_conn(twin: ModuleType, lib: Any, dsn: str, monitor: Any) -> Any:
    conn = client.connect(dsn, libpq=lib)
    assert type(conn.pgconn) is twin.PGconn
    conn.send_query(SLEEP)
    wait_until_active(monitor, conn.backend_pid)
    return conn


# =====================================================================================
# Cancel through the object that another thread waits on
# =====================================================================================


def cancel_with_cancel_conn(conn: Any) -> None:
    cc = conn.cancel_conn()
    try:
        assert cc.status == ConnStatus.ALLOCATED, cc.error_message
        cc.blocking()
    finally:
        cc.finish()


def cancel_with_legacy_handle(conn: Any) -> None:
    handle = conn.get_cancel()
    try:
        handle.cancel()
    finally:
        handle.free()


@pytest.mark.parametrize(
    "cancel", [cancel_with_cancel_conn, cancel_with_legacy_handle], ids=["cancel_conn", "legacy"]
)
@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_cancel_while_another_thread_waits_for_the_result(
    twin: ModuleType,
    new_libpq: Any,
    pg_server: Any,
    monitor: Any,
    sslmode: str,
    cancel: Callable[[Any], None],
) -> None:
    conn = sleeping_conn(twin, new_libpq, pg_server.dsn(sslmode), monitor)
    pid = conn.backend_pid
    try:
        waiter = Waiter(conn).start()
        t0 = time.monotonic()
        bounded(lambda: cancel(conn))
        waiter.join(PROMPT)
        assert waiter.error is None, waiter.error
        assert waiter.result.sqlstate == QUERY_CANCELED, waiter.result
        assert waiter.ended_at - t0 < PROMPT
        # The connection is fine afterwards.
        assert run(conn, "select 1").rows == (("1",),)
    finally:
        if conn.is_busy():
            terminate(monitor, pid)
        conn.finish()


def test_getters_do_not_wait_for_the_result(
    twin: ModuleType, new_libpq: Any, pg_server: Any, monitor: Any
) -> None:
    conn = sleeping_conn(twin, new_libpq, pg_server.dsn("require"), monitor)
    pid = conn.backend_pid
    try:
        waiter = Waiter(conn).start()
        seen: dict[str, object] = {}

        def read_getters() -> None:  # the twin's wrapper, while the client waits
            pg = conn.pgconn
            seen["status"] = pg.status
            seen["socket"] = pg.socket
            seen["ssl_in_use"] = pg.ssl_in_use
            seen["gss_enc_in_use"] = pg.gss_enc_in_use
            seen["error_message"] = pg.error_message
            seen["pgconn_ptr"] = pg.pgconn_ptr
            seen["repr"] = repr(pg)

        bounded(read_getters)
        assert seen["status"] == ConnStatus.OK
        assert seen["pgconn_ptr"] == conn.pgconn_ptr
        assert seen["ssl_in_use"] is True and seen["gss_enc_in_use"] is False
        assert isinstance(seen["socket"], int) and seen["socket"] >= 0
        assert waiter.thread.is_alive(), "get_result() returned before the query ended"
        bounded(lambda: cancel_with_cancel_conn(conn))
        waiter.join(PROMPT)
        assert waiter.result.sqlstate == QUERY_CANCELED
    finally:
        if conn.is_busy():
            terminate(monitor, pid)
        conn.finish()


def test_cancel_through_psycancel_while_another_thread_waits(
    twin: ModuleType, new_libpq: Any, pg_server: Any, monitor: Any
) -> None:
    """The public API, given the very object that the other thread waits on."""
    import psycancel

    conn = sleeping_conn(twin, new_libpq, pg_server.dsn("disable"), monitor)
    pid = conn.backend_pid
    try:
        waiter = Waiter(conn).start()
        bounded(lambda: psycancel.cancel(conn, timeout=PROMPT))
        waiter.join(PROMPT)
        assert waiter.error is None, waiter.error
        assert waiter.result.sqlstate == QUERY_CANCELED
    finally:
        if conn.is_busy():
            terminate(monitor, pid)
        conn.finish()


# =====================================================================================
# finish() while another thread waits
# =====================================================================================


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_finish_while_another_thread_waits(
    twin: ModuleType, new_libpq: Any, pg_server: Any, monitor: Any, sslmode: str
) -> None:
    """The waiter raises InterfaceError (no use-after-free); the socket is closed."""
    before = sockets_to(pg_server.port)
    conn = sleeping_conn(twin, new_libpq, pg_server.dsn(sslmode), monitor)
    pid = conn.backend_pid
    try:
        waiter = Waiter(conn).start()
        t0 = time.monotonic()
        bounded(conn.finish)
        waiter.join(PROMPT)
        assert isinstance(waiter.error, InterfaceError), waiter.error
        assert "closed" in str(waiter.error)
        assert waiter.ended_at - t0 < PROMPT
        assert conn.closed
        with pytest.raises(InterfaceError):
            conn.get_result()
        # The monitor's own socket is in `before`: nothing else is left.
        assert sockets_to(pg_server.port) == before
    finally:
        conn.finish()
        terminate(monitor, pid)  # the backend still sleeps: it reads no socket meanwhile


def test_finish_of_a_borrowed_wrapper_while_another_thread_waits(
    twin: ModuleType, new_libpq: Any, pg_server: Any, monitor: Any
) -> None:
    """Finishing the client's borrowed wrapper leaves the wait alone; psycancel then has
    nothing to cancel through it, and a new wrapper of the pointer cancels the query."""
    import psycancel

    owner = sleeping_conn(twin, new_libpq, pg_server.dsn("disable"), monitor)
    pid = owner.backend_pid
    try:
        waiter = Waiter(owner).start()
        bounded(owner.pgconn.finish)
        assert owner.pgconn.closed and not owner.closed
        bounded(lambda: psycancel.cancel(owner.pgconn, timeout=PROMPT))  # nothing to cancel
        assert waiter.thread.is_alive()  # the query still runs
        borrowed = twin.PGconn.from_ptr(owner.pgconn_ptr, new_libpq)
        bounded(lambda: cancel_with_cancel_conn(borrowed))
        waiter.join(PROMPT)
        assert waiter.error is None, waiter.error
        assert waiter.result.sqlstate == QUERY_CANCELED
        assert owner.status == ConnStatus.OK
        assert run(owner, "select 2").rows == (("2",),)
    finally:
        if owner.is_busy():
            terminate(monitor, pid)
        owner.finish()


# =====================================================================================
# Signals
# =====================================================================================


class Interrupted(Exception):
    pass


def test_a_signal_handler_can_interrupt_the_wait(
    twin: ModuleType, new_libpq: Any, pg_server: Any, monitor: Any
) -> None:
    """SIGUSR1 with a raising handler ends get_result() in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python runs signal handlers in the main thread only")

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    conn = sleeping_conn(twin, new_libpq, pg_server.dsn("disable"), monitor)
    pid = conn.backend_pid
    previous = signal.signal(signal.SIGUSR1, handler)
    main = threading.main_thread()
    try:

        def interrupt() -> None:
            wait_until_blocked(main)
            assert main.ident is not None
            signal.pthread_kill(main.ident, signal.SIGUSR1)

        thread = threading.Thread(target=interrupt, daemon=True)
        thread.start()
        t0 = time.monotonic()
        with pytest.raises(Interrupted):
            conn.get_result()
        assert time.monotonic() - t0 < PROMPT
        thread.join(PROMPT)
        # The query still runs: cancel it, and the connection goes on.
        assert conn.is_busy()
        cancel_with_cancel_conn(conn)
        assert drain(conn).sqlstate == QUERY_CANCELED
        assert run(conn, "select 3").rows == (("3",),)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        if conn.is_busy():
            terminate(monitor, pid)
        conn.finish()
