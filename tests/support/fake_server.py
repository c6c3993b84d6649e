"""``FakePgServer``: a loopback server that receives cancel requests, with faults.

It speaks just enough of the protocol to receive a cancel request (plain or TLS,
recorded decrypted), and can hold at a stage or reset during the handshake.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.proxy import _CHUNK

from .wire import SSL_REQUEST

BEHAVIOURS = ("close", "hold_ssl_response", "hold_handshake", "hold_eof", "reset_handshake")


@dataclass
class FakeConnection:
    """What one connection to a ``FakePgServer`` did."""

    first: bytes = b""
    """The first 8 bytes in clear (SSLRequest, or a plaintext request's header)."""
    direct_tls: bool = False
    """The client started TLS at once (``sslnegotiation=direct``)."""
    raw_after_s: bytes = b""
    """Raw bytes received after answering ``S`` (hold/reset handshake behaviours)."""
    tls_error: str | None = None
    """Why the TLS handshake failed (e.g. the client refused the certificate)."""
    alpn: str | None = None
    request: bytes = b""
    """The request received (decrypted, for TLS): a CancelRequest, normally."""
    done: threading.Event = field(default_factory=threading.Event)


class FakePgServer:
    """A loopback server that receives cancel requests, for wire-level checks.

    It answers ``S`` to an SSLRequest (or accepts direct TLS with ALPN
    ``postgresql``), presents ``cert``, reads the request, then closes (like
    the postmaster). ``behaviour`` injects a fault: ``hold_ssl_response`` never
    answers the SSLRequest, ``hold_handshake`` answers ``S`` then never
    continues the handshake, ``hold_eof`` reads the request but never closes,
    ``reset_handshake`` answers ``S`` then resets the connection (RST) when
    the ClientHello arrives.
    """

    host = "127.0.0.1"

    def __init__(self, cert: Path, key: Path, behaviour: str = "close") -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(behaviour)
        self.behaviour = behaviour
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.context.set_alpn_protocols(["postgresql"])
        self.connections: list[FakeConnection] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((self.host, 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="fake-pg")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = FakeConnection()
            with self._lock:
                self.connections.append(record)
                self._sockets.append(sock)
            self._spawn(self._serve, sock, record)

    def _hold(self) -> None:
        self._stop.wait(60)

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def _serve(self, sock: socket.socket, record: FakeConnection) -> None:
        try:
            sock.settimeout(20)
            self._serve_one(sock, record)
        except (OSError, ssl.SSLError, ValueError) as ex:
            if record.tls_error is None and not record.request:
                record.tls_error = f"{type(ex).__name__}: {ex}"
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            record.done.set()

    def _serve_one(self, sock: socket.socket, record: FakeConnection) -> None:
        head = sock.recv(1, socket.MSG_PEEK)
        if head == b"\x16":
            record.direct_tls = True
        else:
            record.first = self._recv_exact(sock, 8)
            if record.first != SSL_REQUEST:
                # A plaintext request: read and record it whole.
                if len(record.first) == 8:
                    (length,) = struct.unpack_from(">I", record.first)
                    rest = self._recv_exact(sock, max(0, min(length, 1024) - 8))
                    record.request = record.first + rest
                return
            if self.behaviour == "hold_ssl_response":
                self._hold()
                return
            sock.sendall(b"S")
            if self.behaviour in ("hold_handshake", "reset_handshake"):
                record.raw_after_s = sock.recv(_CHUNK)
                if self.behaviour == "reset_handshake":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                self._hold()
                return
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as ex:
            record.tls_error = f"{type(ex).__name__}: {ex}"
            return
        with self._lock:
            self._sockets.append(tls)
        record.alpn = tls.selected_alpn_protocol()
        header = self._recv_exact(tls, 8)
        rest = b""
        if len(header) == 8:
            (length,) = struct.unpack_from(">I", header)
            rest = self._recv_exact(tls, max(0, min(length, 1024) - 8))
        record.request = header + rest
        if self.behaviour == "hold_eof":
            self._hold()
        with contextlib.suppress(OSError, ssl.SSLError, ValueError):
            tls.settimeout(2)
            tls.unwrap()
        tls.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> FakePgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
