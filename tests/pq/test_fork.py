"""After ``os.fork()`` the child neither uses nor frees the parent's objects (both twins).

A ``PGconn`` (owned and borrowed), a ``PGcancelConn`` and a legacy
``PGcancel`` made before the fork belong to the parent: in the child every
use raises ``InterfaceError`` ("... belongs to the parent process ..."),
and ``finish()``/``free()`` or the garbage collector only forget the pointer.
``PQfinish`` there would send Terminate on the socket that the parent still
uses (ending its session), and a TLS close would corrupt its stream. The
parent then runs a query on its connection and cancels with its cancel
connection, as if nothing had happened. New objects made in the child work.
"""

from __future__ import annotations

import functools
import gc
import os
import threading
import time
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from psycancel.errors import CancelError, InterfaceError
from psycancel.pq.enums import ConnStatus
from testing import client
from testing.client import ExecStatus
from tests.support.queries import QUERY_CANCELED, drain, run, wait_until_active

CHILD_TIMEOUT = 20.0

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork() here")


def in_child(body: Callable[[], list[str]]) -> list[str]:
    """Fork; run ``body()`` in the child, which leaves with ``os._exit``.

    ``body`` returns the problems it found; the child's exit status tells
    whether there were any (0: none), and the list itself comes back through
    a pipe. A child that hangs is killed, and that is a problem too.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 2
        try:
            os.close(read_fd)
            problems = body()
            status = 1 if problems else 0
            os.write(write_fd, "\n".join(problems).encode())
        except BaseException:
            os.write(write_fd, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(write_fd)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return [f"the child hung for {CHILD_TIMEOUT} s"]
        time.sleep(0.01)
    with os.fdopen(read_fd, "rb") as f:
        report = f.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return []
    return [f"child exit status {code}", *report.splitlines()]


PGCONN_USES: dict[str, Callable[[Any], object]] = {
    "pgconn_ptr": lambda c: c.pgconn_ptr,
    "status": lambda c: c.status,
    "error_message": lambda c: c.error_message,
    "socket": lambda c: c.socket,
    "ssl_in_use": lambda c: c.ssl_in_use,
    "gss_enc_in_use": lambda c: c.gss_enc_in_use,
    "backend_pid": lambda c: c.backend_pid,
    "conninfo_option": lambda c: c.conninfo_option("host"),
    "cancel_conn": lambda c: c.cancel_conn(),
    "get_cancel": lambda c: c.get_cancel(),
}
CANCEL_CONN_USES: dict[str, Callable[[Any], object]] = {
    "status": lambda cc: cc.status,
    "socket": lambda cc: cc.socket,
    "error_message": lambda cc: cc.error_message,
    "start": lambda cc: cc.start(),
    "poll": lambda cc: cc.poll(),
    "blocking": lambda cc: cc.blocking(),
    "reset": lambda cc: cc.reset(),
}
CANCEL_USES: dict[str, Callable[[Any], object]] = {"cancel": lambda h: h.cancel()}


def uses(objs: dict[str, Any]) -> dict[str, Callable[[], object]]:
    """Every use of the parent's objects that the child must be refused."""
    calls: dict[str, Callable[[], object]] = {}
    for name, table in (
        ("conn", PGCONN_USES),
        ("borrowed", PGCONN_USES),
        ("cc", CANCEL_CONN_USES),
        ("handle", CANCEL_USES),
    ):
        for use, call in table.items():
            calls[f"{name}.{use}"] = functools.partial(call, objs[name])
    return calls


def check_refused(objs: dict[str, Any]) -> list[str]:
    """In the child: every use raises InterfaceError naming the parent process."""
    problems = []
    for name, call in uses(objs).items():
        try:
            call()
        except InterfaceError as ex:
            if "parent process" not in str(ex):
                problems.append(f"{name}: InterfaceError without 'parent process': {ex}")
        except BaseException as ex:
            problems.append(f"{name}: {type(ex).__name__}: {ex}")
        else:
            problems.append(f"{name}: did not raise")
    # Metadata and the flags keep working; repr never raises.
    for name in ("conn", "borrowed", "cc", "handle"):
        obj = objs[name]
        if obj.closed:
            problems.append(f"{name}.closed is True before finish")
        if "parent process" not in repr(obj):
            problems.append(f"repr({name}) = {obj!r}")
    return problems


