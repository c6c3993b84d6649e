"""``FaultProxy``: the recording proxy plus a reset in the middle of the TLS handshake.

``tests.support.proxy.TcpProxy`` delays, black-holes and resets; this adds a
mode that relays the SSLRequest and the server's ``S``, then resets the client
when its ClientHello arrives.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator

from tests.support.proxy import _CHUNK, ProxyConnection, TcpProxy


class _FaultConnection(ProxyConnection):
    def start(self) -> None:
        if self.mode == "reset_tls":  # type: ignore[comparison-overlap]
            self._spawn(self._run_reset_tls, "main")
        else:
            super().start()

    def _run_reset_tls(self) -> None:
        # Relay the SSLRequest and the server's one-byte answer, then reset the
        # client (RST) when its ClientHello arrives.
        target = (self._proxy.target_host, self._proxy.target_port)
        server = socket.create_connection(target, timeout=10)
        with self._lock:
            if self._closed or self._stopping.is_set():
                server.close()
                return
            self._server = server
        first = self._client.recv(_CHUNK)
        if not first:
            return
        self._record(self._client_chunks, first)
        server.sendall(first)
        answer = server.recv(1)
        self._record(self._server_chunks, answer)
        self._client.sendall(answer)
        if answer != b"S":
            return
        hello = self._client.recv(_CHUNK)
        self._record(self._client_chunks, hello)
        with self._lock:
            if not self._closed:
                self._client.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )


class FaultProxy(TcpProxy):
    """``TcpProxy`` with one more mode: :meth:`reset_in_tls_handshake`."""

    def reset_in_tls_handshake(self) -> None:
        """New connections: relay SSLRequest and ``S``, then RST on the ClientHello."""
        self._mode = "reset_tls"  # type: ignore[assignment]

    def _accept_one(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        with self._lock:
            if self._closing.is_set():
                client.close()
                return
            try:
                client.setblocking(True)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = _FaultConnection(self, client, self._mode, self.delay)
            except OSError:
                client.close()
                return
            self._connections.append(conn)
        conn.start()


@contextlib.contextmanager
def fault_proxy(target_host: str, target_port: int) -> Iterator[FaultProxy]:
    """A started :class:`FaultProxy`, closed on exit."""
    px = FaultProxy(target_host, target_port)
    px.start()
    try:
        yield px
    finally:
        px.close()
