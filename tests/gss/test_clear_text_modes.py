"""Modes whose cancel may go in clear text although the session is encrypted (issue 22 item 3).

A cancel connection copies the session's ``sslmode`` and ``gssencmode``, not
what they negotiated, and negotiates again:

* ``sslmode=allow`` tries clear text first, and the server accepts a
  CancelRequest without TLS (``pg_hba.conf`` is not consulted for it): the
  cancel of a TLS session goes in clear text, every time. psycancel reads
  the option (``PQconninfo``) and applies the policy, as for a legacy libpq:
  :class:`InsecureCancelWarning` by default, :class:`InsecureCancelError`
  and nothing sent with ``strict=True``.
* ``gssencmode=prefer`` (and ``sslmode=prefer``) fall back only when the
  cancel's own negotiation fails: here, the credential cache gone by the
  time of the cancel. That is decided inside libpq while it connects:
  psycancel cannot know it before sending (the test shows the fallback, for
  the documentation); ``gssencmode=require`` makes the cancel fail instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from testing import client
from testing.gss_server import TLS_ONLY_DB, GssServer
from testing.kerberos import kerberos_env
from tests.support.gss import proxied_dsn, the_cancel
from tests.support.modes import API_MODES, call_cancel
from tests.support.proxy import TcpProxy
from tests.support.queries import QUERY_CANCELED, drain, run, sleeping
from tests.support.wire import (
    CANCEL_CODE,
    GSSENC_REQUEST,
    SSL_REQUEST,
    describe_bytes,
    plaintext_cancels,
)

from .conftest import Credentials


def allow_dsn(px: TcpProxy, server: GssServer, sslmode: str = "allow") -> str:
    """A TLS session (the database refuses plain ones) whatever ``sslmode`` tries first.

    With ``allow`` the session takes two connections: clear text (rejected),
    then TLS.
    """
    return px.dsn(server, sslmode=sslmode, dbname=TLS_ONLY_DB, gssencmode="disable")


def cancels_after(px: TcpProxy, sessions: int) -> list[Any]:
    """The connections after the session's ``sessions`` ones (the cancel's)."""
    assert px.wait_accepted(sessions + 1), "no cancel connection"
    return px.connections[sessions:]


@pytest.mark.parametrize("mode", API_MODES)
def test_sslmode_allow_warns_and_sends_in_clear(
    mode: str,
    gss_server: GssServer,
    gss_proxy: Any,
    gss_libpq: Libpq,
    caplog: pytest.LogCaptureFixture,
) -> None:
    px: TcpProxy = gss_proxy()
    with sleeping(allow_dsn(px, gss_server), gss_libpq, gss_server.dsn_plain) as conn:
        assert conn.ssl_in_use and conn.pgconn.conninfo_option("sslmode") == "allow"
        pid = conn.backend_pid
        sessions = px.accepted
        assert sessions == 2  # clear text refused, then TLS
        with (
            pytest.warns(psycancel.InsecureCancelWarning, match="sslmode=allow"),
            caplog.at_level(logging.DEBUG, logger="psycancel"),
        ):
            call_cancel(mode, conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    (cancel,) = cancels_after(px, sessions)
    found = plaintext_cancels(cancel.client_bytes)
    assert [entry[1] for entry in found] == [pid], describe_bytes(cancel.client_bytes)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "clear text" in warned[0].getMessage()
    facts = [r.psycancel_cancel for r in caplog.records if hasattr(r, "psycancel_cancel")]
    assert len(facts) == 1 and facts[0]["api"] == "new" and facts[0]["encrypted"] is True


@pytest.mark.parametrize("mode", API_MODES)
def test_sslmode_allow_strict_refuses_and_sends_nothing(
    mode: str, gss_server: GssServer, gss_proxy: Any, gss_libpq: Libpq
) -> None:
    px: TcpProxy = gss_proxy()
    with sleeping(allow_dsn(px, gss_server), gss_libpq, gss_server.dsn_plain) as conn:
        pid = conn.backend_pid
        sessions = px.accepted
        with pytest.raises(psycancel.InsecureCancelError, match="sslmode=allow"):
            call_cancel(mode, conn, timeout=10, strict=True)
        time.sleep(0.2)  # a request sent anyway would have reached the proxy by now
        assert px.accepted == sessions, "a cancel connection was opened"
        monitor = client.connect(gss_server.dsn_plain, libpq=gss_libpq)
        try:
            state = run(monitor, f"select state from pg_stat_activity where pid = {pid}").rows
        finally:
            monitor.finish()
        assert state == (("active",),), "the query was cancelled"


def test_sslmode_prefer_control(
    gss_server: GssServer, gss_proxy: Any, gss_libpq: Libpq, recwarn: pytest.WarningsRecorder
) -> None:
    """The same TLS session with ``sslmode=prefer``: the cancel goes in TLS, no warning."""
    px: TcpProxy = gss_proxy()
    dsn = allow_dsn(px, gss_server, sslmode="prefer")
    with sleeping(dsn, gss_libpq, gss_server.dsn_plain) as conn:
        assert conn.ssl_in_use
        psycancel.cancel(conn, timeout=10, strict=True)
        assert drain(conn).sqlstate == QUERY_CANCELED
    data = the_cancel(px).client_bytes
    assert data[:8] == SSL_REQUEST and CANCEL_CODE not in data, describe_bytes(data)
    assert not [w for w in recwarn if issubclass(w.category, psycancel.InsecureCancelWarning)]


def test_gssencmode_prefer_falls_back_when_the_credentials_are_gone(
    gss_server: GssServer, gss_proxy: Any, gss_libpq: Libpq, credentials: Credentials,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The documented limit: libpq decides the fallback while it connects the cancel."""
    px: TcpProxy = gss_proxy()
    dsn = proxied_dsn(px, gss_server, gssencmode="prefer")
    with sleeping(dsn, gss_libpq, gss_server.dsn_plain) as conn:
        assert conn.pgconn.gss_enc_in_use
        pid = conn.backend_pid
        with kerberos_env(credentials.config, tmp_path / "no-such-cache"):
            psycancel.cancel(conn, timeout=10, strict=True)
        assert drain(conn).sqlstate == QUERY_CANCELED
    assert px.connections[0].client_bytes[:8] == GSSENC_REQUEST
    cancel = the_cancel(px)
    found = plaintext_cancels(cancel.client_bytes)
    assert [entry[1] for entry in found] == [pid], describe_bytes(cancel.client_bytes)


def test_gssencmode_require_fails_rather_than_fall_back(
    gss_server: GssServer, gss_proxy: Any, gss_libpq: Libpq, credentials: Credentials,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The advice: with ``gssencmode=require`` the cancel fails and nothing goes in clear."""
    px: TcpProxy = gss_proxy()
    with sleeping(proxied_dsn(px, gss_server), gss_libpq, gss_server.dsn_plain) as conn:
        assert conn.pgconn.gss_enc_in_use
        with (
            kerberos_env(credentials.config, tmp_path / "no-such-cache"),
            pytest.raises(psycancel.CancelError, match="GSSAPI"),
        ):
            psycancel.cancel(conn, timeout=10)
    for recorded in px.connections[1:]:
        assert CANCEL_CODE not in recorded.client_bytes, describe_bytes(recorded.client_bytes)
