"""The fallback for libpq < 17: ``PQcancel`` in a worker thread.

``PQcancel`` blocks until the server closes the cancel connection and has no
timeout of its own, so it always runs in a dedicated daemon thread; the
caller waits for it with a deadline. If the deadline passes, the caller gets
:class:`CancellationTimeout` and the thread keeps waiting in ``PQcancel``
until the operating system gives up on the connection (TCP connect/retransmit
timeouts, or keepalive settings); it then frees the handle and ends. It never
holds the GIL while it waits, and being a daemon it never delays exit.
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import Future

from .errors import InsecureCancelError, InsecureCancelWarning
from .pq.abc import PGcancel, PGconn

__all__ = ["check_policy", "start_legacy_cancel"]

_INSECURE = (
    "libpq {version} at {path} has no PQcancelConn API (needs >= 17): the cancel "
    "request for this encrypted connection would travel in clear text, "
    "including its secret key"
)


def check_policy(pgconn: PGconn, *, strict: bool, stacklevel: int) -> None:
    """Apply the security policy before a legacy cancel.

    On an encrypted connection: :class:`InsecureCancelError` if ``strict``,
    else an :class:`InsecureCancelWarning`.
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


def start_legacy_cancel(pgconn: PGconn) -> Future[None]:
    """Send a legacy cancel from a new daemon thread; its outcome as a Future.

    The handle is made here (``PQgetCancel`` reads the connection, so it is
    done in the caller's thread) and freed by the worker when it is done.
    """
    handle = pgconn.get_cancel()
    done: Future[None] = Future()
    done.set_running_or_notify_cancel()  # it cannot be cancelled any more
    try:
        threading.Thread(
            target=_run, args=(handle, done), name="psycancel-legacy-cancel", daemon=True
        ).start()
    except BaseException:
        handle.free()
        raise
    return done
