"""A plan for one cancel request: what will be sent, how, and by when.

:func:`make_plan` is the one place that decides between the new API and the
legacy fallback and applies the security policy; it runs in the thread that
owns the connection (``PQcancelCreate`` and ``PQgetCancel`` read the
``PGconn``), and the plan it returns may then be run from any thread or task
by a runner (``blocking``, ``asyncio_loop``, ``anyio_loop``). A plan is run
once; the runner finishes its cancel object on every outcome, and
:meth:`NewApiPlan.discard` / :meth:`LegacyPlan.discard` free a plan that is
never run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeAlias

from ..errors import CancelError, CancellationTimeout
from ..pq.abc import Libpq, NativeDriver, PGcancel, PGcancelConn, PGconn
from ..pq.enums import ConnStatus
from . import outcomes, policy

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_WAIT",
    "Deadline",
    "LegacyPlan",
    "NewApiPlan",
    "Plan",
    "check_options",
    "check_seconds",
    "make_plan",
    "new_cancel_conn",
    "rearmed",
]

DEFAULT_TIMEOUT = 30.0
"""Seconds a cancel may take before :class:`CancellationTimeout`."""

MAX_WAIT = 3600.0
"""The longest a cancel may take (seconds): a larger ``timeout`` is capped to it
when it is validated (:func:`check_options`), so that every wait of every
runner, bounded by the plan's deadline, fits ``poll(2)``, a selector, a lock or
a timer in one piece (none is sliced)."""


def check_seconds(value: float, name: str) -> float:
    """``value`` as a float if it is a positive, finite number of seconds.

    ``TypeError`` for a non-number (``bool`` included); ``ValueError`` for zero,
    a negative number, NaN, an infinity, or an int too large to be a float.
    """
    if type(value) is float and 0.0 < value < math.inf:  # the common case, first
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond the float range
        bits = value.bit_length() if isinstance(value, int) else 0
        raise ValueError(
            f"{name} must be a positive, finite number of seconds, got an int of "
            f"{bits} bits (too large for a float)"
        ) from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return seconds


def check_options(timeout: float, strict: bool) -> float:
    """Validate ``timeout`` and ``strict``; the timeout as a float, at most :data:`MAX_WAIT`."""
    seconds = check_seconds(timeout, "timeout")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    return seconds if seconds <= MAX_WAIT else MAX_WAIT


class Deadline(NamedTuple):
    """When a cancel must be done by (``time.monotonic`` seconds), and its timeout.

    A named tuple: immutable, and made once per cancel (and per ``cancel_after``
    block) at a fraction of a frozen dataclass's cost.
    """

    timeout: float
    """The caller's ``timeout`` (validated: at most :data:`MAX_WAIT`), for messages."""
    at: float
    """The monotonic time by which the cancel must have completed."""

    @classmethod
    def after(cls, timeout: float) -> Deadline:
        """A deadline ``timeout`` seconds from now."""
        return cls(timeout, time.monotonic() + timeout)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    def expired(self, *, legacy: bool = False) -> CancellationTimeout:
        """The exception for a cancel that did not complete by this deadline."""
        return outcomes.timed_out(self.timeout, legacy=legacy)


def new_cancel_conn(pgconn: PGconn) -> PGcancelConn:
    """A cancel connection ready to start; :class:`CancelError` if libpq refuses.

    A module attribute on purpose: tests replace it to see every cancel
    object the engine makes, whichever runner then uses it.
    """
    cc = pgconn.cancel_conn()
    if cc.status == ConnStatus.BAD:
        message = cc.error_message or "libpq could not prepare the cancel request"
        cc.finish()
        raise CancelError(message)
    return cc


@dataclass(eq=False)
class NewApiPlan:
    """Send the request with a new ``PGcancelConn`` (libpq >= 17), encrypted like the session."""

    cc: PGcancelConn
    """The cancel object (new, not started); the runner finishes it."""
    native: NativeDriver | None
    """The twin's C driver, when it has one (``Libpq.native_driver``)."""
    encrypted: bool
    """The session is encrypted, with TLS or GSSAPI (the default offload rule of
    ``cancel_async``)."""
    deadline: Deadline
    libpq: Libpq | None = None
    """The libpq of the connection (for the log record)."""
    may_block: bool = False
    """A libpq step of this cancel may block: the session is GSS-encrypted, and
    ``gss_init_sec_context`` may have to reach a KDC. Every runner then runs the
    plan in a worker thread (``isolated``), never in an event loop's thread, and
    waits for it until the deadline."""
    clear_text: bool = False
    """The request goes in clear text although the session is encrypted
    (``sslmode=allow``: libpq tries clear text first); the policy allowed it."""
    backend_pid: int = 0
    """The session's server process (for the log record and telemetry)."""
    span: object = None
    """OpenTelemetry's span current where the plan was made (telemetry's event goes there)."""

    def discard(self) -> None:
        """Free the cancel object of a plan that will not be run."""
        self.cc.finish()


@dataclass(eq=False)
class LegacyPlan:
    """Send the request with the legacy ``PQcancel`` (libpq < 17), in a worker thread."""

    handle: PGcancel
    """The legacy handle (made from the session); the runner frees it."""
    deadline: Deadline
    encrypted: bool = False
    """The session is encrypted, with TLS or GSSAPI (the legacy request is sent in
    clear text all the same)."""
    libpq: Libpq | None = None
    """The libpq of the connection (for the log record)."""
    backend_pid: int = 0
    """The session's server process (for the log record and telemetry)."""
    span: object = None
    """OpenTelemetry's span current where the plan was made (telemetry's event goes there)."""

    @property
    def clear_text(self) -> bool:
        """The request goes in clear text although the session is encrypted."""
        return self.encrypted

    def discard(self) -> None:
        """Free the handle of a plan that will not be run."""
        self.handle.free()


Plan: TypeAlias = NewApiPlan | LegacyPlan


def make_plan(pgconn: PGconn, deadline: Deadline, *, strict: bool, stacklevel: int) -> Plan:
    """The plan to cancel the query on the open ``pgconn``, in the thread that owns it.

    With a libpq >= 17: a new ``PGcancelConn`` (:class:`CancelError` if libpq
    refuses to prepare one). Otherwise the legacy handle. Either once the
    security policy allowed a request in clear text for an encrypted session
    (``stacklevel``: where the caller's code is for the
    :class:`InsecureCancelWarning`, 1 being the caller of this function).
    Encrypted means TLS or GSSAPI alike.
    """
    lib = pgconn.libpq
    gss = pgconn.gss_enc_in_use
    tls = not gss and pgconn.ssl_in_use
    pid = pgconn.backend_pid  # (read before a cancel object exists: nothing to free if it fails)
    if lib.has_cancel_conn:
        clear = tls and policy.clear_text_first(pgconn)
        if clear:
            policy.check_policy(
                pgconn, strict=strict, stacklevel=stacklevel + 1, reason=policy.SSLMODE_ALLOW
            )
        cc = new_cancel_conn(pgconn)
        return NewApiPlan(cc, lib.native_driver, gss or tls, deadline, lib, gss, clear, pid)
    if gss or tls:
        policy.check_policy(pgconn, strict=strict, stacklevel=stacklevel + 1, reason=policy.LEGACY)
    return LegacyPlan(pgconn.get_cancel(), deadline, gss or tls, lib, pid)


def rearmed(plan: Plan) -> Plan:
    """``plan`` with its deadline starting now (``cancel_after``'s timer, when it fires)."""
    return replace(plan, deadline=Deadline.after(plan.deadline.timeout))
