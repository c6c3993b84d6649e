"""A throwaway PostgreSQL server that encrypts sessions with GSSAPI (Kerberos).

:class:`GssServer` is :class:`~testing.server.ThrowawayServer` run from a
PostgreSQL built ``--with-gssapi`` (``PSYCANCEL_PG_GSSAPI=1
tools/build_postgres.sh``, its own cache key; :func:`find_gss_postgres_prefix`),
with the keytab of a :class:`~testing.kerberos.ThrowawayKdc`. On loopback,
``hostgssenc`` connections authenticate with ``gss`` (the principal
``postgres@PSYCANCEL.TEST`` is the role ``postgres``); connections that are
not GSS-encrypted are trusted (TLS and plain, for monitors and controls),
except plain ones to the database :data:`TLS_ONLY_DB`, which must use TLS
(so that ``sslmode=allow`` ends up with a TLS session).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .conninfo import ConninfoValue, make_conninfo
from .kerberos import ThrowawayKdc
from .server import ThrowawayServer

__all__ = ["GSS_PREFIX_ENV", "TLS_ONLY_DB", "GssServer", "find_gss_postgres_prefix"]

TLS_ONLY_DB = "template1"
"""A database whose TCP sessions must be encrypted (plain ones are rejected)."""

GSS_PREFIX_ENV = "PSYCANCEL_PG_GSS_PREFIX"
"""An existing PostgreSQL installation built with GSSAPI, instead of the cached build."""
_BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "build_postgres.sh"


def find_gss_postgres_prefix() -> Path:
    """``$PSYCANCEL_PG_GSS_PREFIX``, else the GSSAPI build (made on first use)."""
    env = os.environ.get(GSS_PREFIX_ENV)
    if env:
        return Path(env)
    proc = subprocess.run(
        ["bash", str(_BUILD_SCRIPT)],
        env={**os.environ, "PSYCANCEL_PG_GSSAPI": "1"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, text=True, check=False,
    )  # fmt: skip
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{_BUILD_SCRIPT} with PSYCANCEL_PG_GSSAPI=1 failed")
    prefix = Path(lines[-1])
    config = subprocess.run(
        [str(prefix / "bin" / "pg_config"), "--configure"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "--with-gssapi" not in config:
        raise RuntimeError(f"{prefix} is not built --with-gssapi")
    return prefix


class GssServer(ThrowawayServer):
    """A throwaway server accepting GSS-encrypted sessions of ``kdc``'s realm."""

    def __init__(self, kdc: ThrowawayKdc, prefix: Path | None = None) -> None:
        """Prepare (not start) a server from ``prefix`` (default: the GSSAPI build)."""
        super().__init__(prefix if prefix is not None else find_gss_postgres_prefix())
        self.kdc = kdc

    def dsn(self, sslmode: str = "disable", **params: ConninfoValue) -> str:
        """As :meth:`ThrowawayServer.dsn`, with ``gssencmode=disable`` unless given."""
        params.setdefault("gssencmode", "disable")
        return super().dsn(sslmode, **params)

    def dsn_gss(self, gssencmode: str = "require", **params: ConninfoValue) -> str:
        """A conninfo for a GSS-encrypted session (``host=localhost``: the service's name)."""
        conn: dict[str, ConninfoValue] = {
            "host": "localhost",
            "hostaddr": self.host,
            "port": self.port,
            "user": "postgres",
            "dbname": "postgres",
            "gssencmode": gssencmode,
            "sslmode": "disable",
        }
        conn.update(params)
        return make_conninfo(conn)

    def _env(self, tmp: Path) -> dict[str, str]:
        env = super()._env(tmp)
        env["KRB5_CONFIG"] = str(self.kdc.config)
        return env

    def _configure(self) -> None:
        super()._configure()
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# written by testing/gss_server.py\n"
            "local        all all              trust\n"
            "hostgssenc   all all 127.0.0.1/32 gss include_realm=0\n"
            "hostssl      all all 127.0.0.1/32 trust\n"
            f"hostnossl    {TLS_ONLY_DB} all 127.0.0.1/32 reject\n"
            "hostnogssenc all all 127.0.0.1/32 trust\n"
        )

    def _write_conf(self, port: int) -> None:
        super()._write_conf(port)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "# --- added by testing/gss_server.py ---\n"
                f"krb_server_keyfile = '{self.kdc.server_keytab}'\n"
            )
