"""Waiters: drive the sans-IO cancel machine with a deadline.

Each waiter waits for exactly the readiness the machine asked for, on the
socket it named (which can change between steps), bounds every wait by the
time left, and raises :class:`CancellationTimeout` when the deadline passes.
The machine is closed on every exit; finishing the cancel connection is the
caller's job (see ``psycancel._api``).

:func:`drive_blocking` is what blocking callers use: for the compiled twin
it runs the same steps in C with the GIL released from start to finish
(``run_blocking`` in ``psycancel_c/_engine.pxi``, see ``docs/offload.md``),
otherwise :func:`wait_blocking` over the machine.
"""

from __future__ import annotations

import asyncio
import math
import select
import sys
import time
from typing import Any

from ._machine import READ, CancelSteps, cancel_steps
from .errors import CancelError, CancellationTimeout
from .pq.abc import PGcancelConn

__all__ = ["compiled_outcome", "drive_blocking", "wait_asyncio", "wait_blocking"]


def _expired(timeout: float) -> CancellationTimeout:
    return CancellationTimeout(f"the cancel request did not complete within {timeout:g} s")


def _wait_fd(fd: int, event: int, seconds: float) -> bool:
    """Block until ``fd`` is ready for ``event``; False if ``seconds`` pass."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN if event == READ else select.POLLOUT)
        # Round up so that a wait never ends just before the deadline.
        return bool(poller.poll(math.ceil(seconds * 1000)))
    rlist, wlist = ([fd], []) if event == READ else ([], [fd])
    ready = select.select(rlist, wlist, rlist + wlist, seconds)
    return any(ready)


def wait_blocking(steps: CancelSteps, deadline: float, timeout: float) -> None:
    """Run ``steps`` in this thread until done or ``deadline`` (monotonic)."""
    try:
        for fd, event in steps:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _wait_fd(fd, event, remaining):
                raise _expired(timeout)
    finally:
        steps.close()


def compiled_outcome(
    module: Any, code: int, message: str, timeout: float
) -> BaseException | None:
    """The exception for an outcome code of the compiled twin's C driver (None: OK)."""
    if code == module.OUTCOME_OK:
        return None
    if code == module.OUTCOME_TIMEOUT:
        return _expired(timeout)
    if code == module.OUTCOME_ABORTED:
        return asyncio.CancelledError()
    return CancelError(message or "the cancel request failed")


def drive_blocking(cc: PGcancelConn, deadline: float, timeout: float) -> None:
    """Run the new, not started ``cc`` in this thread until done or ``deadline``.

    The caller still finishes ``cc`` (a no-op when the C driver did).
    """
    module = sys.modules.get(type(cc).__module__)
    run_blocking = getattr(module, "run_blocking", None)
    if run_blocking is None:
        wait_blocking(cancel_steps(cc), deadline, timeout)
        return
    code, message = run_blocking(cc, deadline)
    error = compiled_outcome(module, code, message, timeout)
    if error is not None:
        raise error


def _wake(fut: asyncio.Future[bool], ready: bool) -> None:
    if not fut.done():
        fut.set_result(ready)


async def wait_asyncio(steps: CancelSteps, deadline: float, timeout: float) -> None:
    """Run ``steps`` on the running asyncio loop until done or ``deadline``.

    Uses ``add_reader``/``add_writer`` and removes them after every step,
    whatever happens (timeout, error or task cancellation).
    """
    loop = asyncio.get_running_loop()
    try:
        for fd, event in steps:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _expired(timeout)
            fut: asyncio.Future[bool] = loop.create_future()
            timer = loop.call_later(remaining, _wake, fut, False)
            if event == READ:
                loop.add_reader(fd, _wake, fut, True)
            else:
                loop.add_writer(fd, _wake, fut, True)
            try:
                ready = await fut
            finally:
                timer.cancel()
                if event == READ:
                    loop.remove_reader(fd)
                else:
                    loop.remove_writer(fd)
            if not ready:
                raise _expired(timeout)
    finally:
        steps.close()
