"""``cancel_after``: a client-side statement deadline, bounded whatever the network does.

::

    with psycancel.cancel_after(conn, 2.0, timeout=3.0):          # blocking drivers
        cur.execute("select slow()")

    async with psycancel.cancel_after(aconn, 2.0, timeout=3.0):   # async drivers
        await cur.execute("select slow()")

The guarantee. A block that is still running ``seconds`` after it was
entered gets a cancel request sent for ``conn`` (encrypted like the session;
bounded by ``timeout``). Then:

* the query ends because of it: the driver raises its "query cancelled"
  error (SQLSTATE 57014), the block raises :class:`QueryTimeout` ``from`` it,
  and the connection stays usable;
* the query has not ended ``timeout`` seconds after the cancel was sent, or
  the cancel failed or timed out sooner (network down, server gone, a
  pooler that lost the request): the connection's socket is *shut down*
  (``shutdown(2)``, never closed: the driver owns the descriptor). The
  blocked driver call returns at once with the driver's connection error,
  and the block raises :class:`QueryTimeout` with ``connection_broken`` True.
  The driver sees its connection as broken, as pools do (psycopg_pool,
  SQLAlchemy's disconnect detection, Django's ``close_if_unusable_or_obsolete``).

So a block ends by ``seconds + timeout`` (plus the time the driver takes to
notice a shut socket: microseconds) in every failure mode.
``break_connection=False`` restores the older behaviour: the cancel is
bounded, the query is not (a black-holed connection then blocks for as long
as the operating system keeps it open).

A cancel that "succeeded" without ending the query (it reached another
server or process than the session's: an unpeered pooler over several
processes, a load balancer) is seen: if the block still runs 0.25 s after
it, the cancel is re-sent on a new connection (at most 3 times, never past
the bound, only while the block is inside), and a block that outlives every
re-send is reported (WARNING on the ``psycancel`` logger). A block that then
completes past its deadline keeps its result and warns with
:class:`CancelNotTakenWarning`; ``resends`` and ``cancel_lost`` say what
happened (``psycancel._confirm``, docs/deployments.md).

After the block exits, no cancel from it is in flight: if the timer fired,
leaving the block waits until the server has processed the request (the
cancel connection reached EOF), so it can never hit the next query on the
connection; a broken connection has no next query, and its block does not
wait for a cancel still in flight past the bound.

Task cancellation (``async with``): a task cancelled inside the block (an
``asyncio`` cancellation, an AnyIO or Trio cancel scope) before the timer
fired sends the cancel before the cancellation propagates, so that the query
does not run on on the server after its client gave up; the cancel is
waited for (bounded by ``timeout``, fenced as above) and its failure is
logged at WARNING, never raised over the cancellation.
:func:`cancel_on_cancellation` does that alone, with no deadline.

Thread rule: the cancel object and the socket's fence are made when the
block is entered, in the thread (or task) that owns the connection; only
those prepared objects are used later from other threads (libpq allows using
a ``PGcancelConn`` from another thread; the fence checks that the descriptor
still names the same socket before shutting it down).

Timers: ``with`` blocks share one timer thread for the whole process (a
block that ends in time costs a heap entry, no thread); a fired block's
cancel runs in a thread of its own. ``async with`` under asyncio uses a loop
timer and a non-blocking cancel (offloaded for an encrypted session, as
``cancel_async`` does); the break uses the shared timer thread, so that it
happens even while the loop is busy. Inside ``async with`` a call that
blocks the loop cannot be interrupted by the loop's timer: exiting such a
block after its deadline without having fired warns (``RuntimeWarning``:
use ``with``).

Frameworks: ``conn`` may be an SQLAlchemy ``Session``/``AsyncSession`` or a
Django connection. The connection it holds when the block is entered is
resolved then; if it holds none yet (or gives it back and takes another),
the framework's own events, which run in the owning thread (SQLAlchemy's
``after_begin``/``after_transaction_end``, Django's ``connection_created``),
make the cancel object for the connection it acquires during the block and
drop it when the session gives its connection back. A deadline that passes
while it holds none leaves the block armed and overdue: the connection it
acquires next is cancelled at once. A connection given back while a cancel
request to it is still on its way goes back once the server has processed
it (the session's event waits, bounded by the cancel's own bound): arriving
later, it would cancel the next user's query. One that fired on a connection
given back since (the cancel found its backend idle) is not cancelled again
nor broken (another session may hold it by then); the next one the block acquires gets
the cancel's re-sends (``psycancel._confirm``, which waits meanwhile), and,
past the bound, is broken at once. The driver's error
arrives wrapped by the framework (``sqlalchemy.exc.OperationalError``,
``django.db.utils.OperationalError``): it is found through ``.orig``,
``__cause__`` and ``__context__``, and :class:`QueryTimeout` is raised from
the framework's exception.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from types import TracebackType
from typing import Any

from ._confirm import (
    IDLE,
    MAX_RESENDS,
    Confirmation,
    Idle,
    confirm_asyncio,
    confirm_blocking,
    resend_plan,
)
from ._drivers.adapter import Unwatch
from ._drivers.resolve import resolve
from ._engine import blocking, outcomes, telemetry, timers
from ._engine.async_library import running_asyncio
from ._engine.asyncio_loop import run_asyncio
from ._engine.breaker import SocketFence
from ._engine.plan import DEFAULT_TIMEOUT, Plan, check_options, check_seconds, rearmed
from ._engine.trace import logger
from ._procedure import prepare_target
from ._typing import Cancellable
from .errors import CancelError, CancelNotTakenWarning, QueryTimeout
from .pq.abc import PGconn

__all__ = ["QUERY_CANCELED", "cancel_after", "cancel_on_cancellation"]

QUERY_CANCELED = "57014"
"""SQLSTATE of a cancelled query (``query_canceled``)."""

_NEW, _ARMED, _FIRING, _DONE = "new", "armed", "firing", "done"
_GRACE = 1.0
"""Seconds a fired cancel may take past its own deadline to end (a legacy ``PQcancel``
has no timeout of its own), when the connection was not broken."""
_BROKEN_GRACE = 0.05
"""Seconds a block whose connection was broken waits past the bound for its cancel."""
_LATE = 0.25
"""Seconds past ``seconds`` after which an unfired ``async with`` block warns."""
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


def _is_cancellation(exc: BaseException | None) -> bool:
    """True if ``exc`` is the cancellation of the running task (asyncio, AnyIO, Trio)."""
    if exc is None:
        return False
    if isinstance(exc, asyncio.CancelledError):
        return True
    if not running_asyncio():
        import anyio

        return isinstance(exc, anyio.get_cancelled_exc_class())
    return False


class cancel_after:  # lower case: used like a function, as in ``with cancel_after(...)``
    """Bound the query running on ``conn``: cancel it after ``seconds``, break it after ``timeout``.

    A context manager, synchronous (``with``: for blocking drivers such as
    psycopg2; one timer thread serves every block of the process) or
    asynchronous (``async with``: an event-loop timer and a non-blocking
    cancel; under Trio the shared timer thread). See the module
    documentation for the full guarantee; in short:

    * in time: the block is untouched;
    * after ``seconds`` the cancel is sent; the query ends with the driver's
      "query cancelled" error (SQLSTATE 57014): :class:`QueryTimeout` is
      raised ``from`` it, the connection stays usable;
    * if the query has not ended ``timeout`` seconds later, or the cancel
      failed before: the connection's socket is shut down, the driver's
      call returns with its connection error, and :class:`QueryTimeout` is
      raised with ``connection_broken=True`` (the connection is broken; pools
      discard it). ``break_connection=False``: never break (the cancel's
      failure is raised at the exit instead, as before 0.2);
    * a framework object that holds no connection when the deadline passes
      (a Django connection or a SQLAlchemy session still connecting, or
      between transactions): the connection it acquires later in the block
      is cancelled at once (a cancel that reaches it before its query starts
      is sent again while the block still runs), so nothing the block runs
      past its deadline escapes it.

    ``timeout`` bounds the cancel request and ``strict`` is the security
    policy of :func:`psycancel.cancel`; with a libpq < 17 on an encrypted
    connection the policy is applied when the block is entered
    (:class:`InsecureCancelWarning`, or :class:`InsecureCancelError` with
    ``strict=True``). A task cancelled inside ``async with`` before the
    deadline sends the cancel first (see :func:`cancel_on_cancellation`).
    Single use: enter it once. The timer fires once.

    Use ``with`` around blocking calls: inside ``async with`` under asyncio
    the timer is a loop timer, which cannot fire while a blocking call holds
    the loop (such a block warns at its exit).
    """

    __slots__ = (
        "__weakref__",
        "_break_connection",
        "_break_entry",
        "_break_pending",
        "_broken",
        "_confirmation",
        "_conn",
        "_entered_at",
        "_entry",
        "_error",
        "_fence",
        "_fired",
        "_fired_at",
        "_first",
        "_handle",
        "_in_flight",
        "_left",
        "_lock",
        "_loop",
        "_overdue",
        "_pgconn",
        "_plan",
        "_processed",
        "_seconds",
        "_sent",
        "_sent_done",
        "_state",
        "_strict",
        "_task",
        "_timeout",
        "_unwatch",
        "_watch_error",
    )

    def __init__(
        self,
        conn: Cancellable,
        seconds: float,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        strict: bool = False,
        break_connection: bool = True,
    ) -> None:
        self._seconds: float | None = check_seconds(seconds, "seconds")
        self._timeout = check_options(timeout, strict)
        if not isinstance(break_connection, bool):
            raise TypeError(
                f"break_connection must be a bool, got {type(break_connection).__name__}"
            )
        self._conn = conn
        self._strict = strict
        self._break_connection = break_connection
        self._lock = threading.Lock()
        # Cancel requests sent and not yet processed; a connection given back waits
        # for them (_released): one arriving later would hit its next user's query.
        self._in_flight = 0
        self._processed = threading.Condition(self._lock)
        self._state = _NEW
        self._entered_at = 0.0
        self._fired = False
        self._fired_at = 0.0
        self._overdue = False  # the deadline passed while no connection was held
        self._loop: asyncio.AbstractEventLoop | None = None  # ``async with`` under asyncio
        self._broken = False
        # (why, reason) of a break due while no connection was held: for the next one
        self._break_pending: tuple[str, str] | None = None
        self._error: BaseException | None = None
        self._plan: Plan | None = None
        self._fence: SocketFence | None = None
        self._pgconn: PGconn | None = None  # for a re-send (psycancel._confirm)
        self._first: Plan | None = None  # the fired plan (a re-send copies its API)
        self._left: threading.Event | None = None  # made when fired: set when leaving
        self._confirmation: Confirmation | None = None
        self._sent = False
        self._unwatch: Unwatch | None = None
        self._watch_error: Exception | None = None
        self._entry: timers.TimerEntry | None = None
        self._break_entry: timers.TimerEntry | None = None
        # a fired cancel runs in a thread (``with``, Trio; done: _sent_done) or a task
        self._sent_done: threading.Event | None = None  # made when fired: Events cost
        self._handle: asyncio.Handle | None = None
        self._task: asyncio.Task[Any] | None = None

    @property
    def seconds(self) -> float | None:
        """The time limit of the block (None for :func:`cancel_on_cancellation`)."""
        return self._seconds

    @property
    def fired(self) -> bool:
        """True once the deadline passed (a cancel request was, or is being, sent).

        For a framework object that held no connection then, the cancel goes to
        the connection it acquires later in the block, if it does.
        """
        return self._fired

    @property
    def connection_broken(self) -> bool:
        """True once the deadline broke the connection (its socket was shut down)."""
        return self._broken

    # -- shared -------------------------------------------------------------------

    def _prepare(self) -> bool:
        """Make the plan and the socket's fence now, in the thread that owns the connection.

        False when there is nothing to cancel (a closed connection, a
        framework object holding no connection and acquiring none later): the
        block then runs with no timer. A session or a Django connection is
        also watched, to follow the connection it acquires during the block.
        """
        if self._state != _NEW:
            raise RuntimeError("cancel_after() objects are single use: make a new one")
        self._state = _DONE  # whatever happens next, never entered twice
        found = resolve(self._conn)
        watch = found.watch
        # Frames above prepare_target: _prepare, __enter__/_aenter(/__aenter__), the caller.
        self._plan, self._fence, self._pgconn = prepare_target(
            found, timeout=self._timeout, strict=self._strict, stacklevel=3
        )
        if watch is not None:
            function, target = watch
            try:
                self._unwatch = function(target, self._acquired, self._released)
            except BaseException:
                self._release()
                raise
        if self._plan is None and self._unwatch is None:
            return False
        self._entered_at = time.monotonic()
        return True

    def _acquired(self, conn: object) -> None:
        """The watched framework object acquired ``conn`` (its thread): prepare its cancel."""
        try:
            plan, fence, pgconn = prepare_target(
                resolve(conn), timeout=self._timeout, strict=self._strict, stacklevel=2
            )
        except Exception as ex:  # not raised inside the framework's code: at the block's exit
            self._watch_error = ex
            plan, fence, pgconn = None, None, None
        overdue = False
        break_now: tuple[str, str] | None = None
        with self._lock:
            if self._state == _ARMED:
                plan, self._plan = self._plan, plan
                self._fence = fence
                self._pgconn = pgconn
                overdue = self._overdue and self._plan is not None
                if overdue:
                    # Past the deadline already: fire now (the timer's path).
                    if self._loop is not None:
                        self._handle = self._loop.call_soon_threadsafe(
                            self._fire_asyncio, self._loop
                        )
                    else:
                        self._entry = timers.call_at(time.monotonic(), self._on_deadline)
            elif self._state == _FIRING and not self._broken and plan is not None:
                # Fired already (on a connection given back since, or none): this
                # one is past the deadline too. The confirmation re-sends the
                # cancel to it (a full set of re-sends: it is a new connection),
                # and past the bound it is broken at once.
                self._fence = fence
                self._pgconn = pgconn
                if self._confirmation is not None:
                    self._confirmation.budget = MAX_RESENDS
                break_now = self._break_pending
        if plan is not None:
            plan.discard()
        if break_now is not None:
            self._break(*break_now)

    def _released(self) -> None:
        """The watched object gave its connection back: it must not be cancelled any more."""
        plan = None
        with self._lock:
            # A cancel request still in flight would reach the backend once another
            # user holds the connection and cancel their query: it goes back only
            # when the server processed ours (bounded by the cancel's own bound;
            # milliseconds on a healthy network, as the block's exit waits).
            # (Not in an ``async with`` block's own loop: its cancel runs there, and
            # waiting would block it until the bound.)
            until = self._fired_at + self._timeout + _BROKEN_GRACE
            while (
                self._in_flight > 0
                and not self._in_own_loop()
                and (left := until - time.monotonic()) > 0
            ):
                self._processed.wait(left)
            self._pgconn = None  # given back (maybe to a pool): never re-sent to,
            self._fence = None  # never broken (another user may hold it by then)
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

    def _release(self) -> None:
        """Free the prepared plan's cancel object (only when it was never sent)."""
        plan, self._plan = self._plan, None
        self._fence = None
        self._pgconn = None
        if plan is not None:
            plan.discard()

    def _fire(self) -> Plan | None:
        """ARMED -> FIRING (the deadline passed): the plan to send now, rearmed.

        None if the block was left first, or holds no connection now (a
        watched object still connecting, or between transactions: then the
        block stays armed, overdue, and the connection it acquires is
        cancelled at once, :meth:`_acquired`). Schedules the break.
        """
        with self._lock:
            if self._state != _ARMED:
                return None
            if self._plan is None and self._unwatch is not None:
                self._overdue = self._fired = True
                self._fired_at = time.monotonic()
                return None
            self._state = _FIRING
            self._fired = True
            self._fired_at = time.monotonic()
            plan, self._plan = self._plan, None
            if plan is None:
                return None
            self._sent = True
            self._sent_done = threading.Event()
            self._left = threading.Event()
            self._confirmation = Confirmation()
            if self._break_connection:
                self._break_entry = timers.call_at(
                    self._fired_at + self._timeout, self._break_at_bound
                )
            self._first = plan = rearmed(plan)
            self._in_flight += 1  # (until _request_processed)
            return plan

    def _again(self) -> Plan | Idle | None:
        """A re-send of the fired cancel while the block still runs (``_confirm``), else None.

        :data:`~psycancel._confirm.IDLE` while the block holds no connection
        (given back between two transactions: the next one it acquires gets the
        re-sends). Made under the block's lock, which its exit takes: the block
        cannot leave (and its owner close the connection) meanwhile.
        """
        with self._lock:
            pgconn, first = self._pgconn, self._first
            if self._state != _FIRING or self._broken or first is None:
                return None
            if pgconn is None:
                return IDLE if self._unwatch is not None else None
            try:
                plan = resend_plan(first, pgconn, self._fired_at + self._timeout)
            except Exception as ex:  # libpq could not prepare it: no re-send
                logger.warning("%s: the cancel could not be re-sent (%r)", self._label(), ex)
                return None
            self._in_flight += 1  # (until _request_processed)
            return plan

    def _in_own_loop(self) -> bool:
        """Is this the thread of the asyncio loop that runs the block's cancel?"""
        loop = self._loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:  # no loop runs in this thread
            return False

    def _request_processed(self) -> None:
        """A cancel request sent by this block is over (processed, failed, timed out)."""
        with self._lock:
            self._in_flight -= 1
            self._processed.notify_all()

    def _label(self) -> str:
        seconds = "" if self._seconds is None else f"{self._seconds:g} s"
        return f"psycancel.{type(self).__name__}({seconds})"

    def _confirm_blocking(self) -> None:
        """After a successful cancel (its thread): confirm it took, else re-send, report."""
        left = self._left
        assert left is not None
        confirm_blocking(
            left,
            self._again,
            until=self._fired_at + self._timeout,
            label=self._label(),
            outcome=self._confirmation,
            processed=self._request_processed,
        )

    async def _confirm_asyncio(self) -> None:
        left = self._left
        assert left is not None
        await confirm_asyncio(
            left,
            self._again,
            until=self._fired_at + self._timeout,
            label=self._label(),
            outcome=self._confirmation,
            processed=self._request_processed,
        )

    @property
    def resends(self) -> int:
        """How many times the fired cancel was sent again because the block still ran."""
        confirmation = self._confirmation
        return 0 if confirmation is None else confirmation.resends

    @property
    def cancel_lost(self) -> bool:
        """True if the block still ran after its cancel and every re-send (reported)."""
        confirmation = self._confirmation
        return confirmation is not None and confirmation.lost

    def _break_at_bound(self) -> None:
        self._break(f"had not ended {self._timeout:g} s after its cancel was sent", "not_ended")

    def _break(self, why: str, reason: str) -> bool:
        """Shut the connection's socket down if the block still runs (any thread).

        True if this call did it (or found no socket to shut) and logged so;
        False if there was nothing to do (left, broken already, or opted out).
        ``reason`` (``not_ended``, ``cancel_failed``) is the records' (telemetry).
        """
        with self._lock:
            if self._state != _FIRING or self._broken or not self._break_connection:
                return False
            if self._fence is None and self._pgconn is None and self._unwatch is not None:
                # A watched object that holds no connection now: nothing runs, and
                # the one it gave back may be someone else's by now. The next one
                # it acquires in the block is broken then (_acquired).
                self._break_pending = (why, reason)
                return False
            fence = self._fence
            self._broken = fence is not None and fence.shutdown()
            # Reported before the lock is let go: the block's exit takes it, so
            # what it reports comes after this record, never before it.
            self._report_break(fence, why, reason)
        return True

    def _report_break(self, fence: SocketFence | None, why: str, reason: str) -> None:
        """Log (and record) the outcome of a break; called with the lock held."""
        pid = fence.backend_pid if fence is not None else 0
        facts = {"pid": pid, "outcome": "connection_broken", "reason": reason}
        if self._broken:
            telemetry.broken_connection("cancel_after", reason, backend_pid=pid)
            logger.warning(
                "psycancel.cancel_after(%g s): the query %s: its connection was broken "
                "(socket shut down) so that the block ends on time",
                self._seconds,
                why,
                extra={"psycancel_cancel": facts},
            )
        else:
            facts["outcome"] = "connection_not_broken"
            logger.warning(
                "psycancel.cancel_after(%g s): the query %s, and its connection could not "
                "be broken (its socket is gone)",
                self._seconds,
                why,
                extra={"psycancel_cancel": facts},
            )

    def _cancel_failed(self, error: BaseException) -> None:
        """The fired cancel failed: remember it, say so, break the connection now."""
        self._error = error
        if self._break(f"could not be cancelled ({error!r})", "cancel_failed"):
            return
        if self._broken:
            what = "the connection was broken already"
        elif self._break_connection:
            what = "the block had ended"
        else:
            what = "the query may still be running (break_connection=False)"
        fence = self._fence
        facts = {
            "pid": fence.backend_pid if fence is not None else 0,
            "outcome": telemetry.outcome_of(error),
        }
        logger.warning(
            "psycancel.cancel_after(%g s): the cancel failed (%r); %s",
            self._seconds,
            error,
            what,
            extra={"psycancel_cancel": facts},
        )

    def _leave(self, *, keep_plan: bool = False) -> str:
        """At exit: no more firing or breaking. The state the block was in.

        An unsent plan is freed, unless ``keep_plan`` (a cancelled task's block sends it).
        """
        with self._lock:
            state = self._state
            self._state = _DONE
            entries = (self._entry, self._break_entry)
            left = self._left
        if left is not None:
            left.set()  # a confirmation waiting for the block to leave: it has
            wake = None if self._confirmation is None else self._confirmation.wake
            if wake is not None:
                wake()
        for entry in entries:
            if entry is not None:
                timers.cancel(entry)
        if self._handle is not None:
            self._handle.cancel()
        if state != _FIRING and not keep_plan:
            self._release()
        return state

    def _wait_bound(self) -> float:
        """When leaving stops waiting for a fired cancel (monotonic time)."""
        if self._broken:
            return self._fired_at + self._timeout + _BROKEN_GRACE
        return self._fired_at + self._timeout + _GRACE

    def _outcome(self, exc: BaseException | None) -> None:
        """After a fired block: map the block's exception, or report the cancel's failure."""
        canceled = _query_canceled(exc) if self._sent else None
        if canceled is not None:
            raise QueryTimeout(
                f"the query was cancelled by psycancel.cancel_after: it ran for more "
                f"than {self._seconds:g} s"
            ) from canceled
        error = self._error
        if self._broken:
            if exc is None:
                logger.warning(
                    "psycancel.cancel_after(%g s): the block completed, but its connection "
                    "was broken at the deadline: it cannot be used any more",
                    self._seconds,
                )
                return
            if not isinstance(exc, Exception):  # KeyboardInterrupt, a task's cancellation...
                _note(exc, "psycancel.cancel_after: the deadline broke the connection")
                return
            raise QueryTimeout(
                f"the query ran for more than {self._seconds:g} s and did not end within "
                f"{self._timeout:g} s of its cancel: psycancel.cancel_after broke the "
                "connection to end the block on time (the connection cannot be used any more)",
                connection_broken=True,
            ) from (error if error is not None else exc)
        if error is None:
            self._warn_not_taken(exc)
            return  # the query ended just before the cancel reached the server, or not taken
        if exc is not None:
            # The block failed on its own; keep its error, mention ours.
            _note(exc, f"psycancel.cancel_after: the timeout's cancel also failed: {error!r}")
            return
        raise error

    def _warn_not_taken(self, exc: BaseException | None) -> None:
        """The block outlived its fired cancel (re-sent, never taken): never silently.

        The block's own outcome is kept (its result, or its exception, which
        gets a note): the work it did is done and must not look undone; the
        deadline that did not hold is reported with
        :class:`CancelNotTakenWarning` (and a WARNING on the logger).
        """
        confirmation = self._confirmation
        if confirmation is None or confirmation.resends == 0:
            return
        text = (
            f"{self._label()}: the block ran past its deadline: its cancel was reported "
            f"processed but the block went on (re-sent {confirmation.resends} time(s)); if "
            "a query was running, the cancel request most likely reached another server or "
            "process than the session's (an unpeered pooler over several processes, a load "
            "balancer): see docs/deployments.md"
        )
        if exc is not None:
            _note(exc, text)
            return
        logger.warning("%s", text)
        warnings.warn(text, CancelNotTakenWarning, stacklevel=4)

    # -- ``with``: the shared timer thread ----------------------------------------

    def _arm_timer(self) -> None:
        """ARMED, with the process's timer thread calling :meth:`_on_deadline`."""
        assert self._seconds is not None
        with self._lock:
            self._state = _ARMED
            self._entry = timers.call_at(self._entered_at + self._seconds, self._on_deadline)

    def _on_deadline(self) -> None:
        """The timer thread: the deadline passed; send the cancel from a thread of its own."""
        plan = self._fire()
        if plan is None:
            return
        thread = threading.Thread(
            target=self._send_blocking, args=(plan,), name="psycancel-cancel-after", daemon=True
        )
        try:
            thread.start()
        except BaseException as ex:  # no thread to be had: the block hears of it
            plan.discard()
            self._request_processed()
            self._cancel_failed(ex)
            self._sent_event().set()

    def _sent_event(self) -> threading.Event:
        """Set once the fired cancel's thread is done (it exists once ``_sent``)."""
        done = self._sent_done
        assert done is not None
        return done

    def _send_blocking(self, plan: Plan) -> None:
        try:
            try:
                blocking.run_blocking(plan)
            finally:
                self._request_processed()
            self._confirm_blocking()
        except BaseException as ex:  # whatever ends the cancel, the block hears of it
            self._cancel_failed(ex)
        finally:
            self._sent_event().set()

    def _wait_sent(self) -> None:
        """Wait for the fired cancel to complete (bounded), wherever it runs."""
        if not self._sent:
            return
        done = self._sent_event()
        done.wait(max(0.0, self._wait_bound() - time.monotonic()))
        if not done.is_set() and self._error is None:
            # Past its own deadline and still not done: it timed out, whether or not
            # its thread has said so yet (after a break the block waits only 50 ms
            # past the bound, and a loaded machine's cancel thread is later than
            # that). Only a legacy cancel, which has no timeout, runs on after it.
            self._error = outcomes.timed_out(self._timeout, legacy=not self._broken)

    def __enter__(self) -> cancel_after:
        try:
            if self._prepare():
                self._arm_timer()
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
        if self._leave() == _FIRING:
            self._wait_sent()
            self._outcome(exc)
        self._watch_failure(exc)

    # -- ``async with`` -------------------------------------------------------------

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
                if self._seconds is None:
                    with self._lock:
                        self._state = _ARMED
                else:
                    self._arm_timer()
            return self
        if not self._prepare():
            return self
        loop = asyncio.get_running_loop()
        with self._lock:
            self._state = _ARMED
            self._loop = loop
        if self._seconds is not None:
            self._handle = loop.call_later(self._seconds, self._fire_asyncio, loop)
        return self

    def _fire_asyncio(self, loop: asyncio.AbstractEventLoop) -> None:
        plan = self._fire()
        if plan is not None:
            self._task = loop.create_task(self._send_asyncio(plan))

    async def _send_asyncio(self, plan: Plan) -> None:
        try:
            error = await _sent_or_error(plan)
        finally:
            self._request_processed()
        if error is not None:
            self._cancel_failed(error)
            return
        await self._confirm_asyncio()

    async def _join_task(self) -> None:
        """Wait for the fired cancel task, even if this task is cancelled meanwhile."""
        task = self._task
        if task is None:
            return
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

    async def _cancel_cancelled(self) -> None:
        """The task was cancelled in the block before its deadline: cancel its query first."""
        with self._lock:
            plan, self._plan = self._plan, None
            self._fence = None
        if plan is None:
            return
        plan = rearmed(plan)
        error: BaseException | None = None
        if running_asyncio():
            task = asyncio.get_running_loop().create_task(_sent_or_error(plan))
            self._task = task
            await self._join_task()  # never abandoned: the cancel must not outlive the block
            if task.done() and not task.cancelled():
                error = task.result()
        else:
            import anyio

            from ._engine.anyio_loop import run_anyio

            with anyio.CancelScope(shield=True):
                try:
                    await run_anyio(plan)
                except Exception as ex:
                    error = ex
        if error is not None:
            logger.warning(
                "psycancel: the task was cancelled during a query, and the query's cancel "
                "failed (%r): the query may still be running on the server",
                error,
            )

    def _warn_if_late(self, exc: BaseException | None) -> None:
        """An unfired block that outlived its deadline: its loop timer could not run."""
        if self._seconds is None or self._handle is None or exc is not None:
            return
        late = time.monotonic() - self._entered_at - self._seconds
        if late > _LATE:
            warnings.warn(
                f"psycancel.cancel_after({self._seconds:g}): the block ran {late:.2f} s past "
                "its deadline without being cancelled: something blocked the event loop, so "
                "its timer could not fire; use a plain `with cancel_after(...)` around "
                "blocking calls",
                RuntimeWarning,
                stacklevel=3,
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_watching()
        if self._state == _NEW:
            return
        cancelled = _is_cancellation(exc)
        if self._leave(keep_plan=cancelled) != _FIRING:
            if cancelled:
                await self._cancel_cancelled()
                return
            self._warn_if_late(exc)
            self._watch_failure(exc)
            return
        if self._task is not None:
            await self._join_task()
        elif self._sent:
            import anyio.to_thread

            # Not abandoned on cancellation: leaving early would break the guarantee.
            await anyio.to_thread.run_sync(self._wait_sent)
        self._outcome(exc)
        self._watch_failure(exc)


class cancel_on_cancellation(cancel_after):
    """Send a cancel for ``conn``'s query when the task running the block is cancelled.

    ``async with`` only. A task cancelled inside the block (an asyncio
    cancellation, a client that disconnected, ``asyncio.timeout``, a
    ``TaskGroup`` sibling failing, an AnyIO or Trio cancel scope) would
    otherwise leave its query running on the server: the driver stops
    waiting, the server never hears of it (aiopg closes its connection,
    others leave it busy). Here the cancel is sent first (encrypted, bounded
    by ``timeout``, ``strict`` as for :func:`psycancel.cancel`), waited for,
    and the cancellation then propagates unchanged; a failure of the cancel
    is logged at WARNING. No deadline: for one, use :class:`cancel_after`,
    which does the same on cancellation.
    """

    __slots__ = ()

    def __init__(
        self, conn: Cancellable, *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False
    ) -> None:
        super().__init__(conn, 1.0, timeout=timeout, strict=strict)
        self._seconds = None

    def __enter__(self) -> Any:
        raise TypeError(
            "cancel_on_cancellation() is for async with: a synchronous block is never "
            "cancelled as a task is (use cancel_after, or cancel_on_interrupt for Ctrl-C)"
        )

    def __repr__(self) -> str:
        return f"<psycancel.cancel_on_cancellation of {type(self._conn).__qualname__}>"


async def _sent_or_error(plan: Plan) -> BaseException | None:
    """Run ``plan`` as ``cancel_async`` would; its error, or None.

    ``cancel_async``'s default rule: offloaded for an encrypted session (the
    handshake's CPU work off the loop thread), inline otherwise.
    """
    try:
        await run_asyncio(plan, offloaded=None)
    except Exception as ex:
        return ex
    return None


def _note(exc: BaseException, text: str) -> None:
    """Add ``text`` as a note on ``exc`` (Python >= 3.11; nothing before)."""
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(text)
