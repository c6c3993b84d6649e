"""psycancel always comes back: extreme timeouts, failed background threads,
closed and unconnected connections, a close racing a cancel.

Cases that hung the process before they were fixed run in a child process with
a bound (tests/never_hang_child.py), so that a regression fails here instead
of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import psycopg2
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import psycancel
from psycancel._engine import background, offload
from psycancel.pq import Libpq
from testing import client
from testing.client import Client
from tests.support.queries import QUERY_CANCELED, SLEEP, drain, run, sleeping, wait_until_active
from tests.support.twins import new_libpq_path, old_libpq_path

CHILD = Path(__file__).resolve().parents[1] / "support" / "never_hang_child.py"
CHILD_BOUND = 240.0
"""Seconds a child may take for every entry point at one timeout value (a hang is
a failure, never a wait: the slowest case is a few seconds)."""

ALLOWED = ("ok", "CancellationTimeout", "ValueError", "TypeError")


# =====================================================================================
# Every timeout value: success, CancellationTimeout, ValueError or TypeError
# =====================================================================================


def run_child(pg_server: Any, timeout_text: str) -> dict[str, str]:
    """Every entry point with ``timeout_text``, in a child process with a bound."""
    spec = {
        "dsn_plain": pg_server.dsn("disable"),
        "dsn_tls": pg_server.dsn("require"),
        "new_libpq": new_libpq_path(),
        "legacy_libpq": old_libpq_path(),
        "timeout": timeout_text,
    }
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=CHILD_BOUND,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    outcomes: dict[str, str] = json.loads(proc.stdout.splitlines()[-1])
    # Every entry point ran on the new-API libpq, and on the legacy one when this
    # machine has one ($PSYCANCEL_TEST_LEGACY_LIBPQ=none: a wheel's test venv).
    legacy = {case for case in outcomes if case.startswith("legacy-")}
    assert bool(legacy) == bool(spec["legacy_libpq"]), sorted(outcomes)
    assert any(case.startswith("plain/") for case in outcomes), sorted(outcomes)
    return outcomes


def check_outcomes(timeout_text: str, outcomes: dict[str, str]) -> None:
    bad = {case: out for case, out in outcomes.items() if not out.startswith(ALLOWED)}
    assert not bad, f"timeout={timeout_text}: {bad}"
    kinds = {out.split(":")[0] for out in outcomes.values()}
    value = eval(timeout_text)  # our own text: an int or a float literal
    representable = isinstance(value, float) or value <= sys.float_info.max
    if not representable:
        assert kinds == {"ValueError"}, (timeout_text, outcomes)
    elif value >= 5.0:
        # Ample for a cancel of an idle connection on loopback: every case succeeds.
        assert kinds == {"ok"}, (timeout_text, outcomes)


# Values seen to break before (issue: extreme timeouts), and the ends of the range.
SEEN = ["2.2e6", "1e12", "1e18", repr(sys.float_info.max), repr(10**400), "1e-300", "10**308"]


@pytest.mark.parametrize("text", SEEN)
def test_extreme_timeouts_seen_before(pg_server: Any, text: str) -> None:
    text = repr(eval(text))
    check_outcomes(text, run_child(pg_server, text))


@pytest.mark.long(14)
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.one_of(
        st.floats(min_value=1e-300, max_value=sys.float_info.max, allow_nan=False),
        st.integers(min_value=1, max_value=10**400),
    )
)
@example(2**1024)  # the first int beyond the float range
@example(sys.float_info.max)
def test_every_timeout_ends(pg_server: Any, timeout: float) -> None:
    """Property: any positive finite timeout (or huge int) ends in an allowed way."""
    text = repr(timeout)
    check_outcomes(text, run_child(pg_server, text))


@pytest.mark.parametrize("value", [10**400, 2**1024])
def test_unrepresentable_ints_are_value_errors(value: int, dsn_plain: str, libpq: Libpq) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    try:
        with pytest.raises(ValueError, match="too large"):
            psycancel.cancel(conn, timeout=value)
        with pytest.raises(ValueError, match="too large"):
            asyncio.run(psycancel.cancel_async(conn, timeout=value))
        with pytest.raises(ValueError, match="too large"):
            psycancel.cancel_after(conn, value)
        with pytest.raises(ValueError, match="too large"):
            psycancel.cancel_after(conn, 1.0, timeout=value)
    finally:
        conn.finish()


def test_huge_timeout_cancels_a_query(dsn_tls: str, libpq: Libpq) -> None:
    """The reproduction: 2.2e6 s, offloaded (TLS), then the next offloaded cancel."""
    for _ in range(2):
        with sleeping(dsn_tls, libpq) as conn:
            asyncio.run(asyncio.wait_for(psycancel.cancel_async(conn, timeout=2.2e6), 60))
            assert drain(conn).sqlstate == QUERY_CANCELED
    with sleeping(dsn_tls, libpq) as conn:
        psycancel.cancel(conn, timeout=sys.float_info.max)
        assert drain(conn).sqlstate == QUERY_CANCELED


# =====================================================================================
# A connection that never finished connecting is misuse; a closed one a no-op
# =====================================================================================


@pytest.fixture
def connecting(dsn_plain: str, libpq: Libpq) -> Iterator[Client]:
    conn = client.connect_start(dsn_plain, libpq=libpq)
    try:
        yield conn
    finally:
        conn.finish()


def test_unconnected_pgconn_is_interface_error(connecting: Client) -> None:
    with pytest.raises(psycancel.InterfaceError, match="not established"):
        psycancel.cancel(connecting)
    with pytest.raises(psycancel.InterfaceError, match="not established"):
        asyncio.run(psycancel.cancel_async(connecting))
    with pytest.raises(psycancel.InterfaceError, match="not established"):
        trio.run(psycancel.cancel_async, connecting)
    with pytest.raises(psycancel.InterfaceError, match="not established"):
        psycancel.cancel_after(connecting, 1.0).__enter__()


def test_unconnected_legacy_pgconn_is_interface_error(dsn_plain: str, legacy_libpq: Libpq) -> None:
    conn = client.connect_start(dsn_plain, libpq=legacy_libpq)
    try:
        with pytest.raises(psycancel.InterfaceError, match="not established"):
            psycancel.cancel(conn)
    finally:
        conn.finish()


@pytest.mark.parametrize(
    "make",
    [
        lambda dsn: psycopg2.connect(dsn).cursor(),
        lambda dsn: psycopg.connect(dsn).cursor(),
    ],
    ids=["psycopg2-cursor", "psycopg-cursor"],
)
def test_a_cursor_is_not_a_connection(make: Callable[[str], Any], dsn_plain: str) -> None:
    cursor = make(dsn_plain)
    try:
        with pytest.raises(psycancel.InterfaceError, match="cannot cancel"):
            psycancel.cancel(cursor)
    finally:
        cursor.connection.close()


@pytest.mark.parametrize("mode", ["sync", "asyncio", "cancel_after"])
def test_close_racing_cancel_is_safe(
    mode: str, twin: ModuleType, new_libpq: Any, dsn_plain: str, created: list[Any]
) -> None:
    """Close in one thread while another cancels, many rounds: each cancel returns
    (sent, or nothing to cancel); nothing raises, nothing crashes, nothing leaks."""
    errors: list[BaseException] = []
    for i in range(60):
        conn = client.connect(dsn_plain, libpq=new_libpq)
        go = threading.Event()

        def cancel_loop(conn: Any = conn, go: threading.Event = go) -> None:
            go.wait()
            try:
                while True:
                    if mode == "sync":
                        psycancel.cancel(conn, timeout=10)
                    elif mode == "asyncio":
                        asyncio.run(psycancel.cancel_async(conn, timeout=10))
                    else:
                        with psycancel.cancel_after(conn, 0.001, timeout=10):
                            time.sleep(0.002)
                    if conn.closed:
                        return
            except BaseException as ex:
                errors.append(ex)

        thread = threading.Thread(target=cancel_loop)
        thread.start()
        go.set()
        time.sleep(0.0005 * (i % 10))
        conn.finish()
        thread.join(60)
        assert not thread.is_alive()
    assert errors == []
    assert all(cc.closed for cc in created)


# =====================================================================================
# A background thread that fails settles its cancels and is replaced
# =====================================================================================


@contextmanager
def sleeping_with(twin: ModuleType, dsn: str) -> Iterator[Any]:
    """``helpers.sleeping`` for a connection of ``twin`` (either twin, whichever is active)."""
    lib = twin.Libpq.load(new_libpq_path())
    conn = client.connect(dsn, libpq=lib)
    monitor = client.connect(dsn, libpq=lib)
    try:
        conn.send_query(SLEEP)
        wait_until_active(monitor, conn.backend_pid)
        yield conn
    finally:
        monitor.finish()
        conn.finish()


class Boom(Exception):
    """The failure a test injects into a background thread."""


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], list[str]]]:
    """``inject(where)``: the next round of the thread ``where`` raises :class:`Boom`.

    Fresh reactors are used (the process's own are restored afterwards), so the
    threads start again and reach their first round.
    """
    hits: list[str] = []
    monkeypatch.setattr(offload, "_reactors", {})

    def arm(where: str) -> list[str]:
        def hook(at: str) -> None:
            if at == where and not hits:
                hits.append(at)
                raise Boom(f"injected into {at}")

        monkeypatch.setattr(background, "fault_hook", hook)
        return hits

    yield arm
    monkeypatch.setattr(background, "fault_hook", None)


def _twin_params() -> list[tuple[str, str]]:
    return [("python", "offload-reactor"), ("c", "offload-engine"), ("c", "offload-reporter")]


@pytest.mark.parametrize(("twin_name", "where"), _twin_params(), ids=lambda v: str(v))
def test_failed_offload_thread_settles_and_recovers(
    twin_name: str,
    where: str,
    inject: Callable[[str], list[str]],
    dsn_tls: str,
    request: pytest.FixtureRequest,
) -> None:
    from tests.support.twins import _ctypes, compiled_twin

    twin = _ctypes if twin_name == "python" else compiled_twin()
    hits = inject(where)
    with sleeping_with(twin, dsn_tls) as conn:
        with pytest.raises(psycancel.Error, match="failed") as info:
            asyncio.run(asyncio.wait_for(psycancel.cancel_async(conn, offload=True), 60))
        assert hits == [where]
        assert isinstance(info.value.__cause__, Boom)
        # The next cancel works (a new reactor or engine), and cancels the query.
        asyncio.run(asyncio.wait_for(psycancel.cancel_async(conn, offload=True), 60))
        assert drain(conn).sqlstate == QUERY_CANCELED
        assert run(conn, "select 1").rows == (("1",),)


@pytest.mark.parametrize("where", ["legacy-spawner", "legacy-worker"])
@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_failed_legacy_thread_settles_and_recovers(
    mode: str,
    where: str,
    inject: Callable[[str], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    dsn_plain: str,
    legacy_libpq: Libpq,
) -> None:
    from psycancel._engine import legacy

    def call(conn: Client) -> None:
        if mode == "sync":
            psycancel.cancel(conn, timeout=30)
        else:
            asyncio.run(asyncio.wait_for(psycancel.cancel_async(conn, timeout=30), 60))

    hits = inject(where)
    monkeypatch.setattr(legacy, "_spawner", None)  # a new spawner, as after a failure
    with sleeping(dsn_plain, legacy_libpq) as conn:
        with pytest.raises(psycancel.Error, match="failed") as info:
            call(conn)
        assert hits == [where]
        assert isinstance(info.value.__cause__, Boom)
        call(conn)
        assert drain(conn).sqlstate == QUERY_CANCELED


@pytest.mark.parametrize(("twin_name", "where"), _twin_params(), ids=lambda v: str(v))
def test_cancelled_task_ends_while_the_thread_is_stuck(
    twin_name: str, where: str, monkeypatch: pytest.MonkeyPatch, dsn_tls: str
) -> None:
    """Awaiting an offloaded cancel ends when the task is cancelled, even while the
    reactor thread cannot answer (here: blocked in the test hook)."""
    from tests.support.twins import _ctypes, compiled_twin

    twin = _ctypes if twin_name == "python" else compiled_twin()
    monkeypatch.setattr(offload, "_reactors", {})  # fresh threads, which reach the hook
    stuck, release = threading.Event(), threading.Event()

    def hook(at: str) -> None:
        if at == where:
            stuck.set()
            release.wait(120)

    monkeypatch.setattr(background, "fault_hook", hook)
    try:
        with sleeping_with(twin, dsn_tls) as conn:

            async def main() -> None:
                task = asyncio.ensure_future(psycancel.cancel_async(conn, offload=True))
                while not stuck.is_set():
                    await asyncio.sleep(0.01)
                assert not task.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            asyncio.run(asyncio.wait_for(main(), 60))
            # It ended while the thread was still blocked in the hook.
            assert not release.is_set()
    finally:
        monkeypatch.setattr(background, "fault_hook", None)
        release.set()
