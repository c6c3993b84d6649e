"""Child process of the Ctrl-C / SIGTERM tests (``tests/cancel/test_interrupt*.py``).

``python tests/support/interrupt_child.py`` with a JSON object of arguments on stdin:
``driver`` (``psycopg2``, ``psycopg``, ``pgconn``), ``mode`` (``guarded``:
inside ``psycancel.cancel_on_interrupt``; ``bare``: without it;
``wait_callback``: psycopg2 with ``psycancel.psycopg2_wait_callback``;
``wait_select``: psycopg2 with ``psycopg2.extras.wait_select``), ``dsn`` and,
for ``pgconn``, ``libpq`` (a path). Optional: ``sql`` (default ``select
pg_sleep(30)``), ``timeout`` (default 10), ``signals`` (names of the signals
given to ``cancel_on_interrupt``, default: not given), ``break_connection``
(default: not given), ``body`` (``"sleep"``: the block prints ``READY``
and sleeps 30 s in Python instead of running the query; ``"nested_sleep"``,
psycopg2 only: the same inside two blocks, the outer one for a second
connection), ``own_handlers``
(names of the signals the child handles itself first, default
``["SIGINT"]``: SIGINT raises ``KeyboardInterrupt``, any other
``SystemExit(3)``; a signal not named keeps its default action).

It installs those handlers and a wakeup fd of its own first (to check that
they are chained and restored), connects, prints ``PID <backend pid>``, runs
the query and waits for the test's signals; then prints ``RESULT <json>``:
what left the block and its context, the SQLSTATE found on the chain,
whether the connection is still usable or broken, the ``psycancel`` WARNING
records, the monotonic time the block ended (the parent's clock is the same),
the file descriptors left open by the block (looked at once psycancel's
threads of the block have ended), and whether the handlers and the wakeup fd
are the child's own again.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any

ARGS: dict[str, Any] = json.loads(sys.stdin.read() or "{}")
SQL: str = ARGS.get("sql") or "select pg_sleep(30)"
BLOCK_THREADS = ("psycancel-cancel-on-interrupt", "psycancel-interrupt-cancel")
"""The names of the threads a ``cancel_on_interrupt`` block starts."""

import psycancel  # noqa: E402
from tests.support.fds import open_fds  # noqa: E402
from tests.support.sqlstate import pgcode  # noqa: E402

handler_calls: list[int] = []


def own_handler(signum: int, frame: Any) -> None:
    handler_calls.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(3)


OWN = [signal.Signals[name] for name in ARGS.get("own_handlers", ["SIGINT"])]
for _signum in OWN:
    signal.signal(_signum, own_handler)
own_reader, own_writer = socket.socketpair()
own_writer.setblocking(False)
own_reader.setblocking(False)
signal.set_wakeup_fd(own_writer.fileno())


class Records(logging.Handler):
    """The ``psycancel`` logger's WARNING records."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


RECORDS = Records()
logging.getLogger("psycancel").addHandler(RECORDS)


def announce(pid: int) -> None:
    print(f"PID {pid}", flush=True)


def guard(conn: Any) -> psycancel.cancel_on_interrupt:
    options: dict[str, Any] = {"timeout": ARGS.get("timeout", 10)}
    if "signals" in ARGS:
        options["signals"] = tuple(signal.Signals[name] for name in ARGS["signals"])
    if "break_connection" in ARGS:
        options["break_connection"] = ARGS["break_connection"]
    return psycancel.cancel_on_interrupt(conn, **options)


class Block:
    """The guarded (or bare) block: what it raised, when it ended, what it left open."""

    def __init__(self) -> None:
        self.exc: BaseException | None = None
        self.ended_at = 0.0
        self.fds_before: set[int] = set()
        self.guard: psycancel.cancel_on_interrupt | None = None
        self.outer_guard: psycancel.cancel_on_interrupt | None = None
        self.outer: Any = None
        """A second connection, guarded by an outer block (``"body": "nested_sleep"``)."""

    def run(self, conn: Any, mode: str, query: Any, outer: Any = None) -> None:
        if ARGS.get("body") in ("sleep", "nested_sleep"):
            query = python_sleep
        self.fds_before = open_fds()
        try:
            if mode == "guarded" and outer is not None:
                self.outer_guard, self.guard = guard(outer), guard(conn)
                with self.outer_guard, self.guard:
                    query()
            elif mode == "guarded":
                self.guard = guard(conn)
                with self.guard:
                    query()
            else:
                query()
        except BaseException as ex:
            self.exc = ex
        self.ended_at = time.monotonic()


