"""The offload waiter: cancels driven by a background thread, off the loop.

A TLS cancel spends most of its client CPU inside ``PQcancelPoll`` (the TLS
handshake). Driven from the event loop, that work runs in the loop thread and
many cancels that become ready together stall the loop. Here the cancel is
handed to a background *reactor* that multiplexes every offloaded cancel of
the process, and the loop only waits for a future:

* a cancel of the **compiled twin** goes to its ``OffloadEngine``: a thread
  that runs the whole cancel (start, ``poll(2)``, ``PQcancelPoll``, finish)
  in C without ever taking the GIL, plus a thread that settles the futures
  when cancels end (it takes the GIL once per batch of outcomes);
* a cancel of the **ctypes twin** goes to a Python reactor thread running the
  shared machine (``psycancel._machine``) with a selector; libpq's calls
  release the GIL there, the Python between them does not.

Guarantees are the same as the inline waiters: the deadline is enforced by
the reactor (``CancellationTimeout``), the cancel connection is finished by
the reactor on every outcome, and when the awaiting task is cancelled the job
is aborted and cleaned up *before* ``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..pq.abc import NativeDriver, OffloadEngine, PGcancelConn
from . import machine, outcomes
from .machine import READ, CancelSteps
from .plan import Deadline

__all__ = ["aborts_requested", "native_engine", "reactor_fds", "run_offloaded"]

_Done = Callable[[BaseException | None], None]


@dataclass(eq=False)
class _Job:
    """One offloaded cancel: its machine, deadline and completion callback."""

    steps: CancelSteps
    cc: PGcancelConn
    deadline: Deadline
    done: _Done
    fd: int = -1
    event: int = 0
    finished: bool = field(default=False)


class _Reactor:
    """A daemon thread running a selector over all offloaded cancel sockets.

    Started on first use and kept for the life of the process (idle, it sleeps
    in ``select``); it owns three file descriptors: a wake-up socket pair and
    the selector's own (see :func:`reactor_fds`).
    """

    def __init__(self) -> None:
        self.aborts = 0
        self._lock = threading.Lock()
        self._incoming: list[_Job] = []
        self._aborts: list[_Job] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def fds(self) -> set[int]:
        """The file descriptors the reactor keeps open."""
        fds = {self._wake_r.fileno(), self._wake_w.fileno()}
        fileno = getattr(self._sel, "fileno", None)
        if fileno is not None:
            fds.add(fileno())
        return fds

    # -- called from any thread

    def submit(self, cc: PGcancelConn, deadline: Deadline, done: _Done) -> object:
        """Drive ``cc`` until ``deadline``; ``done(outcome)`` is called once, from here."""
        job = _Job(steps=machine.cancel_steps(cc), cc=cc, deadline=deadline, done=done)
        with self._lock:
            self._incoming.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="psycancel-offload", daemon=True
                )
                self._thread.start()
        self._wake()
        return job

    def abort(self, handle: object) -> None:
        """Stop the job ``submit`` returned ``handle`` for (its ``done`` still runs)."""
        assert isinstance(handle, _Job)
        with self._lock:
            self.aborts += 1
            self._aborts.append(handle)
        self._wake()

    def _wake(self) -> None:
        # A full pipe means the reactor is already awake.
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self._wake_w.send(b"\0")

    # -- the reactor thread

    def _run(self) -> None:
        sel = self._sel
        deadlines: list[tuple[float, int, _Job]] = []
        counter = itertools.count()
        while True:
            with self._lock:
                incoming, self._incoming = self._incoming, []
            for job in incoming:
                heapq.heappush(deadlines, (job.deadline.at, next(counter), job))
                self._advance(sel, job)
            # Aborts last, just before waiting: none is left pending for a
            # round while the jobs above were advanced.
            with self._lock:
                aborts, self._aborts = self._aborts, []
            for job in aborts:
                self._finish(sel, job, asyncio.CancelledError())
            while deadlines and deadlines[0][2].finished:
                heapq.heappop(deadlines)
            wait = max(0.0, deadlines[0][0] - time.monotonic()) if deadlines else None
            for key, _ in sel.select(wait):
                if key.data is None:
                    self._drain_wake()
                elif not key.data.finished:
                    self._advance(sel, key.data)
            now = time.monotonic()
            while deadlines and (deadlines[0][2].finished or deadlines[0][0] <= now):
                job = heapq.heappop(deadlines)[2]
                if not job.finished:
                    self._finish(sel, job, job.deadline.expired())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _advance(self, sel: selectors.BaseSelector, job: _Job) -> None:
        """Resume the machine once; re-register on its next wait or finish it."""
        if job.fd >= 0:
            sel.unregister(job.fd)
            job.fd = -1
        try:
            fd, event = next(job.steps)
        except StopIteration:
            self._finish(sel, job, None)
            return
        except BaseException as ex:
            self._finish(sel, job, ex)
            return
        if time.monotonic() >= job.deadline.at:
            return  # expired while polling: the deadline pass finishes it
        mask = selectors.EVENT_READ if event == READ else selectors.EVENT_WRITE
        sel.register(fd, mask, job)
        job.fd, job.event = fd, event

    def _finish(
        self, sel: selectors.BaseSelector, job: _Job, outcome: BaseException | None
    ) -> None:
        if job.finished:
            return
        job.finished = True
        if job.fd >= 0:
            sel.unregister(job.fd)
            job.fd = -1
        try:
            job.steps.close()
        finally:
            job.cc.finish()
            job.done(outcome)


class _CompiledReactor:
    """The compiled twin's engine, its thread, and the thread that reports outcomes.

    The engine thread never holds the GIL. The reporter thread waits for
    outcomes without it, then (with it) calls each job's ``done``; outcomes
    that end together are reported in one go.
    """

    def __init__(self, native: NativeDriver) -> None:
        self.aborts = 0
        self._native = native
        self._engine: OffloadEngine = native.new_engine()
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[_Done, float]] = {}
        self._ids = itertools.count(1)
        self._started = False
        self._pid = os.getpid()

    def fds(self) -> set[int]:
        """The file descriptors the engine keeps open."""
        return set(self._engine.fds())

    def submit(self, cc: PGcancelConn, deadline: Deadline, done: _Done) -> object:
        """Hand ``cc`` to the engine; ``done(outcome)`` is called once, from the reporter."""
        with self._lock:
            job_id = next(self._ids)
            self._pending[job_id] = (done, deadline.timeout)
            if not self._started:
                for target, name in (
                    (self._engine.run, "psycancel-offload-engine"),
                    (self._report, "psycancel-offload-reporter"),
                ):
                    threading.Thread(target=target, name=name, daemon=True).start()
                self._started = True
        try:
            self._engine.submit(cc, deadline.at, job_id)
        except BaseException:
            with self._lock:
                del self._pending[job_id]
            raise
        return job_id

    def abort(self, handle: object) -> None:
        """Stop the job ``handle`` (its ``done`` still runs)."""
        assert isinstance(handle, int)
        self._engine.abort(handle)
        with self._lock:
            self.aborts += 1

    def _report(self) -> None:
        while batch := self._engine.take_done():
            for job_id, code, message in batch:
                with self._lock:
                    done, timeout = self._pending.pop(job_id)
                try:
                    done(outcomes.from_native(self._native, code, message, timeout))
                except Exception:  # never let one job stop the reporting of others
                    logging.getLogger("psycancel").exception("reporting an offloaded cancel")


_AnyReactor = _Reactor | _CompiledReactor
_reactors: dict[str, _AnyReactor] = {}
_reactor_lock = threading.Lock()


def _alive(reactor: _AnyReactor) -> bool:
    return reactor._pid == os.getpid()


def reactor_fds() -> set[int]:
    """The fds held by this process's offload reactors (empty before first use)."""
    fds: set[int] = set()
    for reactor in list(_reactors.values()):
        if _alive(reactor):
            fds |= reactor.fds()
    return fds


