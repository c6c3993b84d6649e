"""The interface of the libpq layer: what both twins implement, told once.

``psycancel.pq`` loads one of two twins of this interface: the ctypes twin
(``psycancel.pq._ctypes``) or the compiled twin (``psycancel_c._pq``). Code
above this layer is typed against these Protocols only. The twins themselves
import nothing of psycancel but this module, ``enums``, ``messages`` (their
shared error texts), ``libfind`` (where a libpq comes from) and
``psycancel.errors``.

The contract of every object below (both twins; the parity tests and the
misuse tests check it):

* **After** ``finish()`` (``free()`` for :class:`PGcancel`), every method and
  property raises :class:`~psycancel.errors.InterfaceError`, except
  ``finish()``/``free()`` themselves, ``closed``, and a plain attribute of
  a :class:`PGconn` that does not touch libpq: ``libpq`` (it keeps
  working). ``finish()`` is idempotent and also runs when the object is
  garbage collected (for a :class:`PGconn`, which only borrows its pointer,
  it forgets the pointer: the connection stays open).
* **No direct construction**: calling a class raises ``TypeError``; objects
  come from ``Libpq.load``, ``PGconn.from_ptr``,
  ``PGconn.cancel_conn`` and ``PGconn.get_cancel``, so no arbitrary pointer
  reaches libpq without ``from_ptr``'s checks. Objects refuse to be pickled
  or copied (two wrappers would finish one pointer twice).
* **Locking**: every object can be used from several threads; each libpq
  call is serialised with the object's other libpq calls by a per-object
  lock, so that ``finish()`` in another thread never frees the object under
  a call. The lock is held only for libpq calls that do not wait for the
  server, except in :meth:`PGcancelConn.blocking`, :meth:`PGcancel.cancel`
  (nothing else can usefully happen to those objects meanwhile; ``finish()``
  waits for them). A :class:`PGconn`'s lock is its own, not its maker's:
  the driver may wait for a query's result in one thread while another
  cancels it through the wrapper.
* **fork()**: objects belong to the process that made them. In a forked
  child, ``finish()``/``free()`` (and garbage collection) only forget the
  parent's pointer, never closing or freeing anything the parent still uses
  (``PQfinish`` would send Terminate on the parent's socket), and every
  other use raises :class:`~psycancel.errors.InterfaceError`
  (:func:`psycancel.pq.messages.forked`). The check comes before the lock,
  which a thread of the parent may have held at the fork.
* **Errors**: a libpq call that fails reports libpq's own error text
  (messages lose their trailing newline); the texts
  of psycancel's own checks are in :mod:`psycancel.pq.messages`.
* **Ownership**: objects are never handed to a libpq other than the one that
  created them (a ``Libpq`` of the other twin is refused too).
* **The GIL** is released around every libpq call that can block or do TLS
  work (ctypes does so for every foreign call; the compiled twin says
  ``nogil`` explicitly).

A twin may also bring a :class:`NativeDriver`: C code that runs a whole
cancel without the GIL (the compiled twin does; the ctypes twin's cancels are
driven by the engine's Python waiters). ``Libpq.native_driver`` declares it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from .enums import ConnStatus, PollingStatus

__all__ = [
    "Libpq",
    "NativeDriver",
    "OffloadEngine",
    "PGcancel",
    "PGcancelConn",
    "PGconn",
]


class Libpq(Protocol):
    """A loaded libpq shared library and what it can do."""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Libpq:
        """Load libpq from ``path``, else the default one (``psycancel.pq.libfind``).

        One object per library file (cached). Raises ``OSError`` if the file
        cannot be loaded and :class:`~psycancel.errors.InterfaceError` if it
        is not a usable libpq.
        """
        ...

    @property
    def path(self) -> str:
        """The file the library was loaded from."""
        ...

    @property
    def version(self) -> int:
        """``PQlibVersion()``: major * 10000 + minor (180006 for 18.6)."""
        ...

    @property
    def has_cancel_conn(self) -> bool:
        """True if the library exports the ``PQcancelCreate`` family (>= 17)."""
        ...

    @property
    def ssl_library(self) -> str | None:
        """The TLS library libpq was built with (``"OpenSSL"``), or None."""
        ...

    @property
    def native_driver(self) -> NativeDriver | None:
        """The twin's C driver for whole cancels, or None (see :class:`NativeDriver`)."""
        ...


