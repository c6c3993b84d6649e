"""A throwaway PostgreSQL server for the test suite and ``python -m psycancel demo``.

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
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

__all__ = [
    "ConninfoValue",
    "ThrowawayServer",
    "cached_postgres_prefix",
    "find_postgres_prefix",
    "make_ca",
    "make_conninfo",
    "make_server_cert",
    "parse_conninfo",
    "postgres_version",
    "quote_conninfo_value",
]

#: A value accepted in a conninfo string built by :func:`make_conninfo`.
ConninfoValue = str | int | os.PathLike[str]

_BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "build_postgres.sh"
_STAMP = ".psycancel-complete"
_HOST = "127.0.0.1"
_SUPERUSER = "postgres"
_PORT_ATTEMPTS = 3
_PORT_IN_USE_MARKERS = ("Address already in use",)


# --- conninfo strings ------------------------------------------------------------


def quote_conninfo_value(value: ConninfoValue) -> str:
    """Render *value* for a libpq ``key=value`` conninfo string.

    Values that are empty or contain whitespace, a single quote or a backslash
    are single-quoted, with ``'`` and ``\\`` escaped by a backslash.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if text and not any(c.isspace() or c in "'\\" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_conninfo(params: Mapping[str, ConninfoValue]) -> str:
    """Join *params* into a libpq conninfo string, in the mapping's order."""
    return " ".join(f"{key}={quote_conninfo_value(value)}" for key, value in params.items())


