"""The waits every runner shares: one file descriptor's readiness, and a loop's waits.

* :func:`wait_fd`: block (``poll(2)``, the GIL released) until a descriptor
  is ready or the time passes; the blocking runner's wait, and the
  ``cancel_on_interrupt`` watcher's.
* :func:`loop_waits`: the waits of a cancel that an event loop must do (the
  asyncio and AnyIO runners), the writes that are over at once left out.

A wait is never longer than the plan's deadline, itself at most
:data:`~psycancel._engine.plan.MAX_WAIT` away (the timeout is capped once, when
it is validated), so no wait here is sliced.
"""

from __future__ import annotations

import math
import select
from collections.abc import Iterator

from .machine import READ, WRITE, CancelSteps, Wait
from .plan import Deadline

__all__ = ["WRITES_AT_ONCE", "loop_waits", "wait_fd"]


WRITES_AT_ONCE = 8
"""How many write-readiness waits of one cancel the event-loop runners check at
once (a zero-timeout ``poll``) before asking the loop: a socket that is
connected and has room to send is writable at once, and a round trip through
the loop for it costs the loop's other tasks. Bounded, so that a cancel never
runs steps back to back without letting the loop run for long."""


def wait_fd(fd: int, event: int, seconds: float) -> bool:
    """Block until ``fd`` is ready for ``event``; False if ``seconds`` pass (0: just look)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN if event == READ else select.POLLOUT)
        # Round up so that a wait never ends just before the deadline.
        return bool(poller.poll(math.ceil(max(0.0, seconds) * 1000)))
    rlist, wlist = ([fd], []) if event == READ else ([], [fd])
    ready = select.select(rlist, wlist, rlist + wlist, max(0.0, seconds))
    return any(ready)


def loop_waits(steps: CancelSteps, deadline: Deadline) -> Iterator[Wait]:
    """The waits of ``steps`` that an event loop must do, for the event-loop runners.

    A write-readiness wait (the connect ``PQcancelStart`` began, a request to
    send) is usually over already: the first :data:`WRITES_AT_ONCE` of them
    are checked at once with a zero-timeout ``poll`` and, when over, the
    machine is resumed without a round trip through the loop. Read waits
    (the server's answer) and any wait not over at once are yielded. The
    caller closes ``steps``.
    """
    at_once = WRITES_AT_ONCE
    for fd, event in steps:
        if event == WRITE and at_once > 0:
            at_once -= 1
            if deadline.remaining() > 0 and wait_fd(fd, event, 0):
                continue
        yield fd, event
