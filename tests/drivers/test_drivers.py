"""Drop-in for drivers: psycopg2(-binary), aiopg, psycopg 3, and the driver protocol.

Real drivers against the real server, with the active twin. Each driver's
connection must be cancelled with *its own* libpq (psycopg2-binary bundles
libpq 17, psycopg[binary] libpq 18, both loaded in this process at once), and
a psycopg2 built against the system libpq 15 takes the legacy path under the
security policy (in a child process: see ``legacy_driver_script.py``).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.metadata
import os
import sysconfig
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import psycancel
from psycancel._drivers import owner as _owner
from psycancel._drivers.resolve import as_pgconn
from psycancel._engine import plan as _plan
from psycancel.pq import Libpq, PGconn
from psycancel.pq.abc import PGcancelConn
from psycancel.pq.libfind import library_file_of
from testing import client
from testing.client import Client
from tests.support.drivers import (
    LEGACY_PSYCOPG2_DIR,
    QUERY_CANCELED,
    SLEEP,
    Background,
    pgcode,
    run_legacy,
)
from tests.support.drivers import need as _need
from tests.support.queries import wait_until_active

psycopg2 = _need("psycopg2")
psycopg2_extensions = _need("psycopg2.extensions")
psycopg2_extras = _need("psycopg2.extras")
psycopg = _need("psycopg")
aiopg = _need("aiopg")

APIS = ["sync", "async"]

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
"""Neither binary wheel exists for a free-threaded CPython: there
``tools/install_test_drivers.sh`` builds psycopg2-binary's source and psycopg-c
against the PostgreSQL 18 build and repairs them with auditwheel, each with a
libpq 18 of its own (the binary wheels: psycopg2-binary 17, psycopg[binary] 18)."""
PSYCOPG_DIST = "psycopg-c" if FREE_THREADED else "psycopg-binary"
PSYCOPG_IMPL = "c" if FREE_THREADED else "binary"
PSYCOPG2_LIBPQ_MAJOR = 18 if FREE_THREADED else 17


# =====================================================================================
# Fixtures and helpers
# =====================================================================================


def bundled_libpq(distribution: str) -> Path:
    """The libpq a binary wheel bundles (in ``<name>.libs``, renamed by auditwheel)."""
    dist = importlib.metadata.distribution(distribution)
    found = [
        Path(str(dist.locate_file(f))).resolve()
        for f in dist.files or ()
        if f.parent.name.endswith(".libs") and f.name.startswith("libpq-")
    ]
    if len(found) != 1:
        pytest.fail(f"expected one bundled libpq in {distribution}, found {found}")
    return found[0]


@pytest.fixture
def monitor(libpq: Libpq, dsn_plain: str) -> Iterator[Client]:
    """A psycancel connection that watches ``pg_stat_activity``."""
    conn = client.connect(dsn_plain, libpq=libpq)
    try:
        yield conn
    finally:
        conn.finish()


@pytest.fixture
def used_libpqs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Libpq, PGcancelConn]]:
    """The (libpq, cancel connection) of every cancel the API makes."""
    made: list[tuple[Libpq, PGcancelConn]] = []
    original = _plan.new_cancel_conn

    def spy(pgconn: Any) -> PGcancelConn:
        cc = original(pgconn)
        made.append((pgconn.libpq, cc))
        return cc

    monkeypatch.setattr(_plan, "new_cancel_conn", spy)
    return made


def call_api(api: str, conn: object, **kwargs: Any) -> None:
    if api == "sync":
        psycancel.cancel(conn, **kwargs)
    else:
        asyncio.run(psycancel.cancel_async(conn, **kwargs))


def psycopg2_conn(dsn: str, **kwargs: Any) -> Any:
    conn = psycopg2.connect(dsn, **kwargs)
    if not kwargs.get("async_"):
        conn.autocommit = True
    return conn


class SyncDriver:
    """What a test needs from a blocking driver."""

    def __init__(self, name: str) -> None:
        self.name = name

    def connect(self, dsn: str) -> Any:
        if self.name == "psycopg2":
            return psycopg2_conn(dsn)
        return psycopg.connect(dsn, autocommit=True)

    def pid(self, conn: Any) -> int:
        return int(conn.info.backend_pid)

    def execute(self, conn: Any, query: str) -> Any:
        if self.name == "psycopg2":
            with conn.cursor() as cur:
                cur.execute(query)
                return cur.fetchall()
        return conn.execute(query).fetchall()

    def owner(self) -> Path:
        return bundled_libpq("psycopg2-binary" if self.name == "psycopg2" else PSYCOPG_DIST)

    def libpq_version(self) -> int:
        if self.name == "psycopg2":
            return int(psycopg2_extensions.libpq_version())
        return int(psycopg.pq.version())


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver(request: pytest.FixtureRequest) -> SyncDriver:
    return SyncDriver(request.param)


# =====================================================================================
# The owning libpq
# =====================================================================================


def test_psycopg2_binary_owner_is_its_bundled_libpq(dsn_plain: str, libpq: Libpq) -> None:
    conn = psycopg2_conn(dsn_plain)
    try:
        pgconn = as_pgconn(conn)
        assert pgconn.pgconn_ptr == conn.pgconn_ptr
        assert Path(pgconn.libpq.path) == bundled_libpq("psycopg2-binary")
        assert pgconn.libpq.version == psycopg2_extensions.libpq_version()
        assert pgconn.libpq.version // 10000 == PSYCOPG2_LIBPQ_MAJOR
        assert pgconn.libpq.has_cancel_conn
        assert pgconn.libpq.path != libpq.path
        assert pgconn.socket == conn.fileno()  # it reads the right struct
        assert type(pgconn) is PGconn and type(pgconn.libpq) is Libpq  # the active twin
    finally:
        conn.close()


def test_psycopg_binary_owner_is_its_bundled_libpq(dsn_plain: str, libpq: Libpq) -> None:
    assert psycopg.pq.__impl__ == PSYCOPG_IMPL
    conn = psycopg.connect(dsn_plain)
    try:
        pgconn = as_pgconn(conn)
        assert pgconn.pgconn_ptr == conn.pgconn.pgconn_ptr
        assert Path(pgconn.libpq.path) == bundled_libpq(PSYCOPG_DIST)
        assert pgconn.libpq.version == psycopg.pq.version()
        assert pgconn.libpq.path != libpq.path
        assert pgconn.socket == conn.fileno()
        # psycopg's own PGconn object is accepted too.
        assert as_pgconn(conn.pgconn).libpq is pgconn.libpq
    finally:
        conn.close()


def test_two_drivers_two_libpqs_in_one_process(dsn_plain: str) -> None:
    c2 = psycopg2_conn(dsn_plain)
    c3 = psycopg.connect(dsn_plain)
    try:
        lib2, lib3 = as_pgconn(c2).libpq, as_pgconn(c3).libpq
        assert lib2.path != lib3.path
        assert {lib2.version // 10000, lib3.version // 10000} == {PSYCOPG2_LIBPQ_MAJOR, 18}
        # Neither is psycancel's default libpq.
        assert os.path.realpath(Libpq.load().path) not in (lib2.path, lib3.path)
    finally:
        c2.close()
        c3.close()


def test_owner_is_cached_per_extension_module(dsn_plain: str) -> None:
    ext = psycopg2._psycopg
    assert _owner.libpq_of_extension(ext) is _owner.libpq_of_extension(ext)
    conn = psycopg2_conn(dsn_plain)
    try:
        assert as_pgconn(conn).libpq is _owner.libpq_of_extension(ext)
    finally:
        conn.close()


def test_owner_follows_the_dynamic_linker(dsn_plain: str, libpq: Libpq) -> None:
    """A source-built psycopg2 (libpq.so.5) binds to whichever libpq.so.5 is loaded first.

    Loaded alone it uses the system libpq (< 17); imported after psycancel
    loaded libpq 18 (same soname) it uses that one. The owner follows the
    binding, not a file name.
    """
    alone = run_legacy("owner", {"dsn": dsn_plain})
    assert alone["driver_file"].startswith(str(LEGACY_PSYCOPG2_DIR))
    assert alone["owner_version"] == alone["driver_libpq_version"] < 170000
    assert not alone["owner_has_cancel_conn"]
    assert alone["owner_path"] == os.path.realpath(_legacy_system_libpq())
    assert alone["ptr_matches"] and alone["socket_matches"]

    after = run_legacy("owner", {"dsn": dsn_plain, "load_first": libpq.path})
    if not os.path.basename(libpq.path).startswith("libpq.so"):
        # A wheel's bundled copy is renamed, soname included (libpq-<hash>.so.5.18):
        # nothing that asks for libpq.so.5 binds to it, and the owner says so.
        assert after["owner_version"] == after["driver_libpq_version"] < 170000
        assert after["owner_path"] == alone["owner_path"]
        return
    assert after["owner_version"] == after["driver_libpq_version"] == libpq.version
    assert after["owner_path"] == libpq.path


def _legacy_system_libpq() -> str:
    from psycancel.pq.libfind import system_libpq_path

    path = system_libpq_path()
    assert path
    return path


# =====================================================================================
# Cancelling running queries: blocking drivers (a query in a thread)
# =====================================================================================


@pytest.mark.parametrize("api", APIS)
def test_cancel_running_query(
    api: str,
    driver: SyncDriver,
    dsn: str,
    monitor: Client,
    used_libpqs: list[tuple[Libpq, PGcancelConn]],
) -> None:
    conn = driver.connect(dsn)
    try:
        assert as_pgconn(conn).ssl_in_use == ("sslmode=disable" not in dsn)
        query = Background(lambda: driver.execute(conn, SLEEP))
        wait_until_active(monitor, driver.pid(conn))
        t0 = time.monotonic()
        call_api(api, conn, timeout=10)
        error = query.error()
        assert time.monotonic() - t0 < 5
        assert pgcode(error) == QUERY_CANCELED, error
        assert driver.execute(conn, "select 42") == [(42,)]
    finally:
        conn.close()
    # The cancel was made by the driver's own libpq, and finished.
    assert len(used_libpqs) == 1
    lib, cc = used_libpqs[0]
    assert Path(lib.path) == driver.owner()
    assert lib.version == driver.libpq_version()
    assert cc.closed


def test_encrypted_cancel_has_no_warning_even_strict(
    driver: SyncDriver, dsn_tls: str, monitor: Client
) -> None:
    """libpq >= 17 in the driver: the cancel is encrypted, the policy has nothing to say."""
    conn = driver.connect(dsn_tls)
    try:
        query = Background(lambda: driver.execute(conn, SLEEP))
        wait_until_active(monitor, driver.pid(conn))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            psycancel.cancel(conn, timeout=10, strict=True)
        assert pgcode(query.error()) == QUERY_CANCELED
    finally:
        conn.close()


@pytest.mark.parametrize("api", APIS)
def test_cancel_idle_connection(api: str, driver: SyncDriver, dsn_plain: str) -> None:
    conn = driver.connect(dsn_plain)
    try:
        call_api(api, conn)
        assert driver.execute(conn, "select 1") == [(1,)]
    finally:
        conn.close()


def test_psycopg2_async_mode_connection(dsn_plain: str) -> None:
    """A psycopg2 ``async_=True`` connection (what aiopg wraps) is accepted as is."""
    conn = psycopg2_conn(dsn_plain, async_=True)
    try:
        psycopg2_extras.wait_select(conn)
        pgconn = as_pgconn(conn)
        assert Path(pgconn.libpq.path) == bundled_libpq("psycopg2-binary")
        psycancel.cancel(conn)
    finally:
        conn.close()


# =====================================================================================
# Async drivers: psycopg AsyncConnection, aiopg
# =====================================================================================


class Ticker:
    """Measures the largest gap between ticks of a busy coroutine on the loop."""

    def __init__(self) -> None:
        self.gap = 0.0
        self.ticks = 0
        self._done = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while not self._done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.gap, last, self.ticks = max(self.gap, now - last), now, self.ticks + 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._done = True
        assert self._task is not None
        await self._task


async def wait_active_async(monitor: Client, pid: int) -> None:
    await asyncio.to_thread(wait_until_active, monitor, pid)


@pytest.mark.parametrize("api", ["cancel_async", "cancel_in_thread"])
def test_psycopg_async_connection(
    api: str, dsn: str, monitor: Client, used_libpqs: list[tuple[Libpq, PGcancelConn]]
) -> None:
    async def main() -> None:
        aconn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            query = asyncio.create_task(aconn.execute(SLEEP))
            await wait_active_async(monitor, aconn.info.backend_pid)
            if api == "cancel_async":
                await psycancel.cancel_async(aconn, timeout=10)
            else:
                await asyncio.to_thread(psycancel.cancel, aconn, timeout=10)
            with pytest.raises(psycopg.errors.QueryCanceled):
                await query
            cur = await aconn.execute("select 1")
            assert await cur.fetchone() == (1,)
        finally:
            await aconn.close()

    asyncio.run(main())
    assert [Path(lib.path) for lib, _ in used_libpqs] == [bundled_libpq(PSYCOPG_DIST)]


@pytest.mark.parametrize("sslmode", ["disable", "require", "verify-full"])
@pytest.mark.parametrize("via", ["connection", "raw"])
def test_aiopg_cancel_from_another_task_without_blocking(
    via: str,
    sslmode: str,
    pg_server: Any,
    proxy: Callable[[], Any],
    monitor: Client,
    used_libpqs: list[tuple[Libpq, PGcancelConn]],
) -> None:
    """The loop keeps ticking while the cancel of an aiopg query waits.

    The connection goes through a loopback proxy that, once the session is
    up, adds ``delay`` to every chunk each way: the cancel request then takes
    at least ``2 * delay`` (and a TLS one several round trips), which a
    blocking cancel would spend inside the loop.
    """
    # (0.1 s: a loaded machine's own loop gaps, up to 0.18 s, came too close; 0.3 s:
    # a 0.55 s gap with three suites at a time, load 10. A blocking cancel: >= 1 s.)
    delay = 0.5
    px = proxy()

    async def main() -> Ticker:
        conn = await aiopg.connect(px.dsn(pg_server, sslmode))
        try:
            cur = await conn.cursor()
            query = asyncio.create_task(cur.execute(SLEEP))
            await wait_active_async(monitor, conn.raw.info.backend_pid)
            px.delay = delay
            ticker = Ticker()
            ticker.start()
            await asyncio.sleep(0.02)
            t0 = time.perf_counter()
            await psycancel.cancel_async(conn if via == "connection" else conn.raw, timeout=10)
            assert time.perf_counter() - t0 >= 2 * delay
            await asyncio.sleep(0.02)
            await ticker.stop()
            # aiopg reports a server-side cancel as CancelledError, raised
            # while handling psycopg2's QueryCanceled.
            with pytest.raises(asyncio.CancelledError) as info:
                await query
            assert pgcode(info.value.__context__) == QUERY_CANCELED
            await cur.execute("select 1")
            assert await cur.fetchone() == (1,)
            return ticker
        finally:
            conn.close()

    ticker = asyncio.run(main())
    assert ticker.ticks > 10
    # A cancel that blocked the loop would show one gap of >= 2 * delay.
    assert ticker.gap < 1.5 * delay, f"largest loop gap {ticker.gap * 1000:.1f} ms"
    assert [Path(lib.path) for lib, _ in used_libpqs] == [bundled_libpq("psycopg2-binary")]


# =====================================================================================
# The legacy path: psycopg2 built against the system libpq (< 17), in a child
# =====================================================================================


@pytest.mark.parametrize("api", ["sync", "async", "trio"])
@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_legacy_plain_cancels_silently(api: str, strict: bool, dsn_plain: str) -> None:
    res = run_legacy(
        "cancel", {"dsn": dsn_plain, "monitor_dsn": dsn_plain, "api": api, "strict": strict}
    )
    assert res["owner_version"] < 170000 and not res["owner_has_cancel_conn"]
    assert not res["ssl_in_use"]
    assert res["errors"] == [] and res["warnings"] == []
    assert not res["still_running_after_api"]
    assert res["query_pgcode"] == QUERY_CANCELED
    assert res["after"] == 1


@pytest.mark.parametrize("api", ["sync", "async", "trio"])
def test_legacy_tls_warns(api: str, dsn_tls: str, dsn_plain: str) -> None:
    res = run_legacy(
        "cancel", {"dsn": dsn_tls, "monitor_dsn": dsn_plain, "api": api, "strict": False}
    )
    assert res["ssl_in_use"]
    assert res["warnings"] == ["InsecureCancelWarning"]
    assert "clear text" in res["messages"][0]
    assert res["owner_path"] in res["messages"][0]
    assert res["errors"] == []
    assert res["query_pgcode"] == QUERY_CANCELED
    assert res["after"] == 1
    if api == "sync":  # the warning points at the caller
        assert res["warning_files"][0].endswith("legacy_driver_child.py")


@pytest.mark.parametrize("api", ["sync", "async", "trio"])
def test_legacy_tls_strict_refuses(api: str, dsn_tls: str, dsn_plain: str) -> None:
    res = run_legacy(
        "cancel", {"dsn": dsn_tls, "monitor_dsn": dsn_plain, "api": api, "strict": True}
    )
    assert res["errors"] == ["InsecureCancelError"]
    assert res["warnings"] == []
    # Nothing was sent: the query was still running after the refusal.
    assert res["still_running_after_api"]
    assert res["after"] == 1


@pytest.mark.parametrize("dsn_name", ["dsn_plain", "dsn_tls"])
def test_legacy_aiopg(dsn_name: str, request: pytest.FixtureRequest, dsn_plain: str) -> None:
    dsn = request.getfixturevalue(dsn_name)
    res = run_legacy("aiopg", {"dsn": dsn, "monitor_dsn": dsn_plain})
    assert res["owner_version"] < 170000
    assert res["query_pgcode"] == QUERY_CANCELED
    assert res["after"] == 1
    expected = ["InsecureCancelWarning"] if dsn_name == "dsn_tls" else []
    assert res["warnings"] == expected


@pytest.mark.parametrize("api", ["sync", "async"])
def test_psycopg_python_implementation(api: str, dsn_tls: str, dsn_plain: str) -> None:
    """psycopg's ctypes implementation: the owner is the libpq its ctypes loaded."""
    res = run_legacy(
        "psycopg_python",
        {"dsn": dsn_tls, "monitor_dsn": dsn_plain, "api": api},
        env={"PSYCOPG_IMPL": "python"},
        legacy_psycopg2=False,
    )
    assert res["owner_version"] == res["psycopg_libpq_version"]
    assert res["owner_path"] == os.path.realpath(_legacy_system_libpq())
    assert not res["owner_has_cancel_conn"]
    assert res["warnings"] == ["InsecureCancelWarning"]  # TLS on a libpq < 17
    assert res["query_sqlstate"] == QUERY_CANCELED
    assert res["after"] == 1


