"""Exceptions and warnings raised by psycancel."""

from __future__ import annotations

__all__ = [
    "CancelError",
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


class QueryTimeout(Error, TimeoutError):
    """The query ran past a :func:`psycancel.cancel_after` limit and was cancelled.

    Raised ``from`` the driver's own "query cancelled" error (SQLSTATE 57014),
    which stays available as ``__cause__``. The connection remains usable
    (roll back first if a transaction was open).
    """
