"""A throwaway PostgreSQL server: a fresh cluster on loopback, with TLS.

Standard library only. The server runs from a PostgreSQL installation prefix
(see :func:`find_postgres_prefix`), in a fresh cluster inside a temporary
directory, listening on a free loopback TCP port with TLS enabled (certificate
signed by a throwaway CA) and ``trust`` authentication. When the current
process is root, every server process runs as an unprivileged user instead
(``PSYCANCEL_PG_USER``, default ``nobody``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .certificates import make_ca, make_server_cert
from .conninfo import ConninfoValue, make_conninfo
from .installation import find_postgres_prefix, libpq_file

__all__ = ["ThrowawayServer"]
_HOST = "127.0.0.1"
_SUPERUSER = "postgres"
_PORT_ATTEMPTS = 3
_PORT_IN_USE_MARKERS = ("Address already in use",)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _traversable_by_others(path: Path) -> bool:
    """Whether every ancestor of *path* (inclusive) can be entered by anyone."""
    path = path.resolve()
    for part in (path, *path.parents):
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ThrowawayServer:
    """A PostgreSQL cluster in a temporary directory, on a free loopback port.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (which is
    idempotent, safe after a failed start, and also run at interpreter exit).
    """

    host: str = _HOST

    def __init__(self, prefix: Path | None = None, *, user: str | None = None) -> None:
        """Prepare (not start) a server from *prefix* (default: found/built).

        *user* is the account server processes run as when the current process
        is root (default ``$PSYCANCEL_PG_USER`` or ``nobody``); ignored otherwise.
        """
        self.prefix: Path = Path(prefix) if prefix is not None else find_postgres_prefix()
        self._run_as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            import grp
            import pwd

            name = user or os.environ.get("PSYCANCEL_PG_USER") or "nobody"
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                raise RuntimeError(
                    f"running as root, the server must run as an unprivileged user, "
                    f"and user {name!r} does not exist (set PSYCANCEL_PG_USER)"
                ) from None
            if entry.pw_uid == 0:
                raise RuntimeError(f"PSYCANCEL_PG_USER={name!r} is root; PostgreSQL refuses that")
            grp.getgrgid(entry.pw_gid)  # fail early on a dangling primary group
            self._run_as = (entry.pw_uid, entry.pw_gid)
        self._tmp: Path | None = None
        self._port: int | None = None
        self._ca_file: Path | None = None
        self._base_conf = ""
        self._running = False
        self._atexit_registered = False

    # -- public properties

    @property
    def port(self) -> int:
        """The TCP port the server listens on (127.0.0.1)."""
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def tmp_dir(self) -> Path:
        """The temporary directory holding the cluster, certificates and log."""
        if self._tmp is None:
            raise RuntimeError("the server has not been started")
        return self._tmp

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.tmp_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's Unix-domain socket."""
        return self.tmp_dir / "sock"

    @property
    def log_file(self) -> Path:
        """The server log (written by ``pg_ctl -l``)."""
        return self.tmp_dir / "postgresql.log"

    @property
    def ca_file(self) -> Path:
        """The throwaway CA's certificate, for ``sslrootcert``."""
        if self._ca_file is None:
            raise RuntimeError("the server has not been started")
        return self._ca_file

    @property
    def libpq_path(self) -> Path:
        """The shared libpq of the installation this server runs from."""
        return libpq_file(self.prefix)

    @property
    def running(self) -> bool:
        """Whether the server was started (and not stopped) by this object."""
        return self._running

    # -- conninfo strings

    def dsn(self, sslmode: str = "disable", **params: ConninfoValue) -> str:
        """A conninfo string for the server as superuser ``postgres``.

        ``verify-ca``/``verify-full`` add ``sslrootcert`` (the throwaway CA);
        ``verify-full`` uses ``host=localhost hostaddr=127.0.0.1`` so that the
        certificate's name is checked. *params* are added last and override.
        """
        conn: dict[str, ConninfoValue] = {"host": self.host}
        if sslmode == "verify-full":
            conn = {"host": "localhost", "hostaddr": self.host}
        conn.update(port=self.port, user=_SUPERUSER, dbname="postgres", sslmode=sslmode)
        if sslmode in ("verify-ca", "verify-full"):
            conn["sslrootcert"] = self.ca_file
        conn.update(params)
        return make_conninfo(conn)

    @property
    def dsn_plain(self) -> str:
        """``dsn("disable")``: a plain TCP connection."""
        return self.dsn("disable")

    @property
    def dsn_tls(self) -> str:
        """``dsn("require")``: TLS without certificate checks."""
        return self.dsn("require")

    @property
    def dsn_verify(self) -> str:
        """``dsn("verify-full")``: TLS checking the chain and the name ``localhost``."""
        return self.dsn("verify-full")

    # -- lifecycle

    def __enter__(self) -> ThrowawayServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"port={self._port}" if self._running else "stopped"
        return f"<{type(self).__name__} {self.prefix} {where}>"

    def start(self) -> None:
        """initdb a new cluster, make certificates, and start the server."""
        if self._tmp is not None:
            raise RuntimeError("this server was already started")
        for tool in ("initdb", "pg_ctl"):
            if not (self.prefix / "bin" / tool).is_file():
                raise RuntimeError(f"{self.prefix / 'bin' / tool} does not exist")
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._tmp = self._make_tmp_dir()
            self._initdb()
            self._make_certificates()
            self._configure()
            self._start_on_free_port()
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """Stop the server (mode fast) and start it again: same data and port."""
        if not self._running:
            raise RuntimeError("the server is not running")
        self._pg_ctl("-m", "fast", "-t", "60", "stop", check=True)
        self._running = False
        self._pg_ctl_start()
        self._running = True

    def stop(self) -> None:
        """Stop the server (mode immediate) and remove its directory. Idempotent."""
        tmp, self._tmp = self._tmp, None
        self._running = False
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False
        if tmp is None:
            return
        data = tmp / "data"
        try:
            if (data / "postmaster.pid").exists():
                with contextlib.suppress(Exception):
                    self._pg_ctl("-m", "immediate", "-t", "30", "stop", tmp=tmp, check=False)
                self._kill_leftover_postmaster(data)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- internals

    def _make_tmp_dir(self) -> Path:
        parent: str | None = None
        if self._run_as is not None and not _traversable_by_others(Path(tempfile.gettempdir())):
            parent = "/tmp"  # the server user must be able to reach its directory
        tmp = Path(tempfile.mkdtemp(prefix="psycancel-pg-", dir=parent))
        (tmp / "sock").mkdir(mode=0o755)
        if self._run_as is not None:
            uid, gid = self._run_as
            for path in (tmp, tmp / "sock"):
                os.chown(path, uid, gid)
        return tmp

    def _env(self, tmp: Path) -> dict[str, str]:
        return {
            "PATH": os.pathsep.join(
                [str(self.prefix / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]
            ),
            "HOME": str(tmp),
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": os.environ.get("TZ", "UTC"),
        }

    def _run(
        self, args: list[str], tmp: Path | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        tmp = tmp or self.tmp_dir
        if self._run_as is None:
            return subprocess.run(
                args, cwd=tmp, env=self._env(tmp), stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
        uid, gid = self._run_as
        return subprocess.run(
            args, cwd=tmp, env=self._env(tmp), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
            user=uid, group=gid, extra_groups=[],
        )  # fmt: skip

    def _initdb(self) -> None:
        proc = self._run([
            str(self.prefix / "bin" / "initdb"), "-D", str(self.data_dir), "-U", _SUPERUSER,
            "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ])  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit status {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )

    def _make_certificates(self) -> None:
        ssl_dir = self.tmp_dir / "ssl"
        ca_cert, ca_key = make_ca(ssl_dir)
        cert, key = make_server_cert(ssl_dir, ca_cert, ca_key)
        ca_cert.chmod(0o644)
        if self._run_as is not None:
            uid, gid = self._run_as
            os.chown(ssl_dir, uid, gid)
            for path in (cert, key):
                os.chown(path, uid, gid)
        key.chmod(0o600)
        self._ca_file = ca_cert
        self._server_cert, self._server_key = cert, key

    def _configure(self) -> None:
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# written by testing/server.py: trust everything on loopback\n"
            "local    all all              trust\n"
            "host     all all 127.0.0.1/32 trust\n"
            "host     all all ::1/128      trust\n"
            "hostssl  all all 127.0.0.1/32 trust\n"
            "hostssl  all all ::1/128      trust\n"
        )
        self._base_conf = (self.data_dir / "postgresql.conf").read_text()

    def _write_conf(self, port: int) -> None:
        settings: dict[str, ConninfoValue] = {
            "listen_addresses": self.host,
            "port": port,
            "unix_socket_directories": self.socket_dir,
            "max_connections": 200,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
            "ssl": "on",
            "ssl_cert_file": self._server_cert,
            "ssl_key_file": self._server_key,
        }
        lines = ["", "# --- added by testing/server.py ---"]
        for key, value in settings.items():
            text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
            if isinstance(value, int):
                lines.append(f"{key} = {text}")
            else:
                lines.append(f"{key} = '{text.replace(chr(39), chr(39) * 2)}'")
        (self.data_dir / "postgresql.conf").write_text(self._base_conf + "\n".join(lines) + "\n")

    def _start_on_free_port(self) -> None:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port()
            self._port = port
            self._write_conf(port)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            try:
                self._pg_ctl_start()
            except RuntimeError:
                new_log = self._read_log(log_offset)
                if attempt < _PORT_ATTEMPTS and any(m in new_log for m in _PORT_IN_USE_MARKERS):
                    continue
                raise
            self._running = True
            return

    def _pg_ctl(
        self, *args: str, tmp: Path | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        tmp = tmp or self.tmp_dir
        proc = self._run([str(self.prefix / "bin" / "pg_ctl"), "-D", str(tmp / "data"), *args], tmp)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"pg_ctl {' '.join(args)} failed (exit status {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}\n--- server log (tail) ---\n{self._log_tail()}"
            )
        return proc

    def _pg_ctl_start(self) -> None:
        self._pg_ctl("-w", "-t", "60", "-l", str(self.log_file), "start", check=True)

    def _read_log(self, offset: int = 0) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._read_log().splitlines()[-lines:])

    @staticmethod
    def _kill_leftover_postmaster(data: Path) -> None:
        """SIGQUIT the postmaster if ``pg_ctl stop`` left it running."""
        try:
            pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return  # gone, or we cannot tell that the pid is still our postmaster
        if str(data).encode() not in cmdline:
            return
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
