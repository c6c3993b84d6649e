"""The interface that both libpq twins implement (ctypes and compiled).

Common rules for every object below:

* After ``finish()`` (``free()`` for :class:`PGcancel`), every method and
  property raises :class:`~psycancel.errors.InterfaceError`, except
  ``finish()``/``free()`` themselves, ``closed``, and two plain attributes
  of a :class:`PGconn` that do not touch libpq: ``libpq`` and ``borrowed``
  (they keep working). ``finish()`` is idempotent and also runs when the
  object is garbage collected.
* The classes cannot be instantiated directly (``TypeError``): objects come
  from ``Libpq.load``, ``PGconn.connect``/``connect_start``/``from_ptr``,
  ``PGconn.cancel_conn`` and ``PGconn.get_cancel``.
* Thread safety: every object can be used from several threads; each call
  is serialised with the object's other libpq calls by a lock, which is
  only held for libpq calls that do not wait for the server (except in
  :meth:`PGcancelConn.blocking` and :meth:`PGcancel.cancel`). A thread
  waiting in :meth:`PGconn.get_result` does not hold it: another thread can
  cancel that query through the same object, or finish it.
* fork(): objects belong to the process that made them. In a forked child,
  ``finish()``/``free()`` (and garbage collection) only forget the parent's
  pointer, never closing or freeing anything the parent still uses, and
  every other use raises :class:`~psycancel.errors.InterfaceError` ("...
  belongs to the parent process ..."). Make new objects in the child.
* A libpq call that fails reports libpq's own error text in the exception
  (error messages lose their trailing newline; query values never do).
* Objects are never handed to a libpq other than the one that created them.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from .enums import ConnStatus, ExecStatus, PollingStatus

__all__ = ["Libpq", "PGcancel", "PGcancelConn", "PGconn", "QueryResult"]


class QueryResult(NamedTuple):
    """A query result, copied out of libpq's ``PGresult`` (which is freed)."""

    status: ExecStatus
    """``PQresultStatus``."""
    sqlstate: str | None
    """The SQLSTATE of an error result (``"57014"`` when cancelled), else None."""
    message: str
    """``PQresultErrorMessage`` (empty when the query succeeded)."""
    rows: tuple[tuple[str | None, ...], ...]
    """The rows as text (``None`` for SQL NULL), exactly as the server sent them."""


class Libpq(Protocol):
    """A loaded libpq shared library and what it can do."""

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
    """A libpq connection: owned (made by psycancel) or borrowed (a pointer).

    A borrowed connection (:meth:`from_ptr`) is never finished by psycancel.
    """

    @property
    def libpq(self) -> Libpq:
        """The libpq this connection belongs to (also after :meth:`finish`)."""
        ...

    @property
    def pgconn_ptr(self) -> int:
        """The address of the ``PGconn`` struct."""
        ...

    @property
    def borrowed(self) -> bool:
        """True when psycancel does not own (and never finishes) the pointer.

        Also readable after :meth:`finish`.
        """
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
    def backend_pid(self) -> int:
        """``PQbackendPID``: the server process running this session."""
        ...

    @property
    def ssl_in_use(self) -> bool:
        """``PQsslInUse``: True when the connection is encrypted with TLS."""
        ...

    def connect_poll(self) -> PollingStatus:
        """Advance a connection made by ``connect_start`` (``PQconnectPoll``)."""
        ...

    def send_query(self, query: str) -> None:
        """Send a query without waiting (``PQsendQuery``)."""
        ...

    def consume_input(self) -> None:
        """Read what the server sent (``PQconsumeInput``)."""
        ...

    def is_busy(self) -> bool:
        """``PQisBusy``: True if :meth:`get_result` would block."""
        ...

    def get_result(self) -> QueryResult | None:
        """The next result (waits while busy); None when there are no more.

        Waits for the server with the GIL *and* the object's lock released:
        meanwhile other threads may use this object, e.g. cancel the query
        (:meth:`cancel_conn`, :meth:`get_cancel`). If another thread
        finishes it, this raises :class:`~psycancel.errors.InterfaceError`.
        A signal handler that raises (``KeyboardInterrupt``) interrupts the
        wait; the query then still runs.
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
        """Close an owned connection (``PQfinish``); idempotent.

        On a borrowed connection this only forgets the pointer. Threads
        waiting in :meth:`get_result` raise
        :class:`~psycancel.errors.InterfaceError`.
        """
        ...