class PGcancel(Protocol):
    """The legacy cancel handle (``PQgetCancel``): blocking, never encrypted."""

    @property
    def closed(self) -> bool:
        """True once :meth:`free` has run."""
        ...

    def cancel(self) -> None:
        """Send the cancel request and wait for the server to close (blocking).

        Raises :class:`~psycancel.errors.CancelError` with libpq's text.
        """
        ...

    def free(self) -> None:
        """Release the handle (idempotent)."""
        ...


class PGcancelConn(Protocol):
    """A ``PGcancelConn`` (libpq >= 17): a cancel request on its own socket."""

    @property
    def closed(self) -> bool:
        """True once :meth:`finish` has run."""
        ...

    @property
    def status(self) -> ConnStatus:
        """``PQcancelStatus``: ALLOCATED, STARTED, ..., OK or BAD."""
        ...

    @property
    def socket(self) -> int:
        """``PQcancelSocket``: the current socket, -1 when there is none.

        It may change after every :meth:`poll`.
        """
        ...

    @property
    def error_message(self) -> str:
        """``PQcancelErrorMessage``, stripped of its trailing newline."""
        ...

    def start(self) -> None:
        """Open the cancel connection without blocking (``PQcancelStart``).

        Only allowed on an ALLOCATED object (new, or after :meth:`reset`):
        otherwise :class:`~psycancel.errors.InterfaceError`. If libpq cannot
        start, :class:`~psycancel.errors.CancelError` with its text.
        """
        ...

    def poll(self) -> PollingStatus:
        """Advance the request (``PQcancelPoll``); only after :meth:`start`."""
        ...

    def blocking(self) -> None:
        """Send the request and wait (``PQcancelBlocking``), releasing the GIL.

        Only on an ALLOCATED object. Bounded only by the original
        connection's ``connect_timeout``. Raises
        :class:`~psycancel.errors.CancelError` on failure.
        """
        ...

    def reset(self) -> None:
        """Close the socket and return to ALLOCATED (``PQcancelReset``)."""
        ...

    def finish(self) -> None:
        """Close and free the object (``PQcancelFinish``); idempotent."""
        ...


class PGconn(Protocol):
    """A libpq connection made elsewhere (by a driver), wrapped by :meth:`from_ptr`.

    psycancel never connects, queries or finishes a connection: it reads what
    a cancel needs and makes the cancel objects. :meth:`finish` only forgets
    the pointer (its maker closes the connection).
    """

    @classmethod
    def from_ptr(cls, ptr: int, libpq: Libpq) -> PGconn:
        """Wrap a ``PGconn*`` that ``libpq`` made elsewhere (never finished here).

        ``libpq`` must be the library that created the pointer and of this
        twin; a NULL, non-int or out-of-range pointer raises
        :class:`~psycancel.errors.InterfaceError`.
        """
        ...

    @property
    def libpq(self) -> Libpq:
        """The libpq this connection belongs to (also after :meth:`finish`)."""
        ...

    @property
    def pgconn_ptr(self) -> int:
        """The address of the ``PGconn`` struct."""
        ...

    @property
    def closed(self) -> bool:
        """True once :meth:`finish` has run."""
        ...

    @property
    def status(self) -> ConnStatus:
        """``PQstatus``."""
        ...

    @property
    def error_message(self) -> str:
        """``PQerrorMessage``, stripped of its trailing newline."""
        ...

    @property
    def socket(self) -> int:
        """``PQsocket`` (-1 when there is none)."""
        ...

    @property
    def ssl_in_use(self) -> bool:
        """``PQsslInUse``: True when the connection is encrypted with TLS."""
        ...

    @property
    def backend_pid(self) -> int:
        """``PQbackendPID``: the session's server process (for the records of a cancel)."""
        ...

    @property
    def gss_enc_in_use(self) -> bool:
        """``PQgssEncInUse``: True when the connection is encrypted with GSSAPI.

        False with a libpq that has no such function (< 12: no GSS encryption).
        """
        ...

    def conninfo_option(self, keyword: str) -> str | None:
        """The value of the connection option ``keyword`` (``PQconninfo``), None if unset.

        A cancel connection copies these options (not what the session
        negotiated with them): ``sslmode=allow`` tries clear text first.
        """
        ...

    def cancel_conn(self) -> PGcancelConn:
        """A new ``PGcancelConn`` for this connection (``PQcancelCreate``).

        Raises :class:`~psycancel.errors.InterfaceError` if the libpq has no
        such API (< 17). Check its ``status``: BAD carries libpq's reason.
        """
        ...

    def get_cancel(self) -> PGcancel:
        """A legacy cancel handle (``PQgetCancel``)."""
        ...

    def finish(self) -> None:
        """Forget the pointer (the connection stays open); idempotent.

        Every later use raises :class:`~psycancel.errors.InterfaceError`: the
        maker calls it before it closes the connection (``PQfinish``), so that
        nothing cancels through a freed pointer.
        """
        ...


