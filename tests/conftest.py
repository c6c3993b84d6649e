"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from psycancel import pq
from psycancel.pq import Libpq
from testing import (
    ConninfoValue,
    ThrowawayServer,
    cached_postgres_prefix,
    find_postgres_prefix,
    make_conninfo,
    parse_conninfo,
    postgres_version,
)
from tests.support.drivers import ALLOWED_SKIP
from tests.support.proxy import ServerLike, TcpProxy
from tests.support.spies import created, stage_spy  # noqa: F401 (fixtures, shared)
from tests.support.twins import (
    SYSTEM_LIBPQ_ENV,
    _ctypes,
    _legacy_libpq_path,
    _new_libpq_path,
    compiled_twin,
    new_libpq_path,
    old_libpq_path,
)

# =====================================================================================
# The server and the proxy
#
# ``pg_server`` is a throwaway PostgreSQL 18 (built by tools/build_postgres.sh, or
# from $PSYCANCEL_PG_PREFIX), started once per session; or, when
# $PSYCANCEL_TEST_DSN is set, an external server described by that DSN (with
# $PSYCANCEL_TEST_SSLROOTCERT as its CA certificate, for verify-full).
# =====================================================================================

ENV_TEST_DSN = "PSYCANCEL_TEST_DSN"
ENV_TEST_SSLROOTCERT = "PSYCANCEL_TEST_SSLROOTCERT"


class ExternalServer:
    """A server given by a DSN, with the same interface as ``ThrowawayServer``."""

    def __init__(self, dsn: str, ca_file: Path | None = None) -> None:
        self.base_params = parse_conninfo(dsn)
        self.ca_file = ca_file
        self.prefix: Path | None = None
        params = self.base_params
        self.host: str = params.get("hostaddr") or params.get("host") or "localhost"
        self.port: int = int(params.get("port") or 5432)

    def dsn(self, sslmode: str = "disable", **params: ConninfoValue) -> str:
        """The given DSN with ``sslmode`` (and ``sslrootcert``) set, plus *params*."""
        conn: dict[str, ConninfoValue] = dict(self.base_params)
        conn["sslmode"] = sslmode
        if sslmode in ("verify-ca", "verify-full") and self.ca_file is not None:
            conn["sslrootcert"] = self.ca_file
        conn.update(params)
        return make_conninfo(conn)

    @property
    def dsn_plain(self) -> str:
        """``dsn("disable")``."""
        return self.dsn("disable")

    @property
    def dsn_tls(self) -> str:
        """``dsn("require")``."""
        return self.dsn("require")

    @property
    def dsn_verify(self) -> str:
        """``dsn("verify-full")``."""
        return self.dsn("verify-full")

    def describe(self) -> str:
        """The DSN, with any password masked."""
        shown: dict[str, ConninfoValue] = {
            k: ("***" if k == "password" else v) for k, v in self.base_params.items()
        }
        return make_conninfo(shown)


def _external_server() -> ExternalServer | None:
    dsn = os.environ.get(ENV_TEST_DSN)
    if not dsn:
        return None
    ca = os.environ.get(ENV_TEST_SSLROOTCERT)
    return ExternalServer(dsn, Path(ca) if ca else None)


def _server_header(config: pytest.Config) -> list[str]:
    """Say which PostgreSQL server the tests run against."""
    external = _external_server()
    if external is not None:
        return [f"postgresql: external server {external.describe()} ({ENV_TEST_DSN})"]
    prefix = cached_postgres_prefix()
    if prefix is None:
        return ["postgresql: throwaway server; not built yet (tools/build_postgres.sh will run)"]
    try:
        version = postgres_version(prefix)
    except (OSError, subprocess.CalledProcessError) as exc:
        version = f"pg_config failed: {exc}"
    return [f"postgresql: throwaway server from {prefix} ({version})"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ThrowawayServer | ExternalServer]:
    """The PostgreSQL server of the session (throwaway, or $PSYCANCEL_TEST_DSN)."""
    external = _external_server()
    if external is not None:
        yield external
        return
    with ThrowawayServer(find_postgres_prefix()) as server:
        yield server


@pytest.fixture(scope="session")
def dsn_plain(pg_server: ServerLike) -> str:
    """A conninfo string for a plain (``sslmode=disable``) connection."""
    return pg_server.dsn("disable")


