"""``cancel_on_interrupt``: Ctrl-C (or SIGTERM...) cancels the query of a blocking call.

::

    with psycancel.cancel_on_interrupt(conn):
        cur.execute("select slow()")     # Ctrl-C: the query is cancelled, KeyboardInterrupt

A blocking driver call (psycopg2's ``execute``, ``PGconn.get_result``) waits
inside libpq, which does not return to Python before the query ends: Python's
SIGINT handler, which only runs between bytecodes of the main thread, waits
for the query too, and the query keeps running on the server until it
finishes (psycopg2 issue 333).

How it works: on entry the cancel object is made (in the thread that owns the
connection, as for :func:`psycancel.cancel_after`), the connection's socket
is noted (``psycancel._engine.breaker``), a socket pair becomes the process's
``signal.set_wakeup_fd`` and a watcher thread waits on it. The C level of
Python's signal handling writes the signal number there the moment a handled
signal arrives, whatever the main thread is doing, which wakes the watcher:
it sends the encrypted, bounded cancel (the new API, or the legacy policy)
from a cancel thread. The query ends with SQLSTATE 57014, the driver call
returns, and the previous handler runs (``default_int_handler``: raises
``KeyboardInterrupt``). Bytes of other signals, and of ours, are passed on to
the previous wakeup fd (asyncio's, for example).

The bound: the block must end within ``timeout`` of the first signal. When
the cancel fails or times out while the block still runs, when a second
handled signal arrives while it still runs, or when it still runs ``timeout``
seconds after the first signal, the watcher *breaks* the connection: it
shuts the socket down (never closes it: the driver owns the descriptor), so
the blocked driver call returns at once with the driver's connection error,
and logs a WARNING on the ``psycancel`` logger. ``break_connection=False``
keeps the connection whatever happens (and the block may then stay blocked
as long as the query runs).

Holding the signal: with the bound on, the Python-level handler does not call
the previous one while the cancel is in flight, nor right after a break: a
``KeyboardInterrupt`` raised inside psycopg 3's wait would make psycopg send
a cancel of its own first (5 s against a dead network), and one raised while
psycopg2 builds its error would replace that error. The held signal is handed
to the previous handler at the block's exit (then with the driver's error as
context: the usual case, the query ends within milliseconds of its cancel),
or, if the block still runs 0.25 s after the cancel completed or the break
(50 ms once the driver dropped the broken socket), delivered again to the
main thread (``pthread_kill``), so that a block running Python code is
interrupted too. So is a signal whose Python-level handler has not run by
then: one that reached the C level as the main thread entered a blocking
call (a ``time.sleep``), which it then does not cut short (the innermost
block delivers it). The watcher knows the bytes of those re-deliveries and
neither passes them on nor counts them as a second signal. psycancel's
threads block the handled signals, so that the kernel gives a signal to the
main thread (where it interrupts a ``time.sleep``) as in a program without
them.

``SIG_DFL`` as the previous handler: the signal's default action (SIGTERM:
the process ends) happens only once the cancel has completed or the
connection was broken (bounded by ``timeout``), so that the query is
cancelled on the server before the process dies.

On exit the previous handlers and wakeup fd are restored, and no cancel from
the block is in flight any more (a fired cancel is waited for, bounded by
``timeout``), unless the connection was broken: a cancel still in flight then
ends by its own deadline in its thread (it can only reach the query of that
dead session). A signal that arrives while the block is being entered or
left is held until the context manager's own work is done, then handed to
the previous handler, so that the restoring is never cut short.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import CodeType, FrameType, TracebackType
from typing import Any

from ._after import _query_canceled
from ._confirm import confirm_blocking, resend_plan
from ._drivers.resolve import resolve
from ._engine import blocking, outcomes, telemetry
from ._engine.breaker import SocketFence
from ._engine.machine import READ
from ._engine.plan import DEFAULT_TIMEOUT, Plan, check_options, rearmed
from ._engine.waits import wait_fd
from ._procedure import prepare_target
from ._typing import Cancellable
from .errors import InterfaceError, QueryInterrupted
from .pq.abc import PGconn

__all__ = ["cancel_on_interrupt", "check_signals"]

_BREAK_REASONS = {"deadline": "not_ended", "cancel_failed": "cancel_failed"}
"""The telemetry reason of each break code (the others keep their code: ``second_signal``)."""

_logger = logging.getLogger("psycancel")

_NEW, _ACTIVE, _DONE = "new", "active", "done"
"""The block: not entered yet; handlers installed; entered and left (or a no-op)."""

_QUIET, _CANCELLING, _BROKEN, _RELEASED = "quiet", "cancelling", "broken", "released"
"""The watcher's phase: no signal yet; cancel sent (or done, its signals still held);
connection broken (held until the driver noticed); signals are handed on at once."""

_STOP = 0x00
"""What ``__exit__`` writes to stop the watcher (no signal has number 0)."""
_WAKE = 0xFF
"""What the cancel thread writes when it is done (no signal has number 255)."""
_GRACE = 1.0
"""Seconds past the cancel's own timeout that leaving the block waits for it."""
_SETTLE_WAIT = 0.25
"""Seconds held signals wait, once the cancel completed or the connection was broken,
for the driver to raise its error (the block then hands them on at its exit, with
that error as context) before they are delivered again to the main thread (a
block running Python code)."""
_NOTICED_DELAY = 0.05
"""Seconds held signals wait after the driver dropped the broken socket (its error
is being raised: let it leave the driver before the signal is delivered again)."""
_NOTICE_POLL = 0.01
"""How often the watcher looks whether the driver dropped the broken socket."""

