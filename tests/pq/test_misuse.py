"""Misuse of the libpq objects raises, in both twins; it never crashes.

Use after finish, double finish, start twice, poll before start, NULL or
non-int pointers, a libpq of the other twin, a closed connection, a libpq
without the PQcancelConn API, a connection that failed, calling a class
directly, getters racing finish()... Every case is run against the ctypes
twin and the compiled twin, on a real server and a real libpq (nothing is
mocked). The whole file is also run once more under ``python -X dev``
(debug memory allocator hooks, faulthandler) with ``MALLOC_PERTURB_`` (freed
C memory is overwritten), in a child.
"""

from __future__ import annotations

import copy
import ctypes.util
import gc
import os
import pickle
import random
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from psycancel.errors import CancelError, InterfaceError, OperationalError
from psycancel.pq import _ctypes
from psycancel.pq.enums import ConnStatus, PollingStatus
from testing import client
from tests.support.twins import compiled_twin, new_libpq_path

ENV_CHILD = "PSYCANCEL_TEST_MISUSE_CHILD"
"""Set in the ``python -X dev`` child run, which must not start another child."""

# =====================================================================================
# Fixtures
# =====================================================================================


@pytest.fixture
def other_twin(twin: ModuleType) -> ModuleType:
    """The twin that is not ``twin``."""
    return compiled_twin() if twin is _ctypes else _ctypes


@pytest.fixture
def conn(twin: ModuleType, new_libpq: Any, dsn_plain: str) -> Iterator[Any]:
    """An open, idle client connection (plain TCP) with libpq >= 17; ``.pgconn`` is of ``twin``."""
    conn = client.connect(dsn_plain, libpq=new_libpq)
    try:
        yield conn
    finally:
        conn.finish()


def run(conn: Any, query: str) -> Any:
    conn.send_query(query)
    first = conn.get_result()
    while conn.get_result() is not None:
        pass
    return first


def refused_port() -> int:
    """A loopback port where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def failed_connection(twin: ModuleType, lib: Any) -> Any:
    """A client connection whose non-blocking attempt failed (status BAD)."""
    conn = client.connect_start(
        f"host=127.0.0.1 port={refused_port()} sslmode=disable connect_timeout=5", libpq=lib
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = conn.connect_poll()
        if st == PollingStatus.FAILED:
            return conn
        assert st != PollingStatus.OK
        fd = conn.socket
        if fd >= 0:
            waits: tuple[list[int], list[int], list[int]] = (
                ([fd], [], []) if st == PollingStatus.READING else ([], [fd], [])
            )
            select.select(*waits, 1)
    raise AssertionError("the connection attempt did not fail")


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


# =====================================================================================
# Use after finish: every member but finish()/closed raises InterfaceError
# =====================================================================================

# Members that do not touch libpq and are allowed after finish(): the closed
# flag, finish itself, the constructor, and which libpq the object belongs to.
PGCONN_EXEMPT = {"finish", "closed", "from_ptr", "libpq"}
PGCONN_CALLS: dict[str, Callable[[Any], object]] = {
    "pgconn_ptr": lambda c: c.pgconn_ptr,
    "status": lambda c: c.status,
    "error_message": lambda c: c.error_message,
    "socket": lambda c: c.socket,
    "ssl_in_use": lambda c: c.ssl_in_use,
    "gss_enc_in_use": lambda c: c.gss_enc_in_use,
    "backend_pid": lambda c: c.backend_pid,
    "conninfo_option": lambda c: c.conninfo_option("host"),
    "cancel_conn": lambda c: c.cancel_conn(),
    "get_cancel": lambda c: c.get_cancel(),
}
CANCEL_CONN_EXEMPT = {"finish", "closed"}
CANCEL_CONN_CALLS: dict[str, Callable[[Any], object]] = {
    "status": lambda cc: cc.status,
    "socket": lambda cc: cc.socket,
    "error_message": lambda cc: cc.error_message,
    "start": lambda cc: cc.start(),
    "poll": lambda cc: cc.poll(),
    "blocking": lambda cc: cc.blocking(),
    "reset": lambda cc: cc.reset(),
}
CANCEL_EXEMPT = {"free", "closed"}
CANCEL_CALLS: dict[str, Callable[[Any], object]] = {"cancel": lambda h: h.cancel()}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_tables_cover_every_member(twin: ModuleType) -> None:
    """A new public member must be added to the use-after-finish tables."""
    assert public(twin.PGconn) == set(PGCONN_CALLS) | PGCONN_EXEMPT
    assert public(twin.PGcancelConn) == set(CANCEL_CONN_CALLS) | CANCEL_CONN_EXEMPT
    assert public(twin.PGcancel) == set(CANCEL_CALLS) | CANCEL_EXEMPT


def assert_all_raise(obj: Any, calls: dict[str, Callable[[Any], object]]) -> None:
    for name, call in calls.items():
        with pytest.raises(InterfaceError):
            call(obj)
            pytest.fail(f"{name} did not raise after finish")


@pytest.mark.parametrize("libpq_kind", ["new", "old"])
def test_pgconn_after_finish(
    twin: ModuleType, libpq_kind: str, request: pytest.FixtureRequest, dsn_plain: str
) -> None:
    lib = request.getfixturevalue(f"{libpq_kind}_libpq")
    made = client.connect(dsn_plain, libpq=lib)
    try:
        conn = made.pgconn  # the borrowed wrapper: finish() only forgets the pointer
        assert type(conn) is twin.PGconn
        conn.finish()
        assert conn.closed is True
        assert_all_raise(conn, PGCONN_CALLS)
        conn.finish()  # idempotent
        assert conn.closed is True
        assert conn.libpq is lib
        assert "closed" in repr(conn)
        assert run(made, "select 1").rows == (("1",),)  # the connection is still open
    finally:
        made.finish()


def test_pgconn_finish_twice_from_start(twin: ModuleType, new_libpq: Any, dsn_plain: str) -> None:
    made = client.connect_start(dsn_plain, libpq=new_libpq)
    try:
        made.pgconn.finish()
        made.pgconn.finish()
        assert_all_raise(made.pgconn, PGCONN_CALLS)
    finally:
        made.finish()


def test_client_finish_closes_its_pgconn(twin: ModuleType, conn: Any) -> None:
    """The client forgets its wrapper's pointer before PQfinish: nothing cancels a freed one."""
    pg = conn.pgconn
    conn.finish()
    assert pg.closed is True
    assert_all_raise(pg, PGCONN_CALLS)


