"""The cancel procedure: check the arguments, resolve the connection, make the plan.

Every public entry point (``cancel``, ``cancel_async``, ``cancel_after``,
under asyncio, Trio or in a thread) starts here, so that the rules (which
arguments are valid, which objects are accepted, new API or legacy, the
security policy) live in one place; what differs between them is only which
runner of ``psycancel._engine`` then runs the plan.
"""

from __future__ import annotations

from ._drivers.resolve import Resolution, as_pgconn
from ._engine import telemetry
from ._engine.breaker import SocketFence, capture_socket
from ._engine.plan import Deadline, Plan, check_options, make_plan
from .errors import InterfaceError
from .pq import PGconn
from .pq.enums import ConnStatus

__all__ = ["check_offload", "prepare_cancel", "prepare_fenced", "prepare_target"]


def check_offload(offload: bool | None) -> None:
    """Validate ``cancel_async``'s ``offload``."""
    if offload is not None and not isinstance(offload, bool):
        raise TypeError(f"offload must be a bool or None, got {type(offload).__name__}")


def prepare_cancel(
    conn: object,
    *,
    timeout: float,
    strict: bool,
    offload: bool | None = None,
    stacklevel: int,
) -> Plan | None:
    """The plan to cancel the query on ``conn``, made in the calling thread.

    None when there is nothing to cancel: the connection is closed (or was
    closed by another thread meanwhile), or broken (``CONNECTION_BAD``).
    Raises ``TypeError``/``ValueError`` for invalid arguments,
    :class:`InterfaceError` for an object that is not a connection or a
    connection that has not finished connecting, :class:`CancelError` if
    libpq cannot prepare the request, and applies the legacy security policy
    (``stacklevel`` 1: the caller of this function). The deadline starts now.
    """
    timeout = check_options(timeout, strict)
    check_offload(offload)
    return _plan(as_pgconn(conn), timeout=timeout, strict=strict, stacklevel=stacklevel + 1)


def prepare_fenced(
    found: Resolution, *, timeout: float, strict: bool, stacklevel: int
) -> tuple[Plan | None, SocketFence | None]:
    """:func:`prepare_cancel` for a resolved object, plus its socket's fence (a deadline's break).

    Both are made now, in the calling thread (the one that owns the
    connection); (None, None) when there is nothing to cancel. ``timeout``
    and ``strict`` were validated by the caller.
    """
    plan, fence, _pgconn = prepare_target(
        found, timeout=timeout, strict=strict, stacklevel=stacklevel + 1
    )
    return plan, fence


def prepare_target(
    found: Resolution, *, timeout: float, strict: bool, stacklevel: int
) -> tuple[Plan | None, SocketFence | None, PGconn | None]:
    """:func:`prepare_fenced`, plus the ``PGconn`` (for a re-send: ``psycancel._confirm``)."""
    pgconn = found.pgconn()
    plan = _plan(pgconn, timeout=timeout, strict=strict, stacklevel=stacklevel + 1)
    if plan is None or pgconn is None:
        return None, None, None
    return plan, capture_socket(pgconn), pgconn


def _plan(pgconn: PGconn | None, *, timeout: float, strict: bool, stacklevel: int) -> Plan | None:
    """The plan for the resolved ``pgconn`` (see :func:`prepare_cancel`; arguments valid)."""
    instruments = telemetry.active()  # (None unless the application uses OpenTelemetry)
    deadline = Deadline.after(timeout)
    if pgconn is None:
        telemetry.no_op("closed")
        return None
    try:
        status = pgconn.status
        if status == ConnStatus.BAD:
            telemetry.no_op("broken")
            return None
        if status != ConnStatus.OK:
            raise InterfaceError(
                f"the connection is not established (status {status.name}): a connection "
                "that has not finished connecting runs no query to cancel"
            )
        plan = make_plan(pgconn, deadline, strict=strict, stacklevel=stacklevel + 1)
        if instruments is not None:  # a fired cancel runs elsewhere: its event goes here
            plan.span = telemetry.current_span()
        return plan
    except InterfaceError:
        if pgconn.closed:
            telemetry.no_op("closed")
            return None  # finished by another thread meanwhile: nothing to cancel
        raise
