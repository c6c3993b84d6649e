"""``cancel_after``: a client-side statement timeout that keeps the connection.

::

    with psycancel.cancel_after(conn, 2.0):          # blocking drivers
        cur.execute("select slow()")

    async with psycancel.cancel_after(aconn, 2.0):   # async drivers
        await cur.execute("select slow()")

If the block is still running after ``seconds``, a cancel request is sent for
``conn`` (a thread timer for ``with``; a loop timer and a non-blocking cancel
for ``async with`` under asyncio, offloaded for a TLS session as
``cancel_async``'s default does). The code in the block is never interrupted
or cancelled: the driver receives the server's "query cancelled" error as
usual, and the block turns it into :class:`QueryTimeout`, raised ``from`` it.

Guarantee: **after the block exits, no cancel from it is in flight.** If the
timer fired, leaving the block waits until the server has processed the
cancel request (the cancel connection reached EOF: the postmaster has already
signalled the backend). A cancel that reaches an idle backend is dropped by
the server, so the next query on the connection can never be hit by it. The
wait is bounded by ``timeout``; if the cancel could not be completed (refused,
timed out), the block raises that error (:class:`CancelError`,
:class:`CancellationTimeout`) instead of returning, because then the
guarantee cannot be given (if the block raised an exception of its own, that
one propagates, with a note about the cancel's failure on Python >= 3.11).

Thread rule: the cancel object is created when the block is entered, in the
thread (or task) that owns the connection; only that prepared object is used
by the timer (libpq allows using a ``PGcancelConn`` from another thread).

Frameworks: ``conn`` may be an SQLAlchemy ``Session``/``AsyncSession`` or a
Django connection. The connection it holds when the block is entered is
resolved then; if it holds none yet (or gives it back and takes another),
the framework's own events, which run in the owning thread (SQLAlchemy's
``after_begin``/``after_transaction_end``, Django's ``connection_created``),
make the cancel object for the connection it acquires during the block and
drop it when the session gives its connection back. The driver's error
arrives wrapped by the framework (``sqlalchemy.exc.OperationalError``,
``django.db.utils.OperationalError``): it is found through ``.orig``,
``__cause__`` and ``__context__``, and :class:`QueryTimeout` is raised from
the framework's exception.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

from ._drivers.adapter import Unwatch
from ._drivers.resolve import resolve
from ._engine import blocking, outcomes
from ._engine.async_library import running_asyncio
from ._engine.asyncio_loop import run_asyncio
from ._engine.plan import DEFAULT_TIMEOUT, MAX_WAIT, Plan, check_options, check_seconds, rearmed
from ._procedure import prepare_cancel
from ._typing import Cancellable
from .errors import CancelError, QueryTimeout

__all__ = ["QUERY_CANCELED", "cancel_after"]

QUERY_CANCELED = "57014"
"""SQLSTATE of a cancelled query (``query_canceled``)."""

_NEW, _ARMED, _FIRING, _DISARMED = "new", "armed", "firing", "disarmed"
_GRACE = 1.0
"""Seconds a fired timer thread may take past the cancel's own deadline to end."""
_MAX_CHAIN = 16
"""How many exceptions of a chain are looked at for the driver's "query cancelled"."""


def _has_sqlstate(exc: BaseException | None) -> bool:
    """True for a driver's "query cancelled" error (psycopg2 ``pgcode``, psycopg ``sqlstate``)."""
    if exc is None:
        return False
    for attr in ("sqlstate", "pgcode"):
        try:
            if getattr(exc, attr, None) == QUERY_CANCELED:
                return True
        except Exception:  # a broken property: not a cancellation we can vouch for
            continue
    return False


def _wrapped(exc: BaseException) -> list[BaseException]:
    """What ``exc`` wraps, nearest first: SQLAlchemy's ``.orig``, the cause, the context."""
    found: list[BaseException] = []
    try:
        orig = getattr(exc, "orig", None)
    except Exception:  # a broken property: nothing to follow
        orig = None
    if isinstance(orig, BaseException):
        found.append(orig)
    if exc.__cause__ is not None:
        found.append(exc.__cause__)
    if exc.__context__ is not None and not exc.__suppress_context__:
        found.append(exc.__context__)
    return found


def _framework_canceled(exc: BaseException) -> BaseException | None:
    """The driver's "query cancelled" error wrapped (at any depth) by a framework's ``exc``."""
    seen = {id(exc)}
    todo = _wrapped(exc)
    while todo and len(seen) < _MAX_CHAIN:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if _has_sqlstate(current):
            return current
        todo.extend(_wrapped(current))
    return None


