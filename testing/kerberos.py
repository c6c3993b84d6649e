"""A throwaway MIT Kerberos realm on loopback, and a KDC that never answers.

Standard library only; needs MIT Kerberos' programs (Debian: ``krb5-kdc``,
``krb5-admin-server``, ``krb5-user``; ``tools/install_test_services.sh``).

:class:`ThrowawayKdc` makes a realm in a temporary directory (its own
``krb5.conf`` and ``kdc.conf``, never the machine's), with the principals a
GSS-encrypted PostgreSQL session needs: the service ``postgres/localhost``
(exported to a keytab for the server) and the user ``postgres`` (exported to
a keytab, so that :meth:`ThrowawayKdc.kinit` needs no password prompt). Its
``krb5kdc`` listens on a free loopback port, UDP and TCP.

:class:`SilentKdc` is a UDP socket and a TCP listener on loopback that never
answer: a KDC that went dark. :meth:`ThrowawayKdc.client_config` writes a
``krb5.conf`` for the same realm that points at any KDC address, so a client
can be moved to the silent one.

A process chooses its configuration and credential cache with the
environment variables ``KRB5_CONFIG`` and ``KRB5CCNAME``; libkrb5 reads them
each time a GSS call makes its context, so a test can switch them between a
session's connection and its cancel (:func:`kerberos_env`).
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
from types import TracebackType

__all__ = [
    "REALM",
    "SERVICE",
    "USER",
    "SilentKdc",
    "ThrowawayKdc",
    "kerberos_env",
    "kerberos_tools_missing",
]

REALM = "PSYCANCEL.TEST"
# Seconds a KDC exchange may last (krb5 >= 1.22): well past the tests' cancel
# timeouts, under what MIT krb5 1.20's retries take against a silent KDC.
KDC_REQUEST_TIMEOUT = 20
SERVICE = "postgres/localhost"
"""The server's principal: libpq asks for ``krbsrvname/host`` (``postgres@localhost``)."""
USER = "postgres"
"""The client's principal (``postgres@PSYCANCEL.TEST``), mapped to the role ``postgres``."""
_HOST = "127.0.0.1"
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit", "klist")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN:
        path = Path(directory) / name
        if path.is_file():
            return str(path)
    raise RuntimeError(f"{name} not found: install MIT Kerberos (tools/install_test_services.sh)")


def kerberos_tools_missing() -> list[str]:
    """The MIT Kerberos programs this module needs that are not installed."""
    missing = []
    for name in _TOOLS:
        try:
            _tool(name)
        except RuntimeError:
            missing.append(name)
    return missing


