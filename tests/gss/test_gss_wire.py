"""The cancel of a GSS-encrypted session is GSS-encrypted on the wire, for every libpq.

A recording proxy sits between libpq and the GSS server (``host=localhost``:
the service principal ``postgres/localhost``); the session is
``gssencmode=require`` and the server reports it encrypted
(``pg_stat_gssapi.encrypted``). The connection after the session's is the
cancel's: it must open with a GSSENCRequest, the server must accept it
(``G``), and neither the CancelRequest nor the backend PID may appear in clear.
Checked with libpq 18 of the GSSAPI build (the tests' client, every mode) and
with the libpqs bundled by psycopg[binary] (18) and psycopg2-binary (17).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from testing import client
from testing.gss_server import GssServer
from tests.support.drivers import QUERY_CANCELED, SLEEP, Background, pgcode
from tests.support.drivers import need as _need
from tests.support.gss import (
    assert_gss_encrypted,
    gss_encrypted_on_server,
    proxied_dsn,
    the_cancel,
)
from tests.support.modes import call_cancel
from tests.support.proxy import TcpProxy
from tests.support.queries import drain, sleeping, wait_until_active
from tests.support.wire import plaintext_cancels

psycopg = _need("psycopg")
psycopg2 = _need("psycopg2")

MODES = ["sync", "async", "async-inline", "async-offload", "trio"]
MakeProxy = Callable[[], TcpProxy]


@pytest.mark.parametrize("mode", MODES)
def test_client_cancel_is_gss_encrypted(
    mode: str, gss_server: GssServer, gss_proxy: MakeProxy, gss_libpq: Libpq, created: list[Any]
) -> None:
    px = gss_proxy()
    dsn = proxied_dsn(px, gss_server)
    with sleeping(dsn, gss_libpq, gss_server.dsn_plain) as conn:
        assert conn.pgconn.gss_enc_in_use and not conn.ssl_in_use
        pid = conn.backend_pid
        assert gss_encrypted_on_server(gss_server, gss_libpq, pid)
        call_cancel(mode, conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    assert_gss_encrypted(px.connections[0], pid)  # the session, too
    assert_gss_encrypted(the_cancel(px), pid)
    assert len(created) == 1 and created[0].closed


def _psycopg_session(dsn: str) -> tuple[Any, int, Callable[[], Any]]:
    conn = psycopg.connect(dsn, autocommit=True)
    return conn, conn.info.backend_pid, lambda: conn.execute(SLEEP)


def _psycopg2_session(dsn: str) -> tuple[Any, int, Callable[[], Any]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn, conn.get_backend_pid(), lambda: conn.cursor().execute(SLEEP)


DRIVERS = {"psycopg": _psycopg_session, "psycopg2": _psycopg2_session}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_driver_cancel_is_gss_encrypted(
    driver: str, mode: str, gss_server: GssServer, gss_proxy: MakeProxy, gss_libpq: Libpq
) -> None:
    """The libpq bundled by each binary driver encrypts the cancel with GSS too."""
    px = gss_proxy()
    conn, pid, query = DRIVERS[driver](proxied_dsn(px, gss_server))
    try:
        assert gss_encrypted_on_server(gss_server, gss_libpq, pid)
        background = Background(query)
        monitor = client.connect(gss_server.dsn_plain, libpq=gss_libpq)
        try:
            wait_until_active(monitor, pid)
        finally:
            monitor.finish()
        call_cancel(mode, conn, timeout=10)
        assert pgcode(background.error()) == QUERY_CANCELED
    finally:
        conn.close()
    assert_gss_encrypted(px.connections[0], pid)
    assert_gss_encrypted(the_cancel(px), pid)


@pytest.mark.parametrize(("mode", "offloaded"), [("sync", False), ("async", True)])
def test_trace_says_encrypted(
    mode: str,
    offloaded: bool,
    gss_server: GssServer,
    gss_libpq: Libpq,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The DEBUG record of a GSS cancel: encrypted, and kept out of the event loop."""
    with sleeping(gss_server.dsn_gss(), gss_libpq, gss_server.dsn_plain) as conn:
        with caplog.at_level(logging.DEBUG, logger="psycancel"):
            call_cancel(mode, conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    facts = [r.psycancel_cancel for r in caplog.records if hasattr(r, "psycancel_cancel")]
    assert len(facts) == 1, caplog.records
    assert facts[0]["api"] == "new" and facts[0]["encrypted"] is True
    assert facts[0]["offloaded"] is offloaded and facts[0]["outcome"] == "ok"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_plain_session_control(
    gss_server: GssServer, gss_proxy: MakeProxy, gss_libpq: Libpq
) -> None:
    """The control: with ``gssencmode=disable`` the recorder does see the request."""
    px = gss_proxy()
    dsn = proxied_dsn(px, gss_server, gssencmode="disable")
    with sleeping(dsn, gss_libpq, gss_server.dsn_plain) as conn:
        assert not conn.pgconn.gss_enc_in_use
        pid = conn.backend_pid
        psycancel.cancel(conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    found = plaintext_cancels(the_cancel(px).client_bytes)
    assert [entry[1] for entry in found] == [pid]


def test_info_sees_gssapi(gss_libpq: Libpq) -> None:
    """``info`` reports the GSSAPI build's libpq as GSSAPI-capable."""
    from psycancel._cli.info import collect_info

    assert collect_info()  # the command itself runs
    from psycancel._cli import info

    assert info._libpq_info(gss_libpq)["gssapi"] is True


def test_a_resent_plan_keeps_its_isolation(gss_server: GssServer, gss_libpq: Libpq) -> None:
    """``cancel_after``'s re-send of a GSS session's cancel runs in a worker too."""
    import time

    from psycancel._confirm import resend_plan
    from psycancel._engine.plan import Deadline, make_plan

    conn = client.connect(gss_server.dsn_gss(), libpq=gss_libpq)
    try:
        first = make_plan(conn.pgconn, Deadline.after(5), strict=True, stacklevel=1)
        again = resend_plan(first, conn.pgconn, time.monotonic() + 5)
        try:
            assert first.encrypted and again.encrypted
            assert getattr(first, "may_block", None) is True
            assert getattr(again, "may_block", None) is True
            assert again.cc is not first.cc  # type: ignore[union-attr]
        finally:
            first.discard()
            again.discard()
    finally:
        conn.finish()
