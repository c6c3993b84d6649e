"""``Canceller``: resolve a connection in the thread that owns it, cancel from anywhere."""

from __future__ import annotations

from ._api import DEFAULT_TIMEOUT, cancel_blocking, cancel_nonblocking
from ._drivers.resolve import Resolution, resolve
from ._typing import Cancellable
from .pq import PGconn

__all__ = ["Canceller"]


class Canceller:
    """A handle that cancels the query of one connection, from any thread or task.

    ``Canceller(conn)`` resolves ``conn`` *now*, in the calling thread: a
    framework's object (an SQLAlchemy ``Session`` or ``Connection``, a Django
    ``django.db.connection``, ...) is followed down to the driver connection it
    holds at this moment, and the libpq that owns it is found (an unsupported
    object raises :class:`InterfaceError` here). Create it in the thread (or
    task) that is about to run the query: framework objects are neither
    thread-safe nor, for Django, the same connection in every thread.

    :meth:`cancel` and :meth:`cancel_async` may then be called from any
    thread or task, as often as needed; each has the semantics and errors of
    :func:`psycancel.cancel` / :func:`psycancel.cancel_async` for that driver
    connection (closed since: nothing to cancel, returns). If ``conn`` held no
    connection when the handle was made (a session outside a transaction, an
    unconnected Django wrapper), there is nothing to cancel and both return at
    once. The handle keeps the driver connection alive, not the framework's
    object; it is also accepted by ``cancel``, ``cancel_async`` and
    ``cancel_after``.
    """

    __slots__ = ("_resolution",)

    def __init__(self, conn: Cancellable) -> None:
        found = resolve(conn)
        found.pgconn()  # the owning libpq, now: an unknown owner fails here, not later
        self._resolution = Resolution(found.driver, found.row, None)

    @property
    def connection(self) -> object | None:
        """The driver connection (or ``PGconn``) the handle cancels; None: it holds none."""
        return self._resolution.driver

    def cancel(self, *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False) -> None:
        """Cancel the connection's running query, blocking this thread: :func:`psycancel.cancel`."""
        if self._resolution.driver is not None:
            cancel_blocking(self._resolution.driver, timeout=timeout, strict=strict, stacklevel=2)

    async def cancel_async(
        self, *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False, offload: bool | None = None
    ) -> None:
        """Cancel it without blocking the event loop: :func:`psycancel.cancel_async`."""
        if self._resolution.driver is not None:
            await cancel_nonblocking(
                self._resolution.driver,
                timeout=timeout,
                strict=strict,
                offload=offload,
                stacklevel=2,
            )

    def __psycancel_pgconn__(self) -> PGconn | tuple[int, str]:
        """The driver connection's ``PGconn`` now (the driver protocol); ``(0, "")``: none."""
        pgconn = self._resolution.pgconn()
        return pgconn if pgconn is not None else (0, "")

    def __repr__(self) -> str:
        driver = self._resolution.driver
        what = "nothing" if driver is None else type(driver).__qualname__
        return f"<psycancel.Canceller of {what}>"
