"""``prepare()``: a cancel made ready in the connection's thread, sent later from anywhere.

A driver prepares the cancel where it owns the connection (the
``PQcancelCreate`` of libpq >= 17, or the legacy ``PQgetCancel`` under the
security policy, both read the ``PGconn``), then sends it when it needs to:

* ``prepared.cancel(timeout=...)``: blocking, in any thread;
* ``await prepared.cancel_async(timeout=...)``: in an asyncio or Trio task,
  never blocking the loop;
* ``prepared.fire(callback)``: fire and forget, in a background thread; the
  outcome goes to the returned ``concurrent.futures.Future``, to ``callback``
  if given, and a failure nobody asked for is logged (logger ``psycancel``),
  never an asyncio "exception was never retrieved".

The cancel object is reused (``PQcancelReset`` after each send), one send at a
time, until :meth:`PreparedCancel.close` (a send in flight then finishes it
when it ends). ``docs/drivers.md`` tells the rules.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._api import DEFAULT_TIMEOUT
from ._engine import background, machine
from ._engine.plan import Deadline, LegacyPlan, NewApiPlan, check_options
from ._procedure import prepare_cancel
from ._typing import Cancellable
from .errors import Error, InterfaceError
from .pq.abc import Libpq, PGcancel, PGcancelConn

__all__ = ["FireCallback", "PreparedCancel", "prepare"]

FireCallback = Callable[[BaseException | None], object]
"""Called by :meth:`PreparedCancel.fire` with the send's error, or None once processed."""

_CLOSED = "the prepared cancel is closed"
_BUSY = (
    "the prepared cancel is already being sent (one send at a time; "
    "prepare another one to send two at once)"
)


def prepare(conn: Cancellable, *, strict: bool = False) -> PreparedCancel:
    """Prepare a cancel of ``conn``'s queries, in the thread that owns ``conn``.

    Accepts what :func:`psycancel.cancel` accepts. With a libpq >= 17 the
    ``PGcancelConn`` is created now; with an older one the legacy handle,
    once the security policy allowed it (``strict``: see
    :class:`~psycancel.InsecureCancelError`). A closed or broken connection
    gives a prepared cancel that sends nothing. Raises what the preparation
    of :func:`psycancel.cancel` raises (:class:`~psycancel.InterfaceError`,
    :class:`~psycancel.CancelError`, :class:`~psycancel.InsecureCancelError`).
    The prepared cancel targets the session open now: prepare again after
    the driver reconnects.
    """
    plan = prepare_cancel(conn, timeout=DEFAULT_TIMEOUT, strict=strict, stacklevel=2)
    if plan is None:
        return PreparedCancel(None, None, None)
    if isinstance(plan, NewApiPlan):
        # A step that may block (a GSS session's KDC): never in an event loop's thread.
        may_block = bool(getattr(plan, "may_block", False))
        return PreparedCancel(plan.cc, None, plan.libpq, plan.encrypted, may_block)
    assert isinstance(plan, LegacyPlan)
    return PreparedCancel(None, plan.handle, plan.libpq, plan.encrypted)


