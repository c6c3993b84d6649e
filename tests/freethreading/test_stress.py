"""The free-threading stress test (``stress.py``) in a child process, for the active twin.

On a free-threaded CPython the child runs with ``PYTHON_GIL=0`` and must keep
the GIL disabled after importing psycancel and its compiled twin; on a GIL
build the same threads still race through the same shared state. A short form
here (one round after the warm-up); ``tools/matrix.sh`` runs the long one on the
free-threaded interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from psycancel.pq import Libpq

ROOT = Path(__file__).resolve().parents[2]
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if FREE_THREADED:
        env["PYTHON_GIL"] = "0"
    return env


def test_import_keeps_the_gil_off() -> None:
    # Not PYTHON_GIL=0 (which would force it off): a module that does not
    # declare itself free-threading compatible turns the GIL back on at import.
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    code = (
        "import sys, psycancel, psycancel.pq, psycancel._api, psycancel._after;"
        " from psycancel.pq import __impl__;"
        " import psycancel_c._pq;"
        " print(getattr(sys, '_is_gil_enabled', lambda: True)())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("False" if FREE_THREADED else "True"), out.stderr


def test_stress(pg_server: Any, libpq: Libpq) -> None:
    env = child_env()
    env["PSYCANCEL_LIBPQ"] = libpq.path
    out = subprocess.run(
        [sys.executable, "-m", "tests.freethreading.stress", "--dsn", pg_server.dsn("require"),
         "--rounds", "1", "--threads", "16"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.stdout.strip(), out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, (figures, out.stderr[-4000:])
    assert all(figures["checks"].values()), figures
    assert figures["cancels"] > 0
