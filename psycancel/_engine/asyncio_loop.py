"""The asyncio runner: a plan run without blocking the event loop.

* New API, inline (``offload=False``): :func:`wait_asyncio` drives the shared
  machine with ``add_reader``/``add_writer`` on the socket it names, removing
  them after every step whatever happens (timeout, error, task cancellation).
* New API, offloaded (``offload=True``; ``None`` picks it for TLS sessions):
  the ``offload`` reactor does the work in a background thread and the loop
  only awaits a future.
* Legacy: ``PQcancel`` in a worker thread, its future awaited with the
  deadline.
"""

from __future__ import annotations

import asyncio

from . import legacy, machine, offload, trace
from .machine import READ, CancelSteps
from .plan import Deadline, LegacyPlan, NewApiPlan, Plan

__all__ = ["run_asyncio", "wait_asyncio"]


def _wake(fut: asyncio.Future[bool], ready: bool) -> None:
    if not fut.done():
        fut.set_result(ready)


async def _wait_ready(
    loop: asyncio.AbstractEventLoop, fd: int, event: int, deadline: Deadline
) -> None:
    """Wait until ``fd`` is ready for ``event``, in slices; raise once ``deadline`` passed."""
    while True:
        wait = deadline.next_wait()
        if wait <= 0:
            raise deadline.expired()
        fut: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(wait, _wake, fut, False)
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
        if ready:
            return


async def wait_asyncio(steps: CancelSteps, deadline: Deadline) -> None:
    """Run ``steps`` on the running asyncio loop until done or ``deadline``."""
    loop = asyncio.get_running_loop()
    try:
        for fd, event in steps:
            await _wait_ready(loop, fd, event, deadline)
    finally:
        steps.close()


async def _run_new_api(plan: NewApiPlan, offloaded: bool) -> None:
    if offloaded:
        # The reactor finishes ``cc`` on every outcome.
        await offload.run_offloaded(plan.cc, plan.native, plan.deadline)
        return
    try:
        await wait_asyncio(machine.cancel_steps(plan.cc), plan.deadline)
    finally:
        plan.cc.finish()


async def _run_legacy(plan: LegacyPlan) -> None:
    done = asyncio.wrap_future(legacy.run_legacy_cancel(plan.handle))
    deadline = plan.deadline
    while not done.done():
        wait = deadline.next_wait()
        if wait <= 0:
            raise deadline.expired(legacy=True)
        await asyncio.wait((done,), timeout=wait)
    done.result()  # re-raise the worker's error, if any


async def run_asyncio(plan: Plan, *, offloaded: bool | None = None) -> None:
    """Run ``plan`` on the running loop; ``offloaded`` as ``cancel_async``'s ``offload``."""
    started = trace.begin(plan)
    new_api = isinstance(plan, NewApiPlan)
    if offloaded is None:
        offloaded = plan.encrypted
    offloaded = offloaded and new_api
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
