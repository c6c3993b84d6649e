"""Deployments in front of the test servers: PgBouncer over processes, HAProxy (TCP).

* :class:`PgBouncerFarm`: ``processes`` PgBouncer processes (>= 1.19, built by
  ``tools/build_pgbouncer.sh``) listening on one loopback port with
  ``so_reuseport`` (the kernel spreads new connections, cancel connections
  included, over them), peered (``peer_id`` and ``[peers]``: a cancel that
  lands on another process is forwarded to the one holding the session) or
  not; TLS from the client (a throwaway CA) and to the server
  (``server_tls_sslmode = require``).
* :class:`HAProxy`: Debian's ``haproxy`` in TCP mode in front of servers, with
  a ``balance`` algorithm (``roundrobin``, ``leastconn``, ``source``...); TLS
  passes through (the client's ``sslmode=require`` reaches the server).

Both run as the unprivileged test user when the tests run as root, in a
temporary directory, on loopback only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from testing import make_ca, make_conninfo, make_server_cert

__all__ = ["HAPROXY", "HAProxy", "PgBouncerFarm", "peering_pgbouncer"]

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def _cache_root() -> Path:
    if os.geteuid() == 0:
        return Path(os.environ.get("PSYCANCEL_CACHE_DIR") or "/var/cache/psycancel")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(os.environ.get("PSYCANCEL_CACHE_DIR") or Path(base) / "psycancel")


def peering_pgbouncer() -> str | None:
    """The PgBouncer built by ``tools/build_pgbouncer.sh`` (None: not built)."""
    path = _cache_root() / "pgbouncer" / "bin" / "pgbouncer"
    stamp = path.parent.parent / ".psycancel-complete"
    return str(path) if path.exists() and stamp.exists() else None


def _text(value: object) -> str:
    return os.fspath(value) if isinstance(value, Path) else str(value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    import pwd

    entry = pwd.getpwnam(os.environ.get("PSYCANCEL_PG_USER") or "nobody")
    return (entry.pw_uid, entry.pw_gid)


def _chown_tree(root: Path, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    for path in [root, *root.rglob("*")]:
        os.chown(path, *owner)


def _wait_port(host: str, port: int, procs: list[subprocess.Popen[bytes]], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {host}:{port}")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class PgBouncerFarm:
    """``processes`` PgBouncers on one port (``so_reuseport``), peered or not."""

    host = "127.0.0.1"

    def __init__(
        self, binary: str, server: Any, *, pool_mode: str, peered: bool, processes: int = 2
    ) -> None:
        self.binary = binary
        self.pool_mode = pool_mode
        self.peered = peered
        self.dir = Path(tempfile.mkdtemp(prefix="psycancel-pgbouncers-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.port = _free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        ca, ca_key = make_ca(self.dir / "ssl")
        cert, key = make_server_cert(self.dir / "ssl", ca, ca_key)
        self.ca_file = ca
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        ids = range(1, processes + 1)
        peers = [f"{i} = host={self.dir / f'p{i}'} port={self.port}" for i in ids]
        self.inis: list[Path] = []
        for i in ids:
            (self.dir / f"p{i}").mkdir()
            settings: dict[str, object] = {
                "listen_addr": self.host,
                "listen_port": self.port,
                "so_reuseport": 1,
                "unix_socket_dir": self.dir / f"p{i}",
                "auth_type": "trust",
                "auth_file": self.dir / "userlist.txt",
                "pool_mode": pool_mode,
                "default_pool_size": 4,
                "max_client_conn": 100,
                "client_tls_sslmode": "require",
                "client_tls_cert_file": cert,
                "client_tls_key_file": key,
                "server_tls_sslmode": "require",
                "logfile": self.dir / f"p{i}.log",
                "pidfile": self.dir / f"p{i}.pid",
                "admin_users": "postgres",
                "ignore_startup_parameters": "extra_float_digits,options",
            }
            if peered:
                settings["peer_id"] = i
            lines = [
                "[databases]",
                f"postgres = host={server.host} port={server.port} dbname=postgres user=postgres",
                "[pgbouncer]",
                *(f"{k} = {_text(v)}" for k, v in settings.items()),
            ]
            if peered:
                lines += ["[peers]", *peers]
            ini = self.dir / f"p{i}.ini"
            ini.write_text("\n".join(lines) + "\n")
            self.inis.append(ini)
        self.owner = _run_as()
        _chown_tree(self.dir, self.owner)

    def start(self) -> PgBouncerFarm:
        kwargs: dict[str, Any] = {}
        if self.owner is not None:
            kwargs.update(user=self.owner[0], group=self.owner[1], extra_groups=[])
        for ini in self.inis:
            self.procs.append(
                subprocess.Popen(
                    [self.binary, str(ini)],
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    **kwargs,
                )
            )
        try:
            _wait_port(self.host, self.port, self.procs, f"pgbouncer ({self.log_text()})")
            for i in range(1, len(self.inis) + 1):  # every process up (its unix socket)
                sock = self.dir / f"p{i}" / f".s.PGSQL.{self.port}"
                deadline = time.monotonic() + 15
                while not sock.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def log_text(self) -> str:
        texts = []
        for log in sorted(self.dir.glob("p*.log")):
            with contextlib.suppress(OSError):
                texts.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-2000:])
        return "\n".join(texts)

    def forwarded(self) -> int:
        """Cancels a process forwarded to its peer (its log's "peer-N@unix" sends)."""
        count = 0
        for log in self.dir.glob("p*.log"):
            with contextlib.suppress(OSError):
                for line in log.read_text(errors="replace").splitlines():
                    if "@unix:" in line and "successfully sent cancel request" in line:
                        count += 1
        return count

    def stop(self) -> None:
        _stop(self.procs)
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, **params: Any) -> str:
        """verify-full towards the farm's port."""
        conn: dict[str, Any] = {
            "host": "localhost",
            "hostaddr": self.host,
            "port": self.port,
            "user": "postgres",
            "dbname": "postgres",
            "sslmode": "verify-full",
            "sslrootcert": self.ca_file,
        }
        conn.update(params)
        return make_conninfo(conn)


class HAProxy:
    """HAProxy in TCP mode, ``balance`` over ``servers`` (objects with host and port)."""

    host = "127.0.0.1"

    def __init__(self, servers: list[Any], balance: str) -> None:
        self.balance = balance
        self.dir = Path(tempfile.mkdtemp(prefix="psycancel-haproxy-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [
            "global",
            "    maxconn 200",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 120s",
            "    timeout server 120s",
            "listen pg",
            f"    bind {self.host}:{self.port}",
            f"    balance {balance}",
            *(f"    server s{i} {s.host}:{s.port}" for i, s in enumerate(servers)),
        ]
        self.cfg = self.dir / "haproxy.cfg"
        self.cfg.write_text("\n".join(lines) + "\n")
        self.owner = _run_as()
        _chown_tree(self.dir, self.owner)

    def start(self) -> HAProxy:
        kwargs: dict[str, Any] = {}
        if self.owner is not None:
            kwargs.update(user=self.owner[0], group=self.owner[1], extra_groups=[])
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.cfg)],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **kwargs,
        )
        try:
            _wait_port(self.host, self.port, [self.proc], "haproxy")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop([self.proc])
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, **params: Any) -> str:
        """TLS through the balancer (``require``: the servers have different CAs)."""
        conn: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": "postgres",
            "dbname": "postgres",
            "sslmode": "require",
        }
        conn.update(params)
        return make_conninfo(conn)