@pytest.mark.parametrize("how", ["finish", "gc"])
@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_child_neither_uses_nor_finishes_the_parents_objects(
    twin: ModuleType, new_libpq: Any, pg_server: Any, sslmode: str, how: str
) -> None:
    dsn = pg_server.dsn(sslmode)
    monitor = client.connect(pg_server.dsn("disable"), libpq=new_libpq)
    # Only this dict refers to the objects, so that clearing it in the child
    # really drops them there (and the garbage collector deallocates them).
    # "conn" is the client's own wrapper, "borrowed" a second one of the pointer.
    objs: dict[str, Any] = {"made": client.connect(dsn, libpq=new_libpq)}
    objs["conn"] = objs["made"].pgconn
    objs["borrowed"] = twin.PGconn.from_ptr(objs["conn"].pgconn_ptr, new_libpq)
    objs["cc"] = objs["conn"].cancel_conn()
    objs["handle"] = objs["conn"].get_cancel()
    assert objs["cc"].status == ConnStatus.ALLOCATED
    try:

        def child() -> list[str]:
            problems = check_refused(objs)
            if how == "finish":
                objs["conn"].finish()
                objs["borrowed"].finish()
                objs["cc"].finish()
                objs["handle"].free()
                for name in ("conn", "borrowed", "cc", "handle"):
                    if not objs[name].closed:
                        problems.append(f"{name}.closed is False after finish")
                objs["conn"].finish()  # idempotent
                objs["made"].finish()  # the client forgets the parent's connection too
            objs.clear()
            gc.collect()
            # New objects made in the child are this process's: they work.
            conn = client.connect(dsn, libpq=new_libpq)
            try:
                res = run(conn, "select 42")
                if res.rows != (("42",),):
                    problems.append(f"a new connection in the child: {res}")
                cc = conn.cancel_conn()
                cc.blocking()
                cc.finish()
            finally:
                conn.finish()
            return problems

        assert in_child(child) == []
        # The parent's session is unharmed...
        conn = objs["made"]
        res = run(conn, "select pg_sleep(0.2), 7")
        assert res.status == ExecStatus.TUPLES_OK, res.message
        assert res.rows == (("", "7"),)
        assert objs["borrowed"].status == ConnStatus.OK
        # ... and its cancel objects still work.
        conn.send_query("select pg_sleep(30)")
        wait_until_active(monitor, conn.backend_pid)
        objs["cc"].blocking()
        assert drain(conn).sqlstate == QUERY_CANCELED
        objs["handle"].cancel()  # on an idle connection: harmless
        assert run(conn, "select 9").rows == (("9",),)
    finally:
        for name in ("borrowed", "cc", "made"):
            objs[name].finish()
        objs["handle"].free()
        monitor.finish()


def test_child_is_not_stuck_on_a_lock_held_at_the_fork(
    twin: ModuleType, new_libpq: Any, pg_server: Any, proxy: Any
) -> None:
    """A parent's thread was inside ``blocking()`` (holding the object's lock) at the
    fork: in the child, use raises and finish returns at once (no deadlock)."""
    px = proxy()
    objs: dict[str, Any] = {
        "conn": client.connect(px.dsn(pg_server, "disable", connect_timeout=3), libpq=new_libpq)
    }
    objs["cc"] = objs["conn"].cancel_conn()
    px.blackhole()  # the cancel connection never gets an answer
    accepted = px.accepted
    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            objs["cc"].blocking()  # holds the lock until connect_timeout
            outcome.append(None)
        except BaseException as ex:
            outcome.append(ex)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        assert px.wait_accepted(accepted + 1)

        def child() -> list[str]:
            problems = []
            for name, obj in (("cc", objs["cc"]), ("conn", objs["conn"].pgconn)):
                try:
                    status = obj.status
                    problems.append(f"{name}.status did not raise (it is {status!r})")
                except InterfaceError:
                    pass
            objs["cc"].finish()
            objs["conn"].finish()
            objs.clear()
            gc.collect()
            return problems

        assert in_child(child) == []
        thread.join(15)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], CancelError), outcome
        px.forward()
        assert run(objs["conn"], "select 1").rows == (("1",),)
    finally:
        thread.join(15)
        objs["cc"].finish()
        objs["conn"].finish()