def aborts_requested() -> int:
    """How many offloaded jobs were asked to stop so far (for tests)."""
    return sum(r.aborts for r in list(_reactors.values()) if _alive(r))


def _reactor_for(native: NativeDriver | None) -> _AnyReactor:
    """The reactor for cancel objects of a twin: its C engine if it has a driver."""
    kind = "python" if native is None else "native"
    with _reactor_lock:
        reactor = _reactors.get(kind)
        if reactor is None or not _alive(reactor):
            # (A new process after fork never reuses the parent's.)
            reactor = _Reactor() if native is None else _CompiledReactor(native)
            _reactors[kind] = reactor
        return reactor


def native_engine(native: NativeDriver) -> OffloadEngine:
    """Tests: the ``OffloadEngine`` that drives ``native``'s offloaded cancels here."""
    reactor = _reactor_for(native)
    assert isinstance(reactor, _CompiledReactor)
    return reactor._engine


async def run_offloaded(
    cc: PGcancelConn, native: NativeDriver | None, deadline: Deadline
) -> None:
    """Start ``cc`` and drive it in a reactor thread; the reactor finishes ``cc``.

    ``native``: the twin's C driver (its engine does the work), or None (the
    Python reactor does).
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def settle(outcome: BaseException | None) -> None:
        if fut.done():
            return
        if outcome is None:
            fut.set_result(None)
        else:
            fut.set_exception(outcome)

    def done(outcome: BaseException | None) -> None:
        # RuntimeError: the loop is closed, nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    reactor = _reactor_for(native)
    try:
        handle = reactor.submit(cc, deadline, done)
    except BaseException:
        cc.finish()  # not taken over (a no-op if it was)
        raise
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        if not fut.done():
            reactor.abort(handle)
            # Wait until the reactor has closed the cancel connection.
            with contextlib.suppress(BaseException):
                await fut
        raise
