"""Ctrl-C: ``cancel_on_interrupt`` and the psycopg2 wait callback, with real SIGINTs.

Each scenario runs in a child process (``tests/support/interrupt_child.py``, same
twin through ``PSYCANCEL_IMPL``) that runs ``select pg_sleep(30)``; the test
waits until a monitor connection sees the query in ``pg_stat_activity``,
sends the child a real SIGINT with ``os.kill``, and watches the server: with
psycancel the query ends (cancelled: SQLSTATE 57014) and the child gets
``KeyboardInterrupt``; without it (psycopg2's blocking ``execute``) the query
keeps running. The time from the signal to the end of the server query is
printed (``-s``), not asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import psycancel
from psycancel import pq
from psycancel.pq import Libpq
from testing import client
from testing.client import Client
from tests.support.active import active_sleep_query
from tests.support.drivers import need
from tests.support.proxy import ServerLike, TcpProxy
from tests.support.queries import run, wait_until_active

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parents[1] / "support" / "interrupt_child.py"
CANCEL_REQUEST = (80877102).to_bytes(4, "big")
SSL_REQUEST = (80877103).to_bytes(4, "big")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


class Child:
    """The child process, started and announced (its backend runs the query)."""

    def __init__(self, args: dict[str, Any]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        env["PSYCANCEL_IMPL"] = pq.__impl__
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(ROOT),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(args))
        self.proc.stdin.close()
        self.proc.stdin = None  # (communicate() would flush it)
        line = self.proc.stdout.readline()
        if not line.startswith("PID "):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"the child did not start: {line!r}\n{err}")
        self.backend_pid = int(line.split()[1])
        self.done = False

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        os.kill(self.proc.pid, signum)

    def wait_in_select(self, timeout: float = 30.0) -> None:
        """Wait until the child's main thread sleeps in ``select`` or ``poll``.

        For the psycopg2 wait callbacks: a SIGINT that lands after psycopg2 sent
        the query but before it called the callback raises ``KeyboardInterrupt``
        at the callback's first line, where no ``try`` can catch it (psycopg2
        then closes the connection; docs/usage.md). Signalled in that window
        under load, the test would measure that known gap, not the callback.
        """
        # x86_64 and aarch64 numbers (qemu-user's host thread is x86_64).
        waits = {"7", "23", "270", "271", "72", "73"}
        deadline = time.monotonic() + timeout
        while True:
            fields = Path(f"/proc/{self.proc.pid}/syscall").read_text().split()
            if fields and fields[0] in waits:
                return
            assert time.monotonic() < deadline, f"the child never waited in select: {fields}"
            time.sleep(0.002)

    def line(self) -> str:
        """The child's next line of output (e.g. ``READY`` from inside the block)."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def exit_code(self, timeout: float = 60.0) -> int:
        """Wait for the child to end; its return code (``-N``: killed by signal N)."""
        self.proc.communicate(timeout=timeout)
        self.done = True
        return self.proc.returncode

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        self.done = True
        lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
        assert self.proc.returncode == 0 and lines, f"exit {self.proc.returncode}\n{out}\n{err}"
        value: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
        return value

    def kill(self) -> None:
        if self.done:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture
def monitor(dsn_plain: str, libpq: Libpq) -> Iterator[Client]:
    """A psycancel connection that watches ``pg_stat_activity``."""
    conn = client.connect(dsn_plain, libpq=libpq)
    try:
        yield conn
    finally:
        conn.finish()


def active(monitor: Client, pid: int) -> bool:
    """Backend ``pid`` is still inside ``pg_sleep``."""
    return bool(run(monitor, active_sleep_query(pid)).rows)


def ended_after_signal(
    child: Child,
    monitor: Client,
    limit: float = 25.0,
    again_after: float | None = None,
    in_select: bool = False,
) -> float:
    """Send SIGINT; seconds until the server query ended (AssertionError past ``limit``).

    ``again_after``: send SIGINT again every that many seconds while the query
    runs (for psycopg2's own ``wait_select``, which may miss a signal that lands
    just before its ``select`` starts: not psycancel's code). ``in_select``: send
    it once the child waits in ``select`` (:meth:`Child.wait_in_select`).
    """
    wait_until_active(monitor, child.backend_pid)
    if in_select:
        child.wait_in_select()
    start = last = time.monotonic()
    child.interrupt()
    while active(monitor, child.backend_pid):
        now = time.monotonic()
        assert now - start < limit, "the query was never cancelled"
        if again_after is not None and now - last >= again_after:
            child.interrupt()
            last = now
        time.sleep(0.005)
    return time.monotonic() - start


