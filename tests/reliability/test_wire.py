"""What the cancel request looks like on the wire, and whom it is sent to.

A recording proxy sits between libpq and the server; the connection it accepts
after the session's is the cancel connection. On every TLS connection
(``sslmode=require``, ``verify-full``, ``sslnegotiation=direct``, protocol 3.0
and 3.2) that connection must start with an SSLRequest (or a TLS ClientHello
for direct TLS) and the plaintext CancelRequest (with the backend PID and
secret key) must never appear; with ``sslmode=disable`` it does appear, with
the right PID and key (so these checks can fail).

Then the proxy is pointed at an impostor (``FakePgServer``) after the session
is established: with ``verify-full`` a certificate from another CA, or for
another host name, makes the cancel fail with ``CancelError`` before anything
secret is sent; a trusted impostor receives the request, decrypted, which
proves that the impostor would have seen it (the positive control).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from testing import client, make_ca, make_server_cert
from testing.client import Client
from tests.support.fake_server import FakePgServer
from tests.support.modes import LOOP_MODES, call_cancel
from tests.support.proxy import TcpProxy
from tests.support.queries import QUERY_CANCELED, drain, sleeping
from tests.support.wire import (
    CANCEL_CODE,
    SSL_REQUEST,
    TLS_HANDSHAKE_RECORD,
    backend_key,
    cancel_request,
    describe_bytes,
    plaintext_cancels,
    tls_records_after_hello,
)

MakeProxy = Callable[[], TcpProxy]

# name: (sslmode, extra conninfo parameters)
TLS_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "require": ("require", {}),
    "verify-full": ("verify-full", {}),
    "direct": ("require", {"sslnegotiation": "direct"}),
    "verify-full-direct": ("verify-full", {"sslnegotiation": "direct"}),
    "require-proto3.2": ("require", {"max_protocol_version": "3.2"}),
    "verify-full-direct-proto3.2": (
        "verify-full",
        {"sslnegotiation": "direct", "max_protocol_version": "3.2"},
    ),
}


def cancel_connections(px: TcpProxy) -> list[Any]:
    """The connections accepted after the session's (the cancel attempts)."""
    conns = px.connections
    assert conns, "the session did not go through the proxy"
    return conns[1:]


def assert_encrypted(data: bytes, pid: int, *, direct: bool) -> None:
    """``data`` (a connection's client bytes) starts TLS and hides the request."""
    if direct:
        assert data[:2] == TLS_HANDSHAKE_RECORD, describe_bytes(data)
        assert SSL_REQUEST not in data[:8]
    else:
        assert data[:8] == SSL_REQUEST, describe_bytes(data)
        assert data[8:10] == TLS_HANDSHAKE_RECORD, describe_bytes(data)
    assert plaintext_cancels(data) == [], describe_bytes(data)
    assert CANCEL_CODE not in data
    pid_bytes = struct.pack(">I", pid)
    sealed = tls_records_after_hello(data if direct else data[8:])
    assert not any(pid_bytes in part for part in sealed), "the backend PID travels in clear"


