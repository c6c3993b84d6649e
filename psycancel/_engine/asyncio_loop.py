"""The asyncio runner: a plan run without blocking the event loop.

* New API, inline (``offload=False``): :func:`wait_asyncio` drives the shared
  machine with ``add_reader``/``add_writer`` on the socket it names, removing
  them after every step whatever happens (timeout, error, task cancellation).
* New API, offloaded (``offload=True``; ``None`` picks it for encrypted
  sessions, TLS or GSSAPI): the ``offload`` reactor does the work in a
  background thread and the loop only awaits a future.
* New API whose libpq step may block (a GSS-encrypted session: its handshake
  may reach a KDC), whatever ``offload`` says, and legacy (``PQcancel``): in
  a worker thread (``isolated``, ``legacy``), its future awaited with the
  deadline; never in the loop's thread nor the reactor's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from . import isolated, legacy, machine, offload, trace
from .machine import READ, CancelSteps
from .plan import Deadline, LegacyPlan, NewApiPlan, Plan
from .waits import loop_waits

__all__ = ["retrieve_later", "run_asyncio", "wait_asyncio"]


class _Waiter:
    """One cancel's waits on the loop: the future of the current one, and one timer.

    The timer is armed once for the whole cancel, at its deadline, rather
    than once per wait: a cancel waits two or more times and a timer costs
    the loop a heap push and a cancelled entry to skip.
    """

    __slots__ = ("deadline", "fut", "loop", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: Deadline) -> None:
        self.loop = loop
        self.deadline = deadline
        self.fut: asyncio.Future[bool] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def wake(self, ready: bool) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(ready)

    def _expire(self) -> None:
        self.timer = None
        self.wake(False)

    async def ready(self, fd: int, event: int) -> None:
        """Wait until ``fd`` is ready for ``event``; raise once the deadline passed."""
        loop = self.loop
        wait = self.deadline.remaining()
        if wait <= 0:
            raise self.deadline.expired()
        if self.timer is None:
            self.timer = loop.call_later(wait, self._expire)
        self.fut = fut = loop.create_future()
        if event == READ:
            loop.add_reader(fd, self.wake, True)
        else:
            loop.add_writer(fd, self.wake, True)
        try:
            ready = await fut
        finally:
            self.fut = None
            if event == READ:
                loop.remove_reader(fd)
            else:
                loop.remove_writer(fd)
        if not ready:  # the timer: the deadline
            raise self.deadline.expired()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def wait_asyncio(steps: CancelSteps, deadline: Deadline) -> None:
    """Run ``steps`` on the running asyncio loop until done or ``deadline``.

    The waits that are not over at once (:func:`~.waits.loop_waits`) go
    through the loop (``add_reader``/``add_writer``).
    """
    waiter = _Waiter(asyncio.get_running_loop(), deadline)
    try:
        for fd, event in loop_waits(steps, deadline):
            await waiter.ready(fd, event)
    finally:
        waiter.close()
        steps.close()


async def _run_new_api(plan: NewApiPlan, offloaded: bool) -> None:
    if plan.may_block:
        await _run_worker(isolated.run_isolated(plan), plan.deadline, legacy=False)
        return
    if offloaded:
        # The reactor finishes ``cc`` on every outcome.
        await offload.run_offloaded(plan.cc, plan.native, plan.deadline)
        return
    try:
        await wait_asyncio(machine.cancel_steps(plan.cc), plan.deadline)
    finally:
        plan.cc.finish()


async def _run_legacy(plan: LegacyPlan) -> None:
    await _run_worker(legacy.run_legacy_cancel(plan.handle), plan.deadline, legacy=True)


async def _run_worker(
    future: concurrent.futures.Future[None], deadline: Deadline, *, legacy: bool
) -> None:
    """Await a worker thread's cancel (legacy or isolated) until ``deadline``."""
    done = asyncio.wrap_future(future)
    try:
        if not done.done():
            await asyncio.wait((done,), timeout=max(0.0, deadline.remaining()))
    finally:
        if not done.done():
            # The worker's outcome arrives later (timeout, task cancelled): read it
            # then, so that asyncio never logs "Future exception was never retrieved".
            done.add_done_callback(retrieve_later)
    if not done.done():
        raise deadline.expired(legacy=legacy)
    done.result()


def retrieve_later(fut: asyncio.Future[None]) -> None:
    """Read the outcome of a future nobody awaits any more (a done callback)."""
    if not fut.cancelled():
        fut.exception()  # re-raise the worker's error, if any


async def run_asyncio(plan: Plan, *, offloaded: bool | None = None) -> None:
    """Run ``plan`` on the running loop; ``offloaded`` as ``cancel_async``'s ``offload``."""
    started = trace.begin(plan)
    new_api = isinstance(plan, NewApiPlan)
    if offloaded is None:
        offloaded = plan.encrypted
    offloaded = offloaded and new_api
    if isinstance(plan, NewApiPlan) and plan.may_block:
        offloaded = True  # (a worker thread, whatever ``offload`` said)
    try:
        if isinstance(plan, NewApiPlan):
            await _run_new_api(plan, offloaded)
        else:
            await _run_legacy(plan)
    except BaseException as ex:
        if started is not None:
            trace.end(plan, started, runner="asyncio", offloaded=offloaded, error=ex)
        raise
    if started is not None:
        trace.end(plan, started, runner="asyncio", offloaded=offloaded, error=None)
