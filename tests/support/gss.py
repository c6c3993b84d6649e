"""Helpers of the GSS suite (tests/gss/): proxied GSS conninfos and wire checks."""

from __future__ import annotations

import struct
from typing import Any

from psycancel.pq import Libpq
from testing import client
from testing.gss_server import GssServer

from .proxy import TcpProxy
from .queries import run
from .wire import CANCEL_CODE, GSSENC_REQUEST, describe_bytes, plaintext_cancels

__all__ = ["assert_gss_encrypted", "gss_encrypted_on_server", "proxied_dsn", "the_cancel"]


def proxied_dsn(px: TcpProxy, server: GssServer, **params: Any) -> str:
    """``server.dsn_gss`` through ``px`` (``host=localhost`` kept for the service name)."""
    return server.dsn_gss(hostaddr=px.host, port=px.port, **params)


def gss_encrypted_on_server(server: GssServer, libpq: Libpq, pid: int) -> bool:
    """``pg_stat_gssapi.encrypted`` of backend ``pid``, asked on a plain connection."""
    monitor = client.connect(server.dsn_plain, libpq=libpq)
    try:
        rows = run(monitor, f"select encrypted from pg_stat_gssapi where pid = {pid}").rows
    finally:
        monitor.finish()
    return rows == (("t",),)


def assert_gss_encrypted(conn: Any, pid: int) -> None:
    """A recorded connection opened GSS encryption and hides the request."""
    data = conn.client_bytes
    assert data[:8] == GSSENC_REQUEST, describe_bytes(data)
    assert conn.server_bytes[:1] == b"G", describe_bytes(conn.server_bytes)
    assert len(data) > 8, "nothing after the GSSENCRequest"
    assert plaintext_cancels(data) == [], describe_bytes(data)
    assert CANCEL_CODE not in data
    assert struct.pack(">I", pid) not in data, "the backend PID travels in clear"


def the_cancel(px: TcpProxy) -> Any:
    """The one connection after the session's: the cancel's."""
    assert px.wait_accepted(2), "no cancel connection"
    _session, *cancels = px.connections
    assert len(cancels) == 1, f"{len(cancels)} cancel connections"
    return cancels[0]
