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


class QueryTimeout(Error, TimeoutError):
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
