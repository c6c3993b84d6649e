"""The offload runner: cancels driven by a background thread, off the event loop.

A TLS cancel spends most of its client CPU inside ``PQcancelPoll`` (the TLS
handshake). Driven from the event loop, that work runs in the loop thread and
many cancels that become ready together stall the loop. Here the cancel is
handed to a background *reactor* that multiplexes every offloaded cancel of
the process, and the loop only waits for a future:

* a cancel of a twin with a **C driver** (the compiled twin) goes to its
  ``OffloadEngine``: a thread that runs the whole cancel (start, ``poll(2)``,
  ``PQcancelPoll``, finish) in C without ever taking the GIL, plus a thread
  that settles the futures when cancels end (it takes the GIL once per batch
  of outcomes);
* a cancel of the **ctypes twin** goes to a Python reactor thread running the
  shared machine (``machine``) with a selector; libpq's calls release the GIL
  there, the Python between them does not.

Guarantees are the same as the inline runners: the deadline is enforced by
the reactor (``CancellationTimeout``), the cancel connection is finished by
the reactor on every outcome, and when the awaiting task is cancelled the job
is aborted and cleaned up before ``CancelledError`` propagates (waiting at
most :data:`ABORT_GRACE` seconds for that, whatever state the thread is in).
A reactor whose thread fails settles every cancel it holds with a psycancel
``Error`` (``background``) and is replaced by a new one on the next call.
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
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..pq.abc import NativeDriver, OffloadEngine, PGcancelConn
from . import background, machine, outcomes
from .machine import READ, CancelSteps
from .plan import Deadline

__all__ = ["ABORT_GRACE", "aborts_requested", "native_engine", "reactor_fds", "run_offloaded"]

ABORT_GRACE = 2.0
"""Seconds a cancelled task waits for the reactor to close its cancel connection."""

ENGINE_NICE = 0
"""How much nicer than the process the C engine thread runs (Linux; ``0``: as nice as it).

