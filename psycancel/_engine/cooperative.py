"""The gevent runner: a blocking cancel that waits through gevent's hub.

Under ``gevent.monkey.patch_all()`` every greenlet of a thread shares that
thread's one OS thread; a wait that blocks the thread (the compiled twin's C
driver, ``poll(2)``, a legacy ``PQcancel``) freezes every greenlet for the
whole cancel. When :func:`gevent_hub` says the process is patched, the
blocking runner hands the plan to :func:`run_gevent` instead:

* new API: the shared machine, each wait a ``gevent.socket.wait_read`` /
  ``wait_write`` on the cancel socket (the greenlet sleeps, the hub runs the
  others), bounded by the time left; libpq's steps are the same non-blocking
  calls, GIL released, as in the other runners;
* legacy, and a new-API plan whose libpq step may block (a GSS handshake
  that may reach a KDC, ``isolated``): in gevent's native thread pool (a real
  OS thread, GIL released), waited for cooperatively until the deadline.

gevent is never imported here: it is found in ``sys.modules`` only, and used
only if the program imported and monkey-patched it. A greenlet killed (or a
``gevent.Timeout``) during the wait closes the cancel connection like any
other interruption.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import Error
from . import background, isolated, machine
from .legacy import WorkerJob
from .machine import READ, CancelSteps
from .plan import Deadline, LegacyPlan, Plan

__all__ = ["gevent_hub", "run_gevent", "wait_gevent"]

_PATCHED = ("socket", "select")
"""gevent.monkey patching either of these means: this program runs on gevent's hub."""


class _WaitTimedOut(Exception):
    """One cooperative wait ran out of time (the deadline is then checked again)."""


def gevent_hub() -> Any | None:
    """This thread's gevent hub if gevent has monkey-patched the process, else None.

    None also when this thread has no hub yet (no greenlet of it can be
    waiting: a thread of gevent's pool, say, is not given one), and when the
    caller is the hub greenlet itself (a hub callback may not wait): the
    plain blocking wait is the right one there.
    """
    monkey = sys.modules.get("gevent.monkey")
    gevent = sys.modules.get("gevent")
    if monkey is None or gevent is None:
        return None
    try:
        if not any(monkey.is_module_patched(name) for name in _PATCHED):
            return None
        hub_local = sys.modules.get("gevent._hub_local")
        existing = getattr(hub_local, "get_hub_if_exists", None)
        hub = existing() if existing is not None else gevent.get_hub()
        if hub is None or gevent.getcurrent() is hub:
            return None
    except Exception:  # an unusual gevent: wait the plain way
        return None
    return hub


def _socket_module() -> Any:
    module = sys.modules.get("gevent.socket")
    if module is None:  # patched by hand without gevent.socket: gevent is imported anyway
        import importlib

        module = importlib.import_module("gevent.socket")
    return module


def wait_gevent(steps: CancelSteps, deadline: Deadline) -> None:
    """Run ``steps`` in this greenlet, each wait a cooperative one, until done or ``deadline``."""
    gsocket = _socket_module()
    timed_out = _WaitTimedOut()
    try:
        for fd, event in steps:
            wait = gsocket.wait_read if event == READ else gsocket.wait_write
            left = deadline.remaining()
            if left <= 0:
                raise deadline.expired()
            try:
                wait(fd, timeout=left, timeout_exc=timed_out)
            except _WaitTimedOut:
                raise deadline.expired() from None
    finally:
        steps.close()


def _job_in_thread(handle: WorkerJob) -> BaseException | None:
    """In a native pool thread: one job (``PQcancel``); its refusal is returned, not raised."""
    try:
        handle.cancel()
    except Error as ex:
        return ex
    finally:
        handle.free()
    return None


def _run_in_pool(plan: Plan, job: WorkerJob, hub: Any) -> None:
    deadline = plan.deadline
    try:
        result = hub.threadpool.spawn(_job_in_thread, job)
    except BaseException:
        plan.discard()
        raise
    if not result.ready():
        result.wait(max(0.0, deadline.remaining()))
        if not result.ready():
            # The pool thread stays in libpq until it returns (PQcancel: until the OS
            # gives up), then frees the job's object.
            raise deadline.expired(legacy=isinstance(plan, LegacyPlan))
    if not result.successful():
        raise background.thread_failed("gevent thread pool", result.exception)
    error = result.value
    if error is not None:
        raise error


def run_gevent(plan: Plan, hub: Any) -> None:
    """Run ``plan`` in this greenlet, letting the hub run the others, until done or its deadline."""
    if isinstance(plan, LegacyPlan):
        _run_in_pool(plan, plan.handle, hub)
    elif plan.may_block:
        _run_in_pool(plan, isolated.worker_job(plan), hub)
    else:
        try:
            wait_gevent(machine.cancel_steps(plan.cc), plan.deadline)
        finally:
            plan.cc.finish()
