"""The record of each cancel on the ``psycancel`` logger.

* DEBUG, once per cancel a runner ran: which API (new or legacy), the libpq
  path, encrypted or not, offloaded or not, the runner, the outcome and the
  time taken. The record's ``psycancel_cancel`` attribute holds the same
  facts as a dict (keys: ``api``, ``libpq``, ``encrypted``, ``offloaded``,
  ``runner``, ``outcome``, ``seconds``, ``pid``: the session's backend pid).
* WARNING, when a cancel is sent in clear text for an encrypted (TLS or
  GSSAPI) connection: a legacy one, or one of an ``sslmode=allow`` session
  (besides the :class:`InsecureCancelWarning` of the plan).

The logger has a :class:`logging.NullHandler`: nothing is printed unless the
application configures logging.

The same two calls feed OpenTelemetry (:mod:`.telemetry`, when
the application uses ``opentelemetry-api``): the ``psycancel.cancels`` counter, the
``psycancel.cancel.duration`` histogram and a span event. When DEBUG is off
and OpenTelemetry is not in use, a cancel pays one ``logger.isEnabledFor`` check
and one dict lookup (:func:`begin`) and nothing else.
"""

from __future__ import annotations

import logging
import time

from . import telemetry
from .plan import LegacyPlan, NewApiPlan, Plan

__all__ = ["LOGGER_NAME", "begin", "end", "logger"]

LOGGER_NAME = "psycancel"
logger = logging.getLogger(LOGGER_NAME)
logger.addHandler(logging.NullHandler())

_DEBUG = logging.DEBUG


def begin(plan: Plan) -> float | None:
    """Called by a runner before it runs ``plan``: the start time, or None when nobody listens.

    (None: DEBUG is off and the application does not use OpenTelemetry; :func:`end` is then
    not called.)

    Logs the WARNING of a clear-text cancel on an encrypted connection (TLS
    or GSSAPI): a legacy one, or one of a session with ``sslmode=allow``.
    """
    if plan.clear_text:
        lib = plan.libpq
        logger.warning(
            "sending a %s cancel request in clear text for an encrypted connection "
            "(libpq %s at %s %s): its secret key is not encrypted",
            "legacy" if isinstance(plan, LegacyPlan) else "new-API",
            lib.version if lib is not None else "?",
            lib.path if lib is not None else "?",
            "has no PQcancelConn API"
            if isinstance(plan, LegacyPlan)
            else "tries clear text first with sslmode=allow",
        )
    if logger.isEnabledFor(_DEBUG) or telemetry.active() is not None:
        return time.perf_counter()
    return None


def end(
    plan: Plan, started: float, *, runner: str, offloaded: bool, error: BaseException | None
) -> None:
    """Log the DEBUG record of a cancel that began at ``started`` (see :func:`begin`).

    Records it for OpenTelemetry too, when the application uses it.
    """
    seconds = time.perf_counter() - started
    lib = plan.libpq
    api = "new" if isinstance(plan, NewApiPlan) else "legacy"
    instruments = telemetry.active()
    if instruments is not None:
        telemetry.cancel_ran(
            instruments,
            api=api,
            connection_encrypted=plan.encrypted,
            clear_text=plan.clear_text,
            runner=runner,
            offloaded=offloaded,
            error=error,
            seconds=seconds,
            backend_pid=plan.backend_pid,
            span=plan.span,
        )
    if not logger.isEnabledFor(_DEBUG):
        return
    outcome = "ok" if error is None else type(error).__name__
    facts = {
        "api": api,
        "libpq": lib.path if lib is not None else None,
        "encrypted": plan.encrypted,
        "offloaded": offloaded,
        "runner": runner,
        "outcome": outcome,
        "seconds": seconds,
        "pid": plan.backend_pid,
    }
    logger.debug(
        "cancel %s in %.2f ms: %s API, libpq %s, %s, %s (%s runner)",
        outcome,
        seconds * 1000,
        api,
        facts["libpq"],
        "encrypted" if plan.encrypted else "not encrypted",
        "offloaded" if offloaded else "not offloaded",
        runner,
        extra={"psycancel_cancel": facts},
    )
