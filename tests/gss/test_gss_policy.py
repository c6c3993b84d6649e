"""A legacy libpq (< 17) on a GSS-encrypted session: the security policy holds.

``PQcancel`` sends its CancelRequest in clear text whatever the session's
encryption. A GSS-encrypted session counts exactly as a TLS one: by default
the cancel is sent with an :class:`InsecureCancelWarning` and a WARNING on
the ``psycancel`` logger (and the recorder sees the clear-text key: the
control that the check can fail), with ``strict=True`` it is refused with
:class:`InsecureCancelError` before anything is sent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from testing import client
from testing.gss_server import GssServer
from tests.support.gss import gss_encrypted_on_server, proxied_dsn
from tests.support.modes import API_MODES, call_cancel
from tests.support.proxy import TcpProxy
from tests.support.queries import QUERY_CANCELED, drain, run, sleeping
from tests.support.wire import GSSENC_REQUEST, backend_key, describe_bytes, plaintext_cancels


@pytest.mark.parametrize("mode", API_MODES)
def test_legacy_warns_and_sends_in_clear(
    mode: str,
    gss_server: GssServer,
    gss_proxy: Any,
    legacy_libpq: Libpq,
    caplog: pytest.LogCaptureFixture,
) -> None:
    px: TcpProxy = gss_proxy()
    dsn = proxied_dsn(px, gss_server)
    with sleeping(dsn, legacy_libpq, gss_server.dsn_plain) as conn:
        assert conn.pgconn.gss_enc_in_use and not conn.ssl_in_use
        pid = conn.backend_pid
        assert gss_encrypted_on_server(gss_server, legacy_libpq, pid)
        with (
            pytest.warns(psycancel.InsecureCancelWarning, match="encrypted connection"),
            caplog.at_level(logging.DEBUG, logger="psycancel"),
        ):
            call_cancel(mode, conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    session, cancel = px.connections
    assert session.client_bytes[:8] == GSSENC_REQUEST
    found = plaintext_cancels(cancel.client_bytes)
    assert [entry[1] for entry in found] == [pid], describe_bytes(cancel.client_bytes)
    assert len(found[0][2]) == 4  # libpq 15: protocol 3.0's 4-byte key, readable
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1 and "clear text" in warnings_logged[0].getMessage()
    facts = [r.psycancel_cancel for r in caplog.records if hasattr(r, "psycancel_cancel")]
    assert len(facts) == 1 and facts[0]["api"] == "legacy" and facts[0]["encrypted"] is True


@pytest.mark.parametrize("mode", API_MODES)
def test_legacy_strict_refuses_and_sends_nothing(
    mode: str,
    gss_server: GssServer,
    gss_proxy: Any,
    legacy_libpq: Libpq,
) -> None:
    px: TcpProxy = gss_proxy()
    dsn = proxied_dsn(px, gss_server)
    with sleeping(dsn, legacy_libpq, gss_server.dsn_plain) as conn:
        pid = conn.backend_pid
        with pytest.raises(psycancel.InsecureCancelError, match="strict=True"):
            call_cancel(mode, conn, timeout=10, strict=True)
        time.sleep(0.2)  # a request sent anyway would have reached the proxy by now
        assert px.accepted == 1, "a cancel connection was opened"
        monitor = client.connect(gss_server.dsn_plain, libpq=legacy_libpq)
        try:
            state = run(monitor, f"select state from pg_stat_activity where pid = {pid}").rows
        finally:
            monitor.finish()
        assert state == (("active",),), "the query was cancelled"


def test_control_plain_session_is_not_warned(
    gss_server: GssServer, legacy_libpq: Libpq, recwarn: pytest.WarningsRecorder
) -> None:
    """The same legacy cancel of a session that is not encrypted: no warning (the control)."""
    dsn = gss_server.dsn_gss(gssencmode="disable")
    with sleeping(dsn, legacy_libpq, gss_server.dsn_plain) as conn:
        assert not conn.pgconn.gss_enc_in_use
        psycancel.cancel(conn, timeout=10, strict=True)
        assert drain(conn).sqlstate == QUERY_CANCELED
    assert not [w for w in recwarn if issubclass(w.category, psycancel.InsecureCancelWarning)]


def test_key_is_readable_in_session_bytes_only_in_clear(
    gss_server: GssServer,
    gss_proxy: Any,
    legacy_libpq: Libpq,
) -> None:
    """On the GSS session the BackendKeyData is encrypted: the recorder cannot read it."""
    px: TcpProxy = gss_proxy()
    conn = client.connect(proxied_dsn(px, gss_server), libpq=legacy_libpq)
    try:
        pid = conn.backend_pid
    finally:
        conn.finish()
    with pytest.raises(AssertionError, match="no BackendKeyData"):
        backend_key(px.connections[0].server_bytes, pid)
