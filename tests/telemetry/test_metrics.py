"""OpenTelemetry metrics and span events after real cancels, read with the real SDK.

Each test cancels a real query (or fails to, against the proxy's black hole)
and reads what the ``psycancel`` meter recorded through the SDK's
``InMemoryMetricReader`` (``tests/telemetry/sdk.py``), and the span events
through the SDK's ``InMemorySpanExporter``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import psycancel
from psycancel._engine import telemetry
from psycancel.pq import Libpq
from testing.client import connect
from tests.support.queries import QUERY_CANCELED, SLEEP, drain, run, sleeping, wait_until_active

from .sdk import Snapshot, attrs, reader

CANCELS = "psycancel.cancels"
BROKEN = "psycancel.broken_connections"
DURATION = "psycancel.cancel.duration"


@pytest.fixture(autouse=True)
def sdk() -> None:
    """The global SDK meter provider is set before the test's first cancel."""
    reader()
    assert telemetry.active() is not None, "opentelemetry-api is installed for the tests"


def only(gained: dict[Any, Any]) -> tuple[dict[str, Any], Any]:
    """The one attribute set that gained, as a dict, and its gain."""
    assert len(gained) == 1, gained
    ((key, value),) = gained.items()
    return dict(attrs(key)), value


def test_done_new_api(dsn_plain: str, libpq: Libpq) -> None:
    before = Snapshot()
    with sleeping(dsn_plain, libpq) as conn:
        psycancel.cancel(conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    after = Snapshot()
    counted, n = only(after.added(before, CANCELS))
    assert n == 1
    assert counted == {
        "db.system.name": "postgresql",
        "psycancel.cancel.outcome": "done",
        "psycancel.cancel.api": "new",
        "psycancel.cancel.encrypted": False,
        "psycancel.connection.encrypted": False,
        "psycancel.cancel.runner": "blocking",
        "psycancel.cancel.offloaded": False,
    }
    timed, (count, total) = only(after.recorded(before, DURATION))
    assert timed == counted and count == 1 and 0 < total < 10
    assert after.units[CANCELS] == "{cancel}" and after.units[DURATION] == "s"


def test_done_encrypted_async(dsn_tls: str, libpq: Libpq) -> None:
    before = Snapshot()
    with sleeping(dsn_tls, libpq) as conn:
        asyncio.run(psycancel.cancel_async(conn, timeout=10))  # TLS: offloaded by default
        assert drain(conn).sqlstate == QUERY_CANCELED
    counted, n = only(Snapshot().added(before, CANCELS))
    assert n == 1
    assert counted["psycancel.cancel.outcome"] == "done"
    assert counted["psycancel.cancel.encrypted"] is True
    assert counted["psycancel.connection.encrypted"] is True
    assert counted["psycancel.cancel.runner"] == "asyncio"
    assert counted["psycancel.cancel.offloaded"] is True


def test_timed_out_against_a_black_hole(pg_server: Any, proxy: Any, libpq: Libpq) -> None:
    px = proxy()
    conn = connect(px.dsn(pg_server, sslmode="disable"), libpq=libpq)
    try:
        px.blackhole()  # the cancel's connection gets no answer
        before = Snapshot()
        with pytest.raises(psycancel.CancellationTimeout):
            psycancel.cancel(conn, timeout=0.3)
        after = Snapshot()
    finally:
        conn.finish()
    counted, n = only(after.added(before, CANCELS))
    assert n == 1
    assert counted["psycancel.cancel.outcome"] == "timed_out"
    assert counted["error.type"] == "psycancel.CancellationTimeout"
    assert counted["psycancel.cancel.api"] == "new"
    _, (count, total) = only(after.recorded(before, DURATION))
    assert count == 1 and total >= 0.3


def test_legacy_clear_text(dsn_tls: str, legacy_libpq: Libpq) -> None:
    """A legacy libpq on an encrypted session: sent in clear text, and counted so."""
    before = Snapshot()
    with sleeping(dsn_tls, legacy_libpq) as conn:
        with pytest.warns(psycancel.InsecureCancelWarning):
            psycancel.cancel(conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    after = Snapshot()
    counted, n = only(after.added(before, CANCELS))
    assert n == 1
    assert counted["psycancel.cancel.outcome"] == "done"
    assert counted["psycancel.cancel.api"] == "legacy"
    assert counted["psycancel.cancel.encrypted"] is False
    assert counted["psycancel.connection.encrypted"] is True
    timed, (count, _) = only(after.recorded(before, DURATION))
    assert timed == counted and count == 1


def test_span_event_on_the_current_span(dsn_plain: str, libpq: Libpq) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    with sleeping(dsn_plain, libpq) as conn:
        pid = conn.backend_pid
        with tracer.start_as_current_span("request"):
            psycancel.cancel(conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "psycancel.cancel"
    assert event.attributes is not None
    assert event.attributes["psycancel.cancel.outcome"] == "done"
    assert event.attributes["db.system.name"] == "postgresql"
    duration = event.attributes["psycancel.cancel.duration"]
    assert isinstance(duration, float) and 0 < duration < 10
    assert event.attributes["psycancel.backend_pid"] == pid


def test_no_op_on_a_closed_connection(dsn_plain: str, libpq: Libpq) -> None:
    conn = connect(dsn_plain, libpq=libpq)
    conn.finish()
    before = Snapshot()
    psycancel.cancel(conn, timeout=10)  # nothing to cancel: nothing sent
    after = Snapshot()
    counted, n = only(after.added(before, CANCELS))
    assert n == 1
    assert counted == {
        "db.system.name": "postgresql",
        "psycancel.cancel.outcome": "no_op",
        "psycancel.cancel.no_op_reason": "closed",
    }
    assert after.recorded(before, DURATION) == {}  # nothing ran, nothing timed


def test_a_deadline_that_broke_its_connection(
    pg_server: Any, proxy: Any, dsn_plain: str, libpq: Libpq, caplog: pytest.LogCaptureFixture
) -> None:
    """The session is frozen mid-query: the cancel times out, the deadline breaks the
    connection; both are counted, and the WARNING carries the backend pid and the
    outcome as ``extra``."""
    px = proxy()
    conn = connect(px.dsn(pg_server, sslmode="disable"), libpq=libpq)
    monitor = connect(dsn_plain, libpq=libpq)
    pid = conn.backend_pid
    try:
        conn.send_query(SLEEP)
        wait_until_active(monitor, pid)
        px.freeze()  # the session and the cancel's connection get nothing from now on
        before = Snapshot()
        timer = psycancel.cancel_after(conn, 0.2, timeout=0.5)
        with caplog.at_level(logging.WARNING, logger="psycancel"), timer:
            conn.get_result()  # the tests' client returns an error result: the block completes
        after = Snapshot()
        assert timer.connection_broken
    finally:
        conn.finish()
        run(monitor, f"select pg_terminate_backend({pid})")
        monitor.finish()
    # The cancel is counted by its own thread when it ends, which on a loaded
    # machine may be after the block left (the block waits 50 ms past the bound).
    deadline = time.monotonic() + 10
    while not after.added(before, CANCELS) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = Snapshot()
    counted, n = only(after.added(before, BROKEN))
    assert n == 1
    assert counted["db.system.name"] == "postgresql"
    assert counted["psycancel.break.source"] == "cancel_after"
    assert counted["psycancel.break.reason"] in ("not_ended", "cancel_failed")
    cancels, _ = only(after.added(before, CANCELS))
    assert cancels["psycancel.cancel.outcome"] in ("timed_out", "aborted", "failed")
    facts = [getattr(r, "psycancel_cancel", None) for r in caplog.records]
    broke = [f for f in facts if f is not None and f["outcome"] == "connection_broken"]
    assert broke == [
        {"pid": pid, "outcome": "connection_broken", "reason": counted["psycancel.break.reason"]}
    ]


def test_the_debug_record_has_the_backend_pid(
    dsn_plain: str, libpq: Libpq, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="psycancel")
    with sleeping(dsn_plain, libpq) as conn:
        pid = conn.backend_pid
        psycancel.cancel(conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    (facts,) = [r.psycancel_cancel for r in caplog.records if hasattr(r, "psycancel_cancel")]
    assert facts["pid"] == pid and facts["outcome"] == "ok"


def test_a_fired_deadline_reports_to_the_span_of_its_block(dsn_plain: str, libpq: Libpq) -> None:
    """``with cancel_after``'s cancel runs in a thread of psycancel: its event still goes
    to the span that was current when the block was entered."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    with sleeping(dsn_plain, libpq) as conn:
        with tracer.start_as_current_span("request"):
            timer = psycancel.cancel_after(conn, 0.2, timeout=10)
            with timer:
                result = drain(conn)  # the tests' client returns the error as a result
        assert result.sqlstate == QUERY_CANCELED and timer.fired
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "psycancel.cancel"
    assert event.attributes is not None
    assert event.attributes["psycancel.cancel.outcome"] == "done"
