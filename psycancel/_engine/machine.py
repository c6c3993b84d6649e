"""The sans-IO cancel state machine shared by every waiter and both twins.

:func:`cancel_steps` drives a ``PGcancelConn`` from ALLOCATED to done. It
never sleeps, selects or reads a clock: it yields ``(fd, event)`` and must be
resumed (``next()``) once that fd is ready for that event. It returns when
the server has processed the request and raises :class:`CancelError` when
libpq reports a failure. Deadlines and cleanup belong to the waiter.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeAlias

from ..errors import CancelError
from ..pq.abc import PGcancelConn
from ..pq.enums import PollingStatus

__all__ = ["READ", "WRITE", "CancelSteps", "Wait", "cancel_steps"]

READ = 1
"""Wait until the socket is readable."""
WRITE = 2
"""Wait until the socket is writable."""

Wait: TypeAlias = tuple[int, int]
"""``(fd, READ | WRITE)``: what the machine waits for next."""
CancelSteps: TypeAlias = Generator[Wait, None, None]


def cancel_steps(cc: PGcancelConn) -> CancelSteps:
    """Start ``cc`` and poll it to completion, yielding what to wait for."""
    cc.start()
    # Before the first poll, libpq expects write-readiness (connect finished).
    event = WRITE
    while True:
        fd = cc.socket
        if fd < 0:
            raise CancelError(cc.error_message or "the cancel connection has no socket")
        yield fd, event
        status = cc.poll()
        if status == PollingStatus.OK:
            return
        if status == PollingStatus.READING:
            event = READ
        elif status == PollingStatus.WRITING:
            event = WRITE
        else:
            raise CancelError(cc.error_message or f"cancel failed (poll returned {status!r})")