0 since ``benchmarks/burst.py`` (50 concurrent TLS cancels of running
queries from a busy loop, 2 CPUs): a niced engine finished the burst no
sooner on a quiet machine and, on a loaded one, took 1.9x (nice 5) to 5.2x
(nice 19) psycopg ``cancel_safe``'s time (1.2x at 0), for no smaller loop
stall (``benchmarks/README.md``).
"""
ENGINE_NICE_ENV = "PSYCANCEL_OFFLOAD_NICE"
"""Overrides :data:`ENGINE_NICE` (an integer; ``0``: the engine runs at the process's)."""

_Done = Callable[[BaseException | None], None]
_log = logging.getLogger("psycancel")
_aborts = 0
"""How many aborts were requested in this process (``aborts_requested``)."""
_aborts_lock = threading.Lock()


def _count_abort() -> None:
    global _aborts
    with _aborts_lock:
        _aborts += 1


def lower_thread_priority() -> None:
    """Make the calling thread (the C engine's) nicer than the process, on Linux only.

    By :data:`ENGINE_NICE` points, or ``$PSYCANCEL_OFFLOAD_NICE``'s; by
    default 0, so nothing is changed. A niced engine lets a busy event-loop
    thread run first, but on a loaded machine the cancels then wait for CPU
    time behind everything else (``benchmarks/burst.py``). Linux applies
    ``setpriority`` to one thread when given its id; elsewhere that would
    renice the whole process, so nothing is done. Raising the niceness needs
    no privilege; a failure is ignored. The engine thread never takes the
    GIL, so it cannot hold the loop up through it; its own mutex is held only
    to move jobs between lists.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        step = int(os.environ.get(ENGINE_NICE_ENV, ENGINE_NICE))
    except ValueError:
        step = ENGINE_NICE
    if step <= 0:
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))


def _settle(done: _Done, outcome: BaseException | None) -> None:
    """Report one outcome; a failing callback never stops the reporting of others."""
    try:
        done(outcome)
    except Exception:
        _log.exception("reporting an offloaded cancel")


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
        self._lock = threading.Lock()
        self._incoming: list[_Job] = []
        self._aborts: list[_Job] = []
        self._jobs: set[_Job] = set()  # taken over by the thread, not finished
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.failed: BaseException | None = None

    def usable(self) -> bool:
        """True in the process that made it, until its thread failed."""
        return self.failed is None and self._pid == os.getpid()

    def fds(self) -> set[int]:
        """The file descriptors the reactor keeps open."""
        fds = {self._wake_r.fileno(), self._wake_w.fileno()}
        fileno = getattr(self._sel, "fileno", None)
        if fileno is not None:
            fds.add(fileno())
        return {fd for fd in fds if fd >= 0}

    # -- called from any thread

    def submit(self, cc: PGcancelConn, deadline: Deadline, done: _Done) -> object:
        """Drive ``cc`` until ``deadline``; ``done(outcome)`` is called once, from here.

        Raises the thread's failure (a psycancel ``Error``) if it has failed.
        """
        job = _Job(steps=machine.cancel_steps(cc), cc=cc, deadline=deadline, done=done)
        with self._lock:
            if self.failed is not None:
                job.steps.close()
                raise background.thread_failed("offload reactor thread", self.failed)
            self._incoming.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name="psycancel-offload", daemon=True
                )
                self._thread.start()
        self._wake()
        return job

    def abort(self, handle: object) -> None:
        """Stop the job ``submit`` returned ``handle`` for (its ``done`` still runs)."""
        assert isinstance(handle, _Job)
        _count_abort()
        with self._lock:
            self._aborts.append(handle)
        self._wake()

    def _wake(self) -> None:
        # A full pipe means the reactor is already awake; a closed one, a failed reactor.
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            self._wake_w.send(b"\0")

    # -- the reactor thread

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as ex:
            self._fail(ex)

    def _fail(self, cause: BaseException) -> None:
        """The thread failed: settle every job it held, release the fds, end."""
        with self._lock:
            self.failed = cause
            jobs = [*self._jobs, *self._incoming]
            self._jobs.clear()
            self._incoming.clear()
            self._aborts.clear()
        for job in jobs:
            job.finished = True
            try:
                job.steps.close()
            except Exception:
                pass
            finally:
                job.cc.finish()
                _settle(job.done, background.thread_failed("offload reactor thread", cause))
        with contextlib.suppress(Exception):
            self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _loop(self) -> None:
        sel = self._sel
        deadlines: list[tuple[float, int, _Job]] = []
        counter = itertools.count()
        while True:
            background.checkpoint("offload-reactor")
            with self._lock:
                incoming, self._incoming = self._incoming, []
                self._jobs.update(incoming)
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
            wait = None
            if deadlines:
                wait = max(0.0, deadlines[0][0] - time.monotonic())
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
        with self._lock:
            self._jobs.discard(job)
        if job.fd >= 0:
            sel.unregister(job.fd)
            job.fd = -1
        try:
            job.steps.close()
        finally:
            job.cc.finish()
            _settle(job.done, outcome)


class _CompiledReactor:
    """A C driver's engine, its thread, and the thread that reports outcomes.

    The engine thread never holds the GIL. The reporter thread waits for
    outcomes without it, then (with it) calls each job's ``done``; outcomes
    that end together are reported in one go. If either thread fails (or the
    engine stops without being asked to), every pending cancel is settled
    with the failure and the engine is closed (it finishes every cancel
    connection it still holds).
    """

    def __init__(self, native: NativeDriver) -> None:
        self._native = native
        self._engine: OffloadEngine = native.new_engine()
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[_Done, float]] = {}
        self._ids = itertools.count(1)
        self._started = False
        self._pid = os.getpid()
        self.failed: BaseException | None = None

    def usable(self) -> bool:
        """True in the process that made it, until one of its threads failed."""
        return self.failed is None and self._pid == os.getpid()

    def fds(self) -> set[int]:
        """The file descriptors the engine keeps open."""
        return set(self._engine.fds())

    def submit(self, cc: PGcancelConn, deadline: Deadline, done: _Done) -> object:
        """Hand ``cc`` to the engine; ``done(outcome)`` is called once, from the reporter."""
        with self._lock:
            if self.failed is not None:
                raise background.thread_failed("offload engine", self.failed)
            job_id = next(self._ids)
            self._pending[job_id] = (done, deadline.timeout)
            if not self._started:
                for target, name in (
                    (self._engine_main, "psycancel-offload-engine"),
                    (self._reporter_main, "psycancel-offload-reporter"),
                ):
                    threading.Thread(target=target, name=name, daemon=True).start()
                self._started = True
        try:
            self._engine.submit(cc, deadline.at, job_id)
        except BaseException:
            with self._lock:
                self._pending.pop(job_id, None)
            failed = self.failed
            if failed is not None:  # closed by a failure meanwhile: say so
                raise background.thread_failed("offload engine", failed) from failed
            raise
        return job_id

    def abort(self, handle: object) -> None:
        """Stop the job ``handle`` (its ``done`` still runs)."""
        assert isinstance(handle, int)
        _count_abort()
        if self.failed is None:
            self._engine.abort(handle)

    def _engine_main(self) -> None:
        try:
            background.checkpoint("offload-engine")
            lower_thread_priority()
            self._engine.run()
        except BaseException as ex:
            self._fail(ex, "offload engine thread")
        else:
            if self.failed is None:  # run() returns only after close(), which only _fail asks
                self._fail(RuntimeError("the offload engine stopped"), "offload engine thread")

    def _reporter_main(self) -> None:
        try:
            while batch := self._engine.take_done():
                background.checkpoint("offload-reporter")
                self._report(batch)
        except BaseException as ex:
            self._fail(ex, "offload reporter thread")

    def _report(self, batch: list[tuple[int, int, str]]) -> None:
        for job_id, code, message in batch:
            with self._lock:
                entry = self._pending.pop(job_id, None)
            if entry is not None:  # (None: settled already by a failure)
                done, timeout = entry
                _settle(done, outcomes.from_native(self._native, code, message, timeout))

    def _fail(self, cause: BaseException, what: str) -> None:
        """Settle every pending cancel with ``cause``; close the engine (it finishes them)."""
        with self._lock:
            if self.failed is None:
                self.failed = cause
            pending, self._pending = self._pending, {}
        for done, _ in pending.values():
            _settle(done, background.thread_failed(what, cause))
        with contextlib.suppress(Exception):
            self._engine.close()


_AnyReactor = _Reactor | _CompiledReactor
_reactors: dict[str, _AnyReactor] = {}
_reactor_lock = threading.Lock()


def reactor_fds() -> set[int]:
    """The fds held by this process's offload reactors (empty before first use)."""
    fds: set[int] = set()
    for reactor in list(_reactors.values()):
        if reactor.usable():
            fds |= reactor.fds()
    return fds


def aborts_requested() -> int:
    """How many offloaded jobs were asked to stop so far in this process (tests)."""
    return _aborts


def _reactor_for(native: NativeDriver | None) -> _AnyReactor:
    """The reactor for cancel objects of a twin: its C engine if it has a driver."""
    kind = "python" if native is None else "native"
    with _reactor_lock:
        reactor = _reactors.get(kind)
        if reactor is None or not reactor.usable():
            # First use, after a failure, or in a new process after fork.
            reactor = _Reactor() if native is None else _CompiledReactor(native)
            _reactors[kind] = reactor
        return reactor


def native_engine(native: NativeDriver) -> OffloadEngine:
    """Tests: the ``OffloadEngine`` that drives ``native``'s offloaded cancels here."""
    reactor = _reactor_for(native)
    assert isinstance(reactor, _CompiledReactor)
    return reactor._engine


async def run_offloaded(cc: PGcancelConn, native: NativeDriver | None, deadline: Deadline) -> None:
    """Start ``cc`` and drive it in a reactor thread; the reactor finishes ``cc``.

    ``native``: the twin's C driver (its engine does the work), or None (the
    Python reactor does).
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    abandoned = False  # the task was cancelled: nobody reads an outcome any more

    def settle(outcome: BaseException | None) -> None:
        # An aborted job (or any outcome nobody waits for) cancels the future:
        # a future holding an exception that is never read is logged by
        # asyncio ("Future exception was never retrieved") when collected.
        if fut.done():
            return
        if outcome is None:
            fut.set_result(None)
        elif abandoned or isinstance(outcome, asyncio.CancelledError):
            fut.cancel()
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
            # Wait until the reactor has closed the cancel connection, but not
            # forever: a reactor that cannot answer must not keep the task.
            with contextlib.suppress(BaseException):
                await asyncio.wait((fut,), timeout=ABORT_GRACE)
            if not fut.done():
                _log.warning(
                    "an offloaded cancel was not closed within %g s of its task's "
                    "cancellation; it is left to the reactor",
                    ABORT_GRACE,
                )
        abandoned = True
        if fut.done() and not fut.cancelled():
            fut.exception()  # read: the task's cancellation is what propagates
        raise