class PreparedCancel:
    """A cancel request ready to be sent, as often as needed, from any thread or task.

    Made by :func:`prepare`. One send at a time (a second one while a send
    is in flight raises :class:`~psycancel.InterfaceError`); each send ends
    as :func:`psycancel.cancel` does: returns once the server processed the
    request, :class:`~psycancel.CancellationTimeout` after ``timeout``,
    :class:`~psycancel.CancelError` if it failed. A context manager:
    :meth:`close` on exit.
    """

    __slots__ = (
        "_busy",
        "_cc",
        "_closed",
        "_encrypted",
        "_handle",
        "_legacy_runs",
        "_libpq",
        "_lock",
        "_may_block",
    )

    def __init__(
        self,
        cc: PGcancelConn | None,
        handle: PGcancel | None,
        libpq: Libpq | None,
        encrypted: bool = False,
        may_block: bool = False,
    ) -> None:
        self._cc = cc
        self._handle = handle
        self._libpq = libpq
        self._encrypted = encrypted
        self._may_block = may_block
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._legacy_runs = 0

    # -- what it is ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def legacy(self) -> bool:
        """True if it sends the legacy ``PQcancel`` (libpq < 17; clear text)."""
        return self._handle is not None

    @property
    def empty(self) -> bool:
        """True if the connection was closed when prepared: every send returns at once."""
        return self._cc is None and self._handle is None

    # -- one send at a time ---------------------------------------------------------

    def _claim(self) -> None:
        with self._lock:
            if self._closed:
                raise InterfaceError(_CLOSED)
            if self._busy:
                raise InterfaceError(_BUSY)
            self._busy = True

    def _release(self) -> None:
        """A send ended: the cancel object is ready again, or finished if closed meanwhile."""
        cc = self._cc
        if cc is not None and not self._closed:
            cc.reset()  # PQcancelReset: ALLOCATED again, its socket closed (still ours)
        with self._lock:
            self._busy = False
            finish = self._closed  # close() ran during the send: it left the finish to us
        if cc is not None and finish:
            cc.finish()

    # -- the legacy worker ------------------------------------------------------------

    def _legacy_start(self) -> concurrent.futures.Future[None]:
        """``PQcancel`` in a daemon thread (it has no timeout of its own); the handle is kept."""
        handle = self._handle
        assert handle is not None
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_running_or_notify_cancel()
        with self._lock:
            self._legacy_runs += 1

        def work() -> None:
            try:
                handle.cancel()
            except Error as ex:
                done.set_exception(ex)
            except BaseException as ex:
                done.set_exception(background.thread_failed("prepared legacy cancel", ex))
            else:
                done.set_result(None)
            finally:
                with self._lock:
                    self._legacy_runs -= 1
                    free = self._closed and self._legacy_runs == 0
                if free:
                    handle.free()

        try:
            threading.Thread(target=work, name="psycancel-prepared-legacy", daemon=True).start()
        except BaseException:
            with self._lock:
                self._legacy_runs -= 1
            raise
        return done

    # -- sending ----------------------------------------------------------------------

    def cancel(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Send the request, blocking this thread (not others) until processed or ``timeout``."""
        deadline = Deadline.after(check_options(timeout, False))
        if self.empty:
            return
        self._claim()
        if self._may_block and self._cc is not None:
            # A step that may block inside libpq (a GSS handshake reaching a KDC)
            # runs in a thread, waited for until the deadline (docs/deployments.md).
            from ._engine import blocking, cooperative

            if cooperative.gevent_hub() is None:
                try:
                    done = self._start_thread(deadline)
                except BaseException:
                    self._release()
                    raise
                blocking.wait_future(done, deadline, legacy=False)
                return
        self._send_blocking(deadline)

    def _send_blocking(self, deadline: Deadline) -> None:
        """The claimed send, in this thread (``cancel`` and ``fire``)."""
        from ._engine import blocking, cooperative

        try:
            cc = self._cc
            hub = cooperative.gevent_hub()
            if cc is None and hub is not None:
                self._legacy_gevent(hub, deadline)
                return
            if cc is None:
                blocking.wait_future(self._legacy_start(), deadline)
                return
            steps = machine.cancel_steps(cc)
            if hub is not None:
                cooperative.wait_gevent(steps, deadline)
            else:
                blocking.wait_blocking(steps, deadline)
        finally:
            self._release()

    def _legacy_gevent(self, hub: Any, deadline: Deadline) -> None:
        """The legacy send under gevent: ``PQcancel`` in the hub's native thread pool.

        (A ``threading.Thread`` is a greenlet once gevent patched the process,
        and ``PQcancel`` would block the hub.) The pool thread only calls
        libpq; the handle is freed, if closed meanwhile, when it ends.
        """
        handle = self._handle
        assert handle is not None
        with self._lock:
            self._legacy_runs += 1

        def ended(_result: object) -> None:  # in the hub, when the pool thread returned
            with self._lock:
                self._legacy_runs -= 1
                free = self._closed and self._legacy_runs == 0
            if free:
                handle.free()

        try:
            result = hub.threadpool.spawn(_legacy_send, handle)
        except BaseException:
            ended(None)
            raise
        result.rawlink(ended)
        result.wait(max(0.0, deadline.remaining()))
        if not result.ready():
            raise deadline.expired(legacy=True)
        if not result.successful():
            raise background.thread_failed("gevent thread pool", result.exception)
        if result.value is not None:
            raise result.value

    async def cancel_async(
        self, *, timeout: float = DEFAULT_TIMEOUT, offload: bool | None = None
    ) -> None:
        """Send the request without blocking the event loop (asyncio, or Trio through AnyIO).

        ``offload`` as :func:`psycancel.cancel_async`'s: ``True`` sends from a
        background thread (the TLS handshake's work then never runs in the
        loop thread), ``False`` through the loop's own waits, ``None``
        (default) offloads exactly the cancels of encrypted sessions. If the
        awaiting task is cancelled, ``CancelledError`` propagates at once: an
        inline send closes its cancel connection (the object is ready again),
        an offloaded one ends in its thread by its deadline.
        """
        if offload is not None and not isinstance(offload, bool):
            raise TypeError(f"offload must be a bool or None, got {type(offload).__name__}")
        deadline = Deadline.after(check_options(timeout, False))
        if self.empty:
            return
        self._claim()
        from ._engine.async_library import running_asyncio

        on_asyncio = running_asyncio()
        cc = self._cc
        threaded = cc is not None and (
            self._may_block or (self._encrypted if offload is None else offload)
        )
        if cc is None or threaded:
            try:
                done = self._legacy_start() if cc is None else self._start_thread(deadline)
            except BaseException:
                self._release()
                raise
            try:
                await _await_future(done, deadline, on_asyncio, legacy=cc is None)
            finally:
                if cc is None:
                    self._release()  # (the thread of a threaded send releases it itself)
            return
        try:
            steps = machine.cancel_steps(cc)
            if on_asyncio:
                from ._engine.asyncio_loop import wait_asyncio

                await wait_asyncio(steps, deadline)
            else:
                from ._engine.anyio_loop import wait_anyio

                await wait_anyio(steps, deadline)
        finally:
            self._release()

    def _start_thread(
        self, deadline: Deadline, callback: FireCallback | None = None, report: bool = False
    ) -> concurrent.futures.Future[None]:
        """The claimed send, in a new daemon thread (released there); its outcome."""
        outcome: concurrent.futures.Future[None] = concurrent.futures.Future()
        outcome.set_running_or_notify_cancel()

        def send() -> None:
            error: BaseException | None = None
            try:
                self._send_blocking(deadline)
            except BaseException as ex:  # the outcome, delivered below
                error = ex
            if error is None:
                outcome.set_result(None)
            else:
                outcome.set_exception(error)
            if report:
                _report(callback, error)

        threading.Thread(target=send, name="psycancel-prepared-send", daemon=True).start()
        return outcome

    def fire(
        self, callback: FireCallback | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> concurrent.futures.Future[None]:
        """Send the request from a background thread and return at once.

        The outcome is the returned Future's (None, or the exception
        :meth:`cancel` would raise), and ``callback(error_or_None)`` is called
        with it in that thread. Without a callback, a failure is also logged
        (WARNING, logger ``psycancel``), so that it is never lost. The send is
        claimed before this returns: :meth:`close` right after ``fire()``
        still lets it go out (the cancel object is finished when it ends).
        Raises :class:`~psycancel.InterfaceError` at once if closed or busy.
        """
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        deadline = Deadline.after(check_options(timeout, False))
        outcome: concurrent.futures.Future[None] = concurrent.futures.Future()
        outcome.set_running_or_notify_cancel()
        if self.empty:
            outcome.set_result(None)
            _report(callback, None)
            return outcome
        self._claim()
        try:
            return self._start_thread(deadline, callback, report=True)
        except BaseException:
            self._release()
            raise

    # -- the end ----------------------------------------------------------------------

    def close(self) -> None:
        """Free the cancel object (idempotent); a send in flight finishes it when it ends."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            busy = self._busy
            free_handle = self._handle is not None and self._legacy_runs == 0
        if self._cc is not None and not busy:
            self._cc.finish()
        if free_handle and self._handle is not None:
            self._handle.free()

    def __enter__(self) -> PreparedCancel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "empty" if self.empty else "legacy" if self.legacy else "PQcancelConn"
        state = "closed" if self._closed else "busy" if self._busy else "ready"
        where = f" of {self._libpq.path}" if self._libpq is not None else ""
        return f"<psycancel.PreparedCancel {kind}{where}, {state}>"