CANCELED_MESSAGE = "ERROR:  canceling statement due to user request"
"""What the server logs for SQLSTATE 57014 (its default ``log_line_prefix`` has ``[pid]``)."""


def server_cancelled(pg_server: ServerLike, pid: int) -> bool | None:
    """Whether the server logged backend ``pid``'s query as cancelled (None: no log here)."""
    log = getattr(pg_server, "log_file", None)
    if log is None:
        return None  # an external server ($PSYCANCEL_TEST_DSN)
    deadline = time.monotonic() + 10
    while True:
        found = any(
            f"[{pid}]" in line and CANCELED_MESSAGE in line
            for line in Path(log).read_text(errors="replace").splitlines()
        )
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def interrupted(
    args: dict[str, Any],
    monitor: Client,
    label: str,
    pg_server: ServerLike,
    again_after: float | None = None,
) -> dict[str, Any]:
    child = Child(args)
    in_select = args.get("mode") in ("wait_callback", "wait_select")
    try:
        try:
            seconds = ended_after_signal(
                child, monitor, again_after=again_after, in_select=in_select
            )
        except AssertionError as ex:
            # What the child said (its result, its stderr): why the query ran on.
            child.proc.kill()
            out, err = child.proc.communicate(timeout=30)
            said = f"child stdout: {out[-2000:]}\nchild stderr: {err[-4000:]}"
            raise AssertionError(f"{ex}\n{said}") from ex
        result = child.result()
    finally:
        child.kill()
    print(f"\n{label} [{pq.__impl__}]: server query ended {seconds * 1000:.0f} ms after SIGINT")
    result["ended_after"] = seconds
    result["server_cancelled"] = server_cancelled(pg_server, child.backend_pid)
    return result


def check_cancelled(result: dict[str, Any]) -> None:
    assert result["raised"] == "KeyboardInterrupt", result
    # The query was cancelled (57014), not finished: in the server's log, and on
    # the KeyboardInterrupt's context when the driver raised its error before
    # Python ran the handler (psycopg2 runs Python code while building it).
    assert result["server_cancelled"] in (True, None), result
    assert result["sqlstate"] in ("57014", None), result
    assert result["usable"], result
    assert result["handler_restored"] and result["wakeup_restored"], result
    assert result["handler_calls"] == 1, result  # the previous handler was chained
    assert result["forwarded_sigint"], result  # the previous wakeup fd heard of it


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psycopg2_ctrl_c_cancels_the_query(
    pg_server: ServerLike, monitor: Client, sslmode: str
) -> None:
    need("psycopg2")
    args = {"driver": "psycopg2", "mode": "guarded", "dsn": pg_server.dsn(sslmode)}
    check_cancelled(
        interrupted(args, monitor, f"psycopg2 cancel_on_interrupt {sslmode}", pg_server)
    )


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psycopg_ctrl_c_cancels_the_query(
    pg_server: ServerLike, monitor: Client, sslmode: str
) -> None:
    need("psycopg")
    args = {"driver": "psycopg", "mode": "guarded", "dsn": pg_server.dsn(sslmode)}
    check_cancelled(interrupted(args, monitor, f"psycopg cancel_on_interrupt {sslmode}", pg_server))


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_pgconn_ctrl_c_cancels_the_query(
    pg_server: ServerLike, monitor: Client, libpq: Libpq, sslmode: str
) -> None:
    args = {"driver": "pgconn", "mode": "guarded", "dsn": pg_server.dsn(sslmode)}
    args["libpq"] = libpq.path
    check_cancelled(interrupted(args, monitor, f"PGconn cancel_on_interrupt {sslmode}", pg_server))


def test_pgconn_legacy_libpq_ctrl_c_cancels_the_query(
    dsn_plain: str, monitor: Client, legacy_libpq: Libpq, pg_server: ServerLike
) -> None:
    """libpq < 17: the helper sends the legacy PQcancel (plain session: no policy issue)."""
    args = {"driver": "pgconn", "mode": "guarded", "dsn": dsn_plain, "libpq": legacy_libpq.path}
    check_cancelled(interrupted(args, monitor, "PGconn legacy cancel_on_interrupt", pg_server))


