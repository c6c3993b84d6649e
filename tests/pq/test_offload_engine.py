"""The compiled twin's offload engine (``psycancel_c/_engine.pyx``), directly.

The public API tests (``test_cancel``, ``test_faults``, ...) already run every
offloaded cancel of the compiled twin through the process's engine. Here a
private engine is driven by hand, to check what the API cannot show: each job
is reported exactly once with the right outcome, taken objects read as
finished, ``close()`` aborts what is left, the engine's fds go with it, and a
forked child cannot use its parent's engine. Plus a race stress through the
public API.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import random
import resource
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import psycancel
from psycancel._engine import offload as _offload
from psycancel.errors import CancellationTimeout, InterfaceError
from testing import client
from tests.support.fds import loop_fds, open_fds, sockets_to
from tests.support.proxy import TcpProxy
from tests.support.twins import compiled_twin, new_libpq_path

MakeProxy = Callable[[], TcpProxy]


@pytest.fixture
def c() -> ModuleType:
    """The compiled twin (its engine is what is under test)."""
    return compiled_twin()


@pytest.fixture
def c_libpq(c: ModuleType, pg_server: Any) -> Any:
    """libpq >= 17 loaded by the compiled twin."""
    return c.Libpq.load(new_libpq_path())


class Driven:
    """A private engine with its two threads; outcomes collected by job id."""

    def __init__(self, c: ModuleType) -> None:
        self.engine = c.OffloadEngine()
        self.outcomes: dict[int, list[tuple[int, str]]] = {}
        self.arrived = threading.Condition()
        self.runner = threading.Thread(target=self.engine.run, daemon=True)
        self.reporter = threading.Thread(target=self._collect, daemon=True)
        self.runner.start()
        self.reporter.start()

    def _collect(self) -> None:
        while batch := self.engine.take_done():
            with self.arrived:
                for job_id, code, message in batch:
                    self.outcomes.setdefault(job_id, []).append((code, message))
                self.arrived.notify_all()

    def wait_for(self, ids: set[int], timeout: float = 20) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: ids <= self.outcomes.keys(), timeout), (
                f"not reported: {ids - self.outcomes.keys()}"
            )

    def close(self) -> None:
        self.engine.close()
        self.runner.join(10)
        self.reporter.join(10)
        assert not self.runner.is_alive() and not self.reporter.is_alive()


@pytest.fixture
def driven(c: ModuleType) -> Iterator[Driven]:
    d = Driven(c)
    try:
        yield d
    finally:
        if d.runner.is_alive():
            d.close()


def test_every_job_reported_once_with_its_outcome(
    c: ModuleType, c_libpq: Any, pg_server: Any, proxy: MakeProxy, driven: Driven
) -> None:
    plain = client.connect(pg_server.dsn("disable"), libpq=c_libpq)
    tls = client.connect(pg_server.dsn("require"), libpq=c_libpq)
    px = proxy()
    held = client.connect(px.dsn(pg_server, sslmode="require"), libpq=c_libpq)
    px.blackhole()  # cancels of ``held`` are never answered
    px_reset = proxy()
    reset = client.connect(px_reset.dsn(pg_server, sslmode="disable"), libpq=c_libpq)
    px_reset.reset()  # cancels of ``reset`` fail: RST on their first bytes
    try:
        ports = (pg_server.port, px.port, px_reset.port)
        before = {fd for port in ports for fd in sockets_to(port)}
        now = time.monotonic()
        expect: dict[int, int] = {}
        ids = iter(range(1, 1000))

        def submit(conn: Any, deadline: float, outcome: int) -> int:
            cc = conn.cancel_conn()
            job_id = next(ids)
            driven.engine.submit(cc, deadline, job_id)
            assert cc.closed  # taken: the engine finishes it
            expect[job_id] = outcome
            return job_id

        for _ in range(10):
            submit(plain, now + 20, c.OUTCOME_OK)
            submit(tls, now + 20, c.OUTCOME_OK)
        for _ in range(3):
            submit(held, now + 0.3, c.OUTCOME_TIMEOUT)
        submit(plain, now - 1, c.OUTCOME_TIMEOUT)  # already expired
        aborted = [submit(held, now + 20, c.OUTCOME_ABORTED) for _ in range(3)]
        for job_id in aborted:
            driven.engine.abort(job_id)
        driven.engine.abort(999_999)  # unknown: ignored
        for _ in range(3):
            submit(reset, now + 20, c.OUTCOME_FAILED)
        driven.wait_for(set(expect))
        for job_id, outcome in expect.items():
            assert len(driven.outcomes[job_id]) == 1, driven.outcomes[job_id]
            code, message = driven.outcomes[job_id][0]
            assert code == outcome, (job_id, code, message)
            assert bool(message) == (outcome == c.OUTCOME_FAILED)
        assert set(driven.outcomes) == set(expect)
        assert {fd for port in ports for fd in sockets_to(port)} == before
    finally:
        for conn in (plain, tls, held, reset):
            conn.finish()


def test_a_failing_poll_fails_every_job_and_the_engine_goes_on(
    c: ModuleType, c_libpq: Any, pg_server: Any, proxy: MakeProxy, driven: Driven
) -> None:
    """``poll(2)`` refused (EINVAL: more fds than RLIMIT_NOFILE): every active
    job is reported once as failed with the system's text and its socket is
    closed; the engine never spins and takes new work afterwards."""
    n_jobs = 10
    px = proxy()
    held = client.connect(px.dsn(pg_server, sslmode="disable"), libpq=c_libpq)
    px.blackhole()
    plain = client.connect(pg_server.dsn("disable"), libpq=c_libpq)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        before = sockets_to(px.port)
        ids = set(range(1, n_jobs + 1))
        for job_id in ids:
            driven.engine.submit(held.cancel_conn(), time.monotonic() + 60, job_id)
        # Every cancel connected (and sent its request into the black hole).
        assert px.wait_accepted(1 + n_jobs)
        # The engine's next poll() gets n_jobs + 1 fds: over the limit.
        resource.setrlimit(resource.RLIMIT_NOFILE, (n_jobs // 2, hard))
        try:
            driven.engine.abort(999_999)  # (unknown id) wakes the engine
            driven.wait_for(ids)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for job_id in ids:
            assert driven.outcomes[job_id] == [(c.OUTCOME_FAILED, os.strerror(errno.EINVAL))]
        assert sockets_to(px.port) == before
        driven.engine.submit(plain.cancel_conn(), time.monotonic() + 20, 100)
        driven.wait_for({100})
        assert driven.outcomes[100] == [(c.OUTCOME_OK, "")]
    finally:
        held.finish()
        plain.finish()


def test_taken_objects_and_misuse(c: ModuleType, c_libpq: Any, dsn_plain: str) -> None:
    engine = c.OffloadEngine()  # not running: submitted jobs just queue
    conn = client.connect(dsn_plain, libpq=c_libpq)
    try:
        started = conn.cancel_conn()
        started.start()
        with pytest.raises(InterfaceError, match="new cancel connection"):
            engine.submit(started, time.monotonic() + 5, 1)
        started.finish()
        with pytest.raises(InterfaceError, match="finished"):
            engine.submit(started, time.monotonic() + 5, 2)
        from psycancel.pq import _ctypes

        other = client.connect(dsn_plain, libpq=_ctypes.Libpq.load(new_libpq_path()))
        try:
            with pytest.raises(TypeError):
                engine.submit(other.cancel_conn(), time.monotonic() + 5, 3)
        finally:
            other.finish()
        with pytest.raises(TypeError):
            engine.submit(None, time.monotonic() + 5, 4)
        taken = conn.cancel_conn()
        engine.submit(taken, time.monotonic() + 5, 5)
        assert taken.closed
        with pytest.raises(InterfaceError):
            taken.start()
        taken.finish()  # idempotent, and a no-op for a taken object
    finally:
        conn.finish()
    # Closing an engine that never ran: queued jobs are aborted when it runs.
    engine.close()
    engine.run()  # returns at once
    with pytest.raises(InterfaceError, match="already running"):
        engine.run()
    assert engine.take_done() == [(5, c.OUTCOME_ABORTED, "")]
    assert engine.take_done() == []  # stopped, nothing left
    with pytest.raises(InterfaceError, match="closed"):
        conn2 = client.connect(dsn_plain, libpq=c_libpq)
        try:
            engine.submit(conn2.cancel_conn(), time.monotonic() + 5, 6)
        finally:
            conn2.finish()


def test_engine_fds_go_with_it(c: ModuleType) -> None:
    before = open_fds()
    d = Driven(c)
    assert d.engine.fds() <= open_fds()
    d.close()
    del d
    gc.collect()
    assert open_fds() == before


def test_forked_child_cannot_use_the_parents_engine(
    c: ModuleType, c_libpq: Any, dsn_plain: str, driven: Driven
) -> None:
    conn = client.connect(dsn_plain, libpq=c_libpq)
    spare = conn.cancel_conn()
    try:
        pid = os.fork()
        if pid == 0:  # the child: every use refuses, nothing crashes
            code = 0
            calls: tuple[Callable[[], object], ...] = (
                lambda: driven.engine.submit(spare, 0.0, 1),
                lambda: driven.engine.abort(1),
                lambda: driven.engine.take_done(),
                lambda: driven.engine.close(),
            )
            for call in calls:
                try:
                    call()
                    code |= 1
                except InterfaceError as ex:
                    if "parent process" not in str(ex):
                        code |= 2
                except BaseException:
                    code |= 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's engine still works.
        driven.engine.submit(conn.cancel_conn(), time.monotonic() + 20, 7)
        driven.wait_for({7})
        assert driven.outcomes[7] == [(c.OUTCOME_OK, "")]
        assert not spare.closed  # the child's attempt took nothing
    finally:
        spare.finish()
        conn.finish()


def test_public_api_race_stress(
    c: ModuleType, c_libpq: Any, pg_server: Any, proxy: MakeProxy
) -> None:
    """300 offloaded cancels: answered, black-holed (short timeouts) and task
    cancellations at random moments, all at once; every one ends as expected and
    nothing is left behind (fds, loop registrations, pending jobs)."""
    px = proxy()
    held = client.connect(px.dsn(pg_server, sslmode="require"), libpq=c_libpq)
    px.blackhole()
    conns = [client.connect(pg_server.dsn(m), libpq=c_libpq) for m in ("disable", "require")]
    rng = random.Random(20261126)
    try:
        before = sockets_to(pg_server.port) | sockets_to(px.port)

        async def main() -> dict[str, int]:
            loop = asyncio.get_running_loop()
            fds_before = loop_fds(loop)
            tasks = []
            for i in range(300):
                conn = held if i % 3 == 0 else conns[i % 2]
                timeout = rng.uniform(0.05, 0.4) if conn is held else 20
                tasks.append(
                    asyncio.create_task(psycancel.cancel_async(conn, timeout=timeout, offload=True))
                )
            for task in rng.sample(tasks, 60):
                loop.call_later(rng.uniform(0, 0.2), task.cancel)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert loop_fds(loop) == fds_before
            kinds: dict[str, int] = {}
            for r in results:
                name = "ok" if r is None else type(r).__name__
                kinds[name] = kinds.get(name, 0) + 1
            return kinds

        kinds = asyncio.run(main())
        assert set(kinds) <= {"ok", "CancelledError", CancellationTimeout.__name__}, kinds
        assert kinds.get("ok", 0) >= 100 and kinds.get(CancellationTimeout.__name__, 0) >= 30
        assert sockets_to(pg_server.port) | sockets_to(px.port) == before
        reactor = _offload._reactors.get("native")
        assert isinstance(reactor, _offload._CompiledReactor) and not reactor._pending
    finally:
        held.finish()
        for conn in conns:
            conn.finish()


def test_run_blocking_outcomes(
    c: ModuleType, c_libpq: Any, pg_server: Any, proxy: MakeProxy
) -> None:
    """The blocking C driver: OK, TIMEOUT (black hole), FAILED (reset), misuse."""
    plain = client.connect(pg_server.dsn("disable"), libpq=c_libpq)
    px_hole, px_reset = proxy(), proxy()
    held = client.connect(px_hole.dsn(pg_server, sslmode="require"), libpq=c_libpq)
    reset = client.connect(px_reset.dsn(pg_server, sslmode="disable"), libpq=c_libpq)
    px_hole.blackhole()
    px_reset.reset()
    try:
        ports = (pg_server.port, px_hole.port, px_reset.port)
        before = {fd for port in ports for fd in sockets_to(port)}
        for conn, deadline, expected in (
            (plain, 20.0, c.OUTCOME_OK),
            (held, 0.3, c.OUTCOME_TIMEOUT),
            (reset, 20.0, c.OUTCOME_FAILED),
        ):
            cc = conn.cancel_conn()
            t0 = time.monotonic()
            code, message = c.run_blocking(cc, t0 + deadline)
            assert cc.closed
            assert code == expected, (code, message)
            assert bool(message) == (expected == c.OUTCOME_FAILED)
            if expected == c.OUTCOME_TIMEOUT:
                assert 0.3 <= time.monotonic() - t0 < 2
        assert {fd for port in ports for fd in sockets_to(port)} == before
        started = plain.cancel_conn()
        started.start()
        with pytest.raises(InterfaceError, match="new cancel connection"):
            c.run_blocking(started, time.monotonic() + 5)
        started.finish()
        with pytest.raises(InterfaceError, match="finished"):
            c.run_blocking(started, time.monotonic() + 5)
    finally:
        for conn in (plain, held, reset):
            conn.finish()
