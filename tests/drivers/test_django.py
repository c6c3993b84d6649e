"""Django's connections (psycopg 3 and psycopg2 backends), plain and TLS.

Each backend runs in a child process of its own (``tests/support/django_child.py``):
Django is configured once per process and picks its driver at import. The
child runs the real Django against the test server; every query ends with
SQLSTATE 57014 and its connection runs a query afterwards. Among them: the
README's example, verbatim, on a thread's first query (Django connects
lazily: the ``Canceller`` follows the wrapper of the thread it was made in).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support.drivers import ROOT, need
from tests.support.queries import QUERY_CANCELED

need("django")
CHILD = ROOT / "tests" / "support" / "django_child.py"


def run_child(backend: str, dsn: str, monitor_dsn: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(CHILD)],
        input=json.dumps({"backend": backend, "dsn": dsn, "monitor_dsn": monitor_dsn}),
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=str(ROOT),
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


@pytest.fixture(scope="module", params=["psycopg", "psycopg2"])
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="module", params=["plain", "tls"])
def outcome(request: pytest.FixtureRequest, backend: str, pg_server: Any) -> dict[str, Any]:
    dsn = pg_server.dsn("disable" if request.param == "plain" else "require")
    return run_child(backend, dsn, pg_server.dsn("disable"))


def assert_cancelled(part: dict[str, Any]) -> None:
    assert part["error_module"].startswith("django.db"), part  # Django wraps the driver's error
    assert part["error"] == "OperationalError", part
    assert part["pgcode"] == QUERY_CANCELED, part
    assert part["after"] == 1, part


def test_the_backend_is_the_one_asked_for(outcome: dict[str, Any], backend: str) -> None:
    assert outcome["backend"] == "postgresql"
    assert outcome["database"] == backend


def test_canceller_made_in_the_query_thread_cancels_from_another(outcome: dict[str, Any]) -> None:
    assert outcome["driver"] == "Canceller"
    assert_cancelled(outcome["canceller"])


def test_the_query_threads_wrapper_cancels_from_another_thread(outcome: dict[str, Any]) -> None:
    assert outcome["wrapper_type"] == "DatabaseWrapper"
    assert_cancelled(outcome["wrapper"])


def test_another_threads_own_connection_cancels_nothing(outcome: dict[str, Any]) -> None:
    # django.db.connection is per thread: in the cancelling thread it is another,
    # unconnected wrapper, so the call returns and the query runs on (docs/drivers.md).
    assert outcome["trap"] == {"returned": None, "still_running": True}
    assert_cancelled(outcome["trap_cleanup"])


def test_cancel_after_raises_query_timeout_caused_by_djangos_error(
    outcome: dict[str, Any],
) -> None:
    part = outcome["cancel_after"]
    assert part["raised"] == "QueryTimeout", part
    assert part["cause_module"].startswith("django.db"), part
    assert part["pgcode"] == QUERY_CANCELED, part


def test_an_unconnected_wrapper_is_nothing_to_cancel(outcome: dict[str, Any]) -> None:
    assert outcome["unconnected"] is True
    assert outcome["unconnected_connection"] is True  # and psycancel did not connect it


def test_the_readme_example_cancels_a_threads_first_query(outcome: dict[str, Any]) -> None:
    """README.md's example, verbatim: Canceller(connection) before Django connected."""
    part = outcome["readme"]
    assert part["pid_seen"], part  # the query did run on the server
    assert part["error_module"].startswith("django.db"), part
    assert part["error"] == "OperationalError", part
    assert part["pgcode"] == QUERY_CANCELED, part
    assert not part["still_running"], part
    assert part["seconds"] < 30, part  # the timer's 5 s, not slow_report()'s 60 s


def test_a_canceller_made_before_connecting_sticks_to_its_thread(
    outcome: dict[str, Any],
) -> None:
    part = outcome["lazy"]
    assert part["repr_before"].endswith("DatabaseWrapper 'default', not connected yet>"), part
    assert "following django.db.backends.postgresql.base.DatabaseWrapper" in part["repr_after"]
    assert part["held_after_other_thread_connected"] is False, part  # not this thread's
    assert part["error"] == "OperationalError", part
    assert part["pgcode"] == QUERY_CANCELED, part
    assert not part["still_running"], part


def test_a_canceller_follows_the_wrapper_to_its_next_connection(
    outcome: dict[str, Any],
) -> None:
    part = outcome["reconnect"]
    assert part["kept_until_reconnect"] and part["moved"], part
    assert part["pgcode"] == QUERY_CANCELED, part


def test_a_dropped_canceller_leaves_no_signal_receiver(outcome: dict[str, Any]) -> None:
    part = outcome["receivers"]
    assert part["during"] == part["before"] + 1, part
    assert part["collected"], part
    assert part["after"] == part["before"], part


def test_cancel_after_a_canceller_made_before_connecting(outcome: dict[str, Any]) -> None:
    assert outcome["cancel_after_handle"] == {"raised": "QueryTimeout", "pgcode": QUERY_CANCELED}


def test_a_deadline_passed_before_connecting_cancels_the_query(outcome: dict[str, Any]) -> None:
    """The connection made after the deadline is cancelled at once (it ran on, unbounded)."""
    assert outcome["cancel_after_overdue"] == {
        "raised": "QueryTimeout",
        "pgcode": QUERY_CANCELED,
        "fired": True,
    }
