"""Dispatch never imports a driver (nor AnyIO/Trio) that the program did not import.

Each case runs in a fresh interpreter, since this process has imported
everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from psycancel.pq import Libpq
from tests.support.drivers import ROOT
from tests.support.drivers import need as _need

FORBIDDEN = ["psycopg2", "psycopg", "aiopg", "anyio", "trio", "sniffio", "gevent", "psycogreen"]

PRELUDE = """
import json, sys
FORBIDDEN = {forbidden!r}
before = [m for m in FORBIDDEN if m in sys.modules]
assert not before, f"imported before the test even started: {{before}}"

def report(**extra):
    print("RESULT " + json.dumps(dict(
        imported=[m for m in FORBIDDEN if m in sys.modules], **extra)))
"""


def run_child(body: str, **env: str) -> dict[str, Any]:
    code = PRELUDE.format(forbidden=FORBIDDEN) + textwrap.dedent(body)
    child_env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env,
        cwd=str(ROOT),
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def test_unknown_object_imports_nothing() -> None:
    res = run_child(
        """
        import asyncio
        import psycancel

        errors = []
        for call in (
            lambda: psycancel.cancel(object()),
            lambda: asyncio.run(psycancel.cancel_async(object())),
            lambda: psycancel.cancel_after(object(), 1).__enter__(),
            lambda: asyncio.run(psycancel.cancel_after(object(), 1).__aenter__()),
        ):
            try:
                call()
            except psycancel.InterfaceError as ex:
                errors.append(type(ex).__name__)
        report(errors=errors)
        """
    )
    assert res["errors"] == ["InterfaceError"] * 4
    assert res["imported"] == []


def test_asyncio_cancel_imports_no_anyio(dsn_plain: str, libpq: Libpq) -> None:
    """A real cancel, and a real cancel_after, under asyncio: no AnyIO, no sniffio."""
    res = run_child(
        f"""
        import asyncio
        import psycancel
        from psycancel.pq import Libpq
        from testing import client

        async def main():
            conn = client.connect({dsn_plain!r}, libpq=Libpq.load({libpq.path!r}))
            try:
                await psycancel.cancel_async(conn, timeout=10)
                async with psycancel.cancel_after(conn, 5):
                    pass
            finally:
                conn.finish()

        asyncio.run(main())
        report()
        """
    )
    assert res["imported"] == []


@pytest.mark.parametrize(
    ("driver", "connect"),
    [
        ("psycopg2", "psycopg2.connect(DSN)"),
        ("psycopg", "psycopg.connect(DSN)"),
    ],
)
def test_one_driver_imports_no_other(driver: str, connect: str, dsn_plain: str) -> None:
    _need(driver)
    res = run_child(
        f"""
        import {driver}
        import psycancel

        DSN = {dsn_plain!r}
        conn = {connect}
        try:
            psycancel.cancel(conn)
            with psycancel.cancel_after(conn, 5):
                pass
        finally:
            conn.close()
        report()
        """
    )
    assert res["imported"] == [driver]
