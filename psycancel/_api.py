"""The public cancel functions: the cancel procedure, then a runner."""

from __future__ import annotations

from ._engine import blocking
from ._engine.plan import DEFAULT_TIMEOUT, Plan
from ._procedure import prepare_cancel
from ._typing import Cancellable

__all__ = [
    "DEFAULT_TIMEOUT",
    "cancel",
    "cancel_async",
    "cancel_blocking",
    "cancel_nonblocking",
    "run_plan_async",
]


def cancel(conn: Cancellable, *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False) -> None:
    """Cancel the query running on ``conn``, blocking this thread (not others).

    Uses the encrypted, non-blocking ``PQcancelConn`` API when the
    connection's libpq has it; otherwise the legacy ``PQcancel`` in a worker
    thread, under the security policy (see :class:`InsecureCancelWarning`).
    Returns when the server has processed the request, which does not prove
    that a query was running; returns at once, sending nothing, for a closed
    connection (there is nothing to cancel). Raises
    :class:`CancellationTimeout` after ``timeout`` seconds,
    :class:`CancelError` if the request failed, :class:`InterfaceError` for an
    unsupported object or a connection that has not finished connecting.
    """
    cancel_blocking(conn, timeout=timeout, strict=strict, stacklevel=2)


def cancel_blocking(conn: object, *, timeout: float, strict: bool, stacklevel: int) -> None:
    """:func:`cancel`, for other entry points (``stacklevel`` 1: this function's caller)."""
    plan = prepare_cancel(conn, timeout=timeout, strict=strict, stacklevel=stacklevel + 1)
    if plan is not None:
        blocking.run_blocking(plan)


async def cancel_async(
    conn: Cancellable,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    strict: bool = False,
    offload: bool | None = None,
) -> None:
    """Cancel the query running on ``conn`` without blocking the event loop.

    Same semantics and errors as :func:`cancel`. If the awaiting task is
    cancelled, the cancel connection is closed and ``CancelledError``
    propagates. Runs under asyncio, and under Trio through AnyIO (installed
    separately: ``pip install psycancel[anyio]``).

    ``offload`` (asyncio only) chooses where the cancel's own work runs:
    ``True`` in psycancel's background thread (the TLS handshake's CPU work
    then never runs in the loop thread), ``False`` in the loop thread through
    ``add_reader``/``add_writer``; ``None`` (default) offloads exactly the
    cancels of TLS connections (see ``benchmarks/README.md`` for the
    measurements behind this rule). Timeouts, errors and cleanup are the same
    in every mode.
    """
    await cancel_nonblocking(conn, timeout=timeout, strict=strict, offload=offload, stacklevel=2)


async def cancel_nonblocking(
    conn: object, *, timeout: float, strict: bool, offload: bool | None, stacklevel: int
) -> None:
    """:func:`cancel_async`, for other entry points (``stacklevel`` 1: the caller)."""
    plan = prepare_cancel(
        conn, timeout=timeout, strict=strict, offload=offload, stacklevel=stacklevel + 1
    )
    if plan is None:
        return
    await run_plan_async(plan, offload)


async def run_plan_async(plan: Plan, offload: bool | None) -> None:
    """Run ``plan`` in the running task: asyncio's runner, or AnyIO's (Trio...).

    The event-loop machinery is imported here, on the first asynchronous
    cancel, never by ``import psycancel`` nor by a blocking cancel.
    """
    from ._engine.async_library import running_asyncio

    if running_asyncio():
        from ._engine.asyncio_loop import run_asyncio

        await run_asyncio(plan, offloaded=offload)
        return
    # Trio (or another AnyIO backend): imports AnyIO, only on this path.
    try:
        from ._engine.anyio_loop import run_anyio
    except BaseException:
        plan.discard()
        raise
    await run_anyio(plan)