def test_borrowed_pgconn_after_finish(twin: ModuleType, conn: Any) -> None:
    borrowed = twin.PGconn.from_ptr(conn.pgconn_ptr, conn.libpq)
    assert borrowed.status == ConnStatus.OK and borrowed.pgconn_ptr == conn.pgconn_ptr
    borrowed.finish()
    borrowed.finish()
    assert borrowed.closed
    assert_all_raise(borrowed, PGCONN_CALLS)
    # Finishing (or collecting) a borrowed PGconn leaves the connection open.
    again = twin.PGconn.from_ptr(conn.pgconn_ptr, conn.libpq)
    del again
    gc.collect()
    assert conn.status == ConnStatus.OK
    assert run(conn, "select 8").rows == (("8",),)


def drive(cc: Any, timeout: float = 10.0) -> PollingStatus:
    """Poll a started cancel connection to its end, waiting on its socket."""
    st = PollingStatus.WRITING
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fd = cc.socket
        if fd >= 0:
            waits: tuple[list[int], list[int], list[int]] = (
                ([fd], [], []) if st == PollingStatus.READING else ([], [fd], [])
            )
            select.select(*waits, 1)
        st = PollingStatus(cc.poll())
        if st in (PollingStatus.OK, PollingStatus.FAILED):
            return st
    raise AssertionError("the cancel request did not end")


@pytest.mark.parametrize("state", ["allocated", "started", "polled", "blocking", "reset"])
def test_cancel_conn_after_finish(twin: ModuleType, conn: Any, state: str) -> None:
    cc = conn.pgconn.cancel_conn()
    if state == "started":
        cc.start()
    elif state == "polled":
        cc.start()
        assert drive(cc) == PollingStatus.OK
    elif state == "blocking":
        cc.blocking()
    elif state == "reset":
        cc.blocking()
        cc.reset()
    cc.finish()
    assert cc.closed is True
    assert_all_raise(cc, CANCEL_CONN_CALLS)
    cc.finish()  # idempotent
    assert cc.closed is True
    assert "finished" in repr(cc)
    # The connection is not affected.
    assert run(conn, "select 1").rows == (("1",),)


