"""Django: the configured deadline through ``execute_wrapper`` (issue 23).

Each backend (psycopg 3, psycopg2) runs in a child process of its own
(``tests/integrations/django_child.py``): Django is configured once per
process, with the settings-style default (``PSYCANCEL``, a database's own
``PSYCANCEL`` winning), and ``psycancel.integrations.django.install()``.
Checked: the default applies to every query (and to a thread's first one:
``connection_created``); ``query_timeout`` and a block's
``execute_wrapper(QueryDeadline(...))`` override it; None disables it; the
slow query raises ``QueryTimeout`` from Django's ``OperationalError`` and the
connection runs the next query; a black-holed one breaks the connection and
Django replaces it; ``uninstall()`` removes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.integrations.helpers import SECONDS, TIMEOUT
from tests.support.drivers import ROOT, need

need("django")
CHILD = ROOT / "tests" / "integrations" / "django_child.py"


@pytest.fixture(scope="module", params=["psycopg", "psycopg2"])
def outcome(request: pytest.FixtureRequest, pg_server: Any) -> dict[str, Any]:
    args = {
        "backend": request.param,
        "dsn": pg_server.dsn("disable"),
        "seconds": SECONDS,
        "timeout": TIMEOUT,
    }
    proc = subprocess.run(
        [sys.executable, str(CHILD)],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=str(ROOT),
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    assert result["database"] == request.param
    return result


def timed_out(part: dict[str, Any]) -> None:
    assert part["error"] == "QueryTimeout", part
    assert part["cause"] == "OperationalError" and part["cause_module"] == "django.db.utils", part
    assert part["connection_broken"] is False, part
    assert part["after"] == "ok", part


def completed(part: dict[str, Any]) -> None:
    assert part["error"] is None, part
    assert part["after"] == "ok", part


def test_the_default_applies_to_every_query(outcome: dict[str, Any]) -> None:
    timed_out(outcome["default_1"])
    timed_out(outcome["default_2"])
    assert len(outcome["wrappers"]) == 1 and "QueryDeadline" in outcome["wrappers"][0]


def test_a_threads_first_query_gets_it(outcome: dict[str, Any]) -> None:
    timed_out(outcome["thread_first_query"])


def test_inside_atomic(outcome: dict[str, Any]) -> None:
    timed_out(outcome["atomic"])


def test_query_timeout_overrides(outcome: dict[str, Any]) -> None:
    completed(outcome["block_override"])
    completed(outcome["block_none"])
    timed_out(outcome["block_shorter"])


def test_a_blocks_execute_wrapper_overrides(outcome: dict[str, Any]) -> None:
    completed(outcome["wrapper_override"])
    completed(outcome["wrapper_none"])


def test_a_broken_connection_is_replaced(outcome: dict[str, Any]) -> None:
    part = outcome["broken"]
    assert part["error"] == "QueryTimeout", part
    assert part["connection_broken"] is True, part
    assert part["after"] == "ok", part  # Django dropped it and connected again


def test_uninstall(outcome: dict[str, Any]) -> None:
    completed(outcome["uninstalled"])
    assert outcome["wrappers_after_uninstall"] == []


def test_one_connections_own_wrapper(outcome: dict[str, Any]) -> None:
    timed_out(outcome["per_connection"])


def test_another_database_is_left_alone(outcome: dict[str, Any]) -> None:
    completed(outcome["sqlite"])