# =====================================================================================
# Not a connection, closed connections
# =====================================================================================


class LookAlike:
    """Has the attributes of a psycopg2 connection, but is not one: refused."""

    pgconn_ptr = 12345
    closed = 0


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "bad",
    [object(), LookAlike(), "dbname=x", 42, 3.5, b"x", [], {}],
    ids=["object", "lookalike", "str", "int", "float", "bytes", "list", "dict"],
)
def test_unknown_objects(api: str, bad: object) -> None:
    with pytest.raises(psycancel.InterfaceError, match="cannot cancel"):
        call_api(api, bad)


@pytest.mark.parametrize("api", APIS)
def test_psycopg2_cursor_is_not_a_connection(api: str, dsn_plain: str) -> None:
    conn = psycopg2_conn(dsn_plain)
    try:
        with pytest.raises(psycancel.InterfaceError, match="cannot cancel"):
            call_api(api, conn.cursor())
    finally:
        conn.close()


def _closed_psycopg2(dsn: str) -> Any:
    conn = psycopg2_conn(dsn)
    conn.close()
    return conn


def _closed_psycopg(dsn: str) -> Any:
    conn = psycopg.connect(dsn)
    conn.close()
    return conn


def _closed_psycopg_pgconn(dsn: str) -> Any:
    conn = psycopg.connect(dsn)
    conn.close()
    return conn.pgconn


