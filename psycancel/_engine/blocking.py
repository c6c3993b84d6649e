"""The blocking runner: a plan run in the calling thread, bounded by its deadline.

* New API, twin with a C driver (the compiled twin): the driver's
  ``run_blocking`` runs the whole cancel in C with the GIL released from start
  to finish (``docs/offload.md``).
* New API, otherwise: :func:`wait_blocking` drives the shared machine, waiting
  with ``poll(2)`` (``waits.wait_fd``, GIL released) for exactly the
  readiness it asked for, on the socket it named (which can change between
  steps), each wait bounded by the time left (both: ``isolated.run_here``).
* New API whose libpq step may block (a GSS-encrypted session: its handshake
  may reach a KDC), and legacy (``PQcancel``): in a worker thread
  (``isolated``, ``legacy``), waited for until the deadline.
* Under gevent (the program monkey-patched the process, ``cooperative``): the
  plan runs in the calling greenlet with gevent's own waits, so that the hub
  keeps running the other greenlets.

Every path raises :class:`CancellationTimeout` once the deadline passes and
finishes the plan's cancel object, whatever the outcome.
"""

from __future__ import annotations

import concurrent.futures

from . import cooperative, isolated, legacy, trace
from .isolated import wait_blocking
from .plan import Deadline, LegacyPlan, NewApiPlan, Plan

__all__ = ["run_blocking", "wait_blocking", "wait_future"]


def wait_future(
    done: concurrent.futures.Future[None], deadline: Deadline, *, legacy: bool = True
) -> None:
    """Wait for a worker's cancel (legacy, or isolated) until ``deadline``; re-raise its error."""
    try:
        done.result(timeout=max(0.0, deadline.remaining()))
    except concurrent.futures.TimeoutError:
        raise deadline.expired(legacy=legacy) from None


def _run_new_api(plan: NewApiPlan) -> None:
    if plan.may_block:
        wait_future(isolated.run_isolated(plan), plan.deadline, legacy=False)
    else:
        isolated.run_here(plan)


def _run_legacy(plan: LegacyPlan) -> None:
    wait_future(legacy.run_legacy_cancel(plan.handle), plan.deadline)


def run_blocking(plan: Plan, *, cooperate: bool = True) -> None:
    """Run ``plan`` in this thread until the request is processed or its deadline passes.

    If gevent has patched the process (and ``cooperate``, the default), in
    this greenlet through gevent's hub (``cooperative.run_gevent``);
    ``cooperate=False`` forces the plain blocking wait (benchmarks compare
    the two).
    """
    hub = cooperative.gevent_hub() if cooperate else None
    runner = "blocking" if hub is None else "gevent"
    started = trace.begin(plan)
    try:
        if hub is not None:
            cooperative.run_gevent(plan, hub)
        elif isinstance(plan, NewApiPlan):
            _run_new_api(plan)
        else:
            _run_legacy(plan)
    except BaseException as ex:
        if started is not None:
            trace.end(plan, started, runner=runner, offloaded=False, error=ex)
        raise
    if started is not None:
        trace.end(plan, started, runner=runner, offloaded=False, error=None)
