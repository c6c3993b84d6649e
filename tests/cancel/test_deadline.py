"""``cancel_after`` bounds the query, whatever the network does (issue 19).

The faults, each in turn: the test proxy stops forwarding both ways in the
middle of a query (``TcpProxy.freeze``), and iptables drops every packet in
a network namespace the test made (``tests/support/netns.py``): the session
*and* its cancel connection are black-holed, nothing is reset. Without the
bound such a block never ends.
With it, the block ends by ``seconds + timeout`` with
``QueryTimeout(connection_broken=True)``, the driver and its pool see the
connection as broken, a pool hands out a fresh one, no descriptor leaks, and
the next ``cancel_after`` on another connection works. Every driver and
framework, sync and async, plain and TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import psycancel
from psycancel.pq import Libpq
from testing import client
from tests.support import frameworks
from tests.support.active import SLEEP
from tests.support.drivers import ROOT, need
from tests.support.fds import sockets_to
from tests.support.frameworks import Monitor
from tests.support.netns import NetnsPath
from tests.support.netns import netns_path as _netns_path
from tests.support.proxy import ServerLike, TcpProxy

psycopg2 = need("psycopg2")
psycopg = need("psycopg")
aiopg = need("aiopg")
psycopg_pool = need("psycopg_pool")
sqlalchemy = need("sqlalchemy")
sqlalchemy_asyncio = need("sqlalchemy.ext.asyncio")

netns_path = _netns_path

SECONDS = 0.3
TIMEOUT = 0.6
MARGIN = 1.5
"""The bound checked: ``SECONDS + TIMEOUT + MARGIN``. What it guards against is a block
that hangs (as long as the query, or for ever); a loaded machine is late by less
(seen: 0.75 s late on free-threaded 3.13 at a load of 6-7 on 2 cores, the test
command's matrix; 0.5 s was the margin then)."""


def arun(func: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(func())  # type: ignore[arg-type]


watcher = frameworks.monitor
"""A :class:`Monitor` on the test server (``tests.support.frameworks.monitor``)."""


class Fault:
    """A path to the server that a test can black-hole mid-query, both ways."""

    def __init__(self, name: str, dsn: Callable[[str], str], port: int) -> None:
        self.name = name
        self.dsn = dsn
        """``dsn(sslmode)``: a conninfo through the path."""
        self.port = port
        """The port clients connect to (for the leak check)."""

    def cut(self) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    def is_cut(self) -> bool:
        raise NotImplementedError


class ProxyFault(Fault):
    """The test proxy stops forwarding (``TcpProxy.freeze``): user space."""

    def __init__(self, px: TcpProxy, server: ServerLike) -> None:
        super().__init__("proxy", lambda sslmode: px.dsn(server, sslmode=sslmode), px.port)
        self.px = px

    def cut(self) -> None:
        self.px.freeze()

    def heal(self) -> None:
        self.px.thaw()

    def is_cut(self) -> bool:
        return self.px.frozen.is_set()


class KernelFault(Fault):
    """iptables drops every packet in the test's own network namespace."""

    def __init__(self, path: NetnsPath) -> None:
        super().__init__("kernel", path.dsn, path.port)
        self.path = path

    def cut(self) -> None:
        self.path.blackhole()

    def heal(self) -> None:
        self.path.restore()

    def is_cut(self) -> bool:
        return self.path.blackholed


@pytest.fixture(params=["proxy", "kernel"])
def fault(request: pytest.FixtureRequest, pg_server: ServerLike, proxy: Any) -> Fault:
    """Each black hole in turn: the test proxy's, then the kernel's."""
    if request.param == "proxy":
        return ProxyFault(proxy(), pg_server)
    return KernelFault(request.getfixturevalue("netns_path"))


def freeze_when_sleeping(watcher: Monitor, fault: Fault, pid: int) -> threading.Thread:
    """A thread that cuts the path once backend ``pid`` runs ``pg_sleep``."""
    mon = Monitor(watcher.conn.info.dsn)

    def main() -> None:
        try:
            mon.wait_sleeping(pid)
            fault.cut()
        finally:
            mon.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread


def next_block_works_elsewhere(dsn: str) -> None:
    """Another connection's ``cancel_after`` still cancels its query (and keeps it)."""
    with psycopg.connect(dsn, autocommit=True) as other:
        timer = psycancel.cancel_after(other, 0.1, timeout=5)
        with pytest.raises(psycancel.QueryTimeout) as info, timer:
            other.execute("select pg_sleep(5)")
        assert not info.value.connection_broken
        assert other.execute("select 1").fetchone() == (1,)


# =====================================================================================
# Sync clients: what holds the connection, how to run a query, how "broken" shows
# =====================================================================================


class SyncClient:
    """One connection of a blocking driver or framework, through the proxy."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    conn: Any

    def pid(self) -> int:
        raise NotImplementedError

    def execute(self, sql: str) -> None:
        raise NotImplementedError

    def broken(self) -> bool:
        raise NotImplementedError

    def fresh_one_works(self, old_pid: int) -> None:
        """A pool's next connection is a new one and runs queries (drivers: nothing)."""

    def close(self) -> None:
        raise NotImplementedError


class Psycopg2(SyncClient):
    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def pid(self) -> int:
        return int(self.conn.get_backend_pid())

    def execute(self, sql: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql)

    def broken(self) -> bool:
        return bool(self.conn.closed)

    def close(self) -> None:
        self.conn.close()


class Psycopg(SyncClient):
    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.conn = psycopg.connect(dsn, autocommit=True)

    def pid(self) -> int:
        return int(self.conn.info.backend_pid)

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def broken(self) -> bool:
        return bool(self.conn.broken)

    def close(self) -> None:
        self.conn.close()


class PsycopgPool(SyncClient):
    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.pool = psycopg_pool.ConnectionPool(
            dsn, min_size=1, max_size=1, open=True, kwargs={"autocommit": True}
        )
        self._lease = self.pool.connection()
        self.conn = self._lease.__enter__()

    def pid(self) -> int:
        return int(self.conn.info.backend_pid)

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def broken(self) -> bool:
        broken = bool(self.conn.broken)
        self._lease.__exit__(None, None, None)  # back to the pool, which must discard it
        return broken

    def fresh_one_works(self, old_pid: int) -> None:
        with self.pool.connection(timeout=10) as again:
            assert again.info.backend_pid != old_pid
            assert again.execute("select 1").fetchone() == (1,)

    def close(self) -> None:
        self.pool.close()


class SqlAlchemy(SyncClient):
    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.engine = sqlalchemy.create_engine(
            "postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn), pool_size=1
        )
        self.conn = self.engine.connect()

    def pid(self) -> int:
        return int(self.conn.connection.dbapi_connection.get_backend_pid())

    def execute(self, sql: str) -> None:
        self.conn.execute(sqlalchemy.text(sql))

    def broken(self) -> bool:
        invalidated = bool(self.conn.invalidated)
        self.conn.close()
        return invalidated

    def fresh_one_works(self, old_pid: int) -> None:
        with self.engine.connect() as again:
            pid = again.connection.dbapi_connection.get_backend_pid()
            assert pid != old_pid
            assert again.execute(sqlalchemy.text("select 1")).scalar() == 1

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


SYNC: dict[str, type[SyncClient]] = {
    "psycopg2": Psycopg2,
    "psycopg": Psycopg,
    "psycopg_pool": PsycopgPool,
    "sqlalchemy": SqlAlchemy,
}


@pytest.mark.parametrize("sslmode", ["disable", "require"])
@pytest.mark.parametrize("kind", list(SYNC))
def test_black_hole_sync(kind: str, sslmode: str, fault: Fault, watcher: Monitor) -> None:
    client = SYNC[kind](fault.dsn(sslmode))
    pid = client.pid()
    try:
        freezer = freeze_when_sleeping(watcher, fault, pid)
        t0 = time.monotonic()
        block = psycancel.cancel_after(client.conn, SECONDS, timeout=TIMEOUT)
        with pytest.raises(psycancel.QueryTimeout) as info, block:
            client.execute(SLEEP)
        elapsed = time.monotonic() - t0
        freezer.join(5)
        assert fault.is_cut()
        assert elapsed < SECONDS + TIMEOUT + MARGIN, elapsed
        assert info.value.connection_broken and block.connection_broken
        assert isinstance(info.value.__cause__, psycancel.CancellationTimeout)
        assert info.value.__context__ is not None  # the driver's connection error
        assert client.broken()
        fault.heal()
        client.fresh_one_works(pid)
    finally:
        client.close()
        watcher.terminate(pid)
    assert sockets_to(fault.port) == set()
    next_block_works_elsewhere(watcher.conn.info.dsn)


# =====================================================================================
# Async clients
# =====================================================================================


class AsyncClient:
    """One connection of an async driver or framework, through the proxy."""

    conn: Any

    async def open(self, dsn: str) -> None:
        raise NotImplementedError

    async def pid(self) -> int:
        raise NotImplementedError

    async def execute(self, sql: str) -> None:
        raise NotImplementedError

    async def broken(self) -> bool:
        raise NotImplementedError

    async def fresh_one_works(self, old_pid: int) -> None:
        """A pool's next connection is a new one and runs queries (drivers: nothing)."""

    async def close(self) -> None:
        raise NotImplementedError


class AsyncPsycopg(AsyncClient):
    async def open(self, dsn: str) -> None:
        self.conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    async def pid(self) -> int:
        return int(self.conn.info.backend_pid)

    async def execute(self, sql: str) -> None:
        await self.conn.execute(sql)

    async def broken(self) -> bool:
        return bool(self.conn.broken)

    async def close(self) -> None:
        await self.conn.close()


class Aiopg(AsyncClient):
    async def open(self, dsn: str) -> None:
        self.conn = await aiopg.connect(dsn)

    async def pid(self) -> int:
        return int(await self.conn.get_backend_pid())

    async def execute(self, sql: str) -> None:
        async with self.conn.cursor() as cur:
            await cur.execute(sql)

    async def broken(self) -> bool:
        return bool(self.conn.closed or self.conn.raw.closed)

    async def close(self) -> None:
        await self.conn.close()


class AsyncPsycopgPool(AsyncClient):
    async def open(self, dsn: str) -> None:
        self.pool = psycopg_pool.AsyncConnectionPool(
            dsn, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
        )
        await self.pool.open(wait=True)
        self._lease = self.pool.connection()
        self.conn = await self._lease.__aenter__()

    async def pid(self) -> int:
        return int(self.conn.info.backend_pid)

    async def execute(self, sql: str) -> None:
        await self.conn.execute(sql)

    async def broken(self) -> bool:
        broken = bool(self.conn.broken)
        await self._lease.__aexit__(None, None, None)
        return broken

    async def fresh_one_works(self, old_pid: int) -> None:
        async with self.pool.connection(timeout=10) as again:
            assert again.info.backend_pid != old_pid
            cur = await again.execute("select 1")
            assert await cur.fetchone() == (1,)

    async def close(self) -> None:
        await self.pool.close()


class AsyncSqlAlchemy(AsyncClient):
    async def open(self, dsn: str) -> None:
        async def creator() -> Any:
            return await psycopg.AsyncConnection.connect(dsn)

        self.engine = sqlalchemy_asyncio.create_async_engine(
            "postgresql+psycopg://", async_creator=creator, pool_size=1
        )
        self.conn = await self.engine.connect()

    async def pid(self) -> int:
        result = await self.conn.execute(sqlalchemy.text("select pg_backend_pid()"))
        return int(result.scalar())

    async def execute(self, sql: str) -> None:
        await self.conn.execute(sqlalchemy.text(sql))

    async def broken(self) -> bool:
        invalidated = bool(self.conn.invalidated)
        await self.conn.close()
        return invalidated

    async def fresh_one_works(self, old_pid: int) -> None:
        async with self.engine.connect() as again:
            result = await again.execute(sqlalchemy.text("select pg_backend_pid()"))
            assert result.scalar() != old_pid

    async def close(self) -> None:
        await self.conn.close()
        await self.engine.dispose()


ASYNC: dict[str, type[AsyncClient]] = {
    "psycopg": AsyncPsycopg,
    "aiopg": Aiopg,
    "psycopg_pool": AsyncPsycopgPool,
    "sqlalchemy": AsyncSqlAlchemy,
}


@pytest.mark.parametrize("sslmode", ["disable", "require"])
@pytest.mark.parametrize("kind", list(ASYNC))
def test_black_hole_async(kind: str, sslmode: str, fault: Fault, watcher: Monitor) -> None:
    dsn = fault.dsn(sslmode)
    state: dict[str, Any] = {}

    async def main() -> None:
        client = ASYNC[kind]()
        await client.open(dsn)
        pid = state["pid"] = await client.pid()
        try:
            freezer = freeze_when_sleeping(watcher, fault, pid)
            t0 = time.monotonic()
            with pytest.raises(psycancel.QueryTimeout) as info:
                async with psycancel.cancel_after(client.conn, SECONDS, timeout=TIMEOUT):
                    await client.execute(SLEEP)
            state["elapsed"] = time.monotonic() - t0
            freezer.join(5)
            assert fault.is_cut()
            state["info"] = info
            assert await client.broken()
            fault.heal()
            await client.fresh_one_works(pid)
        finally:
            await client.close()

    try:
        arun(main)
    finally:
        if "pid" in state:
            watcher.terminate(state["pid"])
    elapsed = state["elapsed"]
    assert elapsed < SECONDS + TIMEOUT + MARGIN, elapsed
    error = state["info"].value
    assert error.connection_broken
    assert isinstance(error.__cause__, psycancel.CancellationTimeout)
    assert sockets_to(fault.port) == set()
    next_block_works_elsewhere(watcher.conn.info.dsn)


# =====================================================================================
# A cancel that succeeds but is never acted upon (a pooler or balancer lost it)
# =====================================================================================


def test_cancel_lost_after_success_still_bounded(
    pg_server: ServerLike, proxy: Any, watcher: Monitor
) -> None:
    """The cancel connection completes (the server closed it) but carries a
    wrong key, as when an L4 balancer sends it to another server: the query
    runs on, and the block still ends at ``seconds + timeout``."""
    px: TcpProxy = proxy()
    conn = psycopg2.connect(px.dsn(pg_server, sslmode="disable"))
    conn.autocommit = True
    pid = conn.get_backend_pid()
    # New connections through the proxy (the cancel) now reach a listener that
    # reads and closes, as a server does with a key it does not know.
    sink = _AcceptAndClose()
    px.target_port = sink.port
    try:
        t0 = time.monotonic()
        timer = psycancel.cancel_after(conn, SECONDS, timeout=TIMEOUT)
        with pytest.raises(psycancel.QueryTimeout) as info, timer, conn.cursor() as cur:
            cur.execute(SLEEP)
        elapsed = time.monotonic() - t0
        assert info.value.connection_broken
        assert info.value.__cause__ is not None  # the driver's error: the cancel "succeeded"
        assert elapsed < SECONDS + TIMEOUT + MARGIN, elapsed
        assert elapsed >= SECONDS + TIMEOUT - 0.05, elapsed  # waited for the query
        assert conn.closed
    finally:
        conn.close()
        sink.close()
        watcher.terminate(pid)


class _AcceptAndClose:
    """A listener on loopback that reads what it is sent and closes: a server
    that got a CancelRequest with a key it does not know."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with client:
                client.recv(64)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


# =====================================================================================
# Opting out, and a block that completes although its connection was broken
# =====================================================================================


def test_opt_out_leaves_the_connection_alone(pg_server: ServerLike, proxy: Any) -> None:
    """``break_connection=False``: the block waits for the query (no bound)."""
    px: TcpProxy = proxy()
    conn = psycopg2.connect(px.dsn(pg_server, sslmode="disable"))
    conn.autocommit = True
    try:
        px.blackhole()  # cancels are black-holed; the session still works
        timer = psycancel.cancel_after(conn, 0.05, timeout=0.3, break_connection=False)
        with pytest.raises(psycancel.CancellationTimeout), timer, conn.cursor() as cur:
            cur.execute("select pg_sleep(0.8)")
        assert not conn.closed
    finally:
        conn.close()


def test_bad_break_connection() -> None:
    with pytest.raises(TypeError, match="break_connection"):
        psycancel.cancel_after(object(), 1, break_connection="yes")  # type: ignore[arg-type]


# =====================================================================================
# Django (a child process per backend: Django is configured once per process)
# =====================================================================================


@pytest.mark.parametrize("sslmode", ["disable", "require"])
@pytest.mark.parametrize("backend", ["psycopg", "psycopg2"])
def test_black_hole_django(backend: str, sslmode: str, fault: Fault, watcher: Monitor) -> None:
    need("django")
    args = {
        "backend": backend,
        "dsn": fault.dsn(sslmode),
        "seconds": SECONDS,
        "timeout": TIMEOUT,
    }
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "django_deadline_child.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    pid = 0
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(args))
        child.stdin.close()
        child.stdin = None  # communicate() below: nothing more to send
        first = child.stdout.readline()
        assert first.startswith("PID "), first + (child.stderr.read() if child.stderr else "")
        pid = int(first.split()[1])
        watcher.wait_sleeping(pid)
        fault.cut()
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if pid:
            watcher.terminate(pid)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert child.returncode == 0 and lines, f"exit {child.returncode}\n{out}\n{err}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["error"] == "QueryTimeout", result
    assert result["connection_broken"] is True, result
    assert result["cause"] == "CancellationTimeout", result
    assert result["context_module"].startswith("django.db"), result  # Django's OperationalError
    assert result["elapsed"] < SECONDS + TIMEOUT + MARGIN, result
    assert result["dropped"], result  # close_if_unusable_or_obsolete discarded it


# =====================================================================================
# libpq < 17: the legacy PQcancel, which has no timeout of its own
# =====================================================================================


def test_black_hole_legacy_libpq(
    pg_server: ServerLike,
    proxy: Any,
    legacy_libpq: Libpq,
    watcher: Monitor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The legacy cancel blocks in its worker against the black hole; the
    block still ends at the bound (the worker ends when the OS gives up).
    psycancel's own client returns an error result rather than raising: the
    block completes, and the broken connection is logged at WARNING."""
    px: TcpProxy = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="disable"), libpq=legacy_libpq)
    pid = conn.backend_pid
    try:
        conn.send_query(SLEEP)
        watcher.wait_sleeping(pid)
        px.freeze()
        t0 = time.monotonic()
        timer = psycancel.cancel_after(conn, SECONDS, timeout=TIMEOUT)
        with caplog.at_level(logging.WARNING, logger="psycancel"), timer:
            result = conn.get_result()
        elapsed = time.monotonic() - t0
        assert result is not None and result.message, result
        assert timer.connection_broken
        assert elapsed < SECONDS + TIMEOUT + MARGIN, elapsed
        messages = [r.getMessage() for r in caplog.records]
        assert any("its connection was broken (socket shut down)" in m for m in messages)
        assert any("block completed, but its connection was broken" in m for m in messages)

        # The legacy worker reports its own timeout about when the bound breaks the
        # connection: under load that report comes after the block has left (which
        # waits 50 ms for it once broken). It comes, and says the cancel failed.
        def cancel_failed() -> bool:
            return any(
                "could not be cancelled" in m or "the cancel failed" in m
                for m in (r.getMessage() for r in caplog.records)
            )

        deadline = time.monotonic() + 10
        while not cancel_failed() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cancel_failed(), [r.getMessage() for r in caplog.records]
    finally:
        conn.finish()
        watcher.terminate(pid)
