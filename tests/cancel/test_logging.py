"""The ``psycancel`` logger: one DEBUG record per cancel, a WARNING for a clear-text cancel."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import anyio
import pytest

import psycancel
from psycancel.pq import Libpq
from testing import client
from tests.support.queries import QUERY_CANCELED, drain, sleeping

LOGGER = "psycancel"


def cancel_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The facts of every DEBUG cancel record captured so far."""
    return [
        r.psycancel_cancel
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.DEBUG and hasattr(r, "psycancel_cancel")
    ]


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def check_one(caplog: pytest.LogCaptureFixture, lib: Libpq, **expected: Any) -> dict[str, Any]:
    (facts,) = cancel_records(caplog)
    assert facts["libpq"] == lib.path
    assert facts["outcome"] == expected.pop("outcome", "ok")
    assert facts["seconds"] > 0
    for key, value in expected.items():
        assert facts[key] == value, (key, facts)
    return facts


def test_new_api_blocking(caplog: pytest.LogCaptureFixture, dsn_plain: str, libpq: Libpq) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with sleeping(dsn_plain, libpq) as conn:
        psycancel.cancel(conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    check_one(caplog, libpq, api="new", encrypted=False, offloaded=False, runner="blocking")
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    message = record.getMessage()
    assert message.startswith("cancel ok in ")
    assert "new API" in message and libpq.path in message and "not encrypted" in message


def test_new_api_offloaded(caplog: pytest.LogCaptureFixture, dsn_tls: str, libpq: Libpq) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with sleeping(dsn_tls, libpq) as conn:
        asyncio.run(psycancel.cancel_async(conn, timeout=10))  # TLS: offloaded by default
        assert drain(conn).sqlstate == QUERY_CANCELED
    check_one(caplog, libpq, api="new", encrypted=True, offloaded=True, runner="asyncio")
    assert not warnings_logged(caplog)


def test_new_api_inline(caplog: pytest.LogCaptureFixture, dsn_tls: str, libpq: Libpq) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with sleeping(dsn_tls, libpq) as conn:
        asyncio.run(psycancel.cancel_async(conn, timeout=10, offload=False))
        assert drain(conn).sqlstate == QUERY_CANCELED
    check_one(caplog, libpq, api="new", encrypted=True, offloaded=False, runner="asyncio")


def test_new_api_trio(caplog: pytest.LogCaptureFixture, dsn_plain: str, libpq: Libpq) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with sleeping(dsn_plain, libpq) as conn:
        anyio.run(lambda: psycancel.cancel_async(conn, timeout=10), backend="trio")
        assert drain(conn).sqlstate == QUERY_CANCELED
    check_one(caplog, libpq, api="new", encrypted=False, offloaded=False, runner="anyio")


def test_legacy_plain(
    caplog: pytest.LogCaptureFixture, dsn_plain: str, legacy_libpq: Libpq
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with sleeping(dsn_plain, legacy_libpq) as conn:
        psycancel.cancel(conn, timeout=10)
        assert drain(conn).sqlstate == QUERY_CANCELED
    check_one(
        caplog, legacy_libpq, api="legacy", encrypted=False, offloaded=False, runner="blocking"
    )
    assert not warnings_logged(caplog)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_legacy_tls_logs_a_warning(
    mode: str, caplog: pytest.LogCaptureFixture, dsn_tls: str, legacy_libpq: Libpq
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with sleeping(dsn_tls, legacy_libpq) as conn:
        with pytest.warns(psycancel.InsecureCancelWarning):
            if mode == "sync":
                psycancel.cancel(conn, timeout=10)
            else:
                asyncio.run(psycancel.cancel_async(conn, timeout=10))
        assert drain(conn).sqlstate == QUERY_CANCELED
    (warning,) = warnings_logged(caplog)
    text = warning.getMessage()
    assert "clear text" in text and "encrypted connection" in text and legacy_libpq.path in text
    runner = "blocking" if mode == "sync" else "asyncio"
    check_one(caplog, legacy_libpq, api="legacy", encrypted=True, offloaded=False, runner=runner)
    # The WARNING comes first: it is logged before the request is sent.
    levels = [r.levelno for r in caplog.records if r.name == LOGGER]
    assert levels == [logging.WARNING, logging.DEBUG]


def test_strict_refusal_logs_nothing(
    caplog: pytest.LogCaptureFixture, dsn_tls: str, legacy_libpq: Libpq
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with sleeping(dsn_tls, legacy_libpq) as conn, pytest.raises(psycancel.InsecureCancelError):
        psycancel.cancel(conn, strict=True)
    assert [r for r in caplog.records if r.name == LOGGER] == []  # nothing was sent


def test_failure_is_logged(
    caplog: pytest.LogCaptureFixture, pg_server: Any, proxy: Any, libpq: Libpq
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    px = proxy()
    conn = client.connect(px.dsn(pg_server, sslmode="disable"), libpq=libpq)
    try:
        px.blackhole()
        with pytest.raises(psycancel.CancellationTimeout):
            psycancel.cancel(conn, timeout=0.3)
    finally:
        conn.finish()
    facts = check_one(caplog, libpq, outcome="CancellationTimeout", api="new")
    # The record times the run, which starts just after the plan's deadline was
    # set (0.29949 s was seen): about the timeout, never much less.
    assert facts["seconds"] >= 0.3 - 0.05


def test_no_record_when_debug_is_off(
    caplog: pytest.LogCaptureFixture, dsn_plain: str, libpq: Libpq
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    conn = client.connect(dsn_plain, libpq=libpq)
    try:
        psycancel.cancel(conn)
    finally:
        conn.finish()
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_nothing_is_printed_by_default(dsn_tls: str, legacy_libpq: Libpq) -> None:
    """Without any logging configuration, even the WARNING goes nowhere (a NullHandler)."""
    script = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("ignore")
        import psycancel
        from psycancel.pq import Libpq
        from testing import client
        conn = client.connect(sys.argv[1], libpq=Libpq.load(sys.argv[2]))
        psycancel.cancel(conn)
        conn.finish()
        print("done")
        """
    )
    with warnings.catch_warnings():
        done = subprocess.run(
            [sys.executable, "-c", script, dsn_tls, legacy_libpq.path],
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert done.stderr == ""
