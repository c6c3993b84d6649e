"""The offload waiter: cancel machines driven by one background thread.

A TLS cancel spends most of its client CPU inside ``PQcancelPoll`` (the TLS
handshake). Driven from the event loop, that work runs in the loop thread and
many cancels that become ready together stall the loop. Here one daemon
thread (the *reactor*) multiplexes every offloaded cancel with a selector;
libpq's calls release the GIL (both twins), so the handshakes run beside the
loop, and the loop only waits for a future.

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
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ._machine import READ, CancelSteps
from .errors import CancellationTimeout
from .pq.abc import PGcancelConn

__all__ = ["reactor_fds", "run_offloaded"]

_Done = Callable[[BaseException | None], None]


@dataclass(eq=False)
class _Job:
    """One offloaded cancel: its machine, deadline and completion callback."""

    steps: CancelSteps
    cc: PGcancelConn
    deadline: float
    timeout: float
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

    def submit(self, job: _Job) -> None:
        with self._lock:
            self._incoming.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="psycancel-offload", daemon=True
                )
                self._thread.start()
        self._wake()

    def abort(self, job: _Job) -> None:
        with self._lock:
            self._aborts.append(job)
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
                heapq.heappush(deadlines, (job.deadline, next(counter), job))
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
                    self._finish(
                        sel,
                        job,
                        CancellationTimeout(
                            f"the cancel request did not complete within {job.timeout:g} s"
                        ),
                    )

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
        if time.monotonic() >= job.deadline:
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


_reactor: _Reactor | None = None
_reactor_lock = threading.Lock()


def reactor_fds() -> set[int]:
    """The fds held by this process's offload reactor (empty before first use)."""
    reactor = _reactor
    if reactor is None or reactor._pid != os.getpid():
        return set()
    return reactor.fds()


def _get_reactor() -> _Reactor:
    global _reactor
    with _reactor_lock:
        if _reactor is None or _reactor._pid != os.getpid():
            _reactor = _Reactor()  # new process after fork: never reuse the parent's
        return _reactor


async def run_offloaded(
    steps: CancelSteps, cc: PGcancelConn, deadline: float, timeout: float
) -> None:
    """Drive ``steps`` in the reactor thread; the reactor finishes ``cc``."""
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

    job = _Job(steps=steps, cc=cc, deadline=deadline, timeout=timeout, done=done)
    reactor = _get_reactor()
    reactor.submit(job)
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        if not fut.done():
            reactor.abort(job)
            # Wait until the reactor has closed the cancel connection.
            with contextlib.suppress(BaseException):
                await fut
        raise
