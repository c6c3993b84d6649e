"""The cancel procedure: check the arguments, resolve the connection, make the plan.

Every public entry point (``cancel``, ``cancel_async``, ``cancel_after``,
under asyncio, Trio or in a thread) starts here, so that the rules (which
arguments are valid, which objects are accepted, new API or legacy, the
security policy) live in one place; what differs between them is only which
runner of ``psycancel._engine`` then runs the plan.
"""

from __future__ import annotations

from ._drivers.resolve import as_pgconn
from ._engine.plan import Deadline, Plan, check_options, make_plan

__all__ = ["check_offload", "prepare_cancel"]


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
) -> Plan:
    """The plan to cancel the query on ``conn``, made in the calling thread.

    Raises ``TypeError``/``ValueError`` for invalid arguments,
    :class:`InterfaceError` for an object that is not an open connection,
    :class:`CancelError` if libpq cannot prepare the request, and applies the
    legacy security policy (``stacklevel`` 1: the caller of this function).
    The deadline starts now.
    """
    deadline = Deadline.after(check_options(timeout, strict))
    check_offload(offload)
    pgconn = as_pgconn(conn)
    return make_plan(pgconn, deadline, strict=strict, stacklevel=stacklevel + 1)
