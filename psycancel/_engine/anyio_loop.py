"""The AnyIO runner: a plan run under Trio (or any AnyIO backend but asyncio).

Imported only when the running async library is not asyncio (the asyncio
runner needs no third-party package). Same guarantees as the asyncio runner:
it waits for exactly the readiness the machine asked for on the socket it
named (which may change between steps), bounds every wait by the time left
(an AnyIO cancel scope, so the deadline holds even if the socket never
becomes ready), raises :class:`CancellationTimeout` when it passes, and
leaves nothing registered with the event loop on any exit (the wait is
unregistered by AnyIO/Trio when its scope is cancelled).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

from . import isolated, legacy, machine, trace
from .machine import READ, CancelSteps
from .plan import Deadline, LegacyPlan, NewApiPlan, Plan
from .waits import loop_waits

__all__ = ["run_anyio", "wait_anyio", "wait_future_anyio"]


def _fd_waiters() -> tuple[Callable[[int], Awaitable[Any]], Callable[[int], Awaitable[Any]]]:
    """``wait_readable``/``wait_writable`` that accept a file descriptor."""
    readable = getattr(anyio, "wait_readable", None)
    writable = getattr(anyio, "wait_writable", None)
    if readable is not None and writable is not None:  # AnyIO >= 4.7
        return readable, writable
    # Older AnyIO only waits on socket objects; Trio's own functions take an fd.
    import trio.lowlevel

    return trio.lowlevel.wait_readable, trio.lowlevel.wait_writable


async def wait_anyio(steps: CancelSteps, deadline: Deadline) -> None:
    """Run ``steps`` in the current AnyIO task until done or ``deadline``.

    As in the asyncio runner, only the waits that are not over at once
    (:func:`~.waits.loop_waits`) go through the event loop.
    """
    wait_readable, wait_writable = _fd_waiters()
    try:
        for fd, event in loop_waits(steps, deadline):
            wait = deadline.remaining()
            if wait <= 0:
                raise deadline.expired()
            with anyio.move_on_after(wait) as scope:
                if event == READ:
                    await wait_readable(fd)
                else:
                    await wait_writable(fd)
            if scope.cancelled_caught:
                raise deadline.expired()
    finally:
        steps.close()


def _outcome(done: concurrent.futures.Future[None], deadline: Deadline) -> bool:
    """Block a worker thread until ``done`` completes; False once ``deadline`` passed."""
    finished, _ = concurrent.futures.wait([done], timeout=max(0.0, deadline.remaining()))
    return bool(finished)


async def wait_future_anyio(
    done: concurrent.futures.Future[None], deadline: Deadline, *, legacy: bool = True
) -> None:
    """Wait for a worker's cancel (legacy, or isolated) without blocking the event loop.

    A worker thread waits on the Future (never longer than the time left); the
    task can be cancelled at any time (the worker is abandoned and ends by the
    deadline on its own).
    """
    if not done.done():
        finished = await anyio.to_thread.run_sync(_outcome, done, deadline, abandon_on_cancel=True)
        if not finished:
            raise deadline.expired(legacy=legacy)
    done.result()  # re-raise the worker's error, if any


async def run_anyio(plan: Plan) -> None:
    """Run ``plan`` in the current AnyIO task (the body of ``cancel_async`` there)."""
    started = trace.begin(plan)
    offloaded = isinstance(plan, NewApiPlan) and plan.may_block  # (a worker thread)
    try:
        await _run(plan)
    except BaseException as ex:
        if started is not None:
            trace.end(plan, started, runner="anyio", offloaded=offloaded, error=ex)
        raise
    if started is not None:
        trace.end(plan, started, runner="anyio", offloaded=offloaded, error=None)


async def _run(plan: Plan) -> None:
    if isinstance(plan, LegacyPlan):
        await wait_future_anyio(legacy.run_legacy_cancel(plan.handle), plan.deadline)
        return
    assert isinstance(plan, NewApiPlan)
    if plan.may_block:  # never in the event loop's thread
        await wait_future_anyio(isolated.run_isolated(plan), plan.deadline, legacy=False)
        return
    try:
        await wait_anyio(machine.cancel_steps(plan.cc), plan.deadline)
    finally:
        plan.cc.finish()