@pytest.fixture(scope="session")
def dsn_tls(pg_server: ServerLike) -> str:
    """A conninfo string for TLS without certificate checks (``sslmode=require``)."""
    return pg_server.dsn("require")


@pytest.fixture(scope="session")
def dsn_verify(pg_server: ThrowawayServer | ExternalServer) -> str:
    """A conninfo string for TLS with full verification (``sslmode=verify-full``)."""
    dsn = pg_server.dsn("verify-full")
    if pg_server.ca_file is None and not re.search(r"\bsslrootcert\s*=", dsn):
        pytest.skip(f"verify-full against an external server needs ${ENV_TEST_SSLROOTCERT}")
    return dsn


@pytest.fixture(
    scope="session",
    params=["dsn_plain", "dsn_tls", "dsn_verify"],
    ids=["disable", "require", "verify-full"],
)
def dsn(request: pytest.FixtureRequest) -> str:
    """Each of ``dsn_plain``, ``dsn_tls``, ``dsn_verify`` in turn."""
    value: str = request.getfixturevalue(request.param)
    return value


@pytest.fixture
def proxy(pg_server: ServerLike) -> Iterator[Callable[[], TcpProxy]]:
    """A factory of started ``TcpProxy``s towards the server; all closed at teardown."""
    made: list[TcpProxy] = []

    def make_proxy() -> TcpProxy:
        px = TcpProxy(pg_server.host, pg_server.port)
        made.append(px)
        return px.start()

    try:
        yield make_proxy
    finally:
        for px in made:
            px.close()


# =====================================================================================
# More fixtures below.
# =====================================================================================

# =====================================================================================
# The libpqs under test and the twin in use
#
# ``libpq`` is a libpq >= 17 (the new API): $PSYCANCEL_LIBPQ, else the one built
# with the server. ``legacy_libpq`` is the machine's system libpq (< 17), for the
# fallback path. Both are loaded with the active twin (``PSYCANCEL_IMPL``).
# =====================================================================================


