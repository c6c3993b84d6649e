"""``Canceller``: resolve a connection in the thread that owns it, cancel from anywhere."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from types import TracebackType

from ._after import _query_canceled
from ._api import DEFAULT_TIMEOUT, cancel_blocking, cancel_nonblocking
from ._drivers.adapter import Acquired, Released, Unwatch, Watch
from ._drivers.protocol import describe
from ._drivers.resolve import Resolution, resolve
from ._typing import Cancellable
from .errors import CancelError, InterfaceError, QueryCancelled
from .pq import PGconn

__all__ = ["Canceller"]

_NOTHING = Resolution(None, None, None)


@dataclass(frozen=True)
class _Target:
    """What a :class:`Canceller` cancels now (replaced whole, never changed in place)."""

    found: Resolution
    """The driver connection and its row (``driver`` None: nothing to cancel now)."""
    note: str
    """Why there is nothing, for the repr ("not connected yet", ...); "" when bound."""
    error: Exception | None = None
    """Resolving the connection the watched object acquired failed: raised by ``cancel``."""


def _label(obj: object) -> str:
    """``module.QualName`` of a framework object, with its Django alias when it has one."""
    alias = getattr(obj, "alias", None)
    return describe(obj) + (f" {alias!r}" if isinstance(alias, str) else "")


class _Subscribers:
    """``cancel_after`` blocks that follow a Canceller (its watch, as a framework's).

    ``cancel_after(handle, ...)`` starts this watch at the block's entry and
    stops it at the exit; the callbacks run in the thread where the handle's
    framework object acquired or gave back its connection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, tuple[Acquired, Released]] = {}

    def add(self, acquired: Acquired, released: Released) -> Unwatch:
        """Subscribe a block's callbacks; the result unsubscribes them (idempotent)."""
        key = id(acquired)
        with self._lock:
            self._items[key] = (acquired, released)

        def unwatch() -> None:
            with self._lock:
                self._items.pop(key, None)

        return unwatch

    def acquired(self, driver: object) -> None:
        """Tell every block the driver connection the handle now holds (the owning thread)."""
        with self._lock:
            items = list(self._items.values())
        for acquired, _ in items:
            acquired(driver)

    def released(self) -> None:
        """Tell every block the handle holds nothing any more (the owning thread)."""
        with self._lock:
            items = list(self._items.values())
        for _, released in items:
            released()


def _watch_handle(handle: Canceller, acquired: Acquired, released: Released) -> Unwatch:
    """A ``cancel_after`` block follows a handle: told what it acquires, in the owning thread."""
    return handle._subscribers.add(acquired, released)


