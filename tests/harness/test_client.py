"""The tests' query client (``testing/client.py``) and the demo built on it.

psycancel has no query client: the tests make their connections with
``testing.client`` and cancel through its borrowed ``PGconn`` (the production
path). These tests check the seam itself: the client's ``pgconn`` is the
active twin's wrapper of the very pointer the client made, on the same libpq
handle, and ``python -m testing.demo`` (the quick start's demo) still cancels
a long query with the event loop responsive.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import psycancel
from psycancel import pq
from psycancel.pq import Libpq
from testing import client
from tests.support.queries import QUERY_CANCELED, drain, sleeping

ROOT = Path(__file__).resolve().parents[2]


def test_client_hands_its_pointer_to_the_active_twin(dsn_plain: str, libpq: Libpq) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    try:
        assert type(conn.pgconn) is pq.PGconn  # the active twin's class
        assert conn.pgconn.libpq is libpq and conn.libpq is libpq
        assert conn.pgconn.pgconn_ptr == conn.pgconn_ptr
        assert conn.pgconn.socket == conn.socket >= 0
        assert conn.__psycancel_pgconn__() is conn.pgconn
        assert conn.execute("select 41 + 1").rows == (("42",),)
    finally:
        conn.finish()
    assert conn.closed and conn.pgconn.closed
    psycancel.cancel(conn, timeout=5)  # a finished client: nothing to cancel


def test_cancel_through_the_client_is_the_production_path(
    dsn_tls: str, libpq: Libpq, created: list[object]
) -> None:
    """``psycancel.cancel(client)`` resolves the client's pgconn (the driver protocol)."""
    with sleeping(dsn_tls, libpq) as conn:
        psycancel.cancel(conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    assert created, "no cancel object was made through the twin"


def test_demo_runs_against_the_session_server(dsn_plain: str, dsn_tls: str, libpq: Libpq) -> None:
    """``python -m testing.demo --dsn ...``: the query is cancelled, with a timeline."""
    env = dict(os.environ, PSYCANCEL_LIBPQ=libpq.path)
    proc = subprocess.run(
        [sys.executable, "-m", "testing.demo", "--dsn", dsn_plain, "--dsn", dsn_tls],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("cancel done") == 2, out
    assert out.count(f"SQLSTATE {QUERY_CANCELED}") == 2, out
    assert "[TLS]" in out and "[plain]" in out, out
    assert "largest event-loop gap" in out, out


@pytest.mark.parametrize("start", [False, True], ids=["connect", "connect_start"])
def test_connect_failure_is_the_clients_error(libpq: Libpq, start: bool) -> None:
    connect = client.connect_start if start else client.connect
    with pytest.raises(psycancel.OperationalError, match="connection failed"):
        connect("this is not a conninfo", libpq=libpq)