def _describe(lib: Libpq) -> str:
    major, minor = divmod(lib.version, 10000)
    return f"libpq {major}.{minor} at {lib.path} (PQcancelConn: {lib.has_cancel_conn})"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which server, which twin and which libpqs the tests run against."""
    lines = _server_header(config)
    lines.append(f"psycancel twin: {pq.__impl__} ({pq.PGconn.__module__})")
    new = _new_libpq_path()
    lines.append(f"new-API libpq: {_describe(Libpq.load(new)) if new else 'not built yet'}")
    legacy = _legacy_libpq_path()
    shown = _describe(Libpq.load(legacy)) if legacy else f"none (${SYSTEM_LIBPQ_ENV})"
    lines.append(f"legacy libpq: {shown}")
    return lines


@pytest.fixture(scope="session")
def libpq(pg_server: ServerLike) -> Libpq:
    """A libpq >= 17 (with the PQcancelConn API), loaded with the active twin."""
    path = _new_libpq_path()
    assert path, "the PostgreSQL build should exist once pg_server is up"
    lib = Libpq.load(path)
    assert lib.has_cancel_conn, f"{lib.path} has no PQcancelConn API"
    return lib


@pytest.fixture(scope="session")
def legacy_libpq() -> Libpq:
    """The system libpq (< 17, legacy PQcancel only), loaded with the active twin."""
    path = _legacy_libpq_path()
    if path is None:
        pytest.skip(f"{ALLOWED_SKIP} no legacy libpq here (${SYSTEM_LIBPQ_ENV}=none)")
    lib = Libpq.load(path)
    assert not lib.has_cancel_conn, f"{lib.path} is not a legacy libpq"
    return lib


# =====================================================================================
# In CI a skip is a failure
#
# A test that depends on something missing must make it available (the quickstart
# installs everything), so with CI=true (or PSYCANCEL_NO_SKIP=1) every skip is
# reported as a failure, except skips whose reason starts with ALLOWED_SKIP: those
# are not missing dependencies (e.g. a recursion guard in a child process).
# =====================================================================================


def _skips_fail() -> bool:
    flags = (os.environ.get("CI", ""), os.environ.get("PSYCANCEL_NO_SKIP", ""))
    return any(flag.strip().lower() in ("1", "true", "yes") for flag in flags)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Hand the tests marked ``long`` out first, spread over the workers.

    pytest-xdist's load scheduler starts each worker with a batch of consecutive
    tests (``len(items) // workers // 4`` of them, at least 2), then sends more as
    they finish. A 30 s test handed out last would be the only one still running
    at the end, and a suite's wall time (what the test command waits for) would
    grow by it. So the first batches start with them: those of one module
    together (they share its fixtures: a KDC, a PgBouncer farm, set up once per
    worker), the longest module first, each to the worker with the least so far.
    (Every worker computes the same order, as pytest-xdist requires.)
    """
    marked = [item for item in items if item.get_closest_marker("long")]
    if not marked:
        return
    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    workers = max(1, int(workerinput.get("workercount", 1)))

    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        return float(marker.args[0]) if marker is not None and marker.args else 5.0

    modules: dict[str, list[pytest.Item]] = {}
    for item in marked:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for group in sorted(modules.values(), key=lambda g: -sum(map(seconds, g))):
        min(shares, key=lambda share: sum(map(seconds, share))).extend(group)
    rest = [item for item in items if not item.get_closest_marker("long")]
    batch = max(2, len(items) // workers // 4)
    ordered: list[pytest.Item] = []
    for share in shares:
        fill = max(0, batch - len(share))
        ordered += share + rest[:fill]
        rest = rest[fill:]
    items[:] = ordered + rest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Turn skips into failures in CI (see above)."""
    report = yield
    if (
        report.skipped
        and _skips_fail()
        and not hasattr(report, "wasxfail")
        and ALLOWED_SKIP not in str(report.longrepr)
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true): {report.longrepr}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """The same for a whole module skipped at import (``allow_module_level``)."""
    report = yield
    if report.skipped and _skips_fail() and ALLOWED_SKIP not in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"module skipped in CI (CI=true): {report.longrepr}"
    return report


# =====================================================================================
# Both twins side by side (for the twin-level tests: parity, misuse, GIL, threads, fork)
# =====================================================================================


@pytest.fixture(params=["python", "c"])
def twin(request: pytest.FixtureRequest) -> ModuleType:
    """Each twin module in turn."""
    return _ctypes if request.param == "python" else compiled_twin()


@pytest.fixture
def new_libpq(twin: ModuleType) -> Any:
    """libpq >= 17 (with the PQcancelConn API), loaded by ``twin``."""
    path = new_libpq_path()
    if not os.path.exists(path):
        pytest.skip(f"no libpq >= 17 at {path!r}")
    lib = twin.Libpq.load(path)
    if not lib.has_cancel_conn:
        pytest.skip(f"{path} has no PQcancelConn API")
    return lib


@pytest.fixture
def old_libpq(twin: ModuleType) -> Any:
    """The system's libpq < 17 (legacy PQcancel only), loaded by ``twin``."""
    path = old_libpq_path()
    if not os.path.exists(path):
        pytest.skip(f"no legacy libpq at {path!r}")
    lib = twin.Libpq.load(path)
    if lib.has_cancel_conn:
        pytest.skip(f"{path} is not a legacy libpq")
    return lib


# =====================================================================================
# Parallel runs (pytest-xdist): every worker must collect the same test ids
#
# xdist compares the ids each worker collected and refuses to run when they
# differ. An ``ids=`` callable such as ``repr`` gives ``<object object at 0x7f..>``
# for a plain object, an address that differs from process to process; the hook
# below drops `` at 0x...`` from what such a callable returns (pytest then numbers
# any duplicates), so that the ids are the same in every process.
# =====================================================================================

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable_ids(ids: Callable[[Any], object]) -> Callable[[Any], object]:
    def stable(value: Any) -> object:
        text = ids(value)
        return _ADDRESS.sub("", text) if isinstance(text, str) else text

    return stable


@pytest.hookimpl(wrapper=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> Generator[None, None, None]:
    """Make ``ids=`` callables give ids without memory addresses (see above)."""
    original = metafunc.parametrize

    def parametrize(*args: Any, ids: Any = None, **kwargs: Any) -> None:
        if callable(ids):
            ids = _stable_ids(ids)
        original(*args, ids=ids, **kwargs)

    metafunc.parametrize = parametrize  # type: ignore[method-assign]
    try:
        return (yield)
    finally:
        del metafunc.parametrize
