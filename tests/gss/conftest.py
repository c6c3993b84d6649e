"""The GSS fixtures: a throwaway KDC, a GSS-encrypting server, credentials, libpqs.

Each test module runs with ``KRB5_CONFIG`` (the throwaway realm) and
``KRB5CCNAME`` (a fresh cache holding the user's TGT) set for the process,
restored afterwards so that other tests of the same worker never see them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from psycancel.pq import Libpq
from testing.gss_server import GssServer
from testing.installation import libpq_file
from testing.kerberos import ThrowawayKdc, kerberos_env, kerberos_tools_missing
from tests.support.proxy import TcpProxy


@dataclass
class Credentials:
    """The krb5 configuration and credential cache set for the process."""

    config: Path
    ccache: Path


@pytest.fixture(scope="session")
def kdc() -> Iterator[ThrowawayKdc]:
    """A Kerberos realm on loopback (``PSYCANCEL.TEST``) with its running KDC."""
    missing = kerberos_tools_missing()
    if missing:
        pytest.skip(f"MIT Kerberos missing ({', '.join(missing)}): tools/install_test_services.sh")
    with ThrowawayKdc() as running:
        yield running


@pytest.fixture(scope="session")
def gss_server(kdc: ThrowawayKdc) -> Iterator[GssServer]:
    """A throwaway PostgreSQL built --with-gssapi, accepting GSS-encrypted sessions."""
    with GssServer(kdc) as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def credentials(
    kdc: ThrowawayKdc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Credentials]:
    """The module's krb5 environment: the realm's krb5.conf and a cache with the TGT."""
    ccache = kdc.kinit(tmp_path_factory.mktemp("krb5") / "ccache")
    with kerberos_env(kdc.config, ccache):
        yield Credentials(kdc.config, ccache)


@pytest.fixture
def tgt_only(kdc: ThrowawayKdc, tmp_path: Path) -> Path:
    """A new cache holding only the TGT (as after a renewal): a service ticket needs the KDC."""
    return kdc.kinit(tmp_path / "tgt-only")


@pytest.fixture
def fresh_ccache(credentials: Credentials, tmp_path: Path) -> Iterator[Path]:
    """A copy of the module's cache made the process's for one test (restored after)."""
    copy = tmp_path / "ccache"
    shutil.copyfile(credentials.ccache, copy)
    with kerberos_env(credentials.config, copy):
        yield copy


@pytest.fixture(scope="session")
def gss_libpq(gss_server: GssServer) -> Libpq:
    """libpq 18 of the GSSAPI build, loaded with the active twin."""
    lib = Libpq.load(str(libpq_file(gss_server.prefix)))
    assert lib.has_cancel_conn, f"{lib.path} has no PQcancelConn API"
    return lib


@pytest.fixture
def gss_proxy(gss_server: GssServer) -> Iterator[Callable[[], TcpProxy]]:
    """A factory of recording proxies towards the GSS server; closed at teardown."""
    made: list[TcpProxy] = []

    def make() -> TcpProxy:
        px = TcpProxy(gss_server.host, gss_server.port)
        made.append(px)
        return px.start()

    try:
        yield make
    finally:
        for px in made:
            px.close()