class OffloadEngine(Protocol):
    """A thread's worth of C that drives many detached cancels without the GIL.

    One thread runs :meth:`run`, one loops on :meth:`take_done`; any thread
    may :meth:`submit` and :meth:`abort`. Every submitted cancel connection is
    finished exactly once, by the engine, and reported exactly once.
    """

    def fds(self) -> set[int]:
        """The engine's own file descriptors (its wake-up pipe)."""
        ...

    def submit(self, cc: PGcancelConn, deadline: float, job_id: int) -> None:
        """Take the new ``cc`` (it then reads as finished) and drive it until ``deadline``."""
        ...

    def abort(self, job_id: int) -> None:
        """Stop job ``job_id`` (reported as aborted unless it ended already)."""
        ...

    def close(self) -> None:
        """Abort every job; :meth:`run` and :meth:`take_done` then return."""
        ...

    def run(self) -> None:
        """The engine thread's body (GIL released); returns after :meth:`close`."""
        ...

    def take_done(self) -> list[tuple[int, int, str]]:
        """Wait for ended jobs: ``(job_id, outcome, message)``; ``[]`` once stopped."""
        ...

    def set_stage_hook(self, hook: Callable[[int, int, int], object] | None) -> None:
        """Tests: ``hook(job_id, status, events)`` before each wait, with the GIL."""
        ...


class NativeDriver(Protocol):
    """A twin's C code that runs a whole cancel (start, waits, polls, finish) without the GIL.

    The outcome codes are those of :meth:`run_blocking` and of
    :meth:`OffloadEngine.take_done`. Both take a new (not started)
    ``PGcancelConn`` of the same twin, which then reads as finished: the
    driver finishes the libpq object on every outcome.
    """

    @property
    def OUTCOME_OK(self) -> int:
        """The request was sent and the server closed the cancel connection."""
        ...

    @property
    def OUTCOME_FAILED(self) -> int:
        """libpq reported a failure (its text comes with the code)."""
        ...

    @property
    def OUTCOME_TIMEOUT(self) -> int:
        """The deadline passed first."""
        ...

    @property
    def OUTCOME_ABORTED(self) -> int:
        """The job was aborted (offload engine only)."""
        ...

    def run_blocking(self, cc: PGcancelConn, deadline: float) -> tuple[int, str]:
        """Drive ``cc`` in this thread, GIL released, until done or ``deadline``.

        Signal handlers run on ``EINTR``; an exception they raise propagates
        once the cancel connection is finished.
        """
        ...

    def new_engine(self) -> OffloadEngine:
        """A new, not yet running :class:`OffloadEngine` of this twin."""
        ...