def test_psycopg2_without_it_the_query_keeps_running(dsn_plain: str, monitor: Client) -> None:
    """For comparison: psycopg2's blocking execute ignores Ctrl-C until the query ends."""
    need("psycopg2")
    child = Child({"driver": "psycopg2", "mode": "bare", "dsn": dsn_plain})
    try:
        wait_until_active(monitor, child.backend_pid)
        child.interrupt()
        watched_until = time.monotonic() + 2.0
        while time.monotonic() < watched_until:
            assert active(monitor, child.backend_pid), "the query ended after the SIGINT"
            assert child.proc.poll() is None, "the child ended after the SIGINT"
            time.sleep(0.05)
        run(monitor, f"select pg_cancel_backend({child.backend_pid})")  # end it from here
        result = child.result()
    finally:
        child.kill()
    # Only once the query ended (cancelled by the monitor) did Python see the Ctrl-C.
    assert result["raised"] == "KeyboardInterrupt", result


# -- SIGTERM: a service being stopped ends its query ------------------------------------


def ended_on_server(monitor: Client, pid: int, limit: float = 25.0) -> float:
    """Seconds until backend ``pid`` left its query (AssertionError past ``limit``)."""
    start = time.monotonic()
    while active(monitor, pid):
        assert time.monotonic() - start < limit, "the query was never cancelled"
        time.sleep(0.005)
    return time.monotonic() - start


TERM_ARGS = {"mode": "guarded", "signals": ["SIGINT", "SIGTERM"]}


@pytest.mark.parametrize("sslmode", ["disable", "require"])
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_sigterm_cancels_the_query_then_the_process_ends(
    pg_server: ServerLike, monitor: Client, driver: str, sslmode: str
) -> None:
    """SIGTERM's default action (the process ends) happens after the query was cancelled."""
    need(driver)
    child = Child({**TERM_ARGS, "driver": driver, "dsn": pg_server.dsn(sslmode)})
    try:
        wait_until_active(monitor, child.backend_pid)
        child.interrupt(signal.SIGTERM)
        seconds = ended_on_server(monitor, child.backend_pid)
        code = child.exit_code()
    finally:
        child.kill()
    print(
        f"\n{driver} SIGTERM {sslmode} [{pq.__impl__}]: query ended {seconds * 1000:.0f} ms after"
    )
    assert code == -signal.SIGTERM  # killed by SIGTERM, as without psycancel
    # Cancelled on the server (57014), not left running by a client that died.
    assert server_cancelled(pg_server, child.backend_pid) in (True, None)


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_sigterm_calls_the_programs_own_handler(
    pg_server: ServerLike, monitor: Client, driver: str
) -> None:
    """A SIGTERM handler of the program (here: ``SystemExit``) runs after the cancel."""
    need(driver)
    args = {**TERM_ARGS, "driver": driver, "dsn": pg_server.dsn("disable")}
    args["own_handlers"] = ["SIGINT", "SIGTERM"]
    child = Child(args)
    try:
        wait_until_active(monitor, child.backend_pid)
        child.interrupt(signal.SIGTERM)
        ended_on_server(monitor, child.backend_pid)
        result = child.result()
    finally:
        child.kill()
    assert result["raised"] == "SystemExit", result
    assert result["sqlstate"] in ("57014", None), result
    assert server_cancelled(pg_server, child.backend_pid) in (True, None)
    assert result["handler_calls"] == 1 and result["handler_restored"], result
    assert result["usable"] and not result["broken"], result
    assert result["wakeup_restored"] and signal.SIGTERM in result["forwarded"], result


def test_sigterm_without_it_the_query_keeps_running(dsn_plain: str, monitor: Client) -> None:
    """For comparison: SIGTERM ends the process, and its query runs on without its client."""
    need("psycopg2")
    child = Child({"driver": "psycopg2", "mode": "bare", "dsn": dsn_plain})
    try:
        wait_until_active(monitor, child.backend_pid)
        child.interrupt(signal.SIGTERM)
        assert child.exit_code() == -signal.SIGTERM
        watched_until = time.monotonic() + 1.0
        while time.monotonic() < watched_until:
            assert active(monitor, child.backend_pid), "the query ended with its client"
            time.sleep(0.05)
    finally:
        child.kill()
        run(monitor, f"select pg_cancel_backend({child.backend_pid})")


