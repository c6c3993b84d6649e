"""OpenTelemetry metrics and span events of cancels, when the application uses them.

psycancel never imports OpenTelemetry: an application that records metrics
has imported ``opentelemetry.metrics`` (to set its meter provider, or through
auto-instrumentation) before it cancels anything. So each hook looks in
``sys.modules`` (one dict lookup) until the API is there, then makes the
instruments of the ``psycancel`` meter once. Without it (not installed, or
installed and unused) nothing is imported and nothing is recorded; a process
that imports the API later is seen from its next cancel on. With the API but
no SDK, the API's no-op objects take the records. Span events need
``opentelemetry.trace`` imported likewise (a span can only be current if the
application used it).

Instruments (``docs/telemetry.md`` documents them and their attributes):

* ``psycancel.cancels``: counter (``{cancel}``) of the cancels psycancel
  started or found nothing to send for, by outcome, path and encryption;
* ``psycancel.cancel.duration``: histogram (``s``) of the cancels it ran;
* ``psycancel.broken_connections``: counter (``{connection}``) of the
  connections a deadline (or an interrupt's bound) shut down.

Span events, on the span that is current where the cancel runs (when it is
recording): ``psycancel.cancel`` and ``psycancel.connection_broken``.

``PSYCANCEL_OTEL=0`` in the environment (read when psycancel is imported)
turns all of it off.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "BROKEN_CONNECTIONS",
    "CANCELS",
    "DURATION",
    "METER_NAME",
    "Instruments",
    "active",
    "broken_connection",
    "cancel_ran",
    "current_span",
    "error_type",
    "no_op",
    "outcome_of",
]

METER_NAME: Final = "psycancel"
CANCELS: Final = "psycancel.cancels"
DURATION: Final = "psycancel.cancel.duration"
BROKEN_CONNECTIONS: Final = "psycancel.broken_connections"

_DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Histogram boundaries (seconds): a cancel takes a round trip or a TLS
handshake (ms), a timed-out one its timeout (s). The SDK's default boundaries
are made for milliseconds."""

_BASE: Final[Mapping[str, Any]] = {"db.system.name": "postgresql"}
"""OpenTelemetry's semantic conventions for databases: the attribute every record has."""


class Instruments:
    """The ``psycancel`` meter's instruments and the API's ``get_current_span``."""

    __slots__ = ("broken", "cancels", "duration")

    def __init__(self, metrics: Any) -> None:
        meter = metrics.get_meter(METER_NAME, _version())
        self.cancels = meter.create_counter(
            CANCELS,
            unit="{cancel}",
            description="Cancel requests psycancel ran or had nothing to send for, by outcome",
        )
        try:  # the advisory exists from opentelemetry-api 1.23 on
            self.duration = meter.create_histogram(
                DURATION,
                unit="s",
                description="How long psycancel's cancel requests took",
                explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
            )
        except TypeError:
            self.duration = meter.create_histogram(
                DURATION, unit="s", description="How long psycancel's cancel requests took"
            )
        self.broken = meter.create_counter(
            BROKEN_CONNECTIONS,
            unit="{connection}",
            description="Connections psycancel shut down because a query outlived its bound",
        )


def _version() -> str | None:
    """psycancel's version (the package is imported: this module is part of it)."""
    version = getattr(sys.modules.get("psycancel"), "__version__", None)
    return version if isinstance(version, str) else None


_OFF: Final = os.environ.get("PSYCANCEL_OTEL", "").strip().lower() in ("0", "false", "off", "no")
_API: Final = "opentelemetry.metrics"
_instruments: Instruments | None = None
_lock = threading.Lock()


def active() -> Instruments | None:
    """The instruments once the application imported OpenTelemetry's metrics API, else None.

    Never imports anything: one dict lookup until the API is imported, then
    the instruments made once.
    """
    instruments = _instruments
    if instruments is not None or _OFF:
        return instruments
    metrics = sys.modules.get(_API)
    if metrics is None:
        return None
    return _make(metrics)


