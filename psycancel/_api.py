"""The public cancel functions: pick the API, apply the policy, map errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time

from ._legacy import check_policy, start_legacy_cancel
from ._machine import cancel_steps
from ._offload import run_offloaded
from ._resolve import as_pgconn
from ._sniff import running_asyncio
from .errors import CancelError, CancellationTimeout
from .pq.abc import PGcancelConn, PGconn
from .pq.enums import ConnStatus
from .waiting import drive_blocking, wait_asyncio

__all__ = ["DEFAULT_TIMEOUT", "cancel", "cancel_async"]

DEFAULT_TIMEOUT = 30.0
"""Seconds a cancel may take before :class:`CancellationTimeout`."""


def _check_args(timeout: float, strict: bool) -> float:
    """Validate the arguments; return the deadline (``time.monotonic`` based)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    return time.monotonic() + timeout


def _new_cancel_conn(pgconn: PGconn) -> PGcancelConn:
    """A cancel connection ready to start; :class:`CancelError` if libpq refuses."""
    cc = pgconn.cancel_conn()
    if cc.status == ConnStatus.BAD:
        message = cc.error_message or "libpq could not prepare the cancel request"
        cc.finish()
        raise CancelError(message)
    return cc


def _expired(timeout: float) -> CancellationTimeout:
    return CancellationTimeout(
        f"the legacy cancel request did not complete within {timeout:g} s "
        "(its worker thread gives up when the operating system does)"
    )


def cancel(conn: object, *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False) -> None:
    """Cancel the query running on ``conn``, blocking this thread (not others).

    Uses the encrypted, non-blocking ``PQcancelConn`` API when the
    connection's libpq has it; otherwise the legacy ``PQcancel`` in a worker
    thread, under the security policy (see :class:`InsecureCancelWarning`).
    Returns when the server has processed the request, which does not prove
    that a query was running. Raises :class:`CancellationTimeout` after
    ``timeout`` seconds, :class:`CancelError` if the request failed,
    :class:`InterfaceError` for a closed or unsupported connection.
    """
    deadline = _check_args(timeout, strict)
    pgconn = as_pgconn(conn)
    if pgconn.libpq.has_cancel_conn:
        cc = _new_cancel_conn(pgconn)
        try:
            drive_blocking(cc, deadline, timeout)
        finally:
            cc.finish()
        return
    check_policy(pgconn, strict=strict, stacklevel=2)
    done = start_legacy_cancel(pgconn)
    try:
        done.result(timeout=max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
        raise _expired(timeout) from None


async def cancel_async(
    conn: object,
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
    deadline = _check_args(timeout, strict)
    if offload is not None and not isinstance(offload, bool):
        raise TypeError(f"offload must be a bool or None, got {type(offload).__name__}")
    pgconn = as_pgconn(conn)
    if not running_asyncio():
        # Trio (or another AnyIO backend): imports AnyIO, only on this path.
        from ._waiting_anyio import cancel_anyio

        await cancel_anyio(pgconn, deadline, timeout, strict=strict, stacklevel=2)
        return
    if pgconn.libpq.has_cancel_conn:
        if offload is None:
            offload = pgconn.ssl_in_use
        cc = _new_cancel_conn(pgconn)
        if offload:
            # The reactor finishes ``cc`` on every outcome.
            await run_offloaded(cc, deadline, timeout)
            return
        try:
            await wait_asyncio(cancel_steps(cc), deadline, timeout)
        finally:
            cc.finish()
        return
    check_policy(pgconn, strict=strict, stacklevel=2)
    done = start_legacy_cancel(pgconn)
    try:
        await asyncio.wait_for(
            asyncio.wrap_future(done), max(0.0, deadline - time.monotonic())
        )
    except asyncio.TimeoutError:
        raise _expired(timeout) from None


