"""Network faults and task cancellation, in sync, asyncio and trio mode.

Faults (through the fault-injecting proxy, or a dedicated server):
refused, black-holed, reset on the first bytes, reset in the middle of the TLS
handshake, the server restarted between the query and the cancel, 200 ms of
latency each way. Task cancellation: the task awaiting ``cancel_async`` is
cancelled at each stage of the handshake (connect, SSL response, TLS
handshake, waiting for EOF), exactly (a spy on the cancel machine cancels it
when the machine is about to wait there) and at timed points against a slow
link. After each: the expected exception, no socket left open towards the
server, nothing left registered with the event loop, every cancel object
finished.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import psycancel
from psycancel._engine import offload as _offload
from psycancel._engine import waits as _waits
from psycancel.pq import Libpq
from testing import ThrowawayServer, client
from testing.client import Client
from tests.support.faults import fault_proxy
from tests.support.fds import loop_fds, sockets_to, trio_fds
from tests.support.modes import LOOP_MODES, call_cancel
from tests.support.proxy import TcpProxy
from tests.support.queries import QUERY_CANCELED, drain, run, sleeping, wait_until_active
from tests.support.spies import StageSpy
from tests.support.wire import SSL_REQUEST, TLS_HANDSHAKE_RECORD, describe_bytes, plaintext_cancels

MakeProxy = Callable[[], TcpProxy]
SSLMODES = ["disable", "require"]


def assert_all_finished(created: list[Any], expected: int = 1) -> None:
    assert len(created) == expected, f"{len(created)} cancel objects made"
    assert all(cc.closed for cc in created), "a cancel object was left unfinished"


# =====================================================================================
# 3. Faults
# =====================================================================================


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("sslmode", SSLMODES)
def test_refused(
    mode: str, sslmode: str, pg_server: Any, proxy: MakeProxy, libpq: Libpq, created: list[Any]
) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode=sslmode), libpq=libpq)
    try:
        px.close()  # nothing listens on the port any more
        port = px.port
        with pytest.raises(psycancel.CancelError, match=r"(?i)refused"):
            call_cancel(mode, conn, timeout=10)
        assert sockets_to(port) <= {conn.socket}
    finally:
        conn.finish()
    assert_all_finished(created)


def test_refused_is_fast(pg_server: Any, proxy: MakeProxy, libpq: Libpq) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="require"), libpq=libpq)
    try:
        px.close()
        t0 = time.monotonic()
        with pytest.raises(psycancel.CancelError):
            psycancel.cancel(conn, timeout=10)
        assert time.monotonic() - t0 < 1.0  # not the timeout
    finally:
        conn.finish()


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("sslmode", [*SSLMODES, "direct"])
def test_black_holed(
    mode: str, sslmode: str, pg_server: Any, proxy: MakeProxy, libpq: Libpq, created: list[Any]
) -> None:
    px = proxy()
    params = {"sslnegotiation": "direct"} if sslmode == "direct" else {}
    dsn = px.dsn(pg_server, sslmode="require" if sslmode == "direct" else sslmode, **params)
    conn = client.connect(dsn, libpq=libpq)
    try:
        px.blackhole()
        before = sockets_to(px.port)
        timeout = 0.3
        t0 = time.monotonic()
        with pytest.raises(psycancel.CancellationTimeout):
            call_cancel(mode, conn, timeout=timeout)
        elapsed = time.monotonic() - t0
        assert timeout <= elapsed < timeout + 1.0, elapsed
        assert sockets_to(px.port) == before
        # What the black hole saw: the first message of the cancel connection only.
        sent = px.connections[1].client_bytes
        if sslmode == "disable":
            assert len(sent) == 16 and plaintext_cancels(sent)
        elif sslmode == "require":
            assert sent == SSL_REQUEST
        else:
            assert sent[:2] == TLS_HANDSHAKE_RECORD and not plaintext_cancels(sent)
    finally:
        conn.finish()
    assert_all_finished(created)


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("sslmode", SSLMODES)
def test_reset_on_first_bytes(
    mode: str, sslmode: str, pg_server: Any, proxy: MakeProxy, libpq: Libpq, created: list[Any]
) -> None:
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode=sslmode), libpq=libpq)
    try:
        px.reset()
        before = sockets_to(px.port)
        with pytest.raises(psycancel.CancelError):
            call_cancel(mode, conn, timeout=10)
        assert sockets_to(px.port) == before
    finally:
        conn.finish()
    assert_all_finished(created)


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
def test_reset_during_tls_handshake(
    mode: str, sslmode: str, pg_server: Any, libpq: Libpq, created: list[Any]
) -> None:
    """The proxy relays SSLRequest and ``S``, then resets on the ClientHello."""
    with fault_proxy(pg_server.host, pg_server.port) as px:
        conn = client.connect(px.dsn(pg_server, sslmode=sslmode), libpq=libpq)
        try:
            px.reset_in_tls_handshake()
            before = sockets_to(px.port)
            with pytest.raises(psycancel.CancelError):
                call_cancel(mode, conn, timeout=10)
            assert sockets_to(px.port) == before
            sent = px.connections[1].client_bytes
            assert sent[:8] == SSL_REQUEST and sent[8:10] == TLS_HANDSHAKE_RECORD, describe_bytes(
                sent
            )
            assert not plaintext_cancels(sent)
        finally:
            conn.finish()
    assert_all_finished(created)


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("sslmode", [*SSLMODES, "direct"])
def test_latency_200ms_each_way(
    mode: str, sslmode: str, pg_server: Any, proxy: MakeProxy, libpq: Libpq, created: list[Any]
) -> None:
    px = proxy()
    dsn = variant_dsn(px, pg_server, sslmode)
    with sleeping(dsn, libpq, monitor_dsn=pg_server.dsn("disable")) as conn:
        px.forward(delay=0.2)  # for the connections accepted from now on
        before = sockets_to(px.port)
        elapsed = call_cancel(mode, conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
        assert sockets_to(px.port) == before
    # Round trips after the (local) connect: plain = request up + EOF down;
    # direct TLS adds the handshake (TLS 1.3: one round trip); SSLRequest/S one more.
    floor = {"disable": 0.4, "direct": 0.8, "require": 1.2}[sslmode]
    assert floor - 0.05 <= elapsed < floor + 3.0, elapsed
    assert_all_finished(created)


# -------------------------------------------------------------------------------------
# The server restarted between the query and the cancel (a server of its own)
# -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server(pg_server: Any) -> Iterator[ThrowawayServer]:
    """A server for this module alone: its restarts disturb no other test."""
    if not isinstance(pg_server, ThrowawayServer):
        pytest.skip("needs a throwaway server (restarted by the test)")
    with ThrowawayServer(pg_server.prefix) as server:
        yield server


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("sslmode", SSLMODES)
def test_server_restarted_before_cancel(
    mode: str, sslmode: str, own_server: ThrowawayServer, libpq: Libpq, created: list[Any]
) -> None:
    """The stale key reaches a new postmaster that knows no such backend.

    The server closes the cancel connection without an error, so the cancel
    "succeeds" (OK means processed, not that a query was cancelled); it must
    not hit a query of the new server, and nothing may be left behind.
    """
    dsn = own_server.dsn(sslmode)
    with sleeping(dsn, libpq) as conn:
        own_server.restart()
        with sleeping(dsn, libpq) as bystander:
            before = sockets_to(own_server.port)
            call_cancel(mode, conn, timeout=10)
            assert sockets_to(own_server.port) == before
            # The bystander's query was not cancelled by the stale request.
            monitor = client.connect(own_server.dsn("disable"), libpq=libpq)
            try:
                time.sleep(0.1)
                wait_until_active(monitor, bystander.backend_pid, timeout=1)
            finally:
                monitor.finish()
            psycancel.cancel(bystander)
            assert drain(bystander).sqlstate == QUERY_CANCELED
        # The old session is gone (terminated by the restart).
        result = conn.get_result()
        assert result is None or result.sqlstate != QUERY_CANCELED
    assert_all_finished(created, expected=2)


# =====================================================================================
# 4. Task cancellation at each stage of the handshake
# =====================================================================================

# sslmode variant -> stages that its handshake goes through (see StageSpy)
STAGES = {
    "disable": ["connect", "write", "eof"],
    "require": ["connect", "write", "ssl_response", "tls_handshake", "eof"],
    "direct": ["tls_handshake", "eof"],
}
STAGE_CASES = [(variant, stage) for variant, stages in STAGES.items() for stage in stages]


def variant_dsn(px: TcpProxy, server: Any, variant: str) -> str:
    if variant == "direct":
        return px.dsn(server, sslmode="require", sslnegotiation="direct")
    return px.dsn(server, sslmode=variant)


async def cancel_asyncio_task_at(conn: Client, spy: StageSpy, stage: str, offload: bool) -> None:
    loop = asyncio.get_running_loop()
    before = loop_fds(loop)
    task = asyncio.create_task(psycancel.cancel_async(conn, timeout=10, offload=offload))

    def cancel_task() -> None:
        if not offload:
            task.cancel()
            return
        # The machine runs in the offload reactor's thread: cancel the task in
        # the loop's thread, and hold the reactor until the task has asked it
        # to abort, so that it stops exactly at this stage.
        aborts = _offload.aborts_requested()
        loop.call_soon_threadsafe(task.cancel)
        deadline = time.monotonic() + 10
        while _offload.aborts_requested() == aborts and time.monotonic() < deadline:
            time.sleep(0.001)

    spy.at(stage, cancel_task)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert loop_fds(loop) == before


async def cancel_trio_task_at(conn: Client, spy: StageSpy, stage: str) -> None:
    import trio

    before = trio_fds()
    reached_end = False
    with trio.CancelScope() as scope:
        spy.at(stage, scope.cancel)
        await psycancel.cancel_async(conn, timeout=10)
        reached_end = True
    assert scope.cancelled_caught and not reached_end
    assert trio_fds() == before


@pytest.mark.parametrize("mode", ["asyncio-inline", "asyncio-offload", "trio"])
@pytest.mark.parametrize(("variant", "stage"), STAGE_CASES)
def test_task_cancelled_at_stage(
    mode: str,
    variant: str,
    stage: str,
    pg_server: Any,
    proxy: MakeProxy,
    libpq: Libpq,
    created: list[Any],
    stage_spy: Callable[[], StageSpy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every wait through the event loop, so that each stage has one to stop at
    # (by default a write wait that is over at once is not awaited: see below).
    monkeypatch.setattr(_waits, "WRITES_AT_ONCE", 0)
    spy = stage_spy()
    px = proxy()
    run_task_cancelled_at(
        mode, px, variant_dsn(px, pg_server, variant), libpq, spy, stage, stage == "eof"
    )
    assert spy.stages[-1] == stage, spy.stages  # it stopped exactly there
    if mode == "asyncio-offload":
        # The engine thread hears of the abort asynchronously: it may wait at the
        # same stage once more first (a TLS handshake whose reply came in two
        # parts, under load), never at a later one.
        first = spy.stages.index(stage)
        assert set(spy.stages[first:]) == {stage}, spy.stages
    else:
        assert spy.stages.count(stage) == 1, spy.stages
    assert_all_finished(created)


def run_task_cancelled_at(
    mode: str,
    px: TcpProxy,
    dsn: str,
    libpq: Libpq,
    spy: StageSpy,
    stage: str,
    request_sent: bool,
) -> None:
    """Cancel the task of a ``cancel_async`` at ``stage``; nothing may be left behind."""
    conn = client.connect(dsn, libpq=libpq)
    try:
        # A little latency, so that no stage can be skipped by a fast server
        # (on bare loopback the TLS handshake sometimes completes in one poll).
        px.forward(delay=0.02)
        before = sockets_to(px.port)
        if mode.startswith("asyncio"):
            asyncio.run(cancel_asyncio_task_at(conn, spy, stage, mode == "asyncio-offload"))
        else:
            import trio

            trio.run(cancel_trio_task_at, conn, spy, stage)
        assert sockets_to(px.port) == before
        assert_session_works(conn, px, request_sent=request_sent)
    finally:
        conn.finish()


@pytest.mark.parametrize("mode", ["asyncio-inline", "trio"])
@pytest.mark.parametrize("stage", ["connect", "write"])
def test_task_cancelled_in_a_write_that_was_over_at_once(
    mode: str,
    stage: str,
    pg_server: Any,
    proxy: MakeProxy,
    libpq: Libpq,
    created: list[Any],
    stage_spy: Callable[[], StageSpy],
) -> None:
    """A write wait over at once is not awaited: the cancellation lands at the next wait.

    Plain, through a proxy on loopback: the connect and the send are over at
    once, so the task is cancelled where it first yields to the loop, waiting
    for the server's answer, with the request sent; nothing is left behind.
    """
    spy = stage_spy()
    px = proxy()
    run_task_cancelled_at(
        mode, px, px.dsn(pg_server, sslmode="disable"), libpq, spy, stage, request_sent=True
    )
    assert spy.stages == ["connect", "write", "eof"], spy.stages
    assert_all_finished(created)


def assert_session_works(conn: Client, px: TcpProxy, request_sent: bool) -> None:
    """``conn`` runs ``select 1`` after a cancel that was abandoned.

    An abandoned request that was already sent cannot be recalled: it is in
    the proxy's delay queue or at the server, and if it arrived while the next
    query runs, it would cancel that query. Wait until the server has acted on
    it: it signals the backend, then closes the cancel connection. The signal
    then reaches the backend while it is idle, where PostgreSQL ignores it.
    As a backstop, one 57014 is tolerated: a cancel hits one query at most,
    and the next one must succeed.
    """
    if request_sent:
        for cancel in px.connections[1:]:
            assert cancel.finished.wait(10), "the server never closed the cancel connection"
    result = run(conn, "select 1")
    if request_sent and result.sqlstate == QUERY_CANCELED:
        result = run(conn, "select 1")
    assert result.rows == (("1",),), (result.sqlstate, result.rows)


async def _asyncio_cancel_after(conn: Client, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    before = loop_fds(loop)
    task = asyncio.create_task(psycancel.cancel_async(conn, timeout=10))
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop_fds(loop) == before


async def _trio_cancel_after(conn: Client, seconds: float) -> None:
    import trio

    before = trio_fds()
    with trio.move_on_after(seconds) as scope:
        await psycancel.cancel_async(conn, timeout=10)
    assert scope.cancelled_caught
    assert trio_fds() == before


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
def test_task_cancelled_at_timed_points_on_a_slow_link(
    mode: str,
    pg_server: Any,
    proxy: MakeProxy,
    libpq: Libpq,
    created: list[Any],
    stage_spy: Callable[[], StageSpy],
) -> None:
    """200 ms each way: the TLS cancel waits for ``S`` during [0, 0.4) s, in the
    handshake during [0.4, 0.8) s and for EOF during [0.8, 1.2) s; cancel the
    task in the middle of each window."""
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="require"), libpq=libpq)
    interrupted = []
    try:
        px.forward(delay=0.2)
        before = sockets_to(px.port)
        for seconds in (0.2, 0.6, 1.0):
            spy = stage_spy()
            if mode == "asyncio":
                asyncio.run(_asyncio_cancel_after(conn, seconds))
            else:
                import trio

                trio.run(_trio_cancel_after, conn, seconds)
            interrupted.append(spy.stages[-1])
            assert sockets_to(px.port) == before
    finally:
        conn.finish()
    print("interrupted stages:", interrupted)
    order = [stage for stage in STAGES["require"] if stage != "write"]
    positions = [order.index(stage) for stage in interrupted if stage != "write"]
    assert positions == sorted(positions), interrupted
    assert len(set(interrupted)) >= 2, interrupted
    assert_all_finished(created, expected=3)
