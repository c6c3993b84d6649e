"""Helpers of the reliability and security tests (wire, faults, threads, soak...).

* the PostgreSQL wire format of the cancel handshake (SSLRequest, CancelRequest,
  BackendKeyData), to check recorded bytes;
* spies on the public API: every ``PGcancelConn`` it creates, and every wait of
  the cancel machine with its *stage* (connect, ssl_response, tls_handshake,
  eof...), with a hook to act (e.g. cancel the task) at a given stage;
* ``call_cancel(mode, ...)``: the public API in sync, asyncio or trio mode,
  checking that nothing stays registered with the event loop;
* ``FakePgServer``: a loopback TLS server that speaks just enough of the
  protocol to receive a cancel request (and records it, decrypted), with
  faults (hold at a stage, reset during the handshake);
* ``FaultProxy``: ``tests.proxy.TcpProxy`` plus a mode that resets the client
  in the middle of the TLS handshake (after the server's ``S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import psycancel
from psycancel._engine import machine as _machine
from psycancel._engine import offload as _offload
from psycancel._engine import plan as _plan
from psycancel.pq.abc import PGcancelConn
from psycancel.pq.enums import ConnStatus

from .helpers import loop_fds
from .proxy import _CHUNK, ProxyConnection, TcpProxy

MODES = ["sync", "asyncio", "trio"]
"""How the public API is called: ``cancel``, ``cancel_async`` under asyncio / trio."""

# =====================================================================================
# The wire format
# =====================================================================================

SSL_REQUEST_CODE = 80877103
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST = struct.pack(">II", 8, SSL_REQUEST_CODE)
CANCEL_CODE = struct.pack(">I", CANCEL_REQUEST_CODE)
TLS_HANDSHAKE_RECORD = b"\x16\x03"
"""The first bytes of a TLS record of type handshake (a ClientHello)."""


def cancel_request(pid: int, key: bytes) -> bytes:
    """The plaintext CancelRequest packet for backend ``pid`` and ``key``."""
    return struct.pack(">III", 12 + len(key), CANCEL_REQUEST_CODE, pid) + key


def backend_key(server_bytes: bytes, pid: int) -> bytes:
    """The cancel key of backend ``pid`` in a *plaintext* session's server bytes.

    Parses the BackendKeyData message (``K``, length, pid, key) of the session's
    startup; the key is 4 bytes (protocol 3.0) or 32 (3.2, from PostgreSQL 18).
    """
    i = 0
    while i + 5 <= len(server_bytes):
        kind = server_bytes[i : i + 1]
        (length,) = struct.unpack_from(">I", server_bytes, i + 1)
        if kind == b"K" and length >= 8 and struct.unpack_from(">I", server_bytes, i + 5)[0] == pid:
            return server_bytes[i + 9 : i + 1 + length]
        if kind in (b"S", b"N") and i == 0 and length > 0x10000:
            i += 1  # a one-byte answer to an SSLRequest / GSSENCRequest
            continue
        i += 1 + length
    raise AssertionError(f"no BackendKeyData for pid {pid} in the session's bytes")


def plaintext_cancels(data: bytes) -> list[tuple[int, int, bytes]]:
    """Every plaintext CancelRequest header found in ``data``: (length, pid, key)."""
    found: list[tuple[int, int, bytes]] = []
    start = 0
    while True:
        i = data.find(CANCEL_CODE, start)
        if i < 0:
            return found
        if i >= 4:
            (length,) = struct.unpack_from(">I", data, i - 4)
            if 16 <= length <= 12 + 256 and i + 8 <= len(data):
                (pid,) = struct.unpack_from(">I", data, i + 4)
                found.append((length, pid, data[i + 8 : i - 4 + length]))
        start = i + 1


def describe_bytes(data: bytes, limit: int = 48) -> str:
    """A short hex rendering of ``data`` for assertion messages."""
    more = f"... ({len(data)} bytes)" if len(data) > limit else ""
    return data[:limit].hex(" ") + more


# =====================================================================================
# Spies on the API
# =====================================================================================


def spy_cancel_conns(monkeypatch: pytest.MonkeyPatch) -> list[PGcancelConn]:
    """Record every PGcancelConn the public API creates (sync, asyncio, AnyIO and
    ``cancel_after`` paths).

    The objects are kept alive by the list, so only the API can finish them.
    """
    made: list[PGcancelConn] = []
    original = _plan.new_cancel_conn

    def spy(pgconn: Any) -> PGcancelConn:
        cc = original(pgconn)
        made.append(cc)
        return cc

    # The one seam: every entry point makes its cancel objects through it.
    monkeypatch.setattr(_plan, "new_cancel_conn", spy)
    return made


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[PGcancelConn]:
    """Every PGcancelConn the API creates (see :func:`spy_cancel_conns`)."""
    return spy_cancel_conns(monkeypatch)


def stage_of(event: int, status: ConnStatus, ssl_waits_before: int) -> str:
    """Name the stage of the cancel handshake a wait belongs to.

    ``connect``: waiting for the non-blocking connect (write-ready);
    ``write``: about to send (SSLRequest or CancelRequest);
    ``ssl_response``: SSLRequest sent, waiting for the one-byte answer;
    ``tls_handshake``: inside the TLS handshake;
    ``eof``: the CancelRequest is sent, waiting for the server to close.
    """
    if status == ConnStatus.STARTED:
        return "connect"
    if status == ConnStatus.MADE:
        return "write"
    if status == ConnStatus.SSL_STARTUP:
        if ssl_waits_before == 0 and event == _machine.READ:
            return "ssl_response"
        return "tls_handshake"
    if status == ConnStatus.AWAITING_RESPONSE:
        return "eof"
    return status.name.lower()


@dataclass
class StageSpy:
    """Wraps the cancel machine used by the API; records each wait's stage.

    ``at(stage, action)`` runs ``action()`` (once) when the machine is about to
    wait at that stage, *before* the waiter waits: e.g. cancel the task there.
    """

    stages: list[str] = field(default_factory=list)
    _actions: dict[str, Callable[[], None]] = field(default_factory=dict)

    def at(self, stage: str, action: Callable[[], None]) -> None:
        self._actions[stage] = action

    def install(self, monkeypatch: pytest.MonkeyPatch) -> StageSpy:
        original = _machine.cancel_steps

        def spy(cc: PGcancelConn) -> _machine.CancelSteps:
            steps = original(cc)
            ssl_waits = 0
            try:
                for fd, event in steps:
                    status = cc.status
                    stage = stage_of(event, status, ssl_waits)
                    if status == ConnStatus.SSL_STARTUP:
                        ssl_waits += 1
                    self.stages.append(stage)
                    action = self._actions.pop(stage, None)
                    if action is not None:
                        action()
                    yield fd, event
            finally:
                steps.close()

        # The one seam: every Python runner starts the machine through it.
        monkeypatch.setattr(_machine, "cancel_steps", spy)
        self._install_engine_hook(monkeypatch)
        return self

    def _install_engine_hook(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The same observation in the compiled twin's offload engine (C, no machine).

        Remove it with :func:`remove_engine_stage_hook` (the ``stage_spy``
        fixture does), so that later tests run the engine without it.
        """
        engine = _compiled_engine()
        if engine is None:
            return
        ssl_waits: dict[int, int] = {}

        def hook(job_id: int, status: int, events: int) -> None:
            conn_status = ConnStatus(status)
            event = _machine.READ if events == select.POLLIN else _machine.WRITE
            stage = stage_of(event, conn_status, ssl_waits.get(job_id, 0))
            if conn_status == ConnStatus.SSL_STARTUP:
                ssl_waits[job_id] = ssl_waits.get(job_id, 0) + 1
            self.stages.append(stage)
            action = self._actions.pop(stage, None)
            if action is not None:
                action()

        engine.set_stage_hook(hook)