def _closed_psycopg_async(dsn: str) -> Any:
    async def main() -> Any:
        conn = await psycopg.AsyncConnection.connect(dsn)
        await conn.close()
        return conn

    return asyncio.run(main())


def _closed_aiopg(dsn: str) -> Any:
    async def main() -> Any:
        conn = await aiopg.connect(dsn)
        await conn.close()
        return conn

    return asyncio.run(main())


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "make",
    [
        _closed_psycopg2,
        _closed_psycopg,
        _closed_psycopg_pgconn,
        _closed_psycopg_async,
        _closed_aiopg,
    ],
    ids=["psycopg2", "psycopg", "psycopg-pgconn", "psycopg-async", "aiopg"],
)
def test_closed_driver_connections(
    api: str,
    make: Callable[[str], Any],
    dsn_plain: str,
    used_libpqs: list[tuple[Libpq, PGcancelConn]],
) -> None:
    """A closed connection runs no query: nothing to cancel, nothing is sent."""
    conn = make(dsn_plain)
    assert call_api(api, conn) is None  # type: ignore[func-returns-value]
    assert used_libpqs == []


# =====================================================================================
# The driver protocol: __psycancel_pgconn__
# =====================================================================================


class ProtocolConn:
    """A driver connection that implements the protocol."""

    def __init__(self, answer: Callable[[], object]) -> None:
        self._answer = answer

    def __psycancel_pgconn__(self) -> object:
        return self._answer()


