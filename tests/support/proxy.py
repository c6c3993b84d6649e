"""A small fault-injecting TCP proxy on loopback, for the test suite.

``TcpProxy`` listens on ``127.0.0.1`` and forwards every accepted connection to
a target. Its mode (``forward``, ``blackhole``, ``reset``) and ``delay`` can be
switched at run time; a switch applies to the connections accepted after it,
so an already established session keeps working while its cancel request
(a new connection) meets the fault. :meth:`TcpProxy.freeze` is the exception:
a black hole for every connection, established ones included (nothing is
forwarded either way any more, nothing is closed), as when a network drops.
``close()`` stops listening and closes every connection, so that new
connections are refused (``ECONNREFUSED``).
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal, Protocol

from testing import ConninfoValue, make_conninfo, parse_conninfo

__all__ = ["Mode", "ProxyConnection", "ServerLike", "TcpProxy"]

Mode = Literal["forward", "blackhole", "reset"]

_CHUNK = 65536
_JOIN_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 10.0


class ServerLike(Protocol):
    """What the proxy (and the tests) need from a server fixture."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    def dsn(self, sslmode: str = "disable", **params: ConninfoValue) -> str: ...


class ProxyConnection:
    """One accepted client connection, and what the client sent through it."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, mode: Mode, delay: float) -> None:
        self.mode: Mode = mode
        """The proxy's mode when this connection was accepted."""
        self.delay = delay
        """Seconds added to each chunk, in each direction (forward mode)."""
        self.peer: tuple[str, int] = client.getpeername()
        self._proxy = proxy
        self._client = client
        self._server: socket.socket | None = None
        self._lock = threading.Lock()
        self._client_chunks: list[bytes] = []
        self._server_chunks: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._live_threads = 0
        self._stopping = threading.Event()
        self._closed = False
        self.finished = threading.Event()
        """Set when every socket of this connection is closed."""
        self.forwarding = threading.Event()
        """Set once both directions are being forwarded (forward mode)."""

    # -- recording

    @property
    def client_bytes(self) -> bytes:
        """Everything the client sent (received by the proxy), in order."""
        with self._lock:
            return b"".join(self._client_chunks)

    @property
    def server_bytes(self) -> bytes:
        """Everything the server sent back towards the client (forward mode)."""
        with self._lock:
            return b"".join(self._server_chunks)

    @property
    def active(self) -> bool:
        """Whether the connection still has an open socket."""
        return not self.finished.is_set()

    # -- lifecycle

    def start(self) -> None:
        handler = {
            "forward": self._run_forward,
            "blackhole": self._run_blackhole,
            "reset": self._run_reset,
        }[self.mode]
        self._spawn(handler, "main")

    def _spawn(self, target: Callable[[], None], role: str) -> None:
        def body() -> None:
            try:
                target()
            except OSError:
                self._abort()
            finally:
                self._thread_done()

        thread = threading.Thread(
            target=body, name=f"tcpproxy-{self._proxy.port}-{self.peer[1]}-{role}", daemon=True
        )
        with self._lock:
            self._threads.append(thread)
            self._live_threads += 1
        thread.start()

    def _thread_done(self) -> None:
        with self._lock:
            self._live_threads -= 1
            last = self._live_threads == 0
        if last:
            self._close_sockets()

    def _sockets(self) -> list[socket.socket]:
        return [s for s in (self._client, self._server) if s is not None]

    def _abort(self) -> None:
        """Wake every thread of this connection: shut both sockets down."""
        self._stopping.set()
        with self._lock:
            if self._closed:
                return
            for sock in self._sockets():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _close_sockets(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for sock in self._sockets():
                with contextlib.suppress(OSError):
                    sock.close()
        self.finished.set()

    def close(self, timeout: float = _JOIN_TIMEOUT) -> None:
        """Close both sockets and join this connection's threads."""
        self._abort()
        deadline = time.monotonic() + timeout
        joined: set[threading.Thread] = {threading.current_thread()}
        while True:  # a thread may spawn more (forward mode) while we join
            with self._lock:
                threads = [t for t in self._threads if t not in joined]
            if not threads:
                break
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
                joined.add(thread)
        self._close_sockets()

    # -- modes

    def _record(self, chunks: list[bytes], data: bytes) -> None:
        with self._lock:
            chunks.append(data)

    def _run_blackhole(self) -> None:
        # Swallow (and record) what the client sends; never answer, never close
        # first: the peer waits until it gives up or the proxy is closed.
        while not self._stopping.is_set():
            data = self._client.recv(_CHUNK)
            if not data:
                return
            self._record(self._client_chunks, data)

    def _run_reset(self) -> None:
        data = self._client.recv(_CHUNK)
        if data:
            self._record(self._client_chunks, data)
            with self._lock:
                if not self._closed:
                    # SO_LINGER on with a zero timeout: close() sends an RST.
                    self._client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )

    def _run_forward(self) -> None:
        target = (self._proxy.target_host, self._proxy.target_port)
        server = socket.create_connection(target, timeout=_CONNECT_TIMEOUT)
        server.settimeout(None)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed or self._stopping.is_set():
                server.close()
                return
            self._server = server
        self._pipe(self._client, server, self._client_chunks, "up")
        self._pipe(server, self._client, self._server_chunks, "down")
        self.forwarding.set()

    def _pipe(self, src: socket.socket, dst: socket.socket, chunks: list[bytes], name: str) -> None:
        """Forward src -> dst: a reader thread and a writer thread with a queue."""
        pending: queue.Queue[tuple[float, bytes | None]] = queue.Queue()

        def reader() -> None:
            try:
                while True:
                    data = src.recv(_CHUNK)
                    if data:
                        self._record(chunks, data)
                    pending.put((time.monotonic() + self.delay, data or None))
                    if not data:
                        return
            except OSError:
                pending.put((0.0, None))
                raise

        def writer() -> None:
            while True:
                try:
                    due, data = pending.get(timeout=0.1)
                except queue.Empty:
                    if self._stopping.is_set():
                        return
                    continue
                wait = due - time.monotonic()
                if wait > 0 and self._stopping.wait(wait):
                    return
                while self._proxy.frozen.is_set():  # a black hole: hold everything
                    if self._stopping.wait(0.1):
                        return
                if data is None:
                    # EOF from src: pass the half-close on.
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)

        self._spawn(reader, f"{name}-read")
        self._spawn(writer, f"{name}-write")


