"""Exceptions and warnings raised by psycancel."""

from __future__ import annotations

__all__ = [
    "CancelError",
    "CancelNotTakenWarning",
    "CancellationTimeout",
    "Error",
    "InsecureCancelError",
    "InsecureCancelWarning",
    "InterfaceError",
    "OperationalError",
    "QueryCancelled",
    "QueryInterrupted",
    "QueryTimeout",
]


class Error(Exception):
    """Base class of every exception psycancel raises on purpose."""


class InterfaceError(Error):
    """The API was misused: wrong type, closed connection, finished object."""


class OperationalError(Error):
    """A psycancel ``PGconn`` could not connect or run a query (libpq's text)."""


class CancelError(Error):
    """The cancel request could not be delivered; the message is libpq's."""


class CancellationTimeout(Error, TimeoutError):
    """The cancel request did not complete before the timeout expired.

    The cancel connection has been closed when this is raised; the server may
    or may not have received the request.
    """


class InsecureCancelError(Error):
    """Refused to send a clear-text cancel for an encrypted connection.

    Raised with ``strict=True`` when only the legacy ``PQcancel`` is
    available (libpq < 17): it would send the cancel key unencrypted.
    """


class InsecureCancelWarning(UserWarning):
    """A cancel for an encrypted connection is being sent in clear text."""


class CancelNotTakenWarning(UserWarning):
    """A block outlived its cancel: the cancel was reported processed, the query went on.

    Raised (as a warning) at the exit of a :func:`psycancel.cancel_after`
    block that completed normally after its deadline although its cancel was
    sent and re-sent: the request most likely reached another server or
    process than the session's (an unpeered pooler spread over processes, a
    load balancer). Turn it into an error with ``warnings.simplefilter("error",
    CancelNotTakenWarning)``. See docs/deployments.md.
    """


class QueryCancelled(Error):
    """A cancel psycancel sent ended the query: the typed outcome of psycancel's own cancels.

    Raised ``from`` the driver's "query cancelled" error (SQLSTATE 57014,
    kept as ``__cause__``, wrapped by the framework where there is one), so
    that a query ended by psycancel is told apart from one ended by the
    server's own ``statement_timeout`` or by another session's
    ``pg_cancel_backend``: those raise the driver's error unchanged, even
    inside psycancel's blocks. Raised by the exit of a
    :class:`psycancel.Canceller`'s ``with``/``async with`` block when that
    handle sent a cancel during the block; subclasses: :class:`QueryTimeout`
    (:func:`psycancel.cancel_after`'s deadline, the integrations' configured
    ones) and :class:`QueryInterrupted` (:func:`psycancel.cancel_on_interrupt`).
    ``except psycancel.QueryCancelled`` catches all of them.
    """


class QueryInterrupted(QueryCancelled):
    """A signal's cancel ended the query (:func:`psycancel.cancel_on_interrupt`).

    With the default SIGINT handler the block raises ``KeyboardInterrupt``
    (as a program without psycancel would), whose ``__context__`` is this
    exception, itself raised ``from`` the driver's 57014 error. With a
    handler that does not raise (a SIGTERM handler that sets a flag), the
    block raises this exception. :attr:`signal` is the signal's number.
    """

    signal: int = 0
    """The number of the signal that sent the cancel."""

    def __init__(self, *args: object, signal: int = 0) -> None:
        super().__init__(*args)
        self.signal = signal

    def __reduce__(self) -> tuple[object, ...]:
        return (_query_interrupted, (self.args, self.signal))


def _query_interrupted(args: tuple[object, ...], signal: int) -> QueryInterrupted:
    """Unpickle a :class:`QueryInterrupted` (keeps :attr:`~QueryInterrupted.signal`)."""
    return QueryInterrupted(*args, signal=signal)


class QueryTimeout(QueryCancelled, TimeoutError):
    """The query ran past a :func:`psycancel.cancel_after` limit.

    Two cases, told apart by :attr:`connection_broken`:

    * False: the cancel ended the query. Raised ``from`` the driver's own
      "query cancelled" error (SQLSTATE 57014), which stays available as
      ``__cause__``. The connection remains usable (roll back first if a
      transaction was open).
    * True: the query had not ended ``timeout`` seconds after the cancel was
      sent (the cancel failed, timed out, or the server never acted on it), so
      psycancel shut the connection's socket down to end the block on time.
      ``__cause__`` is the cancel's own error when it had one (else the
      driver's error); ``__context__`` is the driver's connection error. The
      connection is broken: close it (pools discard it by themselves).
    """

    connection_broken: bool = False
    """True when the deadline had to break the connection (see above)."""

    def __init__(self, *args: object, connection_broken: bool = False) -> None:
        super().__init__(*args)
        self.connection_broken = connection_broken

    def __reduce__(self) -> tuple[object, ...]:
        return (_query_timeout, (self.args, self.connection_broken))


def _query_timeout(args: tuple[object, ...], connection_broken: bool) -> QueryTimeout:
    """Unpickle a :class:`QueryTimeout` (keeps :attr:`~QueryTimeout.connection_broken`)."""
    return QueryTimeout(*args, connection_broken=connection_broken)