@pytest.mark.parametrize("form", ["tuple", "pathlike", "pgconn"])
@pytest.mark.parametrize("api", APIS)
def test_protocol_cancels(
    form: str,
    api: str,
    dsn_tls: str,
    monitor: Client,
    used_libpqs: list[tuple[Libpq, PGcancelConn]],
) -> None:
    raw = psycopg2_conn(dsn_tls)
    path = str(bundled_libpq("psycopg2-binary"))

    def answer() -> object:
        if form == "tuple":
            return (raw.pgconn_ptr, path)
        if form == "pathlike":
            return (raw.pgconn_ptr, Path(path))
        return PGconn.from_ptr(raw.pgconn_ptr, Libpq.load(path))

    try:
        query = Background(lambda: raw.cursor().execute(SLEEP))
        wait_until_active(monitor, raw.info.backend_pid)
        call_api(api, ProtocolConn(answer), timeout=10)
        assert pgcode(query.error()) == QUERY_CANCELED
    finally:
        raw.close()
    assert [Path(lib.path) for lib, _ in used_libpqs] == [Path(path)]


def _libc_path() -> str:
    libc = ctypes.CDLL(None)
    path = library_file_of(ctypes.cast(libc.printf, ctypes.c_void_p).value or 0)
    assert path
    return path


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda: (1234, "/nonexistent/libpq.so.5"), "not loaded"),
        (lambda: (1234, "libpq.so.5"), "absolute"),
        (lambda: (1234, _libc_path()), "not a libpq"),
        (lambda: ("1234", "/x/libpq.so"), "must be an int"),
        (lambda: (1234, 5), "must be a str"),
        (lambda: 1234, "must return"),
        (lambda: (1, 2, 3), "must return"),
        (lambda: None, "must return"),
    ],
    ids=[
        "not-loaded",
        "relative",
        "not-libpq",
        "str-ptr",
        "int-path",
        "int",
        "triple",
        "none",
    ],
)
def test_protocol_bad_answers(answer: Callable[[], object], match: str) -> None:
    with pytest.raises(psycancel.InterfaceError, match=match):
        psycancel.cancel(ProtocolConn(answer))


@pytest.mark.parametrize("ptr", [None, 0], ids=["none-ptr", "zero-ptr"])
def test_protocol_null_pointer_means_closed(
    ptr: int | None, used_libpqs: list[tuple[Libpq, PGcancelConn]]
) -> None:
    """A NULL address is the protocol's "closed": nothing to cancel, nothing sent."""
    psycancel.cancel(ProtocolConn(lambda: (ptr, "/x/libpq.so")))
    assert used_libpqs == []


def test_protocol_can_report_closed_by_raising() -> None:
    def answer() -> object:
        raise psycancel.InterfaceError("the connection is closed")

    with pytest.raises(psycancel.InterfaceError, match="closed"):
        psycancel.cancel(ProtocolConn(answer))


def test_protocol_returning_a_finished_pgconn(
    dsn_plain: str, libpq: Libpq, used_libpqs: list[tuple[Libpq, PGcancelConn]]
) -> None:
    conn = client.connect(dsn_plain, libpq=libpq)
    conn.finish()
    psycancel.cancel(ProtocolConn(lambda: conn.pgconn))  # closed: nothing to cancel
    assert used_libpqs == []
