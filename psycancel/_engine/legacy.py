"""The fallback for libpq < 17: ``PQcancel`` in a worker thread.

``PQcancel`` blocks until the server closes the cancel connection and has no
timeout of its own, so it always runs in a dedicated daemon thread (started
by a spawner thread, so that the caller never waits for a thread to start);
the caller waits for it with a deadline. If the deadline passes, the caller gets
:class:`CancellationTimeout` and the thread keeps waiting in ``PQcancel``
until the operating system gives up on the connection (TCP connect/retransmit
timeouts, or keepalive settings); it then frees the handle and ends. It never
holds the GIL while it waits, and being a daemon it never delays exit.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from concurrent.futures import Future

from ..errors import InsecureCancelError, InsecureCancelWarning
from ..pq.abc import PGcancel, PGconn

__all__ = ["check_policy", "run_legacy_cancel"]

_INSECURE = (
    "libpq {version} at {path} has no PQcancelConn API (needs >= 17): the cancel "
    "request for this encrypted connection would travel in clear text, "
    "including its secret key"
)


def check_policy(pgconn: PGconn, *, strict: bool, stacklevel: int) -> None:
    """Apply the security policy before a legacy cancel.

    On an encrypted connection: :class:`InsecureCancelError` if ``strict``,
    else an :class:`InsecureCancelWarning` (``stacklevel`` 1: the caller).
    """
    if not pgconn.ssl_in_use:
        return
    lib = pgconn.libpq
    message = _INSECURE.format(version=lib.version, path=lib.path)
    if strict:
        raise InsecureCancelError(message + "; refused because strict=True")
    warnings.warn(message, InsecureCancelWarning, stacklevel=stacklevel + 1)


def _run(handle: PGcancel, done: Future[None]) -> None:
    try:
        handle.cancel()
    except BaseException as ex:  # delivered to the waiting caller
        done.set_exception(ex)
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
    starts one worker per handle.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[PGcancel, Future[None]]] = queue.SimpleQueue()
        self._pid = os.getpid()
        threading.Thread(target=self._loop, name="psycancel-legacy-spawner", daemon=True).start()

    def _loop(self) -> None:
        while True:
            handle, done = self._queue.get()
            try:
                threading.Thread(
                    target=_run, args=(handle, done), name="psycancel-legacy-cancel", daemon=True
                ).start()
            except BaseException as ex:  # (cannot start a thread): the caller hears of it
                handle.free()
                done.set_exception(ex)

    def submit(self, handle: PGcancel, done: Future[None]) -> None:
        self._queue.put((handle, done))


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def run_legacy_cancel(handle: PGcancel) -> Future[None]:
    """``handle.cancel()`` in a new daemon worker thread, which frees ``handle``.

    Returns the outcome as a Future (it cannot be cancelled).
    """
    global _spawner
    done: Future[None] = Future()
    done.set_running_or_notify_cancel()
    try:
        with _spawner_lock:
            if _spawner is None or _spawner._pid != os.getpid():
                _spawner = _Spawner()  # a new process after fork: its own
            spawner = _spawner
        spawner.submit(handle, done)
    except BaseException:
        handle.free()
        raise
    return done
