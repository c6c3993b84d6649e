"""What an inline asyncio cancel asks of the event loop: registrations and timers.

Under a burst of timeouts a service's loop runs every cancel's waits, so each
round trip through the loop counts (``benchmarks/app.py``). The loop of each
test records what the cancel registered with it; the cancels are real ones,
against the real server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest

import psycancel
from psycancel._engine import waits
from psycancel.pq import Libpq
from testing import client
from tests.support.fds import loop_fds
from tests.support.queries import QUERY_CANCELED, drain, sleeping
from tests.support.twins import compiled_twin


class _Recorder:
    """Wraps a running loop's registration and timer methods to count their calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.calls: dict[str, int] = {
            "add_reader": 0,
            "add_writer": 0,
            "call_later": 0,
            "call_at": 0,
        }
        for name in self.calls:
            original = getattr(loop, name)

            def counted(
                *args: Any, _name: str = name, _original: Any = original, **kwargs: Any
            ) -> Any:
                self.calls[_name] += 1
                return _original(*args, **kwargs)

            setattr(loop, name, counted)
        self.loop = loop

    def stop(self) -> None:
        for name in self.calls:
            delattr(self.loop, name)  # the class's methods again

    @property
    def timers(self) -> int:
        """Timers armed (asyncio's ``call_later`` goes through ``call_at``)."""
        return self.calls["call_at"]


async def _recorded(conn: Any, **kwargs: Any) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    before = loop_fds(loop)
    rec = _Recorder(loop)
    try:
        await psycancel.cancel_async(conn, offload=False, **kwargs)
    finally:
        rec.stop()
    assert loop_fds(loop) == before
    return {**rec.calls, "timers": rec.timers}


def _cancel_recorded(dsn: str, libpq: Libpq) -> dict[str, int]:
    """Cancel a running query inline, recording the loop calls; it must end 57014."""
    with sleeping(dsn, libpq) as conn:
        calls = asyncio.run(_recorded(conn, timeout=10))
        assert drain(conn).sqlstate == QUERY_CANCELED
    return calls


def test_plain_cancel_waits_once_through_the_loop(dsn_plain: str, libpq: Libpq) -> None:
    """Loopback: the connect and the send are over at once; the loop waits for the answer."""
    calls = _cancel_recorded(dsn_plain, libpq)
    # Before: two writers (the connect, the send), a reader, a timer for each.
    assert calls["add_writer"] == 0, calls
    assert calls["add_reader"] == 1, calls
    assert calls["timers"] == 1, calls


def test_tls_cancel_arms_one_timer(dsn_tls: str, libpq: Libpq) -> None:
    """However many waits the TLS handshake takes, the deadline is one timer."""
    calls = _cancel_recorded(dsn_tls, libpq)
    assert calls["add_reader"] + calls["add_writer"] >= 2, calls  # the handshake's waits
    assert calls["timers"] == 1, calls


def test_writes_checked_at_once_are_bounded(
    monkeypatch: pytest.MonkeyPatch, dsn_plain: str, libpq: Libpq
) -> None:
    """With no write checked at once, every wait goes through the loop again."""
    monkeypatch.setattr(waits, "WRITES_AT_ONCE", 0)
    calls = _cancel_recorded(dsn_plain, libpq)
    # The connect, the request's send, the server's answer.
    assert calls["add_writer"] == 2, calls
    assert calls["add_reader"] == 1, calls
    assert calls["timers"] == 1, calls


def test_blackholed_cancel_arms_one_timer(pg_server: Any, proxy: Any, libpq: Libpq) -> None:
    """A cancel that never gets an answer ends at its deadline, through its one timer.

    The timeout is capped at validation (``plan.MAX_WAIT``), so no wait is sliced and
    the deadline's timer is never re-armed.
    """
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="disable"), libpq=libpq)
    calls: dict[str, int] = {}
    timeout = 0.4

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = loop_fds(loop)
        rec = _Recorder(loop)
        try:
            with pytest.raises(psycancel.CancellationTimeout):
                await psycancel.cancel_async(conn, offload=False, timeout=timeout)
        finally:
            rec.stop()
            calls.update(rec.calls, timers=rec.timers)
        assert loop_fds(loop) == before

    try:
        px.blackhole()
        t0 = time.monotonic()
        asyncio.run(main())
        elapsed = time.monotonic() - t0
    finally:
        conn.finish()
    assert elapsed >= timeout
    assert elapsed < timeout + 1.0  # generous: a deadline missed, not a slow machine
    assert calls["timers"] == 1, calls


def test_resolving_never_imports_the_other_twin() -> None:
    """The compiled twin active: a cancel's resolution does not import the ctypes twin."""
    code = (
        "import sys, psycancel\n"
        "from psycancel._drivers.resolve import resolve\n"
        "assert psycancel.pq.__impl__ == 'c', psycancel.pq.__impl__\n"
        "try:\n"
        "    resolve(object())\n"
        "except psycancel.InterfaceError:\n"
        "    pass\n"
        "print('psycancel.pq._ctypes' in sys.modules)\n"
    )
    compiled_twin()  # built (a failure in CI when it is not)
    env = {**os.environ, "PSYCANCEL_IMPL": "c"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
