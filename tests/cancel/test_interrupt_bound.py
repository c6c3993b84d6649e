"""``cancel_on_interrupt``'s bound: the block ends within ``timeout`` of the first signal.

Each scenario runs the child of ``tests/cancel/test_interrupt.py``
(``tests/support/interrupt_child.py``, same twin) with real signals. The
child's connection goes through the test proxy; once the query runs, the
proxy freezes (``TcpProxy.freeze``: the session and every new connection
are black-holed, nothing is closed), as when the network to the server
drops mid-query: the cancel request gets no answer and the query's result
could not arrive anyway. Without the bound, the child stays blocked as long
as the query runs (``test_opt_out_keeps_the_old_behaviour``); with it, the
connection is broken (its socket shut down) and ``KeyboardInterrupt`` is
raised, with the driver's connection error as its context, by ``signal +
timeout`` (checked with a 0.5 s margin), or at once on a second Ctrl-C. The
child's clock is the parent's (``time.monotonic`` is system-wide on Linux).
A query that survives its cancels shows the third path (the cancel works,
the block still runs at the deadline) without the proxy.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from psycancel import pq
from psycancel.pq import Libpq
from testing import client
from testing.client import Client
from tests.cancel.test_interrupt import Child, active
from tests.support.drivers import need
from tests.support.proxy import ServerLike, TcpProxy
from tests.support.queries import run, wait_until_active

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

TIMEOUT = 1.0
"""The ``timeout`` of the child's block (the cancel's, and the bound's)."""
MARGIN = 1.5
"""How late past its bound the block may end (a loaded machine: 0.55 s late seen on
free-threaded 3.13 at a load of 6-7 on 2 cores; what it guards against is a block
that runs as long as its query)."""
DRIVER_ERRORS = {"psycopg2": "psycopg2", "psycopg": "psycopg"}
"""The module prefix of each driver's connection error (the KeyboardInterrupt's context)."""
IGNORES_CANCEL = (
    "do $$ begin loop begin perform pg_sleep(30); "
    "exception when query_canceled then null; end; end loop; end $$"
)
"""A query that survives every cancel (each works; the query goes on)."""


@pytest.fixture
def monitor(dsn_plain: str, libpq: Libpq) -> Iterator[Client]:
    """A psycancel connection that watches ``pg_stat_activity`` (and cleans up)."""
    conn = client.connect(dsn_plain, libpq=libpq)
    try:
        yield conn
    finally:
        conn.finish()


def terminate(monitor: Client, pid: int) -> None:
    """End backend ``pid`` (its query would run on: the cancel never reached it)."""
    run(monitor, f"select pg_terminate_backend({int(pid)})")


def proxied(
    proxy: Callable[[], TcpProxy], pg_server: ServerLike, driver: str, sslmode: str, **args: Any
) -> tuple[Child, TcpProxy]:
    need(driver)
    px = proxy()
    dsn = px.dsn(pg_server, sslmode)
    return Child({"driver": driver, "mode": "guarded", "dsn": dsn, **args}), px


def check_broken(
    result: dict[str, Any], driver: str, reasons: set[str], *, context: bool = True
) -> None:
    """KeyboardInterrupt from the driver's connection error; broken, logged, nothing left."""
    assert result["raised"] == "KeyboardInterrupt", result
    if context:
        error = result["context"]
        assert error is not None and error["type"] == "OperationalError", result
        assert error["module"].startswith(DRIVER_ERRORS[driver]), result
    assert result["broken"] and result["guard_broken"], result  # psycopg2: closed != 0
    assert not result["usable"], result
    breaks = [w for w in result["warnings"] if w["reason"]]
    assert len(breaks) == 1 and breaks[0]["reason"] in reasons, result
    assert "broke the connection" in breaks[0]["message"], result
    assert result["threads_ended"] and result["leaked_fds"] == [], result
    assert result["handler_calls"] == 1 and result["handler_restored"], result
    assert result["wakeup_restored"] and result["forwarded_sigint"], result


@pytest.mark.parametrize("sslmode", ["disable", "require"])
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_blackhole_ctrl_c_ends_the_block_by_its_bound(
    proxy: Callable[[], TcpProxy],
    pg_server: ServerLike,
    monitor: Client,
    driver: str,
    sslmode: str,
) -> None:
    """The network drops mid-query: the connection is broken at signal + timeout."""
    child, px = proxied(proxy, pg_server, driver, sslmode, timeout=TIMEOUT)
    try:
        wait_until_active(monitor, child.backend_pid)
        px.freeze()
        sent = time.monotonic()
        child.interrupt()
        result = child.result()
        still_running = active(monitor, child.backend_pid)
    finally:
        child.kill()
        terminate(monitor, child.backend_pid)
    late = result["ended_at"] - sent
    print(f"\n{driver} {sslmode} [{pq.__impl__}]: block ended {late:.3f} s after SIGINT")
    assert late <= TIMEOUT + MARGIN, result
    check_broken(result, driver, {"cancel_failed", "deadline"})
    assert px.accepted >= 2, "the cancel request never left"
    assert still_running  # the break, not the cancel, ended the block