def parse_conninfo(conninfo: str) -> dict[str, str]:
    """Parse a libpq conninfo string (``key=value`` form or a URI) into a dict.

    A small re-implementation of libpq's parser for the tests' own use; it
    raises :class:`ValueError` on syntax errors. URIs with several hosts keep
    the comma-separated ``host`` and ``port`` lists as they are.
    """
    if conninfo.startswith(("postgresql://", "postgres://")):
        return _parse_uri(conninfo)
    params: dict[str, str] = {}
    i, n = 0, len(conninfo)
    while True:
        while i < n and conninfo[i].isspace():
            i += 1
        if i >= n:
            return params
        start = i
        while i < n and conninfo[i] != "=" and not conninfo[i].isspace():
            i += 1
        key = conninfo[start:i]
        while i < n and conninfo[i].isspace():
            i += 1
        if i >= n or conninfo[i] != "=" or not key:
            raise ValueError(f"missing '=' after {key!r} in conninfo string")
        i += 1
        while i < n and conninfo[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and conninfo[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted string in conninfo string")
                c = conninfo[i]
                if c == "\\" and i + 1 < n:
                    value.append(conninfo[i + 1])
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    value.append(c)
                    i += 1
        else:
            while i < n and not conninfo[i].isspace():
                if conninfo[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(conninfo[i])
                i += 1
        params[key] = "".join(value)


def _parse_uri(uri: str) -> dict[str, str]:
    _, _, rest = uri.partition("://")
    netloc, _, tail = rest.partition("/")
    if "?" in netloc:  # postgresql://host?sslmode=... without a path
        netloc, _, query = netloc.partition("?")
        path = ""
    else:
        path, _, query = tail.partition("?")
    params: dict[str, str] = {}
    unquote = urllib.parse.unquote
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, sep, password = userinfo.partition(":")
        if user:
            params["user"] = unquote(user)
        if sep:
            params["password"] = unquote(password)
    hosts: list[str] = []
    ports: list[str] = []
    for item in netloc.split(",") if netloc else []:
        if item.startswith("["):
            host, _, after = item[1:].partition("]")
            port = after[1:] if after.startswith(":") else ""
        else:
            host, _, port = item.partition(":")
        hosts.append(unquote(host))
        ports.append(port)
    if any(hosts):
        params["host"] = ",".join(hosts)
    if any(ports):
        params["port"] = ",".join(ports)
    if path:
        params["dbname"] = unquote(path)
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        params[key] = value
    return params


# --- locating / building PostgreSQL ------------------------------------------------


def cached_postgres_prefix() -> Path | None:
    """The prefix of an already finished build, without building anything.

    ``PSYCANCEL_PG_PREFIX`` if set, else the location ``tools/build_postgres.sh``
    uses by default, if its completion stamp exists; ``None`` otherwise.
    """
    env = os.environ.get("PSYCANCEL_PG_PREFIX")
    if env:
        return Path(env)
    cache = os.environ.get("PSYCANCEL_CACHE_DIR")
    if not cache:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cache = "/var/cache/psycancel"
        else:
            xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            cache = os.path.join(xdg, "psycancel")
    prefix = Path(cache) / f"postgresql-{os.environ.get('PSYCANCEL_PG_MAJOR', '18')}"
    if (prefix / _STAMP).is_file() and (prefix / "bin" / "postgres").is_file():
        return prefix
    return None


def libpq_file(prefix: Path) -> Path:
    """The shared libpq of the PostgreSQL installation at ``prefix``."""
    name = "libpq.5.dylib" if sys.platform == "darwin" else "libpq.so.5"
    return prefix / "lib" / name


def find_postgres_prefix(build: bool = True) -> Path:
    """Return a PostgreSQL installation prefix (with ``bin/``, ``lib/``).

    ``PSYCANCEL_PG_PREFIX`` if set; otherwise, when running from a source tree
    and *build* is true, the prefix printed by ``tools/build_postgres.sh``
    (which builds PostgreSQL on first use, showing progress on stderr).
    Raises :class:`RuntimeError` when neither is possible.
    """
    env = os.environ.get("PSYCANCEL_PG_PREFIX")
    if env:
        prefix = Path(env)
    elif build and _BUILD_SCRIPT.is_file():
        try:
            proc = subprocess.run(
                ["bash", str(_BUILD_SCRIPT)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None,
                text=True,
                check=False,
            )
        except OSError as exc:
            raise RuntimeError(f"cannot run {_BUILD_SCRIPT}: {exc}") from exc
        lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"{_BUILD_SCRIPT} failed (exit status {proc.returncode}); see its "
                "output above, or set PSYCANCEL_PG_PREFIX to an existing "
                "PostgreSQL installation prefix"
            )
        prefix = Path(lines[-1])
    else:
        raise RuntimeError(
            "no PostgreSQL installation: set PSYCANCEL_PG_PREFIX to a PostgreSQL "
            "installation prefix (the directory holding bin/pg_ctl and "
            "lib/libpq), or run from a source checkout where "
            "tools/build_postgres.sh can build one"
        )
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (prefix / "bin" / tool).is_file():
            raise RuntimeError(
                f"{prefix} is not a PostgreSQL installation prefix: bin/{tool} is "
                "missing (check PSYCANCEL_PG_PREFIX)"
            )
    return prefix


def postgres_version(prefix: Path) -> str:
    """The output of ``<prefix>/bin/pg_config --version``, e.g. ``PostgreSQL 18.1``."""
    proc = subprocess.run(
        [str(prefix / "bin" / "pg_config"), "--version"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


# --- certificates --------------------------------------------------------------------

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = psycancel

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError(
            "the 'openssl' command is needed to make the throwaway TLS "
            "certificates, and it is not on PATH (install OpenSSL)"
        )
    proc = subprocess.run(
        [exe, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"openssl {' '.join(args[:2])} failed (exit status {proc.returncode}):\n"
            f"{proc.stderr.strip()}"
        )


def _write_openssl_config(path: Path, san: str) -> None:
    path.write_text(_OPENSSL_CONFIG.format(san=san or "DNS:localhost"))


def make_ca(
    directory: Path, name: str = "ca", *, common_name: str | None = None
) -> tuple[Path, Path]:
    """Make a self-signed CA with ``openssl``; return ``(cert_file, key_file)``.

    The files are ``<directory>/<name>.crt`` and ``<directory>/<name>.key``
    (mode 0600); the certificate is valid for a week.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{name}.cnf"
    _write_openssl_config(config, "")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-new", "-config", str(config), "-extensions", "v3_ca",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "7",
        "-subj", f"/CN={common_name or f'psycancel throwaway CA {secrets.token_hex(4)}'}",
        cwd=directory,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def make_server_cert(
    directory: Path,
    ca_cert: Path,
    ca_key: Path,
    name: str = "server",
    *,
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = (_HOST,),
) -> tuple[Path, Path]:
    """Make a server certificate signed by the given CA; return ``(cert, key)``.

    The subject alternative names are *dns_names* and *ip_addresses*; the
    common name is the first DNS name. The key file has mode 0600.
    """
    directory.mkdir(parents=True, exist_ok=True)
    san = ", ".join([f"DNS:{d}" for d in dns_names] + [f"IP:{ip}" for ip in ip_addresses])
    config = directory / f"{name}.cnf"
    _write_openssl_config(config, san)
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    common_name = dns_names[0] if dns_names else (ip_addresses[0] if ip_addresses else name)
    _openssl(
        "req", "-new", "-config", str(config),
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}",
        cwd=directory,
    )  # fmt: skip
    key.chmod(0o600)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", str(secrets.randbits(62) + 1), "-days", "7", "-sha256",
        "-extfile", str(config), "-extensions", "v3_server", "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    csr.unlink()
    return cert, key


# --- the server ------------------------------------------------------------------------


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
            "# written by psycancel._server: trust everything on loopback\n"
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
        lines = ["", "# --- added by psycancel._server ---"]
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