class TcpProxy:
    """A TCP proxy on ``127.0.0.1`` towards ``target_host:target_port``.

    Modes (applying to connections accepted afterwards): :meth:`forward`
    (default), :meth:`blackhole`, :meth:`reset`; ``delay`` adds seconds to
    every chunk in each direction of forwarded connections.
    """

    host: str = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.delay: float = 0.0
        """Seconds added to every chunk of connections accepted from now on."""
        self._mode: Mode = "forward"
        self._lock = threading.Lock()
        self._connections: list[ProxyConnection] = []
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._port: int | None = None
        self.frozen = threading.Event()
        """Set by :meth:`freeze`: no connection forwards anything any more."""

    # -- modes

    @property
    def mode(self) -> Mode:
        """The mode new connections get."""
        return self._mode

    def forward(self, delay: float = 0.0) -> None:
        """Forward new connections normally (with *delay* seconds per chunk)."""
        self._mode = "forward"
        self.delay = delay

    def blackhole(self) -> None:
        """Accept new connections but forward nothing and never answer."""
        self._mode = "blackhole"

    def reset(self) -> None:
        """Accept new connections and reset them (RST) on their first bytes."""
        self._mode = "reset"

    def freeze(self) -> None:
        """Black-hole everything from now on, established connections included.

        Both directions stop: bytes are still read (so senders do not block)
        but never delivered; nothing is closed or reset. New connections are
        accepted and black-holed.
        """
        self._mode = "blackhole"
        self.frozen.set()

    def thaw(self) -> None:
        """Undo :meth:`freeze`: forward again (held bytes are delivered, new
        connections are forwarded)."""
        self.frozen.clear()
        self._mode = "forward"

    # -- information

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._port is None:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def connections(self) -> list[ProxyConnection]:
        """Every connection accepted so far, in order (a copy)."""
        with self._lock:
            return list(self._connections)

    @property
    def accepted(self) -> int:
        """How many connections were accepted."""
        with self._lock:
            return len(self._connections)

    @property
    def active_connections(self) -> int:
        """How many accepted connections still have an open socket."""
        return sum(1 for c in self.connections if c.active)

    def wait_accepted(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least *count* connections were accepted; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.accepted < count:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def dsn(self, server: ServerLike, sslmode: str = "disable", **params: ConninfoValue) -> str:
        """``server.dsn(sslmode, **params)``, rewritten to go through the proxy.

        The port becomes the proxy's and ``hostaddr=127.0.0.1`` is set; ``host``
        is kept, so ``verify-full`` still checks the server's name (``localhost``).
        """
        conninfo: dict[str, ConninfoValue] = dict(parse_conninfo(server.dsn(sslmode, **params)))
        conninfo["hostaddr"] = self.host
        conninfo["port"] = self.port
        if "host" not in conninfo:
            conninfo["host"] = self.host
        return make_conninfo(conninfo)

    # -- lifecycle

    def start(self) -> TcpProxy:
        """Start listening (on a free port) and accepting; returns self."""
        if self._listener is not None:
            raise RuntimeError("the proxy was already started")
        if self._closing.is_set():
            raise RuntimeError("the proxy was closed")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((self.host, 0))
            listener.listen(128)
            listener.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"tcpproxy-{self._port}-accept", daemon=True
        )
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None and wake is not None
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while not self._closing.is_set():
                ready = [key.fileobj for key, _ in selector.select()]
                if wake in ready or self._closing.is_set():
                    return
                self._accept_one(listener)

    def _accept_one(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:  # nothing to accept after all, or the client is gone
            return
        with self._lock:
            if self._closing.is_set():
                client.close()
                return
            try:
                client.setblocking(True)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = ProxyConnection(self, client, self._mode, self.delay)
            except OSError:  # the client went away already
                client.close()
                return
            self._connections.append(conn)
        conn.start()

    def close(self) -> None:
        """Stop listening, close every connection, and join every thread."""
        with self._lock:
            self._closing.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        for conn in self.connections:
            conn._abort()
        for conn in self.connections:
            conn.close()

    def __enter__(self) -> TcpProxy:
        if self._listener is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy {self.host}:{self._port} -> {self.target_host}:{self.target_port} "
            f"mode={self._mode} delay={self.delay}>"
        )
