"""Confirm that a fired cancel took effect; re-send it while the same block still runs.

A cancel request that "succeeded" only means that whatever received it
closed the cancel connection. When the request reached another server or
process than the session's (a PgBouncer spread over processes with
``so_reuseport`` but not peered; a load balancer that sent the cancel
connection to another backend), nothing was cancelled and the query keeps
running. The blocks that know when their query has returned
(:func:`~psycancel.cancel_after`, :func:`~psycancel.cancel_on_interrupt`)
therefore check: if the block still runs :data:`CONFIRM_WINDOW` seconds
after a successful cancel, the cancel is sent again (a new cancel
connection, which a balancer may route elsewhere), at most
:data:`MAX_RESENDS` times and never past the cancel's bound
(``fired + timeout``); then the loss is reported (a WARNING on the
``psycancel`` logger naming the likely causes, and what the block does at its
exit: see its documentation).

The fence: a re-send is made and sent only while the block that fired is
still inside (its state checked under the block's own lock, the one its exit
takes), so it can only reach the query that block runs; the block's exit
waits for a re-send in flight, as it waits for the first cancel, so that no
request from it can reach the connection's next query. Within a fired block,
whatever runs on the connection is past the block's deadline anyway.

The re-send's cancel object is made in the cancelling thread (libpq's
``PQcancelCreate`` / ``PQgetCancel`` read only the connection's fixed
parameters: hosts, the backend's key), under the block's lock so that the
block cannot leave and its owner close the connection meanwhile. The
security policy is not applied again: it was applied at the block's entry,
to the same connection, and the re-send uses the same API (new or legacy)
as the first cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ._engine import blocking
from ._engine.asyncio_loop import run_asyncio
from ._engine.plan import Deadline, LegacyPlan, NewApiPlan, Plan, new_cancel_conn
from ._engine.trace import logger
from .pq.abc import PGconn

__all__ = [
    "CONFIRM_WINDOW",
    "IDLE",
    "MAX_RESENDS",
    "Confirmation",
    "Idle",
    "confirm_asyncio",
    "confirm_blocking",
    "resend_plan",
]

CONFIRM_WINDOW = 0.25
"""Seconds a block may still run after a successful cancel before it counts as not taken.