# =====================================================================================
# 1. Encryption on the wire
# =====================================================================================


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("variant", list(TLS_VARIANTS))
def test_tls_cancel_is_encrypted(
    mode: str,
    variant: str,
    pg_server: Any,
    proxy: MakeProxy,
    libpq: Libpq,
    created: list[Any],
) -> None:
    sslmode, params = TLS_VARIANTS[variant]
    px = proxy()
    dsn = px.dsn(pg_server, sslmode=sslmode, **params)
    with sleeping(dsn, libpq, monitor_dsn=pg_server.dsn("disable")) as conn:
        assert conn.ssl_in_use
        pid = conn.backend_pid
        call_cancel(mode, conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    direct = params.get("sslnegotiation") == "direct"
    session, *_ = px.connections
    assert_encrypted(session.client_bytes, pid, direct=direct)  # the session, too
    cancels = cancel_connections(px)
    assert len(cancels) == 1, f"{len(cancels)} cancel connections"
    assert_encrypted(cancels[0].client_bytes, pid, direct=direct)
    assert len(created) == 1 and created[0].closed


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
def test_plain_cancel_is_visible(
    mode: str, protocol: str, pg_server: Any, proxy: MakeProxy, libpq: Libpq
) -> None:
    """The control: without TLS the recorder does see the CancelRequest."""
    px = proxy()
    dsn = px.dsn(pg_server, sslmode="disable", max_protocol_version=protocol)
    with sleeping(dsn, libpq, monitor_dsn=pg_server.dsn("disable")) as conn:
        assert not conn.ssl_in_use
        pid = conn.backend_pid
        call_cancel(mode, conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    session, *_ = px.connections
    key = backend_key(session.server_bytes, pid)
    assert len(key) == (4 if protocol == "3.0" else 32)
    (cancel,) = cancel_connections(px)
    expected = cancel_request(pid, key)
    assert len(expected) == (16 if protocol == "3.0" else 44)
    assert cancel.client_bytes == expected, describe_bytes(cancel.client_bytes)
    assert plaintext_cancels(cancel.client_bytes) == [(len(expected), pid, key)]


# =====================================================================================
# 2. Certificate checks hold for the cancel connection too
# =====================================================================================


class Certificates:
    """Throwaway TLS material for impostor servers."""

    def __init__(self, root: Path, real_ca: Path) -> None:
        # A CA the client does not trust, and a certificate for "localhost".
        untrusted_ca, untrusted_key = make_ca(root / "untrusted", "ca")
        self.untrusted = make_server_cert(root / "untrusted", untrusted_ca, untrusted_key)
        # A second CA the client trusts (in a bundle with the real server's CA).
        extra_ca, extra_key = make_ca(root / "extra", "ca")
        self.trusted = make_server_cert(root / "extra", extra_ca, extra_key)
        self.wrong_name = make_server_cert(
            root / "extra", extra_ca, extra_key, "wrong",
            dns_names=("impostor.invalid",), ip_addresses=(),
        )  # fmt: skip
        self.bundle = root / "bundle.crt"
        self.bundle.write_text(real_ca.read_text() + extra_ca.read_text())


@pytest.fixture(scope="module")
def certs(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if getattr(pg_server, "ca_file", None) is None:
        pytest.skip("needs the server's CA certificate")
    return Certificates(tmp_path_factory.mktemp("impostor-certs"), Path(pg_server.ca_file))


@pytest.fixture
def impostor() -> Iterator[Callable[..., FakePgServer]]:
    made: list[FakePgServer] = []

    def make(cert: tuple[Path, Path], behaviour: str = "close") -> FakePgServer:
        server = FakePgServer(*cert, behaviour=behaviour)
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            server.close()


def session_then_redirect(
    px: TcpProxy, pg_server: Any, libpq: Libpq, target: FakePgServer, sslmode: str,
    **params: Any,
) -> Client:  # fmt: skip
    """Connect through ``px`` to the real server, then point ``px`` at ``target``.

    The proxy reads its target for each new connection, so the session stays on
    the real server and the cancel connection reaches the impostor.
    """
    conn = client.connect(px.dsn(pg_server, sslmode=sslmode, **params), libpq=libpq)
    assert conn.ssl_in_use
    px.target_host, px.target_port = target.host, target.port
    return conn


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("negotiation", ["postgres", "direct"])
def test_verify_full_refuses_another_ca(
    mode: str,
    negotiation: str,
    pg_server: Any,
    proxy: MakeProxy,
    libpq: Libpq,
    certs: Certificates,
    impostor: Callable[..., FakePgServer],
    created: list[Any],
) -> None:
    fake = impostor(certs.untrusted)
    px = proxy()
    conn = session_then_redirect(
        px, pg_server, libpq, fake, "verify-full", sslnegotiation=negotiation
    )
    try:
        pid = conn.backend_pid
        with pytest.raises(psycancel.CancelError, match="certificate"):
            call_cancel(mode, conn, timeout=10)
    finally:
        conn.finish()
    (cancel,) = cancel_connections(px)
    assert_encrypted(cancel.client_bytes, pid, direct=negotiation == "direct")
    (seen,) = fake.connections
    assert seen.done.wait(5)
    assert seen.tls_error is not None and seen.request == b""
    assert len(created) == 1 and created[0].closed


@pytest.mark.parametrize("mode", LOOP_MODES)
def test_verify_full_refuses_another_host_name(
    mode: str,
    pg_server: Any,
    proxy: MakeProxy,
    libpq: Libpq,
    certs: Certificates,
    impostor: Callable[..., FakePgServer],
) -> None:
    """A certificate from a trusted CA, but not for ``localhost``."""
    fake = impostor(certs.wrong_name)
    px = proxy()
    conn = session_then_redirect(
        px, pg_server, libpq, fake, "verify-full", sslrootcert=certs.bundle
    )
    try:
        pid = conn.backend_pid
        with pytest.raises(psycancel.CancelError, match="does not match host name"):
            call_cancel(mode, conn, timeout=10)
    finally:
        conn.finish()
    (cancel,) = cancel_connections(px)
    assert_encrypted(cancel.client_bytes, pid, direct=False)
    (seen,) = fake.connections
    assert seen.done.wait(5)
    assert seen.request == b"", "the impostor received the request"


@pytest.mark.parametrize("mode", LOOP_MODES)
@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
@pytest.mark.parametrize("negotiation", ["postgres", "direct"])
def test_trusted_impostor_gets_the_request_inside_tls(
    mode: str,
    protocol: str,
    negotiation: str,
    pg_server: Any,
    proxy: MakeProxy,
    libpq: Libpq,
    certs: Certificates,
    impostor: Callable[..., FakePgServer],
) -> None:
    """The positive control of the impostor tests, and a decrypted look at the request.

    With a certificate the client trusts, the handshake succeeds and the
    impostor decrypts a well-formed CancelRequest for the session's PID
    (16 bytes with protocol 3.0, 44 with 3.2), while the bytes on the wire
    still show none of it.
    """
    fake = impostor(certs.trusted)
    px = proxy()
    conn = session_then_redirect(
        px, pg_server, libpq, fake, "verify-full",
        sslrootcert=certs.bundle, max_protocol_version=protocol, sslnegotiation=negotiation,
    )  # fmt: skip
    try:
        pid = conn.backend_pid
        call_cancel(mode, conn, timeout=10)
    finally:
        conn.finish()
    (seen,) = fake.connections
    assert seen.done.wait(5)
    assert seen.tls_error is None
    assert seen.direct_tls == (negotiation == "direct")
    assert seen.alpn == "postgresql"
    length = 16 if protocol == "3.0" else 44
    assert len(seen.request) == length, describe_bytes(seen.request)
    assert plaintext_cancels(seen.request) == [(length, pid, seen.request[12:])]
    (cancel,) = cancel_connections(px)
    assert_encrypted(cancel.client_bytes, pid, direct=negotiation == "direct")


@pytest.mark.parametrize("mode", ["sync"])
def test_require_does_not_authenticate_the_server(
    mode: str,
    pg_server: Any,
    proxy: MakeProxy,
    libpq: Libpq,
    certs: Certificates,
    impostor: Callable[..., FakePgServer],
) -> None:
    """Documents a limit: ``sslmode=require`` encrypts but checks no certificate.

    Like the connection itself, the cancel goes to whoever answers, here an
    impostor with an untrusted certificate, which receives the PID and key.
    Only ``verify-full`` (or ``verify-ca``) prevents that.
    """
    fake = impostor(certs.untrusted)
    px = proxy()
    conn = session_then_redirect(px, pg_server, libpq, fake, "require")
    try:
        pid = conn.backend_pid
        call_cancel(mode, conn, timeout=10)
    finally:
        conn.finish()
    (seen,) = fake.connections
    assert seen.done.wait(5)
    assert plaintext_cancels(seen.request)[0][1] == pid
    (cancel,) = cancel_connections(px)
    assert_encrypted(cancel.client_bytes, pid, direct=False)