_UNCATCHABLE = frozenset(
    s for s in (getattr(signal, "SIGKILL", None), getattr(signal, "SIGSTOP", None)) if s
)

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def check_signals(signals: Iterable[int]) -> tuple[int, ...]:
    """Validate ``cancel_on_interrupt``'s ``signals``: distinct, catchable signal numbers.

    ``TypeError`` for something that is not an iterable of ints (a single
    signal, a name, a bool); ``ValueError`` for an empty list, a number that
    is no signal of this platform, SIGKILL or SIGSTOP (they cannot be
    caught), or a signal given twice.
    """
    if isinstance(signals, (int, str, bytes)) or not isinstance(signals, Iterable):
        raise TypeError(
            "signals must be an iterable of signal numbers, e.g. "
            f"(signal.SIGINT, signal.SIGTERM), got {type(signals).__name__}"
        )
    valid = signal.valid_signals()
    found: list[int] = []
    for value in signals:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"signals must hold signal numbers, got {type(value).__name__}")
        signum = int(value)
        if signum not in valid:
            raise ValueError(f"{value!r} is not a signal number of this platform")
        if signum in _UNCATCHABLE:
            raise ValueError(f"{_name(signum)} cannot be caught: it cannot cancel a query")
        if signum in found:
            raise ValueError(f"{_name(signum)} is given twice in signals")
        found.append(signum)
    if not found:
        raise ValueError("signals must name at least one signal")
    return tuple(found)


@contextlib.contextmanager
def _signals_blocked(signals: tuple[int, ...]) -> Iterator[None]:
    """Block ``signals`` in this thread meanwhile: threads started here inherit the mask.

    The kernel gives a process-directed signal to any thread that does not
    block it; given to the watcher, it would not interrupt a system call of
    the main thread (a ``time.sleep``), as it does in a program without
    psycancel's threads. Pending meanwhile, a signal is delivered at the end.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover (not POSIX)
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_ECHO_LIFE = 1.0
"""Seconds an expected echo is waited for (the kernel delivers a signal at once)."""
_echo_lock = threading.Lock()
_echoes: dict[int, list[float]] = {}
"""Signals psycancel delivered again to the main thread, and when: their bytes
on the wakeup fd are no new signal. Process-wide, so that the watcher of an
inner block does not take an outer block's re-delivery for a second signal."""