def _free_port() -> int:
    """A port free for both TCP and UDP on loopback (the KDC listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((_HOST, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((_HOST, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both TCP and UDP on loopback")


@contextlib.contextmanager
def kerberos_env(config: Path, ccache: Path) -> Iterator[None]:
    """``KRB5_CONFIG`` and ``KRB5CCNAME`` set for this process, restored on exit."""
    names = ("KRB5_CONFIG", "KRB5CCNAME")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["KRB5_CONFIG"] = str(config)
    os.environ["KRB5CCNAME"] = f"FILE:{ccache}"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class SilentKdc:
    """A KDC address that never answers: UDP datagrams are never read, TCP never accepted."""

    host = _HOST

    def __init__(self) -> None:
        port = _free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.udp.bind((_HOST, port))
            self.tcp.bind((_HOST, port))
            self.tcp.listen(64)  # the kernel completes handshakes; nobody reads
        except BaseException:
            self.close()
            raise
        self.port = port

    def close(self) -> None:
        """Close both sockets. Idempotent.

        The address then stops being silent: the connections waiting in the
        listen queue are reset and datagrams are refused, so that a client
        still waiting on it gives up at once instead of after libkrb5's retries.
        """
        self.udp.close()
        self.tcp.close()

    def __enter__(self) -> SilentKdc:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ThrowawayKdc:
    """A Kerberos realm and its running ``krb5kdc``, in a temporary directory.

    Use as a context manager, or :meth:`start` and :meth:`stop` (idempotent).
    """

    host = _HOST
    realm = REALM

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    # -- paths

    @property
    def directory(self) -> Path:
        """The temporary directory (database, configuration, keytabs, log)."""
        if self._dir is None:
            raise RuntimeError("the KDC has not been started")
        return self._dir

    @property
    def config(self) -> Path:
        """The clients' ``krb5.conf`` (this KDC)."""
        return self.directory / "krb5.conf"

    @property
    def server_keytab(self) -> Path:
        """The keytab of ``postgres/localhost`` (PostgreSQL's ``krb_server_keyfile``)."""
        return self.directory / "server.keytab"

    @property
    def user_keytab(self) -> Path:
        """The keytab of the user ``postgres`` (for :meth:`kinit`)."""
        return self.directory / "user.keytab"

    @property
    def log_file(self) -> Path:
        """The KDC's log."""
        return self.directory / "kdc.log"

    # -- configuration

    def client_config(self, path: Path, kdc: tuple[str, int] | None = None) -> Path:
        """Write a ``krb5.conf`` for this realm whose KDC is ``kdc`` (default: this one).

        ``request_timeout`` bounds a KDC exchange: from MIT krb5 1.22 on, a
        request sent on a TCP connection the KDC accepted waits for its reply
        with no end (measured: ``kinit`` against :class:`SilentKdc` still waited
        after 45 s on 1.22.1, a GSS cancel's worker after 120 s; 1.20.1 gives
        up after ~27 s), and 1.22 added this option to cap it (5 s measured
        with ``request_timeout = 5``). Older versions ignore it.
        """
        host, port = kdc or (self.host, self.port)
        path.write_text(
            "[libdefaults]\n"
            f"    default_realm = {REALM}\n"
            f"    request_timeout = {KDC_REQUEST_TIMEOUT}\n"
            "    dns_lookup_kdc = false\n"
            "    dns_lookup_realm = false\n"
            "    dns_canonicalize_hostname = false\n"
            "    rdns = false\n"
            "    forwardable = false\n"
            "[realms]\n"
            f"    {REALM} = {{\n"
            f"        kdc = {host}:{port}\n"
            "    }\n"
            "[domain_realm]\n"
            f"    localhost = {REALM}\n"
        )
        path.chmod(0o644)
        return path

    def _kdc_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KRB5_CONFIG": str(self.config),
            "KRB5_KDC_PROFILE": str(self.directory / "kdc.conf"),
            "LC_ALL": "C",
        }

    def _run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            list(args), env=self._kdc_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def _admin(self, query: str) -> None:
        self._run(_tool("kadmin.local"), "-r", REALM, "-q", query)

    # -- lifecycle

    def start(self) -> ThrowawayKdc:
        """Create the realm and its principals, and start ``krb5kdc`` on a free port."""
        if self._dir is not None:
            raise RuntimeError("this KDC was already started")
        self._dir = Path(tempfile.mkdtemp(prefix="psycancel-kdc-", dir="/tmp"))
        self._dir.chmod(0o755)  # the server (an unprivileged user) reads its keytab here
        try:
            self.port = _free_port()
            d = self._dir
            (d / "kadm5.acl").write_text("")
            (d / "kdc.conf").write_text(
                "[kdcdefaults]\n"
                f"    kdc_ports = {self.port}\n"
                f"    kdc_tcp_ports = {self.port}\n"
                "[realms]\n"
                f"    {REALM} = {{\n"
                f"        database_name = {d / 'principal'}\n"
                f"        key_stash_file = {d / 'stash'}\n"
                f"        acl_file = {d / 'kadm5.acl'}\n"
                f"        kdc_ports = {self.port}\n"
                f"        kdc_tcp_ports = {self.port}\n"
                "        max_life = 10h\n"
                "    }\n"
                "[logging]\n"
                f"    kdc = FILE:{self.log_file}\n"
            )
            self.client_config(self.config)
            self._run(_tool("kdb5_util"), "create", "-s", "-r", REALM, "-P", "psycancel-master")
            self._admin(f"addprinc -randkey {SERVICE}")
            self._admin(f"addprinc -randkey {USER}")
            self._admin(f"ktadd -k {self.server_keytab} {SERVICE}")
            self._admin(f"ktadd -k {self.user_keytab} {USER}")
            self.server_keytab.chmod(0o644)  # a throwaway key, read by the server's user
            for attempt in range(3):
                try:
                    self._start_kdc()
                    break
                except RuntimeError:
                    # Another process took the port between _free_port() and the
                    # KDC's bind (parallel suites start many KDCs): another port.
                    if attempt == 2 or self._proc is None or self._proc.poll() is None:
                        raise
                    old, self.port = self.port, _free_port()
                    conf = d / "kdc.conf"
                    conf.write_text(conf.read_text().replace(f"= {old}\n", f"= {self.port}\n"))
                    self.client_config(self.config)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_kdc(self) -> None:
        log = (self.directory / "krb5kdc.out").open("wb")
        with log:
            self._proc = subprocess.Popen(
                [_tool("krb5kdc"), "-n", "-r", REALM], env=self._kdc_env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        # Ready once a kinit works (the KDC answers on its port).
        probe = self.directory / "probe.ccache"
        deadline = time.monotonic() + 30
        while True:
            try:
                self.kinit(probe)
                probe.unlink()
                return
            except RuntimeError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    out = (self.directory / "krb5kdc.out").read_text(errors="replace")
                    with contextlib.suppress(OSError):
                        out += self.log_file.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"krb5kdc did not start:\n{out}") from None
                time.sleep(0.1)

    def kinit(self, ccache: Path) -> Path:
        """Get the user's TGT into the file credential cache ``ccache`` (from its keytab)."""
        self._run(
            _tool("kinit"), "-k", "-t", str(self.user_keytab), "-c", f"FILE:{ccache}", USER,
            timeout=30,
        )  # fmt: skip
        return ccache

    def klist(self, ccache: Path) -> list[str]:
        """The principals of the tickets in ``ccache``."""
        out = self._run(_tool("klist"), "-c", f"FILE:{ccache}")
        return [line.split()[-1] for line in out.splitlines() if line[:1].isdigit()]

    def stop(self) -> None:
        """Stop ``krb5kdc`` and remove the directory. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> ThrowawayKdc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
