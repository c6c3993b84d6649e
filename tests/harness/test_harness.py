"""The test harness itself: the throwaway server, its DSNs, and the TCP proxy."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from testing import (
    ThrowawayServer,
    cached_postgres_prefix,
    make_ca,
    make_conninfo,
    parse_conninfo,
    quote_conninfo_value,
)
from testing import server as _server
from tests.support.proxy import TcpProxy

if TYPE_CHECKING:
    from tests.conftest import ExternalServer

    Server = ThrowawayServer | ExternalServer

SSL_QUERY = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
SSL_REQUEST = struct.pack("!ii", 8, 80877103)

ENV_TEST_DSN = "PSYCANCEL_TEST_DSN"
MakeProxy = Callable[[], TcpProxy]

throwaway_only = pytest.mark.skipif(
    bool(os.environ.get(ENV_TEST_DSN)), reason="needs the throwaway server"
)


@pytest.fixture(scope="session")
def psql_path(pg_server: Server) -> Path:
    """The psql of the server's installation (or any psql, for an external server)."""
    prefix = pg_server.prefix or cached_postgres_prefix()
    if prefix is not None and (prefix / "bin" / "psql").is_file():
        return prefix / "bin" / "psql"
    found = shutil.which("psql")
    if found is None:
        pytest.skip("no psql")
    return Path(found)


@pytest.fixture
def psql(psql_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``psql -X <dsn> -Atc <query>`` without any PG* variable of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}

    def run(dsn: str, query: str = "select 1") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(psql_path), "-X", dsn, "-Atc", query],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


Psql = Callable[..., "subprocess.CompletedProcess[str]"]


# --- the raw protocol, for a session held open across a mode switch ---------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _read_until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """Protocol messages up to and including ReadyForQuery."""
    messages = []
    while True:
        kind = _recv_exact(sock, 1)
        (length,) = struct.unpack("!i", _recv_exact(sock, 4))
        messages.append((kind, _recv_exact(sock, length - 4)))
        if kind == b"E":
            raise AssertionError(f"server error: {messages[-1][1]!r}")
        if kind == b"Z":
            return messages


