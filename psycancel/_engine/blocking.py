"""The blocking runner: a plan run in the calling thread, bounded by its deadline.

* New API, twin with a C driver (the compiled twin): the driver's
  ``run_blocking`` runs the whole cancel in C with the GIL released from start
  to finish (``docs/offload.md``).
* New API, otherwise: :func:`wait_blocking` drives the shared machine, waiting
  with ``poll(2)`` (GIL released) for exactly the readiness it asked for, on
  the socket it named (which can change between steps), each wait bounded by
  the time left.
* Legacy: ``PQcancel`` in a worker thread (``legacy``), waited for until the
  deadline.
* Under gevent (the program monkey-patched the process, ``cooperative``): the
  plan runs in the calling greenlet with gevent's own waits, so that the hub
  keeps running the other greenlets.

Every path raises :class:`CancellationTimeout` once the deadline passes and
finishes the plan's cancel object, whatever the outcome.
"""

from __future__ import annotations

import concurrent.futures
import math
import select
from collections.abc import Iterator

from . import cooperative, legacy, machine, outcomes, trace
from .machine import READ, WRITE, CancelSteps, Wait
from .plan import Deadline, LegacyPlan, NewApiPlan, Plan

__all__ = [
    "WRITES_AT_ONCE",
    "loop_waits",
    "run_blocking",
    "wait_blocking",
    "wait_fd",
    "wait_future",
]


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
        return bool(poller.poll(math.ceil(seconds * 1000)))
    rlist, wlist = ([fd], []) if event == READ else ([], [fd])
    ready = select.select(rlist, wlist, rlist + wlist, seconds)
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


def wait_blocking(steps: CancelSteps, deadline: Deadline) -> None:
    """Run ``steps`` in this thread until done or ``deadline``."""
    try:
        for fd, event in steps:
            while True:
                wait = deadline.next_wait()
                if wait <= 0:
                    raise deadline.expired()
                if wait_fd(fd, event, wait):
                    break
    finally:
        steps.close()


def _run_new_api(plan: NewApiPlan) -> None:
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


def wait_future(done: concurrent.futures.Future[None], deadline: Deadline) -> None:
    """Wait for a legacy cancel's outcome until ``deadline`` (in slices); re-raise its error."""
    while True:
        try:
            done.result(timeout=max(0.0, deadline.next_wait()))
            return
        except concurrent.futures.TimeoutError:
            if deadline.remaining() <= 0:
                raise deadline.expired(legacy=True) from None


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
