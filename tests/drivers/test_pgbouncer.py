"""Cancelling through PgBouncer, with TLS between the client and PgBouncer.

The test starts its own PgBouncer (Debian's ``pgbouncer`` package; see
``tools/install_test_services.sh``) on a free loopback port, as ``nobody``
when run as root, with a certificate from a throwaway CA and
``client_tls_sslmode = require``; PgBouncer talks to the session's server in
plain TCP. ``default_pool_size = 1``, so every client shares one server
connection.

* A running query is cancelled through PgBouncer in session and transaction
  pooling, sync / asyncio / trio, with ``verify-full``; the recorded cancel
  connection (a proxy in front of PgBouncer) starts with an SSLRequest and
  never shows a CancelRequest in clear.
* Transaction pooling: a late cancel (sent after the client got its result)
  never cancels the next query of another client, which runs on the same
  server connection; repeated many times.
* Protocol 3.2 (``max_protocol_version=3.2``, 32-byte cancel keys): PgBouncer
  1.18 refuses the connection itself (see the test's docstring and
  docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from testing import client, make_ca, make_conninfo, make_server_cert
from testing.client import ExecStatus
from tests.support.modes import LOOP_MODES, call_cancel
from tests.support.proxy import TcpProxy
from tests.support.queries import QUERY_CANCELED, drain, run, wait_until_active
from tests.support.wire import SSL_REQUEST, TLS_HANDSHAKE_RECORD, describe_bytes, plaintext_cancels

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
LATE_CANCEL_ROUNDS = int(os.environ.get("PSYCANCEL_PGBOUNCER_ROUNDS", "40"))

pytestmark = pytest.mark.skipif(
    not os.path.exists(PGBOUNCER),
    reason="pgbouncer is not installed (run tools/install_test_services.sh)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgBouncer:
    """A PgBouncer in a temporary directory, in front of ``server``."""

    host = "127.0.0.1"

    def __init__(self, server: Any, pool_mode: str) -> None:
        self.server = server
        self.pool_mode = pool_mode
        self.dir = Path(tempfile.mkdtemp(prefix="psycancel-pgbouncer-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        ssl_dir = self.dir / "ssl"
        ca, ca_key = make_ca(ssl_dir)
        cert, key = make_server_cert(ssl_dir, ca, ca_key)
        self.ca_file = ca
        ca.chmod(0o644)
        self.log = self.dir / "pgbouncer.log"
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        settings = {
            "listen_addr": self.host,
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": self.dir / "userlist.txt",
            "pool_mode": pool_mode,
            "default_pool_size": 1,
            "max_client_conn": 100,
            "client_tls_sslmode": "require",
            "client_tls_cert_file": cert,
            "client_tls_key_file": key,
            "server_tls_sslmode": "disable",
            "logfile": self.log,
            "pidfile": self.dir / "pgbouncer.pid",
            "admin_users": "postgres",
            "ignore_startup_parameters": "extra_float_digits,options",
        }
        lines = [
            "[databases]",
            f"postgres = host={server.host} port={server.port} dbname=postgres user=postgres",
            "[pgbouncer]",
            *(f"{k} = {os.fspath(v) if isinstance(v, Path) else v}" for k, v in settings.items()),
        ]
        self.ini = self.dir / "pgbouncer.ini"
        self.ini.write_text("\n".join(lines) + "\n")
        self.run_as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(os.environ.get("PSYCANCEL_PG_USER") or "nobody")
            self.run_as = (entry.pw_uid, entry.pw_gid)
            for path in [self.dir, ssl_dir, *ssl_dir.iterdir(), *self.dir.iterdir()]:
                os.chown(path, *self.run_as)

    def start(self) -> PgBouncer:
        kwargs: dict[str, Any] = {}
        if self.run_as is not None:
            kwargs.update(user=self.run_as[0], group=self.run_as[1], extra_groups=[])
        self.proc = subprocess.Popen(
            [PGBOUNCER, str(self.ini)],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            **kwargs,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited:\n{self.log_text()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, port: int | None = None, **params: Any) -> str:
        """verify-full towards PgBouncer (or a proxy in front of it, at ``port``)."""
        conn: dict[str, Any] = {
            "host": "localhost",
            "hostaddr": self.host,
            "port": port or self.port,
            "user": "postgres",
            "dbname": "postgres",
            "sslmode": "verify-full",
            "sslrootcert": self.ca_file,
        }
        conn.update(params)
        return make_conninfo(conn)


@pytest.fixture(scope="module", params=["session", "transaction"])
def bouncer(request: pytest.FixtureRequest, pg_server: Any) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(pg_server, request.param)
    try:
        yield bouncer.start()
    finally:
        bouncer.stop()


@pytest.fixture
def transaction_bouncer(pg_server: Any) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(pg_server, "transaction")
    try:
        yield bouncer.start()
    finally:
        bouncer.stop()


@pytest.mark.parametrize("mode", LOOP_MODES)
def test_cancel_through_pgbouncer(
    mode: str, bouncer: PgBouncer, pg_server: Any, libpq: Libpq, created: list[Any]
) -> None:
    with TcpProxy(bouncer.host, bouncer.port) as px:
        conn = client.connect(bouncer.dsn(port=px.port), libpq=libpq)
        monitor = client.connect(pg_server.dsn("disable"), libpq=libpq)
        try:
            assert conn.ssl_in_use
            tag = f"cancel_{mode}_{bouncer.pool_mode}_{time.monotonic_ns()}"
            conn.send_query(f"select pg_sleep(30) /* {tag} */")
            wait_until_active(monitor, tag=tag)
            call_cancel(mode, conn, timeout=10)
            res = drain(conn)
            assert res.sqlstate == QUERY_CANCELED, res
            assert run(conn, "select 1").rows == (("1",),)
        finally:
            conn.finish()
            monitor.finish()
        _session, cancel, *more = px.connections
        assert not more
        sent = cancel.client_bytes
        assert sent[:8] == SSL_REQUEST and sent[8:10] == TLS_HANDSHAKE_RECORD, describe_bytes(sent)
        assert not plaintext_cancels(sent)
    assert len(created) == 1 and created[0].closed


@pytest.mark.long(6)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_late_cancel_never_hits_another_client(
    mode: str, transaction_bouncer: PgBouncer, pg_server: Any, libpq: Libpq
) -> None:
    """Transaction pooling, one server connection shared by clients A and B.

    A's query has ended (A has its result), B's query now runs on the same
    server connection, and A's cancel arrives: PgBouncer must drop it (A is
    linked to no server connection), never forward it to B's query.
    """
    a = client.connect(transaction_bouncer.dsn(), libpq=libpq)
    b = client.connect(transaction_bouncer.dsn(), libpq=libpq)
    monitor = client.connect(pg_server.dsn("disable"), libpq=libpq)
    hit = 0
    try:
        # One server connection for both clients (the premise of the test).
        assert run(a, "select pg_backend_pid()").rows == run(b, "select pg_backend_pid()").rows
        for i in range(LATE_CANCEL_ROUNDS):
            assert run(a, f"select {i}").rows == ((str(i),),)
            tag = f"late_{mode}_{i}_{time.monotonic_ns()}"
            b.send_query(f"select pg_sleep(0.15), 'b' /* {tag} */")
            if i % 2:  # half the rounds: B's query is surely running on the server
                wait_until_active(monitor, tag=tag)
            call_cancel(mode, a, timeout=10)
            res = drain(b)
            if res.sqlstate == QUERY_CANCELED:
                hit += 1
            else:
                assert res.status == ExecStatus.TUPLES_OK, res
    finally:
        for conn in (a, b, monitor):
            conn.finish()
    assert hit == 0, f"{hit}/{LATE_CANCEL_ROUNDS} late cancels hit the other client's query"
    # The control: B's own cancel does reach B's query on that connection.
    b = client.connect(transaction_bouncer.dsn(), libpq=libpq)
    monitor = client.connect(pg_server.dsn("disable"), libpq=libpq)
    try:
        tag = f"control_{mode}_{time.monotonic_ns()}"
        b.send_query(f"select pg_sleep(30) /* {tag} */")
        wait_until_active(monitor, tag=tag)
        call_cancel(mode, b, timeout=10)
        assert drain(b).sqlstate == QUERY_CANCELED
    finally:
        b.finish()
        monitor.finish()


def pgbouncer_version() -> str:
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def test_protocol_3_2_through_pgbouncer(bouncer: PgBouncer, pg_server: Any, libpq: Libpq) -> None:
    """PgBouncer and ``max_protocol_version=3.2`` (32-byte cancel keys).

    Measured with PgBouncer 1.18 (Debian 12): it rejects the 3.2
    StartupMessage outright (``FATAL: bad packet header``) instead of
    answering NegotiateProtocolVersion, and libpq does not retry with 3.0, so
    the *connection* fails; there is never a session whose cancel could carry
    a long key. A PgBouncer that accepts the connection must also let its
    cancel through: that case is checked if it happens.
    """
    if bouncer.pool_mode != "session":
        pytest.skip("[not a missing dependency] the same in both pooling modes")
    dsn = bouncer.dsn(max_protocol_version="3.2")
    try:
        conn = client.connect(dsn, libpq=libpq)
    except psycancel.OperationalError as ex:
        assert "bad packet header" in str(ex), ex
        print(f"{pgbouncer_version()}: protocol 3.2 refused at startup: {ex}")
        # The same client with the default (3.0) connects and cancels fine.
        conn = client.connect(bouncer.dsn(), libpq=libpq)
        conn.finish()
        return
    monitor = client.connect(pg_server.dsn("disable"), libpq=libpq)
    try:
        tag = f"proto32_{time.monotonic_ns()}"
        conn.send_query(f"select pg_sleep(30) /* {tag} */")
        wait_until_active(monitor, tag=tag)
        psycancel.cancel(conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    finally:
        conn.finish()
        monitor.finish()