def _make(metrics: Any) -> Instruments | None:
    global _instruments
    with _lock:
        if _instruments is None:
            try:
                _instruments = Instruments(metrics)
            except Exception:  # a broken or partial installation: no telemetry
                return None
        return _instruments


def current_span() -> object:
    """OpenTelemetry's current span, if the application imported its tracing API, else None."""
    trace = sys.modules.get("opentelemetry.trace")
    return None if trace is None else trace.get_current_span()


def outcome_of(error: BaseException | None) -> str:
    """The ``psycancel.cancel.outcome`` of a cancel that ended with ``error``.

    ``done`` (sent and processed), ``timed_out`` (:class:`CancellationTimeout`),
    ``aborted`` (the caller's task or thread was cancelled or interrupted: a
    ``BaseException`` that is no ``Exception``), ``failed`` (any other error).
    """
    if error is None:
        return "done"
    if isinstance(error, TimeoutError):  # CancellationTimeout
        return "timed_out"
    if not isinstance(error, Exception):
        return "aborted"
    return "failed"


def error_type(error: BaseException) -> str:
    """OpenTelemetry's ``error.type``: the exception's fully qualified class name."""
    cls = type(error)
    module = cls.__module__
    if module == "psycancel.errors":
        module = "psycancel"  # where users import it from
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def cancel_ran(
    instruments: Instruments,
    *,
    api: str,
    connection_encrypted: bool,
    clear_text: bool = False,
    runner: str,
    offloaded: bool,
    error: BaseException | None,
    seconds: float,
    backend_pid: int | None,
    span: Any = None,
) -> None:
    """Record a cancel a runner ran: the counter, the histogram, the span event.

    ``span``: the span current where the cancel was asked for, if known;
    otherwise the one current here.
    """
    outcome = outcome_of(error)
    attributes = dict(_BASE)
    attributes["psycancel.cancel.outcome"] = outcome
    attributes["psycancel.cancel.api"] = api
    attributes["psycancel.cancel.encrypted"] = connection_encrypted and not clear_text
    attributes["psycancel.connection.encrypted"] = connection_encrypted
    attributes["psycancel.cancel.runner"] = runner
    attributes["psycancel.cancel.offloaded"] = offloaded
    if error is not None and outcome != "done":
        attributes["error.type"] = error_type(error)
    instruments.cancels.add(1, attributes)
    instruments.duration.record(seconds, attributes)
    _event(instruments, span, "psycancel.cancel", attributes, seconds, backend_pid)


def no_op(reason: str) -> None:
    """Count a cancel that sent nothing: ``reason`` ``closed`` or ``broken`` (the connection)."""
    instruments = active()
    if instruments is None:
        return
    attributes = dict(_BASE)
    attributes["psycancel.cancel.outcome"] = "no_op"
    attributes["psycancel.cancel.no_op_reason"] = reason
    instruments.cancels.add(1, attributes)
    _event(instruments, None, "psycancel.cancel", attributes, None, None)


def broken_connection(source: str, reason: str, *, backend_pid: int | None = None) -> None:
    """Count a connection shut down at its bound by ``source`` (``cancel_after``...).

    ``reason``: ``not_ended`` (the query outlived its cancel's timeout) or
    ``cancel_failed`` (the cancel failed or timed out first).
    """
    instruments = active()
    if instruments is None:
        return
    attributes = dict(_BASE)
    attributes["psycancel.break.source"] = source
    attributes["psycancel.break.reason"] = reason
    instruments.broken.add(1, attributes)
    _event(instruments, None, "psycancel.connection_broken", attributes, None, backend_pid)


def _event(
    instruments: Instruments,
    span: Any,
    name: str,
    attributes: dict[str, Any],
    seconds: float | None,
    backend_pid: int | None,
) -> None:
    """Add event ``name`` to ``span`` (default: the current span) if it is recording."""
    if span is None:
        span = current_span()
        if span is None:
            return
    if not span.is_recording():
        return
    event = dict(attributes)
    if seconds is not None:
        event["psycancel.cancel.duration"] = seconds
    if backend_pid:
        event["psycancel.backend_pid"] = backend_pid
    span.add_event(name, event)
