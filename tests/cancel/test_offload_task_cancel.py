"""Cancelling the task that awaits an offloaded cancel leaves nothing behind.

Not in the log either: the reactor settles an aborted job after the task has
stopped waiting, and a future holding that outcome unread was reported by
asyncio when collected ("Future exception was never retrieved:
CancelledError"). Each test records what reaches the loop's exception handler
(and asyncio's logger), collects garbage after the reactor has moved on (a
later offloaded cancel), and checks the cancel object is finished and no fd
is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from typing import Any

import pytest

import psycancel
from psycancel._engine import offload
from psycancel.pq import Libpq, PGconn
from psycancel.pq.abc import PGcancelConn
from tests.support.fds import loop_fds, open_fds, sockets_to
from tests.support.queries import QUERY_CANCELED, drain, sleeping

PROXY_TIMEOUT = 10.0
"""Seconds the proxy may take to see the cancel connection open, or closed."""


class LoopErrors:
    """A loop exception handler that records every context it is given."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def messages(self) -> list[str]:
        """Each recorded context as one line (for the assertion's message)."""
        return [f"{c.get('message')}: {c.get('exception')!r}" for c in self.contexts]


def _new_fds(before: set[int]) -> dict[int, str]:
    """The fds open now and not in ``before``, with what they are.

    The listing's own directory fd (which moves when the reactor, started
    meanwhile, took lower numbers) is closed by the time its entries are read.
    """
    found = {}
    for fd in open_fds() - before:
        with contextlib.suppress(FileNotFoundError):
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return found


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name in ("asyncio", "psycancel") and r.levelno >= logging.WARNING
    ]


async def _cancel_the_task_in_flight(conn: PGconn, px: Any) -> None:
    """Start an offloaded cancel, cancel its task once the proxy holds its connection.

    Returns once the proxy has seen that connection closed by the client.
    """
    accepted = px.accepted
    task = asyncio.create_task(psycancel.cancel_async(conn, timeout=30, offload=True))
    deadline = time.monotonic() + PROXY_TIMEOUT
    while px.accepted == accepted:
        assert time.monotonic() < deadline, "the cancel connection never reached the proxy"
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # the cancel is now waiting on the proxy
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = px.connections[accepted]
    deadline = time.monotonic() + PROXY_TIMEOUT
    while seen.active:  # its sockets here close once the client's EOF came through
        assert time.monotonic() < deadline, "the cancel connection was never closed"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("stall", ["blackhole", "delay"])
def test_cancelled_task_logs_nothing(
    stall: str,
    pg_server: Any,
    proxy: Any,
    dsn_tls: str,
    libpq: Libpq,
    created: list[PGcancelConn],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    px = proxy()
    errors = LoopErrors()
    with sleeping(px.dsn(pg_server, sslmode="require"), libpq, monitor_dsn=dsn_tls) as conn:
        # Connections accepted from now on (the cancel's) never get an answer,
        # or get every chunk 0.5 s late: the task is cancelled mid-handshake.
        if stall == "blackhole":
            px.blackhole()
        else:
            px.forward(delay=0.5)
        sockets_before = sockets_to(px.port)  # the session's own connection
        aborts_before = offload.aborts_requested()

        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(errors)
            registered = loop_fds(loop)
            fds_before = open_fds()
            await _cancel_the_task_in_flight(conn, px)
            assert offload.aborts_requested() == aborts_before + 1  # the abort path ran
            assert loop_fds(loop) == registered
            assert len(created) == 1 and created[0].closed
            assert sockets_to(px.port) == sockets_before
            assert _new_fds(fds_before) == {}
            # A later offloaded cancel (the reactor moves on and drops what it
            # held of the first), then the first one's future is collected.
            px.forward()
            await psycancel.cancel_async(conn, timeout=30, offload=True)
            gc.collect()
            await asyncio.sleep(0)

        asyncio.run(asyncio.wait_for(main(), 60))
        gc.collect()
        assert drain(conn).sqlstate == QUERY_CANCELED
    assert errors.messages() == []
    assert _logged(caplog) == []
    assert len(created) == 2 and all(cc.closed for cc in created)


def test_cancel_racing_its_outcome_logs_nothing(
    dsn_tls: str,
    libpq: Libpq,
    created: list[PGcancelConn],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The task is cancelled 1..8 loop iterations in: before, during or after the outcome."""
    caplog.set_level(logging.DEBUG)
    errors = LoopErrors()
    fds_before = open_fds()
    for rounds in range(1, 9):
        with sleeping(dsn_tls, libpq) as conn:

            async def main(conn: PGconn = conn, rounds: int = rounds) -> bool:
                loop = asyncio.get_running_loop()
                loop.set_exception_handler(errors)
                registered = loop_fds(loop)
                task = asyncio.create_task(psycancel.cancel_async(conn, timeout=30, offload=True))
                for _ in range(rounds):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    sent = False
                else:
                    sent = True  # over before the cancellation reached it
                assert loop_fds(loop) == registered
                if not sent:  # the query may still run: cancel it for real
                    await psycancel.cancel_async(conn, timeout=30, offload=True)
                gc.collect()
                await asyncio.sleep(0)
                return sent

            asyncio.run(asyncio.wait_for(main(), 60))
            gc.collect()
            assert drain(conn).sqlstate == QUERY_CANCELED
    assert errors.messages() == []
    assert _logged(caplog) == []
    assert created and all(cc.closed for cc in created)
    assert _new_fds(fds_before) == {}
