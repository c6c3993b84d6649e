"""Child process of the Ctrl-C tests (``tests/cancel/test_interrupt.py``).

``python tests/support/interrupt_child.py`` with a JSON object of arguments on stdin:
``driver`` (``psycopg2``, ``psycopg``, ``pgconn``), ``mode`` (``guarded``:
inside ``psycancel.cancel_on_interrupt``; ``bare``: without it;
``wait_callback``: psycopg2 with ``psycancel.psycopg2_wait_callback``;
``wait_select``: psycopg2 with ``psycopg2.extras.wait_select``), ``dsn`` and,
for ``pgconn``, ``libpq`` (a path). It installs a SIGINT handler and a wakeup
fd of its own first (to check that they are chained and restored), connects,
prints ``PID <backend pid>``, runs ``select pg_sleep(30)`` and waits for the
test to send SIGINT; then prints ``RESULT <json>``: what left the block, the
SQLSTATE found on it or its context, whether the connection is still usable,
and whether the handler and the wakeup fd are the child's own again.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from typing import Any

ARGS: dict[str, Any] = json.loads(sys.stdin.read() or "{}")
SLEEP = "select pg_sleep(30)"

import psycancel  # noqa: E402
from tests.support.sqlstate import pgcode  # noqa: E402

handler_calls: list[int] = []


def own_handler(signum: int, frame: Any) -> None:
    handler_calls.append(signum)
    raise KeyboardInterrupt


signal.signal(signal.SIGINT, own_handler)
own_reader, own_writer = socket.socketpair()
own_writer.setblocking(False)
own_reader.setblocking(False)
signal.set_wakeup_fd(own_writer.fileno())


def announce(pid: int) -> None:
    print(f"PID {pid}", flush=True)


def run_psycopg2(dsn: str, mode: str) -> tuple[BaseException | None, Any]:
    import psycopg2
    import psycopg2.extensions
    import psycopg2.extras

    if mode == "wait_callback":
        psycopg2.extensions.set_wait_callback(psycancel.psycopg2_wait_callback)
    elif mode == "wait_select":
        psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    announce(conn.info.backend_pid)
    try:
        if mode == "guarded":
            with psycancel.cancel_on_interrupt(conn, timeout=10):
                cur.execute(SLEEP)
        else:
            cur.execute(SLEEP)
    except BaseException as ex:
        return ex, conn
    return None, conn


def run_psycopg(dsn: str, mode: str) -> tuple[BaseException | None, Any]:
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True)
    announce(conn.info.backend_pid)
    try:
        if mode == "guarded":
            with psycancel.cancel_on_interrupt(conn, timeout=10):
                conn.execute(SLEEP)
        else:
            conn.execute(SLEEP)
    except BaseException as ex:
        return ex, conn
    return None, conn


class PGconnQueryError(Exception):
    """The error result of a query on a psycancel PGconn, as an exception."""

    def __init__(self, sqlstate: str | None, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def run_pgconn(dsn: str, mode: str, libpq_path: str) -> tuple[BaseException | None, Any]:
    from psycancel.pq import Libpq, PGconn

    conn = PGconn.connect(dsn, libpq=Libpq.load(libpq_path))
    announce(conn.backend_pid)

    def query() -> None:
        conn.send_query(SLEEP)
        first = conn.get_result()  # blocks inside libpq
        while conn.get_result() is not None:
            pass
        if first is not None and first.sqlstate:
            raise PGconnQueryError(first.sqlstate, first.message)

    try:
        if mode == "guarded":
            with psycancel.cancel_on_interrupt(conn, timeout=10):
                query()
        else:
            query()
    except BaseException as ex:
        return ex, conn
    return None, conn


def usable(driver: str, conn: Any) -> bool:
    try:
        if driver == "psycopg2":
            cur = conn.cursor()
            cur.execute("select 1")
            return bool(cur.fetchone() == (1,))
        if driver == "psycopg":
            return bool(conn.execute("select 1").fetchone() == (1,))
        while conn.get_result() is not None:  # what the interrupted block left unread
            pass
        conn.send_query("select 1")
        first = conn.get_result()
        while conn.get_result() is not None:
            pass
        return bool(first is not None and first.rows == (("1",),))
    except Exception:
        return False


def main() -> None:
    driver, mode, dsn = ARGS["driver"], ARGS["mode"], ARGS["dsn"]
    started = time.monotonic()
    if driver == "psycopg2":
        exc, conn = run_psycopg2(dsn, mode)
    elif driver == "psycopg":
        exc, conn = run_psycopg(dsn, mode)
    else:
        exc, conn = run_pgconn(dsn, mode, ARGS["libpq"])
    elapsed = time.monotonic() - started
    current_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(current_fd)
    try:
        forwarded = own_reader.recv(64)
    except BlockingIOError:
        forwarded = b""
    result = {
        "raised": type(exc).__name__ if exc is not None else None,
        "sqlstate": pgcode(exc),
        "elapsed": elapsed,
        "usable": usable(driver, conn),
        "handler_restored": signal.getsignal(signal.SIGINT) is own_handler,
        "handler_calls": len(handler_calls),
        "wakeup_restored": current_fd == own_writer.fileno(),
        "forwarded_sigint": bytes([signal.SIGINT]) in forwarded,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
