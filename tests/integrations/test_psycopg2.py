"""psycopg2: the configured default deadline of a connection (issue 23).

Real server, real driver: ``DeadlineConnection`` and ``install``; the default
applies to every query (``execute``, ``executemany``, ``callproc``), a
cursor's ``psycancel_timeout`` and a ``query_timeout`` block override it,
None disables it; a black-holed query breaks the connection.
"""

from __future__ import annotations

import pytest

import psycancel
from psycancel.integrations import query_timeout
from tests.integrations.helpers import (
    OUTLIVES,
    SECONDS,
    SLOW,
    TIMEOUT,
    BlackHole,
    assert_timed_out,
)
from tests.support.drivers import need

psycopg2 = need("psycopg2")
psycopg2_extras = need("psycopg2.extras")
deadlines = need("psycancel.integrations.psycopg2")


def test_connection_class_default_applies_to_every_query(fdsn: str) -> None:
    conn = psycopg2.connect(fdsn, connection_factory=deadlines.DeadlineConnection)
    try:
        conn.autocommit = True
        assert conn.psycancel_timeout is None
        conn.psycancel_timeout = SECONDS
        assert deadlines.deadline_of(conn).seconds == SECONDS
        with conn.cursor() as cur:
            assert isinstance(cur, deadlines.DeadlineCursor)
            for run in (
                lambda: cur.execute(SLOW),
                lambda: cur.executemany("select pg_sleep(%s)", [(30,)]),
                lambda: cur.callproc("pg_sleep", (30,)),
            ):
                with pytest.raises(psycancel.QueryTimeout) as info:
                    run()
                assert_timed_out(info)
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_install_on_a_plain_connection_and_overrides(dsn_plain: str) -> None:
    conn = psycopg2.connect(dsn_plain)
    try:
        deadlines.install(conn, SECONDS, timeout=TIMEOUT)
        with conn.cursor() as cur, pytest.raises(psycancel.QueryTimeout) as info:
            cur.execute(SLOW)  # in a transaction: roll back, then the connection is usable
        assert_timed_out(info)
        conn.rollback()
        with conn.cursor() as cur:
            cur.psycancel_timeout = 10
            cur.execute(OUTLIVES)
            cur.psycancel_timeout = None
            cur.execute(OUTLIVES)
        with query_timeout(None), conn.cursor() as cur:
            cur.execute(OUTLIVES)
        with query_timeout(10), conn.cursor() as cur:
            cur.execute(OUTLIVES)
        deadlines.install(conn, None)
        with conn.cursor() as cur:
            cur.execute(OUTLIVES)  # no default any more
        conn.rollback()
    finally:
        conn.close()


def test_a_derived_cursor_class(dsn_plain: str) -> None:
    class DictDeadlineCursor(deadlines.DeadlineCursor, psycopg2_extras.DictCursor):  # type: ignore[misc]
        pass

    conn = psycopg2.connect(dsn_plain, cursor_factory=DictDeadlineCursor)
    try:
        conn.autocommit = True
        deadlines.install(conn, SECONDS)
        with conn.cursor() as cur, pytest.raises(psycancel.QueryTimeout):
            cur.execute(SLOW)
        with conn.cursor() as cur:
            cur.execute("select 1 as one")
            assert cur.fetchone()["one"] == 1
    finally:
        conn.close()
    plain = psycopg2.connect(dsn_plain, cursor_factory=psycopg2_extras.DictCursor)
    try:
        with pytest.raises(psycancel.InterfaceError, match="DeadlineCursor"):
            deadlines.install(plain, SECONDS)
    finally:
        plain.close()


def test_a_black_holed_query_breaks_the_connection(black_hole: BlackHole) -> None:
    conn = psycopg2.connect(black_hole.dsn(), connection_factory=deadlines.DeadlineConnection)
    pid = conn.get_backend_pid()
    try:
        conn.autocommit = True
        deadlines.install(conn, SECONDS, timeout=TIMEOUT)
        with conn.cursor() as cur:
            cur.execute("select 1")  # its block's cancel is kept: the next one breaks with it
        black_hole.freeze_when_sleeping(pid)
        with conn.cursor() as cur, pytest.raises(psycancel.QueryTimeout) as info:
            cur.execute(SLOW)
        assert info.value.connection_broken
        assert conn.closed
    finally:
        conn.close()
        black_hole.heal(pid)