def _query_canceled(exc: BaseException | None) -> BaseException | None:
    """The exception to raise :class:`QueryTimeout` from, or None if ``exc`` is no cancel.

    The driver's "query cancelled" error itself; or, when a framework wrapped
    it (SQLAlchemy's ``.orig``, Django's ``raise ... from``), the framework's
    exception, which keeps the driver's error as its cause. aiopg turns
    psycopg2's ``QueryCanceled`` into ``asyncio.CancelledError`` (raised
    while handling it; on Python 3.10 through a second ``CancelledError``):
    that one counts too (the psycopg2 error is returned), unless the task
    really has a cancellation request pending.
    """
    if exc is None:
        return None
    if _has_sqlstate(exc):
        return exc
    if not isinstance(exc, asyncio.CancelledError):
        return exc if _framework_canceled(exc) is not None else None
    task = asyncio.current_task() if asyncio._get_running_loop() is not None else None
    cancelling = getattr(task, "cancelling", None)  # Python >= 3.11
    if cancelling is not None and cancelling():
        return None
    context = exc.__context__
    for _ in range(8):  # CancelledError raised while handling CancelledError...
        if not isinstance(context, asyncio.CancelledError):
            break
        context = context.__context__
    return context if _has_sqlstate(context) else None


def _wait_event(event: threading.Event, seconds: float) -> bool:
    """``event.wait(seconds)`` for any finite ``seconds`` (in slices of MAX_WAIT)."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return event.is_set()
        if event.wait(min(left, MAX_WAIT)):
            return True


class cancel_after:  # lower case: used like a function, as in ``with cancel_after(...)``
    """Cancel the query running on ``conn`` if the block lasts over ``seconds``.

    A context manager, synchronous (``with``: the timer is a thread, for
    blocking drivers such as psycopg2) or asynchronous (``async with``: an
    event-loop timer and a non-blocking cancel; under Trio a thread timer).
    When it fired, the driver's query-cancelled error (SQLSTATE 57014) is
    re-raised as :class:`QueryTimeout` ``from`` it; a block that finishes in
    time is untouched. After the block exits, no cancel from it is in flight
    (see the module documentation for the exact guarantee).

    ``timeout`` bounds the cancel request itself and ``strict`` is the
    security policy of :func:`psycancel.cancel`; with a libpq < 17 on an
    encrypted connection the policy is applied when the block is entered
    (:class:`InsecureCancelWarning`, or :class:`InsecureCancelError` with
    ``strict=True``). Single use: enter it once. The timer fires once.

    Use ``with`` around blocking calls: inside ``async with`` under asyncio
    the timer is a loop timer, which cannot fire while a blocking call holds
    the loop.
    """

    def __init__(
        self,
        conn: Cancellable,
        seconds: float,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        strict: bool = False,
    ) -> None:
        self._seconds = check_seconds(seconds, "seconds")
        self._timeout = check_options(timeout, strict)
        self._conn = conn
        self._strict = strict
        self._lock = threading.Lock()
        self._state = _NEW
        self._fired = False
        self._fired_at = 0.0
        self._error: BaseException | None = None
        self._plan: Plan | None = None
        self._sent = False
        self._unwatch: Unwatch | None = None
        self._watch_error: Exception | None = None
        # thread timer
        self._disarm = threading.Event()
        self._thread: threading.Thread | None = None
        # asyncio timer
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def seconds(self) -> float:
        """The time limit of the block."""
        return self._seconds

    @property
    def fired(self) -> bool:
        """True once the timer has fired (a cancel request was, or is being, sent)."""
        return self._fired

    # -- shared -------------------------------------------------------------------

    def _prepare(self) -> bool:
        """Make the plan now, in the thread that owns the connection.

        False when there is nothing to cancel (a closed connection, a
        framework object holding no connection and acquiring none later): the
        block then runs with no timer. A session or a Django connection is
        also watched, to follow the connection it acquires during the block.
        """
        if self._state != _NEW:
            raise RuntimeError("cancel_after() objects are single use: make a new one")
        watch = resolve(self._conn).watch
        # Frames above prepare_cancel: _prepare, __enter__/__aenter__, the caller.
        self._plan = prepare_cancel(
            self._conn, timeout=self._timeout, strict=self._strict, stacklevel=3
        )
        if watch is not None:
            function, target = watch
            try:
                self._unwatch = function(target, self._acquired, self._released)
            except BaseException:
                self._release()
                raise
        if self._plan is None and self._unwatch is None:
            self._state = _DISARMED
            return False
        return True

    def _acquired(self, conn: object) -> None:
        """The watched framework object acquired ``conn`` (its thread): prepare its cancel."""
        try:
            plan = prepare_cancel(conn, timeout=self._timeout, strict=self._strict, stacklevel=2)
        except Exception as ex:  # not raised inside the framework's code: at the block's exit
            self._watch_error = ex
            plan = None
        with self._lock:
            if self._state == _ARMED:
                plan, self._plan = self._plan, plan
        if plan is not None:
            plan.discard()

    def _released(self) -> None:
        """The watched object gave its connection back: it must not be cancelled any more."""
        plan = None
        with self._lock:
            if self._state == _ARMED:
                plan, self._plan = self._plan, None
        if plan is not None:
            plan.discard()

    def _stop_watching(self) -> None:
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()

    def _watch_failure(self, exc: BaseException | None) -> None:
        """A connection acquired in the block could not be prepared: say so at the exit."""
        error, self._watch_error = self._watch_error, None
        if error is not None and exc is None:
            raise error

    def _take_plan(self) -> Plan | None:
        """The prepared plan, with its deadline starting now (the timer fired)."""
        plan, self._plan = self._plan, None
        if plan is None:
            return None  # the watched session held no connection when the timer fired
        self._sent = True
        return rearmed(plan)

    def _release(self) -> None:
        """Free the prepared plan's cancel object (only when the timer never fired)."""
        plan, self._plan = self._plan, None
        if plan is not None:
            plan.discard()

    def _fire(self) -> bool:
        """Move ARMED -> FIRING; False if the block was disarmed first."""
        with self._lock:
            if self._state != _ARMED:
                return False
            self._state = _FIRING
            self._fired = True
            self._fired_at = time.monotonic()
            return True

    def _disarm_or_fired(self) -> bool:
        """At exit: disarm the timer unless it fired already; True if it fired."""
        with self._lock:
            fired = self._state == _FIRING
            if not fired:
                self._state = _DISARMED
        self._disarm.set()
        if self._handle is not None:
            self._handle.cancel()
        if not fired:
            self._release()
        return fired

    def _outcome(self, exc: BaseException | None) -> None:
        """After a fired timer's cancel completed: map or report."""
        canceled = _query_canceled(exc) if self._sent else None
        if canceled is not None:
            raise QueryTimeout(
                f"the query was cancelled by psycancel.cancel_after: it ran for more "
                f"than {self._seconds:g} s"
            ) from canceled
        error = self._error
        if error is None:
            return  # the query ended just before the cancel reached the server
        if exc is not None:
            # The block failed on its own; keep its error, mention ours.
            add_note = getattr(exc, "add_note", None)  # Python >= 3.11
            if add_note is not None:
                add_note(f"psycancel.cancel_after: the timeout's cancel also failed: {error!r}")
            return
        raise error

    # -- thread timer (``with``, and ``async with`` outside asyncio) -----------------

    def _start_thread(self) -> None:
        self._state = _ARMED
        thread = threading.Thread(
            target=self._thread_main, name="psycancel-cancel-after", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            self._state = _DISARMED
            self._release()
            raise
        self._thread = thread

    def _thread_main(self) -> None:
        if _wait_event(self._disarm, self._seconds) or not self._fire():
            return
        try:
            self._send_blocking()
        except BaseException as ex:  # whatever ends the cancel, the block hears of it
            self._error = ex

    def _send_blocking(self) -> None:
        plan = self._take_plan()
        if plan is not None:
            blocking.run_blocking(plan)

    def _join_thread(self) -> None:
        """Wait for the fired timer thread's cancel to complete (bounded)."""
        thread = self._thread
        assert thread is not None
        # The new API's waiter gives up by itself at its deadline; a legacy
        # PQcancel has no timeout, so it is waited for until that deadline only.
        end = self._fired_at + self._timeout + _GRACE
        while thread.is_alive() and (left := end - time.monotonic()) > 0:
            thread.join(min(left, MAX_WAIT))
        if thread.is_alive():
            self._error = outcomes.timed_out(self._timeout, legacy=True)

    def __enter__(self) -> cancel_after:
        try:
            if self._prepare():
                self._start_thread()
        except BaseException:
            self._stop_watching()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_watching()
        if self._thread is not None and self._disarm_or_fired():
            self._join_thread()
            self._outcome(exc)
        self._watch_failure(exc)

    # -- asyncio timer (``async with``) -------------------------------------------

    async def __aenter__(self) -> cancel_after:
        try:
            return await self._aenter()
        except BaseException:
            self._stop_watching()
            raise

    async def _aenter(self) -> cancel_after:
        if not running_asyncio():
            import anyio.to_thread  # noqa: F401  (needed at exit: fail early if missing)

            if self._prepare():
                self._start_thread()
            return self
        if not self._prepare():
            return self
        loop = asyncio.get_running_loop()
        self._state = _ARMED
        self._handle = loop.call_later(self._seconds, self._fire_asyncio, loop)
        return self

    def _fire_asyncio(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._fire():
            self._task = loop.create_task(self._send_asyncio())

    async def _send_asyncio(self) -> None:
        try:
            plan = self._take_plan()
            if plan is not None:
                # cancel_async's default rule: offloaded for a TLS session (the
                # handshake's CPU work off the loop thread), inline otherwise.
                await run_asyncio(plan, offloaded=None)
        except Exception as ex:
            self._error = ex

    async def _join_task(self) -> None:
        """Wait for the fired cancel task, even if this task is cancelled meanwhile."""
        task = self._task
        assert task is not None
        interrupted: asyncio.CancelledError | None = None
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError as ex:
                if not (task.done() and task.cancelled()):
                    interrupted = ex  # ours: keep the guarantee first, re-raise after
        if task.cancelled() and self._error is None:
            self._error = CancelError("the cancel task was cancelled before it completed")
        if interrupted is not None:
            raise interrupted

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_watching()
        if self._state == _NEW:
            return
        if not self._disarm_or_fired():
            self._watch_failure(exc)
            return
        if self._thread is not None:
            import anyio.to_thread

            # Not abandoned on cancellation: leaving early would break the guarantee.
            await anyio.to_thread.run_sync(self._join_thread)
        else:
            await self._join_task()
        self._outcome(exc)
        self._watch_failure(exc)