@pytest.mark.parametrize("sslmode", ["disable", "require"])
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_second_ctrl_c_breaks_at_once(
    proxy: Callable[[], TcpProxy],
    pg_server: ServerLike,
    monitor: Client,
    driver: str,
    sslmode: str,
) -> None:
    """A second SIGINT while the cancel waits for an answer: broken at once."""
    timeout = 4.0
    child, px = proxied(proxy, pg_server, driver, sslmode, timeout=timeout)
    try:
        wait_until_active(monitor, child.backend_pid)
        px.freeze()
        first = time.monotonic()
        child.interrupt()
        assert px.wait_accepted(2), "the first SIGINT sent no cancel request"
        second = time.monotonic()
        child.interrupt()
        result = child.result()
    finally:
        child.kill()
        terminate(monitor, child.backend_pid)
    late = result["ended_at"] - second
    print(f"\n{driver} {sslmode} [{pq.__impl__}]: block ended {late:.3f} s after the 2nd SIGINT")
    assert late <= MARGIN, result
    assert result["ended_at"] - first < timeout, result  # not the bound: the second signal
    check_broken(result, driver, {"second_signal"})


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_query_that_survives_its_cancel_is_broken_at_the_deadline(
    pg_server: ServerLike, monitor: Client, driver: str
) -> None:
    """The cancel works, the query goes on (it traps 57014): broken at signal + timeout.

    psycopg 3 gets the ``KeyboardInterrupt`` shortly after the cancel
    completed (the block could be running Python code): it then sends a
    cancel of its own (trapped too) and waits for the query, which the break
    ends; psycopg closes the connection and re-raises the
    ``KeyboardInterrupt`` without its error.
    """
    need(driver)
    args = {"driver": driver, "mode": "guarded", "dsn": pg_server.dsn("disable")}
    child = Child({**args, "timeout": TIMEOUT, "sql": IGNORES_CANCEL})
    try:
        wait_until_active(monitor, child.backend_pid)
        sent = time.monotonic()
        child.interrupt()
        result = child.result()
        still_running = active(monitor, child.backend_pid)
    finally:
        child.kill()
        terminate(monitor, child.backend_pid)
    late = result["ended_at"] - sent
    assert late <= TIMEOUT + MARGIN, result
    check_broken(result, driver, {"deadline"}, context=driver == "psycopg2")
    assert still_running  # the cancels arrived, the query went on


def test_opt_out_keeps_the_old_behaviour(
    proxy: Callable[[], TcpProxy], pg_server: ServerLike, monitor: Client
) -> None:
    """``break_connection=False``: the block stays blocked while the query runs."""
    child, px = proxied(
        proxy, pg_server, "psycopg2", "disable", timeout=TIMEOUT, break_connection=False
    )
    try:
        wait_until_active(monitor, child.backend_pid)
        px.freeze()
        child.interrupt()
        watched_until = time.monotonic() + TIMEOUT + 2 * MARGIN
        while time.monotonic() < watched_until:
            assert child.proc.poll() is None, "the child ended"
            time.sleep(0.05)
        px.thaw()  # the network is back: ending the query on the server ends the block
        terminate(monitor, child.backend_pid)
        result = child.result()
    finally:
        child.kill()
    assert result["raised"] == "KeyboardInterrupt", result
    assert not result["guard_broken"], result
    assert [w["reason"] for w in result["warnings"]] == [None], result
    assert "may still be running" in result["warnings"][0]["message"], result
    if sys.version_info >= (3, 11):  # exception notes exist from Python 3.11 on
        assert any("the cancel failed" in note for note in result["notes"]), result


def test_sigterm_then_blackhole_the_process_ends_by_the_bound(
    proxy: Callable[[], TcpProxy], pg_server: ServerLike, monitor: Client
) -> None:
    """SIGTERM's default action waits for the cancel, but not past the bound."""
    child, px = proxied(
        proxy, pg_server, "psycopg", "disable", timeout=TIMEOUT, signals=["SIGINT", "SIGTERM"]
    )
    try:
        wait_until_active(monitor, child.backend_pid)
        px.freeze()
        sent = time.monotonic()
        child.interrupt(signal.SIGTERM)
        code = child.exit_code()
        ended = time.monotonic() - sent
    finally:
        child.kill()
        terminate(monitor, child.backend_pid)
    assert code == -signal.SIGTERM
    assert ended <= TIMEOUT + MARGIN + 0.5  # (+ the child's exit seen by the parent)


def test_legacy_libpq_blackhole_ends_by_the_bound(
    proxy: Callable[[], TcpProxy], pg_server: ServerLike, monitor: Client, legacy_libpq: Libpq
) -> None:
    """libpq < 17: ``PQcancel`` has no timeout of its own; the block still ends on time."""
    px = proxy()
    args = {"driver": "pgconn", "mode": "guarded", "dsn": px.dsn(pg_server, "disable")}
    child = Child({**args, "libpq": legacy_libpq.path, "timeout": TIMEOUT})
    try:
        wait_until_active(monitor, child.backend_pid)
        px.freeze()
        sent = time.monotonic()
        child.interrupt()
        result = child.result()
    finally:
        child.kill()
        terminate(monitor, child.backend_pid)
    assert result["ended_at"] - sent <= TIMEOUT + MARGIN, result
    assert result["raised"] == "KeyboardInterrupt" and result["guard_broken"], result
    assert not result["usable"], result
    breaks = [w["reason"] for w in result["warnings"] if w["reason"]]
    assert len(breaks) == 1 and breaks[0] in ("cancel_failed", "deadline"), result
    # (The legacy request's worker still waits for the frozen proxy: its socket is
    # the operating system's to time out, as documented for the legacy API.)
