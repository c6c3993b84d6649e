"""psycancel never imports OpenTelemetry; it records once the application has.

Each case runs in a child process that imports psycancel and runs real
cancels (new API blocking and asyncio, and the legacy path). ``hidden`` puts
a meta-path finder first that refuses every ``opentelemetry`` module (as if
it were not installed): afterwards no ``opentelemetry`` module may be in
``sys.modules``. ``unused``: installed but not imported by the application:
still none. ``used``: the application imported ``opentelemetry.metrics``
first: psycancel's instruments exist after the cancels.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from psycancel.pq import Libpq

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import asyncio, importlib.abc, json, sys, warnings

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    dsn, new_path, legacy_path, mode = sys.argv[1:5]
    if mode == "hidden":
        sys.meta_path.insert(0, Hide())
    if mode == "used":
        import opentelemetry.metrics

    def otel():
        return sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")

    import psycancel
    from psycancel._engine import telemetry
    from psycancel.pq import Libpq
    from testing.client import connect

    after_import = otel()
    active_before = telemetry.active() is not None
    conn = connect(dsn, libpq=Libpq.load(new_path))
    psycancel.cancel(conn, timeout=10)
    asyncio.run(psycancel.cancel_async(conn, timeout=10))
    conn.finish()
    if legacy_path:
        conn = connect(dsn, libpq=Libpq.load(legacy_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            psycancel.cancel(conn, timeout=10)
        conn.finish()
    print(json.dumps({
        "after_import": after_import,
        "after_cancels": otel(),
        "active_before": active_before,
        "active": telemetry.active() is not None,
    }))
    """
)


def run_child(mode: str, dsn: str, new: Libpq, legacy: Libpq | None) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, dsn, new.path, legacy.path if legacy else "", mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("mode", ["hidden", "unused"])
@pytest.mark.parametrize("legacy", [False, True], ids=["new-api", "new-and-legacy"])
def test_nothing_imported(
    mode: str, legacy: bool, request: pytest.FixtureRequest, dsn_tls: str, libpq: Libpq
) -> None:
    old = request.getfixturevalue("legacy_libpq") if legacy else None
    result = run_child(mode, dsn_tls, libpq, old)
    expected = {"after_import": [], "after_cancels": [], "active_before": False, "active": False}
    assert result == expected


def test_recorded_once_the_application_imported_it(dsn_tls: str, libpq: Libpq) -> None:
    result = run_child("used", dsn_tls, libpq, None)
    assert "opentelemetry.metrics" in result["after_import"]  # type: ignore[operator]
    assert "opentelemetry.trace" not in result["after_cancels"]  # type: ignore[operator]
    assert result["active"] is True
