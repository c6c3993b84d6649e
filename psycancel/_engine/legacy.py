"""The fallback for libpq < 17: ``PQcancel`` in a worker thread.

``PQcancel`` blocks until the server closes the cancel connection and has no
timeout of its own, so it always runs in a dedicated daemon thread (started
by a spawner thread, so that the caller never waits for a thread to start);
the caller waits for it with a deadline. If the deadline passes, the caller gets
:class:`CancellationTimeout` and the thread keeps waiting in ``PQcancel``
until the operating system gives up on the connection (TCP connect/retransmit
timeouts, or keepalive settings); it then frees the handle and ends. It never
holds the GIL while it waits, and being a daemon it never delays exit.

The same workers run a new-API cancel whose libpq step may block
(``isolated``: a GSS handshake that may reach a KDC): any :class:`WorkerJob`.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from typing import Protocol

from ..errors import Error
from . import background

__all__ = ["WorkerJob", "run_legacy_cancel"]


class WorkerJob(Protocol):
    """What a worker thread runs: ``cancel()``, then ``free()`` (a ``PGcancel`` is one)."""

    def cancel(self) -> None:
        """Send the request; may block; raises :class:`~psycancel.errors.Error` on failure."""

    def free(self) -> None:
        """Release what the job holds; called once, whatever ``cancel()`` did."""


def _run(handle: WorkerJob, done: Future[None]) -> None:
    """A worker thread: one ``PQcancel``; its outcome goes to ``done``."""
    try:
        background.checkpoint("legacy-worker")
        handle.cancel()
    except Error as ex:  # libpq's refusal (CancelError), delivered to the caller
        done.set_exception(ex)
    except BaseException as ex:
        done.set_exception(background.thread_failed("legacy cancel thread", ex))
    else:
        done.set_result(None)
    finally:
        handle.free()


class _Spawner:
    """Starts the worker threads, so that the caller never waits for one to start.

    ``threading.Thread.start()`` blocks until the new thread runs; on a busy
    machine that is milliseconds, spent in the caller's thread (an event
    loop's, for ``cancel_async``). The caller only queues the handle; this
    daemon thread, started on first use and kept for the life of the process,
    starts one worker per handle. If it fails, every queued cancel is settled
    with the failure and the next :func:`run_legacy_cancel` starts a new one.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[WorkerJob, Future[None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.failed: BaseException | None = None
        self._pid = os.getpid()
        threading.Thread(target=self._main, name="psycancel-legacy-spawner", daemon=True).start()

    def usable(self) -> bool:
        """True in the process that made it, until it failed."""
        return self.failed is None and self._pid == os.getpid()

    def _main(self) -> None:
        current: list[tuple[WorkerJob, Future[None]]] = []
        try:
            while True:
                current.append(self._queue.get())
                background.checkpoint("legacy-spawner")
                handle, done = current[0]
                try:
                    threading.Thread(
                        target=_run,
                        args=(handle, done),
                        name="psycancel-legacy-cancel",
                        daemon=True,
                    ).start()
                except Exception as ex:  # (cannot start a thread): the caller hears of it
                    handle.free()
                    done.set_exception(background.thread_failed("legacy cancel thread", ex))
                current.clear()
        except BaseException as ex:
            with self._lock:
                self.failed = ex
                while True:
                    try:
                        current.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            for handle, done in current:
                handle.free()
                if not done.done():
                    done.set_exception(background.thread_failed("legacy spawner thread", ex))

    def submit(self, handle: WorkerJob, done: Future[None]) -> bool:
        """Queue ``handle``; False (nothing queued) if this spawner has failed."""
        with self._lock:
            if self.failed is not None:
                return False
            self._queue.put((handle, done))
            return True


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def run_legacy_cancel(handle: WorkerJob) -> Future[None]:
    """``handle.cancel()`` in a new daemon worker thread, which frees ``handle``.

    Returns the outcome as a Future (it cannot be cancelled).
    """
    global _spawner
    done: Future[None] = Future()
    done.set_running_or_notify_cancel()
    try:
        while True:
            with _spawner_lock:
                if _spawner is None or not _spawner.usable():
                    _spawner = _Spawner()  # first use, after a failure, or after fork
                spawner = _spawner
            if spawner.submit(handle, done):
                return done
    except BaseException:
        handle.free()
        raise
