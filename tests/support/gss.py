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
    pid_bytes = struct.pack(">I", pid)
    assert not any(pid_bytes in part for part in gss_payloads(data)), (
        "the backend PID travels in clear"
    )


GSS_WRAP_HEADER = 16
"""Bytes of an RFC 4121 wrap token's header (TOK_ID 05 04, flags, filler, EC,
RRC, sequence number), sent in clear before the sealed data."""


def gss_payloads(data: bytes) -> list[bytes]:
    """The sealed parts of a GSS-encrypted client stream, its framing left out.

    After the GSSENCRequest each packet is a 4-byte length and a token (the
    context's, then wrap tokens). The framing is not secret and may spell a
    PID by chance: a 101-byte packet starts ``00 00 00 65 05 04``, which holds
    PID 25861 (``00 00 65 05``; seen once). A stream that does not parse as
    such packets is returned whole (the check then covers every byte).
    """
    parts, i = [], 8
    while i < len(data):
        if i + 4 > len(data):
            return [data]
        (length,) = struct.unpack(">I", data[i : i + 4])
        if length == 0 or i + 4 + length > len(data):
            return [data]
        parts.append(data[i + 4 + GSS_WRAP_HEADER : i + 4 + length])
        i += 4 + length
    return parts


def the_cancel(px: TcpProxy) -> Any:
    """The one connection after the session's: the cancel's."""
    assert px.wait_accepted(2), "no cancel connection"
    _session, *cancels = px.connections
    assert len(cancels) == 1, f"{len(cancels)} cancel connections"
    return cancels[0]