def _compiled_engine() -> Any:
    """The compiled twin's offload engine, or None without the compiled twin."""
    try:
        from psycancel_c import _pq as compiled
    except ImportError:
        return None
    from .twins import new_libpq_path

    native = compiled.Libpq.load(new_libpq_path()).native_driver
    return _offload.native_engine(native)


def remove_engine_stage_hook() -> None:
    """Undo :meth:`StageSpy.install`'s hook in the offload engine."""
    engine = _compiled_engine()
    if engine is not None:
        engine.set_stage_hook(None)


@pytest.fixture
def stage_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], StageSpy]]:
    """Make :class:`StageSpy` objects (installed); every hook is removed afterwards."""
    yield lambda: StageSpy().install(monkeypatch)
    remove_engine_stage_hook()


# =====================================================================================
# Calling the API in each mode
# =====================================================================================


def trio_fds() -> set[int]:
    """The fds with a reader or writer registered in the running Trio loop."""
    from trio._core._run import GLOBAL_RUN_CONTEXT

    runner = GLOBAL_RUN_CONTEXT.runner
    registered = getattr(runner.io_manager, "_registered", None)
    if registered is None:  # not the epoll manager: cannot tell
        return set()
    # Trio's own run_sync_soon task waits on its wakeup socket: not ours.
    own = set()
    with contextlib.suppress(AttributeError, OSError):
        own.add(runner.entry_queue.wakeup.wakeup_sock.fileno())
    return {
        fd
        for fd, waiters in list(registered.items())
        if fd not in own and (waiters.read_task or waiters.write_task)
    }


async def _asyncio_cancel(conn: Any, kwargs: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    before = loop_fds(loop)
    try:
        await psycancel.cancel_async(conn, **kwargs)
    finally:
        left = loop_fds(loop) - before
        assert not left, f"fds still registered with the asyncio loop: {left}"


async def _trio_cancel(conn: Any, kwargs: dict[str, Any]) -> None:
    before = trio_fds()
    try:
        await psycancel.cancel_async(conn, **kwargs)
    finally:
        left = trio_fds() - before
        assert not left, f"fds still registered with the trio loop: {left}"


def call_cancel(mode: str, conn: Any, **kwargs: Any) -> float:
    """Cancel ``conn`` with the public API in ``mode``; return the seconds it took.

    In the async modes, also asserts that no fd stays registered with the loop,
    whatever the outcome.
    """
    t0 = time.monotonic()
    if mode == "sync":
        psycancel.cancel(conn, **kwargs)
    elif mode == "asyncio":
        asyncio.run(_asyncio_cancel(conn, kwargs))
    elif mode == "trio":
        import trio

        trio.run(_trio_cancel, conn, kwargs)
    else:
        raise ValueError(mode)
    return time.monotonic() - t0


# =====================================================================================
# A fake server: receives cancel requests (TLS or not), with faults
# =====================================================================================

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


# =====================================================================================
# A proxy that can also reset in the middle of the TLS handshake
# =====================================================================================


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