def _legacy_send(handle: PGcancel) -> BaseException | None:
    """In a native pool thread: one ``PQcancel``; libpq's refusal is returned, not raised."""
    try:
        handle.cancel()
    except Error as ex:
        return ex
    return None


async def _await_future(
    done: concurrent.futures.Future[None], deadline: Deadline, on_asyncio: bool, *, legacy: bool
) -> None:
    """Await a send's outcome in a thread until ``deadline``, re-raising its error."""
    if not on_asyncio:
        from ._engine.anyio_loop import wait_future_anyio

        await wait_future_anyio(done, deadline)
        return
    import asyncio

    from ._engine.asyncio_loop import retrieve_later

    wrapped = asyncio.wrap_future(done)
    try:
        await asyncio.wait((wrapped,), timeout=max(0.0, deadline.remaining()))
    finally:
        if not wrapped.done():
            # Its outcome arrives later: read it then, so that asyncio never logs
            # "Future exception was never retrieved".
            wrapped.add_done_callback(retrieve_later)
    if not wrapped.done():
        raise deadline.expired(legacy=legacy)
    wrapped.result()


def _report(callback: FireCallback | None, error: BaseException | None) -> None:
    """Hand a fired send's outcome to ``callback``; log a failure nobody asked for."""
    import logging

    logger = logging.getLogger("psycancel")
    if callback is None:
        if error is not None:
            logger.warning("a fired cancel failed: %s: %s", type(error).__name__, error)
        return
    try:
        callback(error)
    except BaseException:  # a callback's failure must not be silent either
        logger.exception("the callback of a fired cancel failed")
