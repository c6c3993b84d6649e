"""A psycopg2 wait callback whose Ctrl-C cancels through psycancel.

::

    import psycopg2.extensions, psycancel
    psycopg2.extensions.set_wait_callback(psycancel.psycopg2_wait_callback)

With a wait callback installed psycopg2 runs every query in non-blocking
mode and calls the callback to wait, in Python, so a Ctrl-C reaches it.
psycopg2's own ``extras.wait_select`` then calls ``conn.cancel()``: the
legacy ``PQcancel``, in clear text even on a TLS connection, with no
timeout, holding the GIL. This one sends the cancel with
:func:`psycancel.cancel` (encrypted like the connection, bounded by
``timeout``) and otherwise behaves like ``wait_select``: it keeps waiting
until the server ends the query, so the connection stays usable and
``execute`` raises psycopg2's ``QueryCanceledError``.

psycopg2 is never imported: its ``POLL_*`` constants are part of its API.

A Ctrl-C that arrives after psycopg2 sent the query but before it called the
callback raises ``KeyboardInterrupt`` at the callback's first line (Python runs
a pending signal's handler when a function starts), before its ``try``:
psycopg2 then closes the connection and the query runs on. No callback can
close that window; ``cancel_on_interrupt`` has none (docs/usage.md).
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

from ._api import cancel
from ._engine.plan import DEFAULT_TIMEOUT, check_options
from .errors import Error

__all__ = ["make_psycopg2_wait_callback", "psycopg2_wait_callback"]

POLL_OK, POLL_READ, POLL_WRITE, POLL_ERROR = 0, 1, 2, 3
"""``psycopg2.extensions.POLL_*``."""


_SIGNAL_CHECK = 0.5
"""Seconds a wait lasts at most before psycopg2 is polled again.

A signal that arrives just before ``select`` starts its system call (after the
interpreter last looked for signals) does not interrupt it: its Python-level
handler, which raises ``KeyboardInterrupt``, would wait as long as the query
(seen under load: a Ctrl-C that never cancelled). Waiting in slices bounds that
to this many seconds; an idle wait costs one wake-up per slice."""


def _wait(fd: int, state: int) -> None:
    if state == POLL_READ:
        select.select([fd], [], [], _SIGNAL_CHECK)
    else:
        select.select([], [fd], [], _SIGNAL_CHECK)


def _wait_until_ready(conn: Any) -> None:
    """Poll and wait until psycopg2 says ``POLL_OK``.

    The whole loop runs inside the caller's ``try``: Python runs a pending
    signal's handler at a loop's backward jump too, and a ``KeyboardInterrupt``
    raised at the jump of a loop around the ``try`` would leave the callback
    without a cancel (psycopg2 then closes the connection and the query runs
    on: seen under load, with the 0.5 s slices of :func:`_wait`).
    """
    while True:
        state = conn.poll()
        if state == POLL_OK:
            return
        if state not in (POLL_READ, POLL_WRITE):
            raise conn.OperationalError(f"bad state from poll: {state}")
        _wait(conn.fileno(), state)


def make_psycopg2_wait_callback(
    *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False
) -> Callable[[Any], None]:
    """A psycopg2 wait callback that cancels through psycancel on Ctrl-C.

    ``timeout`` bounds each cancel request and ``strict`` is the security
    policy, as for :func:`psycancel.cancel`. On ``KeyboardInterrupt`` while a
    query runs, the query is cancelled and waited for: ``execute`` then
    raises ``QueryCanceledError`` and the connection stays usable (as with
    ``psycopg2.extras.wait_select``). If the cancel itself fails (refused,
    timed out) or the connection is still connecting, the
    ``KeyboardInterrupt`` propagates (``from`` the cancel's error): psycopg2
    then closes the connection, the only way out left.
    """
    seconds = check_options(timeout, strict)

    def psycopg2_wait_callback(conn: Any) -> None:
        """Wait for ``conn`` (psycopg2 calls it); Ctrl-C cancels the query through psycancel."""
        cancelled = False
        while True:
            try:
                _wait_until_ready(conn)
                return
            except KeyboardInterrupt as interrupt:
                if cancelled:
                    continue  # a second Ctrl-C: the cancel was sent, the end is near
                try:
                    cancel(conn, timeout=seconds, strict=strict)
                except Error as ex:
                    raise interrupt from ex
                cancelled = True

    return psycopg2_wait_callback


psycopg2_wait_callback = make_psycopg2_wait_callback()
"""The wait callback with the default ``timeout`` (:data:`DEFAULT_TIMEOUT`) and policy."""