def _deliver(thread_id: int, signum: int) -> None:
    """Deliver ``signum`` again to the main thread (a real signal: it cuts a sleep short)."""
    with _echo_lock:
        _echoes.setdefault(signum, []).append(time.monotonic())
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(thread_id, signum)
    else:  # pragma: no cover (not POSIX)
        _thread.interrupt_main(signal.Signals(signum))


def _is_echo(signum: int) -> bool:
    """True (once) for the byte of a re-delivery of :func:`_deliver`; expired ones dropped."""
    with _echo_lock:
        times = _echoes.get(signum)
        if not times:
            return False
        oldest = time.monotonic() - _ECHO_LIFE
        while times and times[0] < oldest:
            times.pop(0)
        if not times:
            return False
        times.pop(0)
        return True


def _is_installed(signum: int, handler: Handler) -> bool:
    """True if ``handler`` is the Python-level handler of ``signum`` (any thread may ask)."""
    try:
        return signal.getsignal(signum) == handler
    except (ValueError, OSError):  # pragma: no cover (a signal Python does not know)
        return False


def _reset_echoes() -> None:
    """After ``fork``: the child has no watcher, and the lock may have been held."""
    global _echo_lock
    _echo_lock = threading.Lock()
    _echoes.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_echoes)


class cancel_on_interrupt:  # lower case: used like a function, as in ``with ...``
    """Make Ctrl-C (SIGINT, or the ``signals`` given) cancel the query running on ``conn``.

    A context manager for blocking code in the main thread: while the block
    runs, the first of ``signals`` (default: SIGINT only; e.g. ``(signal.SIGINT,
    signal.SIGTERM)`` so that a service being stopped ends its query) sends
    an encrypted, bounded cancel request for ``conn`` (``timeout`` and
    ``strict`` as for :func:`psycancel.cancel`) from a helper thread, even
    though the main thread is blocked inside libpq; the driver then reports
    the cancelled query (SQLSTATE 57014) and the signal's previous handler is
    called: ``KeyboardInterrupt`` as usual for SIGINT, a handler of the
    program's own is called instead, ``SIG_IGN`` does nothing (the driver's
    error stays), and ``SIG_DFL`` does the signal's default action once the
    cancel has completed (SIGTERM: the process ends, its query cancelled on
    the server first). One cancel per block: the first signal sends it.

    The bound (``break_connection=True``, the default): the block ends within
    ``timeout`` seconds of the first signal even when the network or the
    server does not answer. If the cancel fails or times out, if a second
    signal arrives, or if the block still runs ``timeout`` seconds after the
    first signal, the connection's socket is shut down (never closed): the
    blocked driver call fails at once with the driver's connection error,
    the previous handler then runs (``KeyboardInterrupt``, with that error as
    its context when the handler runs at the block's exit), a WARNING is
    logged on the ``psycancel`` logger, and :attr:`connection_broken` is
    True. The connection is then unusable (psycopg2 ``closed == 2``, psycopg
    ``broken``): close it; pools discard it. ``break_connection=False``
    restores the old behaviour: the connection is never broken, and the
    block stays blocked as long as the query runs when the cancel cannot
    end it.

    On exit the previous handlers and wakeup fd are restored, and a fired
    cancel is waited for (bounded by ``timeout``) unless the connection was
    broken; if it failed, its error (:class:`CancelError`,
    :class:`CancellationTimeout`) is raised, or noted on the block's own
    exception. Raises :class:`InterfaceError` outside the main thread
    (Python delivers signals to the main thread only), ``TypeError`` /
    ``ValueError`` for invalid arguments (see :func:`check_signals`). Single
    use; a closed connection makes it a no-op.
    """

    def __init__(
        self,
        conn: Cancellable,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        strict: bool = False,
        signals: Iterable[int] = (signal.SIGINT,),
        break_connection: bool = True,
    ) -> None:
        self._timeout = check_options(timeout, strict)
        self._signals = check_signals(signals)
        if not isinstance(break_connection, bool):
            raise TypeError(
                f"break_connection must be a bool, got {type(break_connection).__name__}"
            )
        self._strict = strict
        self._conn = conn
        self._bound = break_connection
        self._state = _NEW
        # Shared by the main thread (its handler), the watcher and the cancel thread.
        # Re-entrant: a signal handler may run while the main thread holds it.
        self._lock = threading.RLock()
        self._running = False
        self._phase = _QUIET
        self._held: dict[int, FrameType | None] = {}
        self._heard: set[int] = set()
        """Our signals the watcher read on the wakeup fd."""
        self._handled: set[int] = set()
        """Our signals the Python-level handler ran for (or that were delivered again)."""
        self._plan: Plan | None = None
        self._sockets_closed = False
        self._settled = threading.Event()
        self._broken: str | None = None
        self._error: BaseException | None = None
        # Main thread only.
        self._deferred: dict[int, FrameType | None] = {}
        self._previous: dict[int, Handler] = {}
        self._installed: list[int] = []
        self._previous_fd = -1
        self._main_id = 0
        self._fence: SocketFence | None = None
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._thread: threading.Thread | None = None
        # Watcher only (and the cancel thread's result, read once it has ended).
        self._fired = False
        self._fired_at = 0.0
        self._pgconn: PGconn | None = None  # for a re-send (psycancel._confirm)
        self._first: Plan | None = None
        self._left = threading.Event()  # set when the block leaves (the confirmation waits)
        self._first_signal = 0
        self._canceller: threading.Thread | None = None
        self._cancel_error: BaseException | None = None
        self._cancel_done = False
        """Set by the cancel thread when the request is done (before its wake byte)."""
        self._cancel_seen = False
        self._resent_done = False
        """Set by the cancel thread when its re-sends are over (psycancel._confirm)."""
        self._resent_seen = False
        self._deadline: float | None = None
        self._release_at: float | None = None
        self._broken_at = 0.0

    @property
    def fired(self) -> bool:
        """True once a signal during the block sent (or is sending) the cancel request."""
        return self._fired

    @property
    def connection_broken(self) -> bool:
        """True if the bound shut the connection's socket down (the connection is unusable)."""
        return self._broken is not None

    @property
    def signals(self) -> tuple[int, ...]:
        """The signals that cancel the query (as given, validated)."""
        return self._signals

    # -- the main thread's handler -----------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The Python-level handler (main thread, between bytecodes)."""
        with self._lock:
            self._handled.add(signum)
        if self._state == _ACTIVE and _inside(self, frame):
            # Entering or leaving: hold it until the restoring is done.
            self._deferred.setdefault(signum, frame)
            return
        self._dispatch(signum, frame)

    def _dispatch(self, signum: int, frame: FrameType | None) -> None:
        """Hold the signal while the cancel is in flight (the bound), else hand it on."""
        if self._bound:
            with self._lock:
                if self._running and self._phase != _RELEASED:
                    # The watcher hands it on (or __exit__ does): see the module doc.
                    self._held.setdefault(signum, frame)
                    return
        self._chain(signum, frame)

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        """Do what the handler before ours would have done."""
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        elif previous is None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a handler Python does not know: as Python's default
        else:
            self._default_action(signum)

    def _default_action(self, signum: int) -> None:
        """The signal's default action (SIGTERM: the process ends), after the cancel."""
        self._wait_settled()
        signal.signal(signum, signal.SIG_DFL)
        try:
            signal.raise_signal(signum)  # ends the process, unless ignored or stopped
        finally:
            if self._state == _ACTIVE:  # still in the block: ours again
                signal.signal(signum, self._on_signal)

    def _wait_settled(self) -> None:
        """Wait (bounded) until the cancel completed or the connection was broken."""
        thread = self._thread
        end = time.monotonic() + self._timeout + _GRACE
        if thread is not None and thread.is_alive():
            self._settled.wait(max(0.0, end - time.monotonic()))

    # -- the watcher thread ------------------------------------------------------

    def _watch(self) -> None:
        """Woken by the wakeup fd: fires the cancel, enforces the bound, re-delivers."""
        reader = self._reader
        assert reader is not None
        try:
            while True:
                data = self._read(reader, self._next_wait())
                if data is None:
                    return
                stop = self._on_bytes(data)
                self._tick()
                if stop:
                    return
        finally:
            self._end_watch()

    @staticmethod
    def _read(reader: socket.socket, wait: float | None) -> bytes | None:
        """Bytes from the wakeup socket (b"" if ``wait`` passed first); None once closed."""
        try:
            if wait is not None and not wait_fd(reader.fileno(), READ, wait):
                return b""
            data = reader.recv(256)
        except OSError:
            return None
        return data or None

    def _next_wait(self) -> float | None:
        now = time.monotonic()
        waits = []
        if self._deadline is not None:
            waits.append(self._deadline - now)
        if self._release_at is not None:
            waits.append(min(self._release_at - now, _NOTICE_POLL))
        if not waits:
            return None
        return max(0.0, min(waits))

    def _on_bytes(self, data: bytes) -> bool:
        """Handle what the wakeup socket said; True once the block is leaving."""
        stop = False
        forward = bytearray()
        own: list[int] = []
        for byte in data:
            if byte == _STOP:
                stop = True
            elif byte == _WAKE:
                continue  # the cancel thread is done: _tick looks at it
            elif _is_echo(byte):
                continue  # psycancel's own re-delivery of a held signal
            else:
                forward.append(byte)
                if not stop and byte in self._signals:
                    own.append(byte)
        if forward:
            self._forward(bytes(forward))
        for signum in own:
            self._on_own_signal(signum)
        return stop

    def _forward(self, data: bytes) -> None:
        """Pass signal bytes on to the previous wakeup fd (best effort, as CPython does)."""
        if self._previous_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._previous_fd, data)

    def _on_own_signal(self, signum: int) -> None:
        with self._lock:
            self._heard.add(signum)
        if not self._fired:
            self._fire(signum)
        elif self._bound:
            self._break(
                f"a second signal ({_name(signum)}) arrived while the block still ran",
                "second_signal",
            )

    def _fire(self, signum: int) -> None:
        """The first signal: send the cancel from a thread of its own, start the bound."""
        self._fired = True
        self._fired_at = time.monotonic()
        self._first_signal = signum
        with self._lock:
            plan, self._plan = self._plan, None
            self._phase = _CANCELLING
        if self._bound:
            self._deadline = self._fired_at + self._timeout
        if plan is None:  # (never: the block installs nothing without a plan)
            self._settle()
            return
        self._first = plan = rearmed(plan)
        thread = threading.Thread(
            target=self._send, args=(plan,), name="psycancel-interrupt-cancel", daemon=True
        )
        try:
            thread.start()
        except BaseException as ex:  # no thread to be had: the cancel failed
            plan.discard()
            self._cancel_error = ex
            self._cancel_seen = True
            self._cancelled()
            return
        self._canceller = thread

    def _send(self, plan: Plan) -> None:
        """The cancel thread: send the request (bounded by ``timeout``), then wake the watcher."""
        try:
            blocking.run_blocking(plan, cooperate=False)
        except BaseException as ex:  # whatever ends the cancel, the block hears of it
            self._cancel_error = ex
        self._cancel_done = True
        with self._lock:
            writer = None if self._sockets_closed else self._writer
            if writer is not None:
                with contextlib.suppress(OSError):
                    writer.send(bytes([_WAKE]))
        if self._cancel_error is None and not self._left.wait(_SETTLE_WAIT):
            # Still running once the held signal was handed on (a block in Python code
            # has left by then): re-send while it still runs (psycancel._confirm), report.
            outcome = confirm_blocking(
                self._left,
                self._again,
                until=self._fired_at + self._timeout,
                label="psycancel.cancel_on_interrupt",
            )
            if outcome.resends:  # signals were held again: the watcher hands them on
                self._resent_done = True
                with self._lock:
                    writer = None if self._sockets_closed else self._writer
                    if writer is not None:
                        with contextlib.suppress(OSError):
                            writer.send(bytes([_WAKE]))

    def _again(self) -> Plan | None:
        """A re-send while the block still runs and is not broken (under the lock), else None."""
        with self._lock:
            pgconn, first = self._pgconn, self._first
            if not self._running or self._phase == _BROKEN or pgconn is None or first is None:
                return None
            try:
                plan = resend_plan(first, pgconn, self._fired_at + self._timeout)
            except Exception as ex:  # libpq could not prepare it: no re-send
                _logger.warning("psycancel.cancel_on_interrupt: no re-send (%r)", ex)
                return None
            if self._phase == _RELEASED:
                # Hold signals again while a cancel is in flight (see the module doc): a
                # KeyboardInterrupt raised as the driver builds its error would replace it.
                self._phase = _CANCELLING
            return plan

    def _tick(self) -> None:
        """After every wake: the cancel's outcome, the deadline, the held signals."""
        if self._resent_done and not self._resent_seen:
            self._resent_seen = True
            self._settle()  # the re-sends are over: hand the held signals on soon
        if self._cancel_done and not self._cancel_seen:
            self._cancel_seen = True
            self._cancelled()
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            self._break(
                f"the query had not ended {self._timeout:g} s after "
                f"{_name(self._first_signal)} (the cancel was sent)",
                "deadline",
            )
        if self._release_at is not None and (now >= self._release_at or self._noticed(now)):
            self._release()

    def _noticed(self, now: float) -> bool:
        """After a break: the driver dropped the socket (its error is on its way)."""
        fence = self._fence
        if fence is None or fence.same_socket():
            return False
        assert self._release_at is not None
        self._release_at = min(self._release_at, now + _NOTICED_DELAY)
        return now >= self._release_at

    def _cancelled(self) -> None:
        """The cancel thread ended: settle, or break if it failed."""
        error = self._cancel_error
        if error is None:
            self._settle()
            return
        self._error = error
        if self._bound and self._break(f"the cancel request failed: {error!r}", "cancel_failed"):
            return
        if self._broken is not None:
            what = "the connection was broken already"
        elif self._bound:
            what = "the block had ended"
        else:
            what = "the query may still be running (break_connection=False)"
        _logger.warning(
            "psycancel.cancel_on_interrupt: the cancel failed (%r); %s",
            error,
            what,
            extra={
                "psycancel_cancel": {"pid": self._pid(), "outcome": telemetry.outcome_of(error)}
            },
        )
        self._settle()

    def _pid(self) -> int:
        """The session's backend pid, for the records (0: unknown)."""
        fence = self._fence
        return fence.backend_pid if fence is not None else 0

    def _break(self, reason: str, code: str) -> bool:
        """Shut the connection's socket down if the block still runs, then settle.

        True if this call did it (or found no socket to shut) and logged so;
        False if there was nothing to do (the block left, or broken already).
        """
        with self._lock:
            proceed = self._running and self._broken is None
            before = self._phase
            if proceed:  # first: a handler that runs as the driver fails must hold
                self._phase = _BROKEN
                self._broken_at = time.monotonic()
        fence = self._fence
        if proceed and fence is not None and fence.shutdown():
            with self._lock:
                self._broken = reason
            self._deadline = None
            why = _BREAK_REASONS.get(code, code)
            telemetry.broken_connection("cancel_on_interrupt", why, backend_pid=self._pid())
            _logger.warning(
                "psycancel.cancel_on_interrupt broke the connection (its socket is shut "
                "down, so that the blocked call returns; the connection is unusable now): %s",
                reason,
                extra={
                    "psycancel_break": code,
                    "psycancel_cancel": {
                        "pid": self._pid(),
                        "outcome": "connection_broken",
                        "reason": why,
                    },
                },
            )
        elif proceed:
            with self._lock:
                self._phase = before
            _logger.warning(
                "psycancel.cancel_on_interrupt could not break the connection (%s): %s",
                "no socket was found on entry" if fence is None else "its socket is gone",
                reason,
                extra={
                    "psycancel_break": "unavailable",
                    "psycancel_cancel": {
                        "pid": self._pid(),
                        "outcome": "connection_not_broken",
                        "reason": _BREAK_REASONS.get(code, code),
                    },
                },
            )
        self._settle()
        return proceed

    def _settle(self) -> None:
        """The cancel completed, or the connection was broken: hand held signals on soon."""
        self._settled.set()
        with self._lock:
            if self._phase == _RELEASED:
                return
            start = self._broken_at if self._phase == _BROKEN else time.monotonic()
        when = start + _SETTLE_WAIT
        self._release_at = when if self._release_at is None else min(self._release_at, when)

    def _release(self) -> None:
        """Re-deliver the held signals to the main thread (the block still runs)."""
        self._release_at = None
        with self._lock:
            self._phase = _RELEASED
            if not self._running:
                return  # leaving: __exit__ hands them on
            held = list(self._held)
            self._held.clear()
            # A signal that reached the C handler (its byte was read) while the main
            # thread was about to enter a blocking call (a ``time.sleep``) does not
            # cut that call short: the Python-level handler then waits with it. The
            # innermost block (whose handler is the installed one) delivers it again.
            for signum in self._heard - self._handled:
                if signum not in held and _is_installed(signum, self._on_signal):
                    held.append(signum)
            self._handled.update(held)
        for signum in held:
            _deliver(self._main_id, signum)

    def _end_watch(self) -> None:
        """The block is leaving: wait for a fired cancel (bounded), unless it was broken."""
        thread = self._canceller
        if thread is None:
            return
        if self._broken is None:
            thread.join(max(0.0, self._fired_at + self._timeout + _GRACE - time.monotonic()))
        if self._cancel_done:
            if not self._cancel_seen:
                self._cancel_seen = True
                self._cancelled()  # (the block has ended: no break any more)
        elif self._broken is None and self._error is None:
            self._error = outcomes.timed_out(self._timeout, legacy=True)
        self._settled.set()

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
        # The connection resolved once, for the plan and the socket's fence.
        plan, fence, pgconn = prepare_target(
            resolve(self._conn), timeout=self._timeout, strict=self._strict, stacklevel=2
        )
        if plan is None:
            return self  # a closed connection: nothing to cancel, nothing installed
        self._plan = plan
        self._pgconn = pgconn
        if self._bound:
            self._fence = fence
        try:
            self._install()
        except BaseException:
            self._uninstall()
            raise
        try:
            self._hand_on_deferred()
        except BaseException as ex:  # the block will not run: no __exit__ either
            try:
                self._uninstall()
            finally:
                self._hand_on(ex)
            raise
        return self

    def _install(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._main_id = threading.get_ident()
        self._running = True
        self._thread = threading.Thread(
            target=self._watch, name="psycancel-cancel-on-interrupt", daemon=True
        )
        with _signals_blocked(self._signals):  # the watcher (and its cancel thread) inherit it
            self._thread.start()
        for signum in self._signals:
            self._previous[signum] = signal.getsignal(signum)
        try:
            self._previous_fd = signal.set_wakeup_fd(self._writer.fileno())
        except ValueError as ex:  # not the main thread of the main interpreter
            raise InterfaceError(
                f"cancel_on_interrupt() cannot watch for signals here: {ex}"
            ) from ex
        self._state = _ACTIVE
        for signum in self._signals:
            signal.signal(signum, self._on_signal)
            self._installed.append(signum)

    def _uninstall(self) -> None:
        """Stop the watcher (waiting for a fired cancel), restore the handlers and fd."""
        with self._lock:
            self._running = False
            self._pgconn = None
        self._left.set()
        thread, writer = self._thread, self._writer
        if thread is not None and writer is not None:
            try:
                writer.send(bytes([_STOP]))
            except OSError:  # the buffer is full of signal bytes: close the socket instead
                if self._reader is not None:
                    self._reader.shutdown(socket.SHUT_RDWR)
            thread.join(self._timeout + 2 * _GRACE)
            if thread.is_alive() and self._error is None and self._broken is None:
                self._error = outcomes.timed_out(self._timeout)
        with self._lock:
            plan, self._plan = self._plan, None
        if plan is not None:
            plan.discard()  # never fired
        if self._state == _ACTIVE:
            signal.set_wakeup_fd(self._previous_fd)
        with self._lock:
            self._sockets_closed = True
        for sock in (self._reader, self._writer):
            if sock is not None:
                sock.close()
        while self._installed:
            signum = self._installed.pop()
            previous = self._previous.get(signum)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._state = _DONE

    def _hand_on_deferred(self) -> None:
        """Handle the signals that arrived while entering, now that the block is armed."""
        while self._deferred:
            signum = next(iter(self._deferred))
            frame = self._deferred.pop(signum)
            self._dispatch(signum, frame)

    def _hand_on(self, exc: BaseException | None) -> None:
        """At exit (handlers restored): hand every held or deferred signal on, in order."""
        with self._lock:
            pending = dict(self._held)
            self._held.clear()
        for signum, frame in self._deferred.items():
            pending.setdefault(signum, frame)
        self._deferred.clear()
        if isinstance(exc, KeyboardInterrupt):
            pending.pop(signal.SIGINT, None)  # (the block's KeyboardInterrupt is that SIGINT)
        signums = list(pending)
        for index, signum in enumerate(signums):
            try:
                self._chain(signum, pending[signum])
            except BaseException:
                for later in signums[index + 1 :]:  # to the restored handlers, as Python would
                    signal.raise_signal(later)
                raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return
        typed: QueryInterrupted | None = None
        try:
            self._uninstall()
        finally:
            typed = self._interrupted(exc)
            try:
                self._hand_on_typed(exc, typed)
            except BaseException as interrupt:
                _note(interrupt, self._error, self._broken)
                raise
        error = self._error
        if exc is not None:
            _note(exc, error, self._broken)
            if typed is not None:  # the previous handler did not raise
                raise typed
            return
        if error is not None:
            raise error

    def _interrupted(self, exc: BaseException | None) -> QueryInterrupted | None:
        """The typed outcome when our signal's cancel ended the query (SQLSTATE 57014)."""
        if not isinstance(exc, Exception) or not self._fired or self._broken is not None:
            return None  # (a KeyboardInterrupt raised in the block stays what it is)
        canceled = _query_canceled(exc)
        if canceled is None:
            return None  # another cause: statement_timeout, pg_cancel_backend, a failure
        typed = QueryInterrupted(
            "the query was cancelled by psycancel.cancel_on_interrupt on "
            f"{_name(self._first_signal)}",
            signal=self._first_signal,
        )
        typed.__cause__ = canceled
        return typed

    def _hand_on_typed(self, exc: BaseException | None, typed: QueryInterrupted | None) -> None:
        """:meth:`_hand_on`, with ``typed`` (when there is one) as the context of what it raises.

        The previous handler's exception (``KeyboardInterrupt``) then reads
        ``KeyboardInterrupt`` <- :class:`QueryInterrupted` <- the driver's error.
        """
        if typed is None:
            self._hand_on(exc)
            return
        try:
            raise typed from typed.__cause__
        except QueryInterrupted:
            self._hand_on(exc)


def _note(exc: BaseException, error: BaseException | None, broken: str | None) -> None:
    """Mention the break and the cancel's failure on the leaving exception (Python >= 3.11)."""
    add_note = getattr(exc, "add_note", None)
    if add_note is None:
        return
    if broken is not None:
        add_note(f"psycancel.cancel_on_interrupt: the connection was broken: {broken}")
    if error is not None:
        add_note(f"psycancel.cancel_on_interrupt: the cancel failed: {error!r}")


def _codes() -> frozenset[CodeType]:
    cls = cancel_on_interrupt
    return frozenset(
        f.__code__
        for f in (
            cls.__enter__,
            cls.__exit__,
            cls._install,
            cls._uninstall,
            cls._hand_on,
            cls._hand_on_deferred,
        )
    )


_OWN_CODE = _codes()


def _inside(owner: cancel_on_interrupt, frame: FrameType | None) -> bool:
    """True if ``frame`` runs, or is called by, ``owner``'s own entering or leaving code."""
    while frame is not None:
        if frame.f_code in _OWN_CODE and frame.f_locals.get("self") is owner:
            return True
        frame = frame.f_back
    return False