def test_sigint_only_by_default(dsn_plain: str, monitor: Client) -> None:
    """Without ``signals``, SIGTERM is not handled: the process ends, its query runs on."""
    need("psycopg2")
    child = Child({"driver": "psycopg2", "mode": "guarded", "dsn": dsn_plain})
    try:
        wait_until_active(monitor, child.backend_pid)
        child.interrupt(signal.SIGTERM)
        assert child.exit_code() == -signal.SIGTERM
        assert active(monitor, child.backend_pid)
    finally:
        child.kill()
        run(monitor, f"select pg_cancel_backend({child.backend_pid})")


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_ctrl_c_in_python_code_of_the_block(dsn_plain: str, driver: str) -> None:
    """The block runs Python code (no query): Ctrl-C interrupts it, once the cancel is done.

    The handler holds the signal while the cancel is in flight, then psycancel
    delivers it again to the main thread (a real signal: the sleep is cut short).
    """
    need(driver)
    child = Child({"driver": driver, "mode": "guarded", "dsn": dsn_plain, "body": "sleep"})
    try:
        assert child.line() == "READY"
        sent = time.monotonic()
        child.interrupt()
        result = child.result()
    finally:
        child.kill()
    assert result["raised"] == "KeyboardInterrupt", result
    assert result["ended_at"] - sent < 10, result  # not the 30 s of the sleep
    assert result["handler_calls"] == 1 and result["handler_restored"], result
    assert result["usable"] and not result["broken"] and not result["warnings"], result
    # The previous wakeup fd heard of the SIGINT once: not of the re-delivery.
    assert result["forwarded"].count(signal.SIGINT) == 1, result


def test_ctrl_c_in_nested_blocks(dsn_plain: str) -> None:
    """Two blocks (two connections): one KeyboardInterrupt, neither connection broken.

    Both cancels are sent (each watcher hears the signal); the inner handler
    chains to the outer one; a re-delivery by either is not taken for a
    second signal by the other.
    """
    need("psycopg2")
    args = {"driver": "psycopg2", "mode": "guarded", "dsn": dsn_plain, "body": "nested_sleep"}
    child = Child(args)
    try:
        assert child.line() == "READY"
        child.interrupt()
        result = child.result()
    finally:
        child.kill()
    assert result["raised"] == "KeyboardInterrupt", result
    assert result["handler_calls"] == 1 and result["handler_restored"], result
    assert not result["warnings"] and not result["guard_broken"], result
    assert result["usable"] and result["outer_usable"], result
    assert result["forwarded"].count(signal.SIGINT) == 1, result


def through_proxy(pg_server: ServerLike) -> TcpProxy:
    return TcpProxy(pg_server.host, pg_server.port).start()


def first_bytes_of_cancel(proxy: TcpProxy) -> bytes:
    """The first 8 bytes the child sent on the proxy's last connection (the cancel's)."""
    conns = proxy.connections
    assert len(conns) >= 2, "no cancel connection went through the proxy"
    return conns[-1].client_bytes[:8]


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psycopg2_wait_callback_ctrl_c(
    pg_server: ServerLike, monitor: Client, sslmode: str
) -> None:
    """psycancel's wait callback: the query is cancelled, encrypted when the session is."""
    need("psycopg2")
    with through_proxy(pg_server) as proxy:
        args = {"driver": "psycopg2", "mode": "wait_callback", "dsn": proxy.dsn(pg_server, sslmode)}
        result = interrupted(args, monitor, f"psycopg2 psycopg2_wait_callback {sslmode}", pg_server)
        first = first_bytes_of_cancel(proxy)
    # Like wait_select: the Ctrl-C becomes the driver's QueryCanceledError, connection kept.
    assert result["raised"] == "QueryCanceled", result
    assert result["sqlstate"] == "57014" and result["usable"], result
    assert first[4:8] == (SSL_REQUEST if sslmode == "require" else CANCEL_REQUEST), first


def test_psycopg2_wait_select_cancels_in_clear_text(pg_server: ServerLike, monitor: Client) -> None:
    """For comparison: psycopg2's wait_select sends a clear-text PQcancel on a TLS session."""
    need("psycopg2")
    with through_proxy(pg_server) as proxy:
        args = {"driver": "psycopg2", "mode": "wait_select", "dsn": proxy.dsn(pg_server, "require")}
        # (psycopg2's wait_select waits in select with no timeout: a SIGINT landing
        # just before the call is not seen until the query ends: sent again.)
        result = interrupted(args, monitor, "psycopg2 wait_select require", pg_server, 2.0)
        first = first_bytes_of_cancel(proxy)
    assert result["raised"] == "QueryCanceled", result
    assert first[4:8] == CANCEL_REQUEST, first  # the cancel key in clear text


# -- in this process: no signal is sent ---------------------------------------------------


def wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def test_handler_and_wakeup_fd_restored(dsn_plain: str, libpq: Libpq) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    before_handler, before_fd = signal.getsignal(signal.SIGINT), wakeup_fd()
    try:
        guard = psycancel.cancel_on_interrupt(conn)
        with guard:
            assert signal.getsignal(signal.SIGINT) != before_handler
            assert wakeup_fd() not in (before_fd, -1)
            assert run(conn, "select 1").rows == (("1",),)
        assert not guard.fired
        with pytest.raises(ZeroDivisionError), psycancel.cancel_on_interrupt(conn):
            1 / 0  # noqa: B018
    finally:
        conn.finish()
    assert signal.getsignal(signal.SIGINT) == before_handler
    assert wakeup_fd() == before_fd
    with pytest.raises(RuntimeError, match="single use"), guard:
        pass


def test_closed_connection_installs_nothing(dsn_plain: str, libpq: Libpq) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    conn.finish()
    before = signal.getsignal(signal.SIGINT)
    with psycancel.cancel_on_interrupt(conn):
        assert signal.getsignal(signal.SIGINT) == before


def test_outside_the_main_thread_is_an_error(dsn_plain: str, libpq: Libpq) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with psycancel.cancel_on_interrupt(conn):
                pass
        except BaseException as ex:
            errors.append(ex)

    try:
        thread = threading.Thread(target=body)
        thread.start()
        thread.join(30)
    finally:
        conn.finish()
    assert len(errors) == 1 and isinstance(errors[0], psycancel.InterfaceError), errors
    assert "main thread" in str(errors[0])


def test_arguments_checked() -> None:
    with pytest.raises(ValueError):
        psycancel.cancel_on_interrupt(object(), timeout=0)
    with pytest.raises(TypeError):
        psycancel.cancel_on_interrupt(object(), strict=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="break_connection"):
        psycancel.cancel_on_interrupt(object(), break_connection=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        psycancel.make_psycopg2_wait_callback(timeout=-1)


@pytest.mark.parametrize(
    ("signals", "error", "match"),
    [
        ((), ValueError, "at least one"),
        ((signal.SIGINT, signal.SIGINT), ValueError, "twice"),
        ((signal.SIGINT, int(signal.SIGINT)), ValueError, "twice"),
        ((signal.SIGKILL,), ValueError, "SIGKILL cannot be caught"),
        ((signal.SIGTERM, signal.SIGSTOP), ValueError, "SIGSTOP cannot be caught"),
        ((0,), ValueError, "not a signal"),
        ((10_000,), ValueError, "not a signal"),
        (signal.SIGTERM, TypeError, "iterable"),
        ("SIGTERM", TypeError, "iterable"),
        (("SIGTERM",), TypeError, "signal numbers"),
        ((True,), TypeError, "signal numbers"),
        ((2.0,), TypeError, "signal numbers"),
        (None, TypeError, "iterable"),
    ],
)
def test_signals_checked(signals: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        psycancel.cancel_on_interrupt(object(), signals=signals)


def test_signals_accepted() -> None:
    guard = psycancel.cancel_on_interrupt(object(), signals=[signal.SIGTERM, 2, signal.SIGHUP])
    assert guard.signals == (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    assert psycancel.cancel_on_interrupt(object()).signals == (signal.SIGINT,)
    assert psycancel.cancel_on_interrupt(object(), signals=iter([15])).signals == (15,)


def test_every_handler_restored(dsn_plain: str, libpq: Libpq) -> None:
    """With ``signals``, each signal's handler is ours in the block and the previous after."""
    conn = client.connect(dsn_plain, libpq=libpq)
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    before = {s: signal.getsignal(s) for s in handled}
    try:
        guard = psycancel.cancel_on_interrupt(conn, signals=handled)
        with guard:
            assert all(signal.getsignal(s) != before[s] for s in handled)
            assert run(conn, "select 1").rows == (("1",),)
        assert not guard.fired and not guard.connection_broken
    finally:
        conn.finish()
    assert {s: signal.getsignal(s) for s in handled} == before


def test_blocking_paths_import_no_driver_nor_gevent(dsn_plain: str, libpq: Libpq) -> None:
    """cancel(), cancel_on_interrupt and the wait callback import neither psycopg2 nor gevent."""
    code = f"""
import sys, psycancel
from psycancel.pq import Libpq
from testing import client
conn = client.connect({dsn_plain!r}, libpq=Libpq.load({libpq.path!r}))
psycancel.cancel(conn, timeout=10)
with psycancel.cancel_on_interrupt(conn, timeout=10):
    pass
psycancel.make_psycopg2_wait_callback(timeout=5)
conn.finish()
print(sorted(m for m in ("psycopg2", "psycopg", "gevent", "psycogreen") if m in sys.modules))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PSYCANCEL_IMPL=pq.__impl__)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
