"""``import psycancel`` loads nothing heavy: each public name's module is imported on first use.

Checked in a fresh interpreter (this process imported everything long ago), with
the active twin (``PSYCANCEL_IMPL`` is inherited). ``benchmarks/import_cost.py``
measures the time this saves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import psycancel

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("asyncio", "ssl", "subprocess", "tempfile", "bz2", "lzma", "concurrent.futures")
"""Standard modules a driver importing psycancel must not pay for."""
FRAMEWORKS = ("anyio", "trio", "sniffio", "gevent", "django", "sqlalchemy")
DRIVERS = ("psycopg2", "psycopg", "aiopg")


def loaded_by(statement: str) -> dict[str, list[str]]:
    """What ``statement`` adds to ``sys.modules`` in a fresh interpreter."""
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    added: list[str] = json.loads(out.stdout)
    roots = {name.split(".")[0] for name in added}
    return {
        "added": added,
        "heavy": [m for m in HEAVY if m in added],
        "frameworks": [m for m in (*FRAMEWORKS, *DRIVERS) if m in roots],
        "psycancel": [m for m in added if m.split(".")[0] in ("psycancel", "psycancel_c")],
    }


def test_import_psycancel_loads_only_its_errors() -> None:
    found = loaded_by("import psycancel")
    assert found["heavy"] == [], found["heavy"]
    assert found["frameworks"] == [], found["frameworks"]
    assert found["psycancel"] == ["psycancel", "psycancel.errors"], found["psycancel"]
    assert "typing" not in found["added"]


def test_the_blocking_path_loads_no_event_loop_nor_process_machinery() -> None:
    """Naming ``cancel`` (and ``prepare``, ``Borrowed``) imports the blocking path only."""
    found = loaded_by("import psycancel; psycancel.cancel; psycancel.prepare; psycancel.Borrowed")
    assert [m for m in found["heavy"] if m != "concurrent.futures"] == [], found["heavy"]
    assert found["frameworks"] == [], found["frameworks"]
    assert "psycancel.pq" in found["psycancel"]
    assert "psycancel._engine.asyncio_loop" not in found["psycancel"]


def test_the_asyncio_path_is_imported_by_the_first_async_cancel(dsn_plain: str) -> None:
    found = loaded_by(
        "import asyncio, psycopg2, psycancel\n"
        f"conn = psycopg2.connect({dsn_plain!r})\n"
        "psycancel.cancel(conn)\n"
        "assert 'psycancel._engine.asyncio_loop' not in sys.modules\n"
        "asyncio.run(psycancel.cancel_async(conn))\n"
        "conn.close()"
    )
    assert "psycancel._engine.asyncio_loop" in found["psycancel"]
    assert [m for m in found["frameworks"] if m != "psycopg2"] == [], found["frameworks"]


@pytest.mark.parametrize("name", psycancel.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(psycancel, name) is not None
    assert name in dir(psycancel)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        psycancel.nope  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(psycancel, "nope")