def python_sleep() -> None:
    """The block's body for ``"body": "sleep"``: Python code, no query running."""
    print("READY", flush=True)
    time.sleep(30)


def run_psycopg2(dsn: str, mode: str, block: Block) -> Any:
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
    if ARGS.get("body") == "nested_sleep":
        block.outer = psycopg2.connect(dsn)
    block.run(conn, mode, lambda: cur.execute(SQL), block.outer)
    return conn


def run_psycopg(dsn: str, mode: str, block: Block) -> Any:
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True)
    announce(conn.info.backend_pid)
    block.run(conn, mode, lambda: conn.execute(SQL))
    return conn


class PGconnQueryError(Exception):
    """The error result of a query on the tests' client, as an exception."""

    def __init__(self, sqlstate: str | None, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def run_pgconn(dsn: str, mode: str, libpq_path: str, block: Block) -> Any:
    from psycancel.pq import Libpq
    from testing import client

    conn = client.connect(dsn, libpq=Libpq.load(libpq_path))
    announce(conn.backend_pid)

    def query() -> None:
        conn.send_query(SQL)
        first = conn.get_result()  # blocks inside libpq
        while conn.get_result() is not None:
            pass
        if first is not None and first.sqlstate:
            raise PGconnQueryError(first.sqlstate, first.message)

    block.run(conn, mode, query)
    return conn


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


def broken(driver: str, conn: Any) -> bool | None:
    """The driver says the connection is broken (psycopg2 ``closed != 0``, psycopg ``broken``)."""
    if driver == "psycopg2":
        return bool(conn.closed != 0)
    if driver == "psycopg":
        return bool(conn.broken)
    return None


def wait_for_block_threads(limit: float = 30.0) -> bool:
    """Wait until the threads of the block have ended (a cancel may outlive a break)."""
    end = time.monotonic() + limit
    for thread in threading.enumerate():
        if thread.name in BLOCK_THREADS:
            thread.join(max(0.0, end - time.monotonic()))
    return not any(t.name in BLOCK_THREADS for t in threading.enumerate())


def describe(exc: BaseException | None) -> dict[str, Any] | None:
    if exc is None:
        return None
    return {"type": type(exc).__name__, "module": type(exc).__module__, "text": str(exc)}


def main() -> None:
    driver, mode, dsn = ARGS["driver"], ARGS["mode"], ARGS["dsn"]
    started = time.monotonic()
    block = Block()
    if driver == "psycopg2":
        conn = run_psycopg2(dsn, mode, block)
    elif driver == "psycopg":
        conn = run_psycopg(dsn, mode, block)
    else:
        conn = run_pgconn(dsn, mode, ARGS["libpq"], block)
    exc = block.exc
    elapsed = block.ended_at - started
    threads_ended = wait_for_block_threads()
    leaked = sorted(open_fds() - block.fds_before)
    current_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(current_fd)
    try:
        forwarded = own_reader.recv(64)
    except BlockingIOError:
        forwarded = b""
    result = {
        "raised": type(exc).__name__ if exc is not None else None,
        "context": describe(exc.__context__ if exc is not None else None),
        "notes": list(getattr(exc, "__notes__", [])),
        "sqlstate": pgcode(exc),
        "elapsed": elapsed,
        "ended_at": block.ended_at,
        "broken": broken(driver, conn),
        "guard_broken": block.guard.connection_broken if block.guard is not None else None,
        "outer_usable": usable(driver, block.outer) if block.outer is not None else None,
        "usable": usable(driver, conn),
        "warnings": [
            {"message": r.getMessage(), "reason": getattr(r, "psycancel_break", None)}
            for r in RECORDS.records
        ],
        "threads_ended": threads_ended,
        "leaked_fds": leaked,
        "handler_restored": all(signal.getsignal(s) is own_handler for s in OWN),
        "handler_calls": len(handler_calls),
        "wakeup_restored": current_fd == own_writer.fileno(),
        "forwarded_sigint": bytes([signal.SIGINT]) in forwarded,
        "forwarded": list(forwarded),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
