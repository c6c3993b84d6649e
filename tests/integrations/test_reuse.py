"""The integrations' blocks reuse a connection's unsent cancel (issue 23: the overhead target).

``psycancel.integrations._core.reusing`` is ``cancel_after`` whose prepared
cancel, when never sent, is kept for the connection's next block: checked
here against a real server, the kept cancel is the same object from query to
query, a fired one is never kept, a closed or collected connection drops
its own, and a kept cancel still cancels (and, in the black-hole tests of
each integration, still breaks) its query.
"""

from __future__ import annotations

import gc
import time
import weakref
from typing import Any

import pytest

import psycancel
from psycancel.integrations import _core
from psycancel.integrations._core import Deadline
from tests.integrations.helpers import SECONDS, SLOW, TIMEOUT, assert_timed_out
from tests.support.drivers import need

psycopg = need("psycopg")
psycopg2 = need("psycopg2")


def kept(conn: Any) -> Any:
    cell = _core._prepared.get(id(conn))
    return cell[0].plan if cell else None


def test_the_kept_cancel_is_reused_until_one_is_sent(dsn_plain: str) -> None:
    with psycopg.connect(dsn_plain, autocommit=True) as conn:
        deadline = Deadline(SECONDS, timeout=TIMEOUT)
        assert kept(conn) is None
        with deadline.guard(conn):  # type: ignore[union-attr]
            conn.execute("select 1")
        first = kept(conn)
        assert first is not None
        for _ in range(2):
            with deadline.guard(conn):  # type: ignore[union-attr]
                conn.execute("select 1")
            assert kept(conn) is first
        with pytest.raises(psycancel.QueryTimeout) as info, deadline.guard(conn):  # type: ignore[union-attr]
            conn.execute(SLOW)  # the kept cancel is sent
        assert_timed_out(info)
        assert kept(conn) is None  # sent: never kept
        with deadline.guard(conn):  # type: ignore[union-attr]
            conn.execute("select 1")
        assert kept(conn) is not None and kept(conn) is not first


def test_another_timeout_or_policy_is_not_reused(dsn_plain: str) -> None:
    with psycopg.connect(dsn_plain, autocommit=True) as conn:
        with Deadline(10).guard(conn):  # type: ignore[union-attr]
            conn.execute("select 1")
        first = kept(conn)
        with Deadline(10, timeout=2.0).guard(conn):  # type: ignore[union-attr]
            conn.execute("select 1")
        assert kept(conn) is not first and kept(conn) is not None


def test_a_closed_connection_drops_it(dsn_plain: str) -> None:
    conn = psycopg2.connect(dsn_plain)
    with Deadline(10).guard(conn):  # type: ignore[union-attr]
        conn.cursor().execute("select 1")
    assert kept(conn) is not None
    conn.close()
    with Deadline(10).guard(conn):  # type: ignore[union-attr]  # nothing to cancel: no timer
        pass
    assert kept(conn) is None


def test_a_collected_connection_drops_it(dsn_plain: str) -> None:
    conn = psycopg.connect(dsn_plain, autocommit=True)
    with Deadline(0.2).guard(conn):  # type: ignore[union-attr]
        conn.execute("select 1")
    ref = weakref.ref(conn)
    key = id(conn)
    assert _core._prepared[key]
    conn.close()
    del conn
    # The shared timer's heap holds a left block (and so its connection) until its
    # deadline passes: then the connection goes, and its kept cancel with it.
    end = time.monotonic() + 30
    while ref() is not None and time.monotonic() < end:
        gc.collect()
        time.sleep(0.05)
    assert ref() is None
    assert key not in _core._prepared  # its finalizer dropped the cell


def test_a_reconnected_session_is_not_targeted(dsn_plain: str, monitor: Any) -> None:
    """Another session behind the same object (psycopg2's fd reused): the fence sees it."""
    conn = psycopg.connect(dsn_plain, autocommit=True)
    try:
        with Deadline(10).guard(conn):  # type: ignore[union-attr]
            conn.execute("select 1")
        (entry,) = _core._prepared[id(conn)]
        assert entry.fence.same_socket()
        monitor.terminate(conn.info.backend_pid)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")  # the driver notices and closes its socket
        with Deadline(10).guard(conn):  # type: ignore[union-attr]
            pass
        assert kept(conn) is None
    finally:
        conn.close()