def _raw_session(port: int) -> socket.socket:
    """A plain protocol-3.0 session as postgres (trust auth), ready for queries."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    _read_until_ready(sock)
    return sock


def _raw_query(sock: socket.socket, sql: str) -> list[bytes]:
    """Run a simple query; return the DataRow payloads."""
    payload = sql.encode() + b"\0"
    sock.sendall(b"Q" + struct.pack("!i", len(payload) + 4) + payload)
    return [body for kind, body in _read_until_ready(sock) if kind == b"D"]


def _proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tcpproxy-")]


def _process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# --- the server ---------------------------------------------------------------------------


def test_ssl_in_use(dsn: str, psql: Psql) -> None:
    expected = "f" if parse_conninfo(dsn)["sslmode"] == "disable" else "t"
    proc = psql(dsn, SSL_QUERY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_verify_full_rejects_another_ca(pg_server: Server, psql: Psql, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path, common_name="some other CA")
    proc = psql(pg_server.dsn("verify-full", sslrootcert=other_ca), SSL_QUERY)
    assert proc.returncode != 0
    assert "certificate verify failed" in proc.stderr


@throwaway_only
def test_verify_full_checks_the_host_name(pg_server: Server, psql: Psql) -> None:
    proc = psql(pg_server.dsn("verify-full", host="not-localhost.invalid"), SSL_QUERY)
    assert proc.returncode != 0
    assert "does not match host name" in proc.stderr


@throwaway_only
def test_server_layout(pg_server: Server) -> None:
    assert isinstance(pg_server, ThrowawayServer)
    assert pg_server.host == "127.0.0.1"
    assert pg_server.data_dir.is_dir() and pg_server.log_file.is_file()
    assert pg_server.libpq_path.exists()
    assert pg_server.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert pg_server.tmp_dir.name.startswith("psycancel-pg-")
    if os.geteuid() == 0:
        assert (pg_server.data_dir / "PG_VERSION").stat().st_uid != 0
    assert pg_server.dsn_verify == (
        f"host=localhost hostaddr=127.0.0.1 port={pg_server.port} user=postgres "
        f"dbname=postgres sslmode=verify-full sslrootcert={pg_server.ca_file}"
    )


@throwaway_only
def test_restart_keeps_port_and_data(pg_server: Server, psql: Psql) -> None:
    assert isinstance(pg_server, ThrowawayServer)
    port = pg_server.port
    assert psql(pg_server.dsn_plain, "create table if not exists survivor()").returncode == 0
    pg_server.restart()
    assert pg_server.port == port
    proc = psql(pg_server.dsn_verify, "select count(*) from survivor")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


@throwaway_only
def test_stop_removes_everything(pg_server: Server) -> None:
    assert isinstance(pg_server, ThrowawayServer)
    server = ThrowawayServer(pg_server.prefix)
    server.stop()  # before start: a no-op
    with server:
        tmp = server.tmp_dir
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        assert _process_alive(pid)
        assert server.port != pg_server.port
    assert not tmp.exists()
    deadline = time.monotonic() + 10
    while _process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _process_alive(pid)
    server.stop()  # idempotent


@throwaway_only
def test_taken_port_is_retried(pg_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(pg_server, ThrowawayServer)
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(prefix: str, dir: str | None = None) -> str:
        made.append(Path(real_mkdtemp(prefix=prefix, dir=dir)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy: int = taken.getsockname()[1]
        real_free_port = _server._free_port
        ports = iter([busy])
        monkeypatch.setattr(_server, "_free_port", lambda: next(ports, 0) or real_free_port())
        with ThrowawayServer(pg_server.prefix) as server:
            assert server.port != busy
        # Always the taken port: three attempts, then an error with the log's tail.
        monkeypatch.setattr(_server, "_free_port", lambda: busy)
        server = ThrowawayServer(pg_server.prefix)
        with pytest.raises(RuntimeError, match="Address already in use"):
            server.start()
        server.stop()  # safe after a failed start
    assert len(made) == 2 and not any(p.exists() for p in made)


def test_conninfo_quoting() -> None:
    assert quote_conninfo_value("plain") == "plain"
    assert quote_conninfo_value(5432) == "5432"
    assert quote_conninfo_value("") == "''"
    assert quote_conninfo_value("a b") == "'a b'"
    assert quote_conninfo_value("it's") == r"'it\'s'"
    assert quote_conninfo_value("back\\slash") == r"'back\\slash'"
    params = {"password": "a b'c\\d", "dbname": "x=y", "host": "h", "options": ""}
    assert parse_conninfo(make_conninfo(params)) == params
    assert parse_conninfo("postgresql://u:p%40ss@[::1]:6543/db?sslmode=require") == {
        "user": "u",
        "password": "p@ss",
        "host": "::1",
        "port": "6543",
        "dbname": "db",
        "sslmode": "require",
    }


# --- the proxy ------------------------------------------------------------------------------


def test_proxy_forwards_and_records(pg_server: Server, proxy: MakeProxy, psql: Psql) -> None:
    px = proxy()
    proc = psql(px.dsn(pg_server), SSL_QUERY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "f"
    assert px.accepted == 1
    assert b"user\x00postgres\x00" in px.connections[0].client_bytes
    assert px.connections[0].server_bytes  # the server answered through the proxy


def test_proxy_forwards_verify_full(pg_server: Server, proxy: MakeProxy, psql: Psql) -> None:
    px = proxy()
    dsn = px.dsn(pg_server, sslmode="verify-full")
    if pg_server.ca_file is None:
        pytest.skip("no CA file for the external server")
    params = parse_conninfo(dsn)
    assert params["hostaddr"] == "127.0.0.1" and params["port"] == str(px.port)
    proc = psql(dsn, SSL_QUERY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "t"
    assert px.connections[0].client_bytes.startswith(SSL_REQUEST)


def test_proxy_delay(pg_server: Server, proxy: MakeProxy, psql: Psql) -> None:
    px = proxy()
    px.delay = 0.2
    t0 = time.monotonic()
    proc = psql(px.dsn(pg_server), "select 42")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
    # startup -> auth/ready, query -> result: at least two delayed round trips
    assert elapsed >= 0.4


def test_proxy_blackhole(pg_server: Server, proxy: MakeProxy, psql: Psql) -> None:
    px = proxy()
    px.blackhole()
    t0 = time.monotonic()
    proc = psql(px.dsn(pg_server, connect_timeout=2))
    assert proc.returncode != 0
    assert time.monotonic() - t0 >= 1.5
    assert px.accepted == 1
    conn = px.connections[0]
    assert conn.mode == "blackhole"
    assert b"user\x00postgres\x00" in conn.client_bytes
    assert conn.server_bytes == b""


@throwaway_only
def test_blackhole_keeps_existing_connections(pg_server: Server, proxy: MakeProxy) -> None:
    px = proxy()
    sock = _raw_session(px.port)
    try:
        px.blackhole()
        assert px.mode == "blackhole"
        assert _raw_query(sock, "select 7") == [b"\x00\x01\x00\x00\x00\x017"]
        px.forward()
        assert _raw_query(sock, "select 8") == [b"\x00\x01\x00\x00\x00\x018"]
    finally:
        sock.close()


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_proxy_reset(pg_server: Server, proxy: MakeProxy, psql: Psql, sslmode: str) -> None:
    px = proxy()
    px.reset()
    proc = psql(px.dsn(pg_server, sslmode=sslmode, connect_timeout=10))
    assert proc.returncode != 0
    assert px.accepted >= 1
    first = px.connections[0].client_bytes
    if sslmode == "require":
        assert first == SSL_REQUEST
    else:
        assert b"user\x00postgres\x00" in first
    assert px.connections[0].finished.wait(5)


def test_proxy_closed_refuses(pg_server: Server, proxy: MakeProxy, psql: Psql) -> None:
    px = proxy()
    sock = _raw_session(px.port) if not os.environ.get(ENV_TEST_DSN) else None
    port = px.port
    px.close()
    if sock is not None:  # the forwarded session was closed too
        sock.settimeout(10)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        finally:
            sock.close()
    assert px.active_connections == 0
    assert _proxy_threads() == []
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    proc = psql(px.dsn(pg_server, connect_timeout=10))
    assert proc.returncode != 0
    assert "refused" in proc.stderr
    assert time.monotonic() - t0 < 5
    px.close()  # idempotent


def test_proxy_context_manager_joins_threads(pg_server: Server, psql: Psql) -> None:
    with TcpProxy(pg_server.host, pg_server.port) as px:
        px.delay = 0.05
        assert psql(px.dsn(pg_server, sslmode="require")).returncode == 0
        px.blackhole()
        held = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        assert px.wait_accepted(2)
    try:
        assert held.recv(1) == b""  # close() also closes blackholed connections
    finally:
        held.close()
    assert _proxy_threads() == []