class Canceller:
    """A handle that cancels the query of one connection, from any thread or task.

    ``Canceller(conn)`` resolves ``conn`` *now*, in the calling thread: a
    framework's object (an SQLAlchemy ``Session`` or ``Connection``, a Django
    ``django.db.connection``, ...) is followed down to the driver connection it
    holds at this moment, and the libpq that owns it is found (an unsupported
    object raises :class:`InterfaceError` here, and so does an object that can
    never be cancelled: an SQLAlchemy session or engine of the asyncpg or
    pg8000 dialect, even before it holds a connection). Create it in the
    thread (or task) that is about to run the query: framework objects are
    neither thread-safe nor, for Django, the same connection in every thread.

    **Objects that connect later.** Django connects lazily and a ``Session``
    holds a connection only inside a transaction, so the object often holds
    none when the handle is made (a thread's first query). For those (a
    Django ``django.db.connection`` or ``connections[alias]``, an SQLAlchemy
    ``Session`` or ``AsyncSession``) the handle *follows* the object through
    the framework's own events, which the framework sends in the owning
    thread: Django's ``connection_created`` of the wrapper of the thread the
    handle was made in (never another thread's), a session's ``after_begin``
    (and ``after_transaction_end`` of its root transaction: the connection
    went back to the pool, so the handle holds nothing until the next one).
    The driver connection is thus resolved in its own thread, when it is
    acquired, not from the cancelling thread. The handle holds its events
    weakly: dropping it disconnects them (a ``Canceller`` that is collected
    leaves no receiver or listener behind), and it does not keep the
    framework's object alive, only the driver connection it holds now (a
    Django connection closed since is kept, closed, until the wrapper
    connects again: nothing to cancel meanwhile).

    Why events, not a second look at cancel time: the cancelling thread
    would have to read another thread's framework object (``django.db.connection``
    is a different wrapper there), and a connection taken then may already
    be on its way back to a pool.

    :meth:`cancel` and :meth:`cancel_async` may then be called from any
    thread or task, as often as needed; each has the semantics and errors of
    :func:`psycancel.cancel` / :func:`psycancel.cancel_async` for the driver
    connection the handle holds at that moment (closed since: nothing to
    cancel, returns; none yet: returns at once). A handle is also accepted
    by ``cancel``, ``cancel_async`` and ``cancel_after`` (which then follows
    it as it follows the framework's object).

    **Telling its cancels apart.** Run the query inside ``with handle:`` (or
    ``async with handle:``), in its own thread or task: if the handle sent a
    cancel while the block ran and the block ends with the driver's "query
    cancelled" error (SQLSTATE 57014, also wrapped by a framework), the block
    raises :class:`psycancel.QueryCancelled` ``from`` it. The server's own
    ``statement_timeout`` or another session's ``pg_cancel_backend`` leave the
    driver's error unchanged. The block sends nothing itself and costs
    nothing more; blocks may nest. :attr:`cancels` counts the cancels sent.
    """

    __slots__ = (
        "__weakref__",
        "_entries",
        "_finalizer",
        "_holder",
        "_sent",
        "_subscribers",
        "_target",
    )

    def __init__(self, conn: Cancellable) -> None:
        found = resolve(conn)
        found.pgconn()  # the owning libpq, now: an unknown owner fails here, not later
        self._subscribers = _Subscribers()
        self._sent = 0
        self._entries: list[int] = []
        self._finalizer: weakref.finalize[[], Canceller] | None = None
        self._holder = "" if found.holder is None else _label(found.holder)
        if found.driver is not None:
            self._target = _Target(Resolution(found.driver, found.row, None), "")
        else:
            self._target = _Target(
                _NOTHING, "holds no connection" if found.watch is None else "not connected yet"
            )
        if found.watch is not None:
            self._follow(*found.watch)

    def _follow(self, function: Watch, target: object) -> None:
        """Start the framework's watch, with callbacks that hold this handle weakly."""
        me = weakref.ref(self)

        def acquired(conn: object) -> None:
            handle = me()
            if handle is not None:
                handle._acquired(conn)

        def released() -> None:
            handle = me()
            if handle is not None:
                handle._released()

        unwatch = function(target, acquired, released)
        finalizer = weakref.finalize(self, unwatch)
        # At exit the framework may be half torn down. (The ignore: mypy < 2, the
        # newest on a free-threaded 3.13, reads a typeshed whose finalize has no atexit.)
        finalizer.atexit = False  # type: ignore[misc,unused-ignore]
        self._finalizer = finalizer
        if self._holder == "":
            self._holder = _label(target)

    def _acquired(self, conn: object) -> None:
        """The followed object acquired ``conn`` (in its own thread): hold its driver connection."""
        try:
            found = resolve(conn)
            found.pgconn()
        except Exception as ex:  # not raised inside the framework's code: by cancel()
            self._target = _Target(_NOTHING, "its connection cannot be cancelled", ex)
            self._subscribers.released()
            return
        self._target = _Target(Resolution(found.driver, found.row, None), "")
        if found.driver is not None:
            self._subscribers.acquired(found.driver)

    def _released(self) -> None:
        """The followed object gave its connection back: nothing to cancel until the next one."""
        self._target = _Target(_NOTHING, "holds no connection now")
        self._subscribers.released()

    def _current(self) -> Resolution:
        """What to cancel now; raises what resolving the acquired connection raised."""
        target = self._target
        if target.error is not None:
            raise InterfaceError(
                f"psycancel.Canceller: the connection {self._holder} acquired cannot be "
                f"cancelled: {target.error}"
            ) from target.error
        return target.found

    @property
    def connection(self) -> object | None:
        """The driver connection (or ``PGconn``) the handle cancels now; None: it holds none."""
        return self._target.found.driver

    def cancel(self, *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False) -> None:
        """Cancel the connection's running query, blocking this thread: :func:`psycancel.cancel`."""
        driver = self._current().driver
        if driver is not None:
            self._sent += 1  # first: the query may end before the call returns
            try:
                cancel_blocking(driver, timeout=timeout, strict=strict, stacklevel=2)
            except CancelError:
                self._sent -= 1  # not delivered (a timeout may have been: it counts)
                raise

    async def cancel_async(
        self, *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False, offload: bool | None = None
    ) -> None:
        """Cancel it without blocking the event loop: :func:`psycancel.cancel_async`."""
        driver = self._current().driver
        if driver is not None:
            self._sent += 1
            try:
                await cancel_nonblocking(
                    driver, timeout=timeout, strict=strict, offload=offload, stacklevel=2
                )
            except CancelError:
                self._sent -= 1
                raise

    @property
    def cancels(self) -> int:
        """How many cancel requests this handle sent (or is sending)."""
        return self._sent

    def __enter__(self) -> Canceller:
        self._entries.append(self._sent)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        start = self._entries.pop() if self._entries else self._sent
        if exc is None or self._sent == start:
            return
        canceled = _query_canceled(exc)
        if canceled is not None:
            raise QueryCancelled(
                "the query was cancelled by psycancel.Canceller.cancel"
                f"{'' if self._holder == '' else ' (' + self._holder + ')'}"
            ) from canceled

    async def __aenter__(self) -> Canceller:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __psycancel_pgconn__(self) -> PGconn | tuple[int, str]:
        """The driver connection's ``PGconn`` now (the driver protocol); ``(0, "")``: none."""
        pgconn = self._current().pgconn()
        return pgconn if pgconn is not None else (0, "")

    def _psycancel_watch_(self) -> Watch | None:
        """For ``cancel_after(handle)``: a watch of what this handle acquires (None: fixed)."""
        return _watch_handle if self._finalizer is not None else None

    def __repr__(self) -> str:
        target = self._target
        driver = target.found.driver
        if driver is not None:
            what = type(driver).__qualname__
            via = f", following {self._holder}" if self._finalizer is not None else ""
            return f"<psycancel.Canceller of {what}{via}>"
        if self._holder:
            return f"<psycancel.Canceller of {self._holder}, {target.note}>"
        return "<psycancel.Canceller of nothing>"