@pytest.mark.parametrize("libpq_kind", ["new", "old"])
def test_cancel_handle_after_free(
    twin: ModuleType, libpq_kind: str, request: pytest.FixtureRequest, dsn_plain: str
) -> None:
    lib = request.getfixturevalue(f"{libpq_kind}_libpq")
    conn = client.connect(dsn_plain, libpq=lib)
    try:
        handle = conn.pgconn.get_cancel()
        handle.cancel()  # an idle connection: harmless
        handle.free()
        assert handle.closed is True
        assert_all_raise(handle, CANCEL_CALLS)
        handle.free()  # idempotent
        assert "freed" in repr(handle)
        # A handle outlives the connection it came from (it is a copy).
        handle2 = conn.pgconn.get_cancel()
        conn.finish()
        handle2.cancel()  # the server refuses nothing: no backend has the key now
        handle2.free()
    finally:
        conn.finish()


# =====================================================================================
# The cancel connection's state machine
# =====================================================================================


def test_start_twice(twin: ModuleType, conn: Any) -> None:
    cc = conn.pgconn.cancel_conn()
    try:
        cc.start()
        with pytest.raises(InterfaceError, match="start"):
            cc.start()
        with pytest.raises(InterfaceError, match="blocking"):
            cc.blocking()
        assert drive(cc) == PollingStatus.OK
        with pytest.raises(InterfaceError):
            cc.start()
        cc.reset()
        assert cc.status == ConnStatus.ALLOCATED
        cc.start()  # allowed again after reset()
        assert drive(cc) == PollingStatus.OK
    finally:
        cc.finish()


def test_blocking_twice(twin: ModuleType, conn: Any) -> None:
    cc = conn.pgconn.cancel_conn()
    try:
        cc.blocking()
        assert cc.status == ConnStatus.OK
        with pytest.raises(InterfaceError, match="status OK"):
            cc.blocking()
        with pytest.raises(InterfaceError):
            cc.start()
        cc.reset()
        cc.blocking()
    finally:
        cc.finish()


def test_poll_before_start(twin: ModuleType, conn: Any) -> None:
    cc = conn.pgconn.cancel_conn()
    try:
        with pytest.raises(InterfaceError, match="before start"):
            cc.poll()
        cc.start()
        cc.reset()
        with pytest.raises(InterfaceError, match="before start"):
            cc.poll()
    finally:
        cc.finish()


def test_reset_is_allowed_in_every_state(twin: ModuleType, conn: Any) -> None:
    cc = conn.pgconn.cancel_conn()
    try:
        cc.reset()  # fresh
        cc.reset()  # twice
        cc.start()
        cc.reset()  # started, not polled
        assert cc.socket == -1
        cc.blocking()
        cc.reset()  # done
        assert cc.status == ConnStatus.ALLOCATED
    finally:
        cc.finish()


# =====================================================================================
# Pointers and libpqs
# =====================================================================================


@pytest.mark.parametrize(
    "ptr", [0, -1, None, "x", b"\x01", 1.5, True, False, [], object()], ids=repr
)
def test_from_ptr_rejects_bad_pointers(twin: ModuleType, new_libpq: Any, ptr: object) -> None:
    with pytest.raises(InterfaceError):
        twin.PGconn.from_ptr(ptr, new_libpq)


def test_from_ptr_out_of_range(twin: ModuleType, new_libpq: Any) -> None:
    """An address that does not fit a pointer is refused."""
    with pytest.raises(InterfaceError, match="not a valid address"):
        twin.PGconn.from_ptr(2**64, new_libpq)
    with pytest.raises(InterfaceError, match="not a valid address"):
        twin.PGconn.from_ptr(2**200, new_libpq)


@pytest.mark.parametrize("bad", ["other-twin", None, "path", 42, "module"])
def test_wrong_libpq_type(
    twin: ModuleType, other_twin: ModuleType, conn: Any, dsn_plain: str, bad: str
) -> None:
    lib: object = {
        "other-twin": other_twin.Libpq.load(new_libpq_path()),
        None: None,
        "path": new_libpq_path(),
        42: 42,
        "module": twin,
    }[bad]
    with pytest.raises(InterfaceError, match="same twin"):
        twin.PGconn.from_ptr(conn.pgconn_ptr, lib)


