"""The shared timer of ``with cancel_after``: one thread, bounded memory, fork, gevent.

A ``with`` block used to cost a thread; now every block of the process shares
one timer thread (``psycancel._engine.timers``). These tests check what that
sharing must not break: many blocks start no thread each and leave no entry
behind; entries of long limits do not pile up; one failing callback does not
stop the others; a forked child has a working timer; under gevent the timer is
a greenlet that never freezes the hub, even when psycancel was imported before
``patch_all()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import psycancel
from psycancel._engine import timers
from tests.support.drivers import ROOT, need

psycopg2 = need("psycopg2")


def test_many_blocks_share_one_thread(dsn_plain: str) -> None:
    conn = psycopg2.connect(dsn_plain)
    conn.autocommit = True
    try:
        with psycancel.cancel_after(conn, 10), conn.cursor() as cur:  # the thread exists now
            cur.execute("select 1")
        before = threading.active_count()
        for _ in range(500):
            with psycancel.cancel_after(conn, 10), conn.cursor() as cur:
                cur.execute("select 1")
        assert threading.active_count() == before
        assert [t.name for t in threading.enumerate()].count("psycancel-timer") == 1
        assert timers.pending() == 0
    finally:
        conn.close()


def test_dead_entries_do_not_pile_up() -> None:
    """Long limits and short blocks: the heap is rebuilt when dead entries dominate."""
    entries = [timers.call_at(time.monotonic() + 3600, lambda: None) for _ in range(5000)]
    for entry in entries:
        timers.cancel(entry)
    for _ in range(5000):
        timers.cancel(timers.call_at(time.monotonic() + 3600, lambda: None))
    service = timers._timers()
    assert len(service._heap) < 2 * timers._REBUILD_MIN + 10, len(service._heap)
    assert timers.pending() == 0


def test_callbacks_run_in_order_and_a_failure_stops_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[int] = []
    done = threading.Event()
    now = time.monotonic()

    def fail() -> None:
        raise RuntimeError("boom")

    timers.call_at(now + 0.06, lambda: (ran.append(3), done.set()))
    timers.call_at(now + 0.02, lambda: ran.append(1))
    timers.call_at(now + 0.03, fail)
    timers.call_at(now + 0.04, lambda: ran.append(2))
    cancelled = timers.call_at(now + 0.05, lambda: ran.append(99))
    timers.cancel(cancelled)
    assert done.wait(10)
    assert ran == [1, 2, 3]
    assert any("timer callback failed" in r.getMessage() for r in caplog.records)


def test_an_earlier_entry_wakes_the_thread() -> None:
    """The thread sleeps until the earliest entry it knows: a new, earlier one must wake it."""
    late = timers.call_at(time.monotonic() + 3600, lambda: None)
    fired = threading.Event()
    t0 = time.monotonic()
    timers.call_at(t0 + 0.05, fired.set)
    assert fired.wait(10)
    assert time.monotonic() - t0 < 5  # (not the hour of the first entry)
    timers.cancel(late)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_has_a_working_timer() -> None:
    timers.cancel(timers.call_at(time.monotonic() + 10, lambda: None))  # the parent's thread
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no timer thread was inherited
        code = 1
        try:
            fired = threading.Event()
            timers.call_at(time.monotonic() + 0.02, fired.set)
            code = 0 if fired.wait(10) else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    try:
        assert os.read(read, 1) == b"\x00"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("order", ["patch-first", "import-first"])
def test_gevent_hub_keeps_running(order: str, dsn_plain: str) -> None:
    need("gevent")
    need("psycogreen")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "support" / "gevent_deadline_child.py"),
            order,
            dsn_plain,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    assert result["outcome"] == "QueryTimeout broken=False", result
    assert result["after"] == 1, result
    # The hub kept running: its largest gap is a small part of the block.
    assert result["largest_gap"] < result["seconds"] / 3, result
