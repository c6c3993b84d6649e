"""A new-API cancel run to its end in one thread: the caller's, or a worker's.

:func:`run_here` is the blocking runner's body for the new API: the C
driver's ``run_blocking`` (compiled twin, GIL released throughout), or the
shared machine with :func:`wait_blocking`'s ``poll(2)`` waits.

:func:`run_isolated` runs the same in a worker thread of the legacy path
(``legacy.run_legacy_cancel``) and returns its Future. It is for a plan
whose libpq step may block (:attr:`NewApiPlan.may_block`: a GSS-encrypted
session, whose cancel calls ``gss_init_sec_context``, which may have to reach
a KDC and waits for it inside ``PQcancelPoll``, ~25 s when the KDC is
silent). Every runner sends such a plan here instead of driving it itself,
never in an event loop's thread nor the offload reactor's, and waits for the
Future until the deadline: the caller gets ``CancellationTimeout`` on time,
and the worker, once libpq returns, sees the deadline passed, finishes the
cancel object and ends on its own.
"""

from __future__ import annotations

from concurrent.futures import Future

from . import legacy, machine, outcomes
from .machine import CancelSteps
from .plan import Deadline, NewApiPlan
from .waits import wait_fd

__all__ = ["run_here", "run_isolated", "wait_blocking", "worker_job"]


def wait_blocking(steps: CancelSteps, deadline: Deadline) -> None:
    """Run ``steps`` in this thread until done or ``deadline``."""
    try:
        for fd, event in steps:
            wait = deadline.remaining()
            if wait <= 0 or not wait_fd(fd, event, wait):
                raise deadline.expired()
    finally:
        steps.close()


def run_here(plan: NewApiPlan) -> None:
    """Run the new-API ``plan`` in this thread until done or its deadline; finish it."""
    cc, native, deadline = plan.cc, plan.native, plan.deadline
    try:
        if native is None:
            wait_blocking(machine.cancel_steps(cc), deadline)
            return
        code, message = native.run_blocking(cc, deadline.at)
        error = outcomes.from_native(native, code, message, deadline.timeout)
        if error is not None:
            raise error
    finally:
        cc.finish()  # (a no-op once the C driver has finished it)


class _Job:
    """A new-API plan in the shape a worker thread runs (``legacy.WorkerJob``)."""

    __slots__ = ("_plan",)

    def __init__(self, plan: NewApiPlan) -> None:
        self._plan = plan

    def cancel(self) -> None:
        run_here(self._plan)

    def free(self) -> None:
        self._plan.cc.finish()  # idempotent: run_here finished it already


def worker_job(plan: NewApiPlan) -> legacy.WorkerJob:
    """``plan`` as a job for a worker thread of another pool (gevent's)."""
    return _Job(plan)


def run_isolated(plan: NewApiPlan) -> Future[None]:
    """Run ``plan`` in a new worker thread; its outcome as a Future (the worker finishes it)."""
    return legacy.run_legacy_cancel(_Job(plan))
