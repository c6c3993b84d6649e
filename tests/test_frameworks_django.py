"""Django's connections accepted by cancel, cancel_after and Canceller (psycopg 3 and psycopg2).

Django configures itself once per process and picks psycopg 3 when it can
import it: each backend runs in a child process (``django_scenarios.py``),
against the real server, plain and TLS, with the active twin
(``PSYCANCEL_IMPL`` is inherited). Every scenario ends a real query with
SQLSTATE 57014 (wrapped in ``django.db.utils.OperationalError``) and uses
the connection again, or checks what is documented instead: Django's
connections are per thread (``thread_local_trap``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from .django_scenarios import SCENARIOS
from .drivers_helpers import ROOT, need

need("django")
need("psycopg_pool")
need("psycopg2")

BACKENDS = ["psycopg", "psycopg2"]
ALIASES = ["plain", "tls"]
_results: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}


def _run(backend: str, pg_server: Any) -> dict[tuple[str, str], dict[str, Any]]:
    if backend not in _results:
        dsns = json.dumps({"plain": pg_server.dsn_plain, "tls": pg_server.dsn_tls})
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "tests.django_scenarios", backend, dsns],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for line in proc.stdout.splitlines():
            item = json.loads(line)
            if "scenario" in item:
                found[(item["scenario"], item["alias"])] = item
        if not found:
            pytest.fail(f"the Django child failed ({proc.returncode}): {proc.stderr[-3000:]}")
        _results[backend] = found
    return _results[backend]


CASES = [
    (backend, scenario, alias)
    for backend in BACKENDS
    for scenario in SCENARIOS
    for alias in ALIASES
    if not (scenario == "pooled" and backend == "psycopg2")  # the pool option is psycopg 3's
]


@pytest.mark.parametrize(("backend", "scenario", "alias"), CASES)
def test_django(backend: str, scenario: str, alias: str, pg_server: Any) -> None:
    item = _run(backend, pg_server).get((scenario, alias))
    assert item is not None, f"{scenario} did not run for {alias}"
    assert item["ok"], item["detail"]