Measured on loopback (``benchmarks/confirm_window.py``, docs/deployments.md):
a cancel that reached the session's backend ends the query, and psycopg2's
call returns, a median 0.2 ms and at most 19 ms after the cancel connection's
end (40 rounds, load average ~14 on 2 cores), at most 18 ms through a peered
PgBouncer forwarding it. A window too short costs only a harmless re-send (a
backend that is not running a query ignores a cancel)."""

MAX_RESENDS = 3
"""How many times a cancel that did not take is sent again (within the cancel's bound)."""

LIKELY_CAUSES = (
    "the request most likely reached another server or process than the session's: "
    "a pooler spread over several processes without peering (PgBouncer so_reuseport "
    "without peer_id/[peers]), or a load balancer that routes each connection on its "
    "own (roundrobin, leastconn, random); see docs/deployments.md"
)


@dataclass
class Confirmation:
    """What the confirmation saw, for the block's exit and for tests."""

    resends: int = 0
    """Cancels sent again because the block still ran after the confirm window."""
    budget: int = MAX_RESENDS
    """Re-sends left for the connection the block holds (a new one gets them all again)."""
    lost: bool = False
    """The block still ran after every re-send (the loss was reported)."""
    error: BaseException | None = None
    """A re-send that failed (the confirmation stopped there)."""
    wake: Callable[[], None] | None = None
    """Set by :func:`confirm_asyncio`: the block calls it when it leaves (any thread)."""


def resend_plan(first: Plan, pgconn: PGconn, until: float) -> Plan:
    """A new plan like ``first`` (same API, same libpq) for ``pgconn``, bounded by ``until``."""
    timeout = first.deadline.timeout
    deadline = Deadline(timeout, min(until, time.monotonic() + timeout))
    # replace(): the same facts as ``first`` (encrypted, may_block, clear_text: the
    # policy already allowed them), a new cancel object and deadline.
    if isinstance(first, NewApiPlan):
        return replace(first, cc=new_cancel_conn(pgconn), deadline=deadline)
    assert isinstance(first, LegacyPlan)
    return replace(first, handle=pgconn.get_cancel(), deadline=deadline)


class Idle:
    """The type of :data:`IDLE`."""

    def __repr__(self) -> str:
        return "IDLE"


IDLE = Idle()
"""What the block's maker of a re-send returns while it holds no connection."""

Again = Callable[[], "Plan | Idle | None"]
"""The block's maker of a re-send: a plan while it still runs on a connection,
:data:`IDLE` while it runs holding none (a pooled session between two
transactions: nothing to cancel until it acquires one), None once it left."""


def _report(label: str, outcome: Confirmation, window: float) -> None:
    outcome.lost = True
    logger.warning(
        "%s: the cancel was reported processed but the query still ran %.2f s later, "
        "after %d re-send(s): %s",
        label,
        window,
        outcome.resends,
        LIKELY_CAUSES,
    )


def confirm_blocking(
    left: threading.Event,
    again: Again,
    *,
    until: float,
    label: str,
    outcome: Confirmation | None = None,
    processed: Callable[[], None] | None = None,
) -> Confirmation:
    """In the cancel's thread, after a successful cancel: wait, re-send, report.

    ``processed`` is called once each re-send is over (processed, failed or
    timed out): the block lets a connection go only with none in flight.
    """
    outcome = Confirmation() if outcome is None else outcome
    idle = False
    while True:
        wait = min(CONFIRM_WINDOW, until - time.monotonic())
        if wait > 0 and left.wait(wait):
            return outcome
        if left.is_set():
            return outcome
        if time.monotonic() >= until:
            break
        if outcome.budget <= 0:
            if idle:
                continue
            break
        plan = again()
        if plan is None:
            return outcome  # the block left meanwhile
        idle = isinstance(plan, Idle)
        if idle:
            continue  # nothing runs: wait for the connection it acquires next
        assert not isinstance(plan, Idle)
        outcome.resends += 1
        outcome.budget -= 1
        logger.info("%s: the query still runs: cancel re-sent (%d)", label, outcome.resends)
        try:
            blocking.run_blocking(plan)
        except Exception as ex:
            outcome.error = ex
            logger.warning("%s: a re-sent cancel failed (%r)", label, ex)
            return outcome
        finally:
            if processed is not None:
                processed()
    if not idle:
        _report(label, outcome, CONFIRM_WINDOW)
    return outcome


async def confirm_asyncio(
    left: threading.Event,
    again: Again,
    *,
    until: float,
    label: str,
    outcome: Confirmation | None = None,
    processed: Callable[[], None] | None = None,
) -> Confirmation:
    """:func:`confirm_blocking` on the running asyncio loop (``cancel_async``'s runner).

    Woken when the block leaves through ``outcome.wake`` (no polling).
    """
    outcome = Confirmation() if outcome is None else outcome
    loop = asyncio.get_running_loop()
    waker = asyncio.Event()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(waker.set)

    outcome.wake = wake
    if left.is_set():
        return outcome
    idle = False
    while True:
        wait = min(CONFIRM_WINDOW, until - time.monotonic())
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waker.wait(), wait)
        if left.is_set():
            return outcome
        if time.monotonic() >= until:
            break
        if outcome.budget <= 0:
            if idle:
                continue
            break
        plan = again()
        if plan is None:
            return outcome
        idle = isinstance(plan, Idle)
        if idle:
            continue  # nothing runs: wait for the connection it acquires next
        assert not isinstance(plan, Idle)
        outcome.resends += 1
        outcome.budget -= 1
        logger.info("%s: the query still runs: cancel re-sent (%d)", label, outcome.resends)
        try:
            await run_asyncio(plan, offloaded=None)
        except Exception as ex:
            outcome.error = ex
            logger.warning("%s: a re-sent cancel failed (%r)", label, ex)
            return outcome
        finally:
            if processed is not None:
                processed()
    if not idle:
        _report(label, outcome, CONFIRM_WINDOW)
    return outcome