def test_closed_pgconn_cannot_make_cancel_objects(
    twin: ModuleType, new_libpq: Any, dsn_plain: str
) -> None:
    conn = client.connect(dsn_plain, libpq=new_libpq)
    borrowed = twin.PGconn.from_ptr(conn.pgconn_ptr, new_libpq)
    borrowed.finish()
    conn.finish()
    for closed in (conn.pgconn, borrowed):
        with pytest.raises(InterfaceError, match="closed"):
            closed.cancel_conn()
        with pytest.raises(InterfaceError, match="closed"):
            closed.get_cancel()


def test_cancel_conn_on_legacy_libpq(twin: ModuleType, old_libpq: Any, dsn_plain: str) -> None:
    conn = client.connect(dsn_plain, libpq=old_libpq)
    try:
        with pytest.raises(InterfaceError, match=r"needs libpq >= 17"):
            conn.pgconn.cancel_conn()
        # The legacy handle works there.
        handle = conn.pgconn.get_cancel()
        handle.cancel()
        handle.free()
        assert run(conn, "select 1").rows == (("1",),)
    finally:
        conn.finish()


def test_load_errors(twin: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(OSError):
        twin.Libpq.load(tmp_path / "no-such-libpq.so.5")
    not_a_library = tmp_path / "libpq.so.5"
    not_a_library.write_bytes(b"not an ELF file")
    with pytest.raises(OSError):
        twin.Libpq.load(not_a_library)
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to load")
    with pytest.raises(InterfaceError, match="not a libpq"):
        twin.Libpq.load(libm)


def test_load_caches_one_instance_per_file(twin: ModuleType, new_libpq: Any) -> None:
    real = os.path.realpath(new_libpq_path())
    assert new_libpq.path == real
    assert twin.Libpq.load(real) is new_libpq
    assert twin.Libpq.load(Path(new_libpq_path())) is new_libpq
    assert twin.Libpq.load(new_libpq_path()) is new_libpq


def test_connect_failure(twin: ModuleType, new_libpq: Any) -> None:
    """The tests' client reports libpq's reason (its failures never reach psycancel)."""
    with pytest.raises(OperationalError, match=r"connection failed: .*refused"):
        client.connect(f"host=127.0.0.1 port={refused_port()} sslmode=disable", libpq=new_libpq)
    with pytest.raises(OperationalError, match="connection failed"):
        client.connect_start("this is not a conninfo", libpq=new_libpq)


def test_query_failure(twin: ModuleType, conn: Any) -> None:
    conn.send_query("select pg_sleep(0)")
    with pytest.raises(OperationalError, match="another command"):
        conn.send_query("select 1")
    while conn.get_result() is not None:
        pass
    assert run(conn, "select 2").rows == (("2",),)


# =====================================================================================
# Cancel objects of connections that are not open
# =====================================================================================


def test_cancel_conn_of_failed_connection(twin: ModuleType, new_libpq: Any) -> None:
    conn = failed_connection(twin, new_libpq)
    try:
        assert conn.status == ConnStatus.BAD
        cc = conn.pgconn.cancel_conn()  # PQcancelCreate: an object in state BAD, not NULL
        assert cc.status == ConnStatus.BAD
        assert cc.error_message  # libpq's reason ("connection not open")
        with pytest.raises(CancelError, match=re.escape(cc.error_message)):
            cc.start()
        with pytest.raises(CancelError):
            cc.blocking()
        with pytest.raises(InterfaceError, match="before start"):
            cc.poll()
        cc.finish()
        cc.finish()
        with pytest.raises(InterfaceError, match="no cancel information"):
            conn.pgconn.get_cancel()
    finally:
        conn.finish()


def test_cancel_conn_of_connection_in_progress(
    twin: ModuleType, new_libpq: Any, dsn_plain: str
) -> None:
    conn = client.connect_start(dsn_plain, libpq=new_libpq)
    try:
        cc = conn.pgconn.cancel_conn()  # no cancel key received yet
        assert cc.status == ConnStatus.BAD
        assert cc.error_message
        with pytest.raises(CancelError):
            cc.start()
        cc.finish()
    finally:
        conn.finish()


# =====================================================================================
# Garbage collection and threads
# =====================================================================================


def test_gc_finishes_cancel_objects(twin: ModuleType, conn: Any) -> None:
    before = open_fds()
    for _ in range(20):
        cc = conn.pgconn.cancel_conn()
        cc.start()  # a socket is open now
        assert cc.socket >= 0
        del cc
        handle = conn.pgconn.get_cancel()
        del handle
    gc.collect()
    assert open_fds() - before == set()


def test_gc_of_the_connection_leaves_cancel_objects_usable(
    twin: ModuleType, new_libpq: Any, dsn_plain: str
) -> None:
    before = open_fds()
    for _ in range(5):
        conn = client.connect(dsn_plain, libpq=new_libpq)
        cc = conn.pgconn.cancel_conn()
        del conn  # the cancel object does not need its connection any more
        cc.blocking()
        del cc
    gc.collect()
    assert open_fds() - before == set()


def test_cancel_conn_outlives_the_connection(
    twin: ModuleType, new_libpq: Any, dsn_plain: str
) -> None:
    conn = client.connect(dsn_plain, libpq=new_libpq)
    cc = conn.pgconn.cancel_conn()
    conn.finish()
    cc.blocking()  # the request reaches the server; there is nothing left to cancel
    assert cc.status == ConnStatus.OK
    cc.finish()


def test_concurrent_misuse_does_not_crash(twin: ModuleType, conn: Any) -> None:
    """Threads racing start/poll/reset/finish/getters on one object: only exceptions."""
    ops: list[Callable[[Any], object]] = [
        lambda cc: cc.status,
        lambda cc: cc.socket,
        lambda cc: cc.error_message,
        lambda cc: cc.start(),
        lambda cc: cc.poll(),
        lambda cc: cc.reset(),
        lambda cc: cc.closed,
        lambda cc: repr(cc),
    ]
    unexpected: list[BaseException] = []

    for _round in range(10):
        cc = conn.pgconn.cancel_conn()
        go = threading.Event()

        def worker(seed: int, cc: Any = cc, go: threading.Event = go) -> None:
            rnd = random.Random(seed)
            go.wait()
            for _ in range(200):
                try:
                    if rnd.random() < 0.01:
                        cc.finish()
                    else:
                        rnd.choice(ops)(cc)
                except (InterfaceError, CancelError):
                    pass
                except BaseException as ex:
                    unexpected.append(ex)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        cc.finish()
        assert cc.closed
    assert unexpected == []
    # The connection survives. (A request that the workers sent and then
    # abandoned may still reach the server and cancel a query of ours: retry.)
    assert conn.status == ConnStatus.OK
    for _ in range(5):
        res = run(conn, "select 1")
        if res.sqlstate != "57014":
            break
        time.sleep(0.1)
    assert res.rows == (("1",),)


def test_getters_race_finish_without_crashing(
    twin: ModuleType, new_libpq: Any, dsn_plain: str
) -> None:
    """Threads read every getter of a PGconn and of a PGcancelConn while another
    thread finishes them: each call either works or raises InterfaceError; none
    reads freed memory (every libpq call is made under the object's lock)."""
    conn_getters: list[Callable[[Any], object]] = [
        lambda c: c.status,
        lambda c: c.error_message,
        lambda c: c.socket,
        lambda c: c.ssl_in_use,
        lambda c: c.pgconn_ptr,
        lambda c: repr(c),
    ]
    cc_getters: list[Callable[[Any], object]] = [
        lambda cc: cc.status,
        lambda cc: cc.socket,
        lambda cc: cc.error_message,
        lambda cc: repr(cc),
    ]
    unexpected: list[BaseException] = []
    for round_ in range(8):
        made = client.connect(dsn_plain, libpq=new_libpq)
        conn = made.pgconn
        cc = conn.cancel_conn()
        cc.start()
        go = threading.Event()
        stop = threading.Event()

        def reader(
            seed: int,
            conn: Any = conn,
            cc: Any = cc,
            go: threading.Event = go,
            stop: threading.Event = stop,
        ) -> None:
            rnd = random.Random(seed)
            go.wait()
            while not stop.is_set():
                try:
                    rnd.choice(conn_getters)(conn)
                    rnd.choice(cc_getters)(cc)
                except InterfaceError:
                    if conn.closed and cc.closed:
                        return
                except BaseException as ex:
                    unexpected.append(ex)
                    return

        threads = [threading.Thread(target=reader, args=(round_ * 10 + i,)) for i in range(3)]
        for t in threads:
            t.start()
        go.set()
        time.sleep(0.002 * round_)  # finish at a different moment in every round
        cc.finish()
        conn.finish()
        stop.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        made.finish()
    assert unexpected == []


def test_finish_from_another_thread_waits_for_blocking(
    twin: ModuleType, new_libpq: Any, pg_server: Any, proxy: Any
) -> None:
    """finish() while blocking() runs in another thread: serialised, no crash."""
    px = proxy()
    conn = client.connect(px.dsn(pg_server, "disable"), libpq=new_libpq)
    try:
        px.delay = 0.3  # for the cancel connection only (accepted from now on)
        cc = conn.pgconn.cancel_conn()
        outcome: list[object] = []
        accepted = px.accepted
        thread = threading.Thread(target=lambda: outcome.append(cc.blocking()))
        thread.start()
        assert px.wait_accepted(accepted + 1)
        cc.finish()  # waits for blocking() to return
        thread.join(10)
        assert not thread.is_alive()
        assert outcome == [None]
        assert cc.closed
        with pytest.raises(InterfaceError):
            cc.blocking()
    finally:
        conn.finish()


# =====================================================================================
# Constructors are not public (in either twin)
# =====================================================================================


def test_classes_cannot_be_instantiated_directly(twin: ModuleType, new_libpq: Any) -> None:
    """An arbitrary address can only reach libpq through from_ptr()'s checks."""
    lib = new_libpq
    with pytest.raises(TypeError):
        twin.Libpq()
    with pytest.raises(TypeError):
        twin.Libpq(ctypes.CDLL(None), new_libpq_path())
    with pytest.raises(TypeError):
        twin.PGconn(0xDEAD, lib).finish()
    with pytest.raises(TypeError):
        twin.PGcancelConn(0xDEAD, lib).finish()
    with pytest.raises(TypeError):
        twin.PGcancel(0xDEAD, lib).free()
    gc.collect()  # the half-made objects are collected without touching libpq


def test_objects_cannot_be_copied_or_pickled(twin: ModuleType, conn: Any) -> None:
    """A copy would share the pointer, and finish it twice."""
    cc = conn.pgconn.cancel_conn()
    handle = conn.pgconn.get_cancel()
    borrowed = twin.PGconn.from_ptr(conn.pgconn_ptr, conn.libpq)
    try:
        for obj in (conn.libpq, conn.pgconn, borrowed, cc, handle):
            for dup in (copy.copy, copy.deepcopy, pickle.dumps):
                with pytest.raises(TypeError, match="cannot pickle"):
                    dup(obj)
        assert run(conn, "select 1").rows == (("1",),)
    finally:
        cc.finish()
        handle.free()


# =====================================================================================
# The same file under python -X dev
# =====================================================================================


@pytest.mark.long(6)
@pytest.mark.skipif(
    bool(os.environ.get(ENV_CHILD)), reason="[not a missing dependency] already the -X dev child"
)
def test_this_file_passes_under_dev_mode(pg_server: Any) -> None:
    # MALLOC_PERTURB_: glibc fills freed memory, so that a read of a freed
    # libpq object returns garbage (and likely crashes) instead of stale data.
    env = dict(os.environ, **{ENV_CHILD: "1", "MALLOC_PERTURB_": "165"})
    # Reuse this session's server instead of starting another one.
    if not env.get("PSYCANCEL_TEST_DSN"):
        env["PSYCANCEL_TEST_DSN"] = pg_server.dsn("disable")
        ca = getattr(pg_server, "ca_file", None)
        if ca is not None:
            env["PSYCANCEL_TEST_SSLROOTCERT"] = str(ca)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "dev",
            "-X",
            "faulthandler",
            "-m",
            "pytest",
            str(Path(__file__).resolve()),
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error::ResourceWarning",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "Fatal Python error" not in output
    assert " passed" in proc.stdout
