"""``cancel_on_interrupt``: Ctrl-C cancels the query of a blocking call.

::

    with psycancel.cancel_on_interrupt(conn):
        cur.execute("select slow()")     # Ctrl-C: the query is cancelled, KeyboardInterrupt

A blocking driver call (psycopg2's ``execute``, ``PGconn.get_result``) waits
inside libpq, which does not return to Python before the query ends: Python's
SIGINT handler, which only runs between bytecodes of the main thread, waits
for the query too, and the query keeps running on the server until it
finishes (psycopg2 issue 333).

How it works: on entry the cancel object is made (in the thread that owns the
connection, as for :func:`psycancel.cancel_after`), a socket pair becomes the
process's ``signal.set_wakeup_fd`` and a helper thread waits on it. The C
level of Python's signal handling writes the signal number there the moment
SIGINT arrives, whatever the main thread is doing, which wakes the helper: it
sends the encrypted, bounded cancel (the new API, or the legacy policy). The
query ends with SQLSTATE 57014, the driver call returns, and the Python
handler (ours) runs the previous one (``default_int_handler``: raises
``KeyboardInterrupt``). Bytes of other signals, and SIGINT's, are passed on
to the previous wakeup fd (asyncio's, for example).

On exit the previous SIGINT handler and wakeup fd are restored, and no cancel
from the block is in flight any more (a fired cancel is waited for, bounded
by ``timeout``). A SIGINT that arrives while the block is being entered or
left is held until the context manager's own work is done, then handed to
the previous handler, so that the restoring is never cut short.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType
from typing import Any

from ._engine import blocking, outcomes
from ._engine.plan import DEFAULT_TIMEOUT, MAX_WAIT, Plan, check_options, rearmed
from ._procedure import prepare_cancel
from ._typing import Cancellable
from .errors import InterfaceError

__all__ = ["cancel_on_interrupt"]

_NEW, _ACTIVE, _DONE = "new", "active", "done"
_STOP = b"\x00"
"""What ``__exit__`` writes to stop the helper (no signal has number 0)."""
_SIGINT_BYTE = bytes([signal.SIGINT & 0xFF])
_GRACE = 1.0
"""Seconds past the cancel's own timeout that leaving the block waits for the helper."""

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class cancel_on_interrupt:  # lower case: used like a function, as in ``with ...``
    """Make Ctrl-C (SIGINT) cancel the query running on ``conn`` during the block.

    A context manager for blocking code in the main thread: while the block
    runs, a SIGINT sends an encrypted, bounded cancel request for ``conn``
    (``timeout`` and ``strict`` as for :func:`psycancel.cancel`) from a
    helper thread, even though the main thread is blocked inside libpq; the
    driver then reports the cancelled query (SQLSTATE 57014) and
    ``KeyboardInterrupt`` is raised as usual (by the previous handler: a
    handler of the program's own is called instead; with ``SIG_IGN`` nothing
    is raised, the driver's error stays). One cancel per block: the first
    SIGINT sends it.

    On exit the previous SIGINT handler and wakeup fd are restored, and a
    fired cancel is waited for (bounded by ``timeout``); if it failed, its
    error (:class:`CancelError`, :class:`CancellationTimeout`) is raised, or
    noted on the block's own exception. Raises :class:`InterfaceError`
    outside the main thread (Python delivers signals to the main thread
    only). Single use; a closed connection makes it a no-op.
    """

    def __init__(
        self, conn: Cancellable, *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False
    ) -> None:
        self._timeout = check_options(timeout, strict)
        self._strict = strict
        self._conn = conn
        self._state = _NEW
        self._plan: Plan | None = None
        self._plan_lock = threading.Lock()
        self._fired = False
        self._error: BaseException | None = None
        self._deferred: FrameType | None = None
        self._deferred_signal = False
        self._previous: Handler = None
        self._previous_fd = -1
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def fired(self) -> bool:
        """True once a SIGINT during the block sent (or is sending) the cancel request."""
        return self._fired

    # -- the signal's two halves --------------------------------------------------

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """The Python-level handler (main thread, between bytecodes)."""
        if self._state == _ACTIVE and _inside(self, frame):
            # Entering or leaving: hold it until the restoring is done.
            self._deferred_signal = True
            self._deferred = frame
            return
        _chain(self._previous, signum, frame)

    def _watch(self) -> None:
        """The helper thread: woken by the wakeup fd, sends the cancel on SIGINT."""
        reader = self._reader
        assert reader is not None
        while True:
            try:
                data = reader.recv(256)
            except InterruptedError:  # (not retried by recv on every platform)
                continue
            except OSError:
                return
            if not data:
                return
            stop = data.find(_STOP)
            signals = data if stop < 0 else data[:stop]
            if signals:
                self._forward(signals)
            if _SIGINT_BYTE in signals and not self._fired:
                self._fire()
            if stop >= 0:
                return

    def _forward(self, data: bytes) -> None:
        """Pass signal bytes on to the previous wakeup fd (best effort, as CPython does)."""
        if self._previous_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._previous_fd, data)

    def _take_plan(self) -> Plan | None:
        with self._plan_lock:
            plan, self._plan = self._plan, None
        return plan

    def _fire(self) -> None:
        self._fired = True
        plan = self._take_plan()
        if plan is None:
            return
        try:
            blocking.run_blocking(rearmed(plan), cooperate=False)
        except BaseException as ex:  # whatever ends the cancel, the block hears of it
            self._error = ex

    # -- entering and leaving -----------------------------------------------------

    def __enter__(self) -> cancel_on_interrupt:
        if self._state != _NEW:
            raise RuntimeError("cancel_on_interrupt() objects are single use: make a new one")
        if threading.current_thread() is not threading.main_thread():
            raise InterfaceError(
                "cancel_on_interrupt() must be entered in the main thread: Python "
                "runs signal handlers there only (use psycancel.cancel() from another "
                "thread, or cancel_after() for a time limit)"
            )
        self._state = _DONE
        self._plan = prepare_cancel(
            self._conn, timeout=self._timeout, strict=self._strict, stacklevel=2
        )
        if self._plan is None:
            return self  # a closed connection: nothing to cancel, nothing installed
        try:
            self._install()
        except BaseException:
            self._uninstall()
            raise
        self._raise_deferred()
        return self

    def _install(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._thread = threading.Thread(
            target=self._watch, name="psycancel-cancel-on-interrupt", daemon=True
        )
        self._thread.start()
        self._previous = signal.getsignal(signal.SIGINT)
        try:
            self._previous_fd = signal.set_wakeup_fd(self._writer.fileno())
        except ValueError as ex:  # not the main thread of the main interpreter
            self._previous = None
            raise InterfaceError(
                f"cancel_on_interrupt() cannot watch for signals here: {ex}"
            ) from ex
        self._state = _ACTIVE
        signal.signal(signal.SIGINT, self._on_sigint)

    def _uninstall(self) -> None:
        """Stop the helper (waiting for a fired cancel), restore the handler and fd."""
        thread, writer = self._thread, self._writer
        if thread is not None and writer is not None:
            try:
                writer.send(_STOP)
            except OSError:  # the buffer is full of signal bytes: close the socket instead
                if self._reader is not None:
                    self._reader.shutdown(socket.SHUT_RDWR)
            end = time.monotonic() + self._timeout + _GRACE
            while thread.is_alive() and (left := end - time.monotonic()) > 0:
                thread.join(min(left, MAX_WAIT))
            if thread.is_alive() and self._error is None:
                self._error = outcomes.timed_out(self._timeout)
        plan = self._take_plan()
        if plan is not None:
            plan.discard()  # never fired
        if self._state == _ACTIVE:
            signal.set_wakeup_fd(self._previous_fd)
        for sock in (self._reader, self._writer):
            if sock is not None:
                sock.close()
        if self._state == _ACTIVE:
            self._state = _DONE
            previous = self._previous
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        self._state = _DONE

    def _raise_deferred(self) -> None:
        """Hand a SIGINT held during entering or leaving to the previous handler."""
        if self._deferred_signal:
            frame, self._deferred, self._deferred_signal = self._deferred, None, False
            _chain(self._previous, signal.SIGINT, frame)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return
        try:
            self._uninstall()
        finally:
            if self._deferred_signal and not isinstance(exc, KeyboardInterrupt):
                # (a KeyboardInterrupt from the block is that SIGINT already)
                try:
                    self._raise_deferred()
                except BaseException as interrupt:
                    _note(interrupt, self._error)
                    raise
        error = self._error
        if error is None:
            return
        if exc is not None:
            _note(exc, error)
            return
        raise error


def _note(exc: BaseException, error: BaseException | None) -> None:
    """Mention the cancel's failure on the exception that leaves the block (Python >= 3.11)."""
    add_note = getattr(exc, "add_note", None)
    if error is not None and add_note is not None:
        add_note(f"psycancel.cancel_on_interrupt: the cancel failed: {error!r}")


def _codes() -> frozenset[CodeType]:
    cls = cancel_on_interrupt
    return frozenset(
        f.__code__
        for f in (cls.__enter__, cls.__exit__, cls._install, cls._uninstall, cls._raise_deferred)
    )


_OWN_CODE = _codes()


def _inside(owner: cancel_on_interrupt, frame: FrameType | None) -> bool:
    """True if ``frame`` runs, or is called by, ``owner``'s own entering or leaving code."""
    while frame is not None:
        if frame.f_code in _OWN_CODE and frame.f_locals.get("self") is owner:
            return True
        frame = frame.f_back
    return False


def _chain(previous: Handler, signum: int, frame: FrameType | None) -> None:
    """Do what the handler before ours would have done."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # SIG_DFL, or a handler Python does not know: interrupt as Python would
        raise KeyboardInterrupt
